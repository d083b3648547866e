"""The command lines of the lab's processes: CA, enrolment, controller, agents, stand-ins,
page forwarder.

Pure functions; every vector starts with this interpreter (``sys.executable``) and runs a
module with ``-m``, so the demo, the tests and the benchmarks start exactly the same
programs (:func:`deploy.lab.procs.start` runs them, inside a namespace or not). The lab runs
as a site does: ``ca init``, ``serve --pki`` over HTTPS with a read token, one join token
per agent host (``enrol``), each agent enrolling and then serving over mutual TLS
(:class:`AgentTrust`). :class:`Insecure` is the plain-HTTP form (``--insecure-http`` and the
shared ``--token-file``), kept only for the benchmark that compares the two.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.lab.layout import LabHost
from netcheck.controller.expand import listen_specs
from netcheck.controller.spec import Spec

# The stand-in answers these services itself; every other listening port is plain TCP.
STANDIN_SERVICES = frozenset({"vsphere", "https", "tls", "authd"})
CONTROLLER = [sys.executable, "-m", "netcheck.controller"]


def _reads(read_token_file: Path | None) -> list[str]:
    if read_token_file is None:
        return ["--open-reads"]
    return ["--read-token-file", str(read_token_file)]


@dataclass(frozen=True)
class ControllerTrust:
    """``serve --pki DIR`` (HTTPS) and the read credential (a token file, or open reads)."""

    pki: Path
    read_token_file: Path | None  # None: --open-reads

    def controller_argv(self) -> list[str]:
        return ["--pki", str(self.pki), *_reads(self.read_token_file)]


@dataclass(frozen=True)
class AgentTrust:
    """``serve --ca CA --state-dir D --join-token-file F``: enrol once, then mutual TLS."""

    ca: Path
    state_dir: Path
    join_token_file: Path

    def argv(self) -> list[str]:
        return [
            "--ca", str(self.ca), "--state-dir", str(self.state_dir),
            "--join-token-file", str(self.join_token_file),
        ]  # fmt: skip


@dataclass(frozen=True)
class Insecure:
    """Plain HTTP, agents known by one shared bearer token (benchmarks and tests only); for
    the controller also its read credential (None: ``--open-reads``)."""

    token_file: Path
    read_token_file: Path | None = None

    def argv(self) -> list[str]:
        return ["--token-file", str(self.token_file)]

    def controller_argv(self) -> list[str]:
        return ["--insecure-http", *self.argv(), *_reads(self.read_token_file)]


def ca_init_argv(pki: Path, names: Sequence[str], addresses: Sequence[str]) -> list[str]:
    """``netcheck-controller ca init``: the site's CA and the controller's certificate."""
    argv = [*CONTROLLER, "ca", "init", "--pki", str(pki)]
    for name in names:
        argv += ["--name", name]
    for address in addresses:
        argv += ["--address", address]
    return argv


def enrol_argv(topology: Path, inventory: Path, db: Path, role: str) -> list[str]:
    """``netcheck-controller enrol --all``: one join token per host of ``role``."""
    return [
        *CONTROLLER, "enrol", "--db", str(db), "--topology", str(topology),
        "--inventory", str(inventory), "--role", role, "--all",
    ]  # fmt: skip


def controller_argv(
    topology: Path,
    inventory: Path,
    listen: str,
    db: Path,
    trust: ControllerTrust | Insecure,
) -> list[str]:
    """``netcheck-controller serve`` on ``listen`` (HOST:PORT)."""
    return [
        *CONTROLLER, "serve", "--topology", str(topology), "--inventory", str(inventory),
        "--listen", listen, "--db", str(db), *trust.controller_argv(),
    ]  # fmt: skip


def agent_argv(
    host: LabHost,
    controller_url: str,
    trust: AgentTrust | Insecure,
    mode: str = "auto",
    once: bool = False,
    settle_s: float = 0.0,
    linger_s: float = 0.0,
) -> list[str]:
    """``netcheck-agent serve`` for ``host``; with ``once``, one round (``--settle`` /
    ``--linger`` when given, so that agents started together find each other listening)."""
    argv = [
        sys.executable, "-m", "netcheck.agent", "serve", "--controller", controller_url,
        *trust.argv(), "--role", host.role, "--host", host.name,
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
