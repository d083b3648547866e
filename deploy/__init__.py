"""Deployment helpers for netcheck (the network-namespace lab lives in deploy.lab)."""
