"""The netcheck lab: one network namespace per HDM host, routers with nftables scenarios.

``python -m deploy.lab up|down|status|demo`` (see :mod:`deploy.lab.cli`).
"""
