"""The command lines of the lab's processes: controller, agents, stand-ins, page forwarder.

Pure functions; every vector starts with this interpreter (``sys.executable``) and runs a
module with ``-m``, so the demo, the tests and the benchmarks start exactly the same
programs (:func:`deploy.lab.procs.start` runs them, inside a namespace or not).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deploy.lab.layout import LabHost
from netcheck.controller.expand import listen_specs
from netcheck.controller.spec import Spec

# The stand-in answers these services itself; every other listening port is plain TCP.
STANDIN_SERVICES = frozenset({"vsphere", "https", "tls", "authd"})


def controller_argv(
    topology: Path, inventory: Path, listen: str, db: Path, token_file: Path
) -> list[str]:
    """``netcheck-controller serve`` on ``listen`` (HOST:PORT)."""
    return [
        sys.executable, "-m", "netcheck.controller", "serve", "--topology", str(topology),
        "--inventory", str(inventory), "--listen", listen, "--db", str(db),
        "--token-file", str(token_file),
    ]  # fmt: skip


def agent_argv(
    host: LabHost,
    controller_url: str,
    token_file: Path,
    mode: str = "auto",
    once: bool = False,
    settle_s: float = 0.0,
    linger_s: float = 0.0,
) -> list[str]:
    """``netcheck-agent serve`` for ``host``; with ``once``, one round (``--settle`` /
    ``--linger`` when given, so that agents started together find each other listening)."""
    argv = [
        sys.executable, "-m", "netcheck.agent", "serve", "--controller", controller_url,
        "--token-file", str(token_file), "--role", host.role, "--host", host.name,
        "--address", host.address, "--mode", mode,
    ]  # fmt: skip
    if once:
        argv.append("--once")
        if settle_s > 0:
            argv += ["--settle", f"{settle_s:g}"]
        if linger_s > 0:
            argv += ["--linger", f"{linger_s:g}"]
    return argv


def standin_ports(spec: Spec, role: str) -> list[tuple[int, str]]:
    """(port, stand-in service) for every port ``role`` listens on."""
    return [
        (ls.port, ls.service if ls.service in STANDIN_SERVICES else "tcp")
        for ls in listen_specs(spec, role)
    ]


def standin_argv(spec: Spec, host: LabHost) -> list[str]:
    """A stand-in holding every port of ``host``'s role, answering like vCenter or ESXi."""
    api = "VirtualCenter" if host.role.endswith("vcenter") else "HostAgent"
    argv = [
        sys.executable, "-m", "deploy.lab.standin", "--bind", host.address,
        "--name", host.name, "--api-type", api,
    ]  # fmt: skip
    for port, service in standin_ports(spec, host.role):
        argv += ["--port", f"{port}:{service}"]
    return argv


def forward_argv(listen: str, netns: str, to: str) -> list[str]:
    """The page forwarder: ``listen`` (HOST:PORT on the host) -> ``to`` inside ``netns``."""
    return [
        sys.executable, "-m", "deploy.lab.forward", "--listen", listen, "--netns", netns,
        "--to", to,
    ]  # fmt: skip
