"""The benchmark's own copy of the HDM lab, in ``ncbench-`` namespaces.

Built with deploy/lab's own functions (layout, namespaces, scenario -> nftables) under the
prefix ``ncbench-``, so it never touches a lab someone else has up (``nclab-``). The
controller (the real app) runs in ``ncbench-ctl``; stand-in services hold the ports of the
roles without an agent. Agents are started by the caller. Everything is removed on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.cmd import REPO, BenchError, kill, spawn
from bench.netns import PREFIX, delete_all
from deploy.lab import layout as lablayout
from deploy.lab import netns as labnetns
from deploy.lab import scenario as labscenario
from deploy.lab.enter import call_in
from netcheck.controller.expand import listen_specs
from netcheck.controller.spec import Spec

CTL_NETNS = lablayout.ctl_netns(PREFIX)
CONTROLLER = f"http://{lablayout.CONTROLLER_ADDRESS}:{lablayout.CONTROLLER_PORT}"


def host_netns(h: lablayout.LabHost) -> str:
    return h.netns


@dataclasses.dataclass(frozen=True)
class BenchLab:
    layout: lablayout.Layout
    scenario: labscenario.Scenario
    state: Path
    token_file: Path
    inventory: Path

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        def fetch() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(CONTROLLER + path, timeout=timeout) as r:
                    return int(r.status), r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        return call_in(CTL_NETNS, fetch)


def _build(layout: lablayout.Layout, scen: labscenario.Scenario) -> None:
    labnetns.create(layout)
    for r in lablayout.ROUTERS:
        labnetns.apply_firewall(r, labscenario.nft_ruleset(scen.blocks, r), PREFIX)


def _standin_args(spec: Spec, h: lablayout.LabHost) -> list[str]:
    api = "VirtualCenter" if h.role.endswith("vcenter") else "HostAgent"
    args = ["-m", "deploy.lab.standin", "--bind", h.address, "--name", h.name, "--api-type", api]
    for ls in listen_specs(spec, h.role):
        service = ls.service if ls.service in ("vsphere", "https", "tls", "authd") else "tcp"
        args += ["--port", f"{ls.port}:{service}"]
    return args


def listening(address: str, netns: str) -> set[int]:
    """Ports in LISTEN on `address` inside `netns` (from /proc, no traffic)."""
    want = ipaddress.IPv4Address(address).packed[::-1].hex().upper()

    def read() -> set[int]:
        out: set[int] = set()
        for line in Path("/proc/thread-self/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            ip_hex, port_hex = fields[1].split(":")
            if fields[3] == "0A" and ip_hex in (want, "00000000"):
                out.add(int(port_hex, 16))
        return out

    return call_in(netns, read)


def wait_listening(spec: Spec, hosts: list[lablayout.LabHost], bound_s: float) -> list[str]:
    deadline = time.monotonic() + bound_s
    missing = [h for h in hosts]
    while missing and time.monotonic() < deadline:
        missing = [
            h
            for h in missing
            if not {ls.port for ls in listen_specs(spec, h.role)}
            <= listening(h.address, host_netns(h))
        ]
        if missing:
            time.sleep(0.2)
    return [h.name for h in missing]


@contextlib.contextmanager
def bench_lab(spec: Spec, scenario_file: Path, topology: Path) -> Iterator[BenchLab]:
    layout = lablayout.build_layout({n: (r.site, r.agent) for n, r in spec.roles.items()}, PREFIX)
    scen = labscenario.load_scenario(str(scenario_file), spec, layout)
    delete_all()
    with tempfile.TemporaryDirectory(prefix="ncbench-lab-") as tmp:
        state = Path(tmp)
        try:
            _build(layout, scen)
            inventory = state / "inventory.yaml"
            inventory.write_text(lablayout.inventory_yaml(layout))
            token_file = state / "token"
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(32))
            yield BenchLab(layout, scen, state, token_file, inventory)
        finally:
            delete_all()


def start_controller(lab: BenchLab, topology: Path, db: Path) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "bench.controller_proc",
        str(topology),
        str(lab.inventory),
        str(db),
        str(lab.token_file),
        str(lablayout.CONTROLLER_PORT),
        lablayout.CONTROLLER_ADDRESS,
    ]
    proc = spawn(argv, CTL_NETNS)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if lab.get("/healthz", 1.0)[0] == 200:
                return proc
        if proc.poll() is not None:
            raise BenchError(f"the controller exited: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.1)
    kill(proc)
    raise BenchError("the controller did not answer /healthz within 30 s")


def start_standins(
    spec: Spec, lab: BenchLab, agents_too: bool = False, skip: frozenset[str] = frozenset()
) -> list[subprocess.Popen[str]]:
    """Stand-in services for the hosts without an agent (and, `agents_too`, all hosts but
    those named in `skip`)."""
    hosts = [h for h in lab.layout.hosts if (agents_too or not h.agent) and h.name not in skip]
    hosts = [h for h in hosts if listen_specs(spec, h.role)]
    procs = [spawn([sys.executable, *_standin_args(spec, h)], host_netns(h)) for h in hosts]
    missing = wait_listening(spec, hosts, 30.0)
    if missing:
        for p in procs:
            kill(p)
        raise BenchError(f"stand-ins not listening after 30 s: {', '.join(missing)}")
    return procs


def agent_argv(
    lab: BenchLab, h: lablayout.LabHost, once: bool, settle_s: float = 0.0, linger_s: float = 0.0
) -> list[str]:
    """``netcheck-agent serve`` for host `h`; with `once`, one round (``--settle``/``--linger``
    when given, so that agents started together find each other's listeners up)."""
    argv = [sys.executable, "-m", "netcheck.agent", "serve", "--controller", CONTROLLER]
    argv += ["--token-file", str(lab.token_file), "--role", h.role, "--host", h.name]
    argv += ["--address", h.address, "--mode", "connect"]
    if not once:
        return argv
    argv.append("--once")
    if settle_s > 0:
        argv += ["--settle", f"{settle_s:g}"]
    if linger_s > 0:
        argv += ["--linger", f"{linger_s:g}"]
    return argv


__all__ = ["REPO", "BenchLab", "agent_argv", "bench_lab", "host_netns", "start_controller"]
