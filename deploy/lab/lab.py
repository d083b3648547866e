"""Bring the lab up and down: namespaces, firewall, controller, stand-ins, agents.

The one lab API that the demo (:mod:`deploy.lab.cli`), the tests and the benchmarks
(``bench/``) use, each under its own namespace prefix and state dir so they never collide:
:func:`up` (everything, or with ``start=False`` only the network and the files),
:func:`session` (``up`` ... ``down`` as a context manager), the :class:`Lab`'s ``start_*``
methods (the command lines come from :mod:`deploy.lab.argv`), its waits
(:mod:`deploy.lab.waits`), :func:`down`, and :func:`observe` (what really exists now).

``up`` always starts with ``down`` (idempotent), so a crashed run never blocks the next one.
The lab's trust is a site's (:mod:`deploy.lab.trust`): ``netcheck-controller ca init`` in
the state dir's ``pki/`` (the controller's lab address, 127.0.0.1 and ``localhost`` as
SANs, so the forwarded page verifies too), the controller on HTTPS with ``--pki`` and a read
token (``read-token``, 0600), one join token per agent host from ``netcheck-controller
enrol`` in ``agents/HOST/join-token`` (0600), and every agent enrolling into
``agents/HOST/`` and serving over mutual TLS. Two kinds of lab:

* ``netns`` (root): the namespaced site of :mod:`deploy.lab.layout`, the scenario's nftables
  rules on the routers, the controller in ``nclab-ctl`` at https://198.19.0.1:8400, and its
  page on the host's loopback through :mod:`deploy.lab.forward` (HTTPS end to end: the
  forwarder relays bytes).
* ``loopback`` (no root, or ``--loopback``): every host on its own 127.0.1.N address, the
  controller on https://127.0.0.1:8400 (``--port``), no firewall at all (the scenario is not
  applied); ports below 1024 cannot be bound by a normal user, so those listeners report ``denied``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from deploy.lab import argv, netns, nftables, procs, scenario, trust, waits
from deploy.lab.layout import (
    CONTROLLER_ADDRESS,
    CONTROLLER_PORT,
    PREFIX,
    ROUTERS,
    LabHost,
    Layout,
    build_layout,
    ctl_netns,
    inventory_yaml,
    router_netns,
)
from netcheck.agent.caps import can_bind_low_ports
from netcheck.agent.enrol import IDENTITY
from netcheck.controller.expand import listen_specs
from netcheck.controller.spec import Spec, load_spec

Kind = Literal["netns", "loopback"]
TOPOLOGY = procs.REPO / "topology.yaml"
# The lab's controller hands out plans with this period, so a round follows soon after every
# listener is up (the spec's 300 s period and its random first offset of up to 60 s would
# make a one-minute demo impossible). Only `policy.probe_period_seconds` is changed.
LAB_PERIOD_S = 8.0
LOOPBACK_NET = ipaddress.IPv4Network("127.0.1.0/24")


def lab_prefix() -> str:
    """``$NETCHECK_LAB_PREFIX`` or ``nclab-``: the names of one lab's namespaces."""
    return os.environ.get("NETCHECK_LAB_PREFIX") or PREFIX


def loopback_net(prefix: str) -> ipaddress.IPv4Network:
    """127.0.1.0/24 for the default lab; another /24 of 127/8 for a lab with another prefix."""
    if prefix == PREFIX:
        return LOOPBACK_NET
    return ipaddress.IPv4Network(f"127.0.{2 + zlib.crc32(prefix.encode()) % 250}.0/24")


@dataclass(frozen=True)
class Lab:
    kind: Kind
    state: Path
    layout: Layout
    scenario: str
    controller_url: str  # as seen from where the controller runs (ctl namespace or host)
    page_url: str  # as seen from the host
    ctl_netns: str | None
    # What the scenario adds beyond router rules (host firewalls, NAT, ICMP rate limiting),
    # as words for the demo: "" when nothing.
    firewall_extras: str = ""

    # -- the files of the state dir -------------------------------------------------------

    @property
    def pki(self) -> Path:
        """The site's CA and the controller's certificate (``ca init``)."""
        return self.state / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def read_token_file(self) -> Path:
        """The read credential of the page, report, gate and metrics (mode 0600)."""
        return self.state / "read-token"

    def agent_dir(self, host: LabHost) -> Path:
        """``host``'s agent state dir: its key and certificate once enrolled."""
        return self.state / "agents" / host.name

    def join_token_file(self, host: LabHost) -> Path:
        return self.agent_dir(host) / "join-token"

    def issue_join_tokens(self, db: Path) -> None:
        """One-time join tokens, stored (hashed) in ``db``, for every agent host that has not
        enrolled yet; each written 0600 into that host's state dir."""
        enrolled = {h.name for h in self.layout.hosts if (self.agent_dir(h) / IDENTITY).exists()}
        waiting = [h for h in self.layout.hosts if h.agent and h.name not in enrolled]
        if not waiting:
            return
        tokens = trust.join_tokens(self.topology, self.inventory, db, waiting)
        for h in waiting:
            self.agent_dir(h).mkdir(parents=True, mode=0o700, exist_ok=True)
            trust.write_secret(self.join_token_file(h), tokens[h.name])

    @property
    def reader(self) -> waits.Reader:
        """How the lab itself reads from the controller: the CA and the read token."""
        return waits.Reader(self.ca_file, self.read_token_file)

    @property
    def inventory(self) -> Path:
        return self.state / "inventory.yaml"

    @property
    def topology(self) -> Path:
        """The lab's copy of topology.yaml (short probe period, :func:`write_lab_topology`)."""
        return self.state / "topology.yaml"

    @property
    def db(self) -> Path:
        return self.state / "netcheck.db"

    def save(self) -> None:
        info = {
            "kind": self.kind,
            "scenario": self.scenario,
            "controller_url": self.controller_url,
            "page_url": self.page_url,
            "ctl_netns": self.ctl_netns,
            "prefix": self.layout.prefix,
        }
        (self.state / "lab.json").write_text(json.dumps(info, indent=1) + "\n")

    # -- processes ------------------------------------------------------------------------

    def netns_of(self, host: LabHost) -> str | None:
        return host.netns if self.kind == "netns" else None

    def start_controller(
        self, topology: Path | None = None, db: Path | None = None, name: str = "controller"
    ) -> subprocess.Popen[bytes]:
        """``netcheck-controller serve`` at :attr:`controller_url`; returns once healthy.

        On a database of its own (``db``: the benchmarks' rounds), the agents that have not
        enrolled yet get join tokens stored in that database."""
        if db is not None and db != self.db:
            self.issue_join_tokens(db)
        listen = self.controller_url.removeprefix("https://")
        cmd = argv.controller_argv(
            topology or self.topology, self.inventory, listen, db or self.db,
            argv.ControllerTrust(self.pki, self.read_token_file),
        )  # fmt: skip
        proc = procs.start(name, cmd, self.ctl_netns, self.state)
        try:
            log = self.state / "logs" / f"{name}.log"
            waits.wait_healthy(self.controller_url, self.ctl_netns, 30.0, log, self.reader)
        except BaseException:
            procs.stop(proc)
            raise
        return proc

    def start_standin(self, spec: Spec, host: LabHost) -> subprocess.Popen[bytes]:
        """A stand-in holding every port of ``host``'s role (see :meth:`wait_listening`)."""
        return procs.start(
            host.name, argv.standin_argv(spec, host), self.netns_of(host), self.state
        )

    def start_standins(
        self, spec: Spec, hosts: Iterable[LabHost], wait_s: float = 30.0
    ) -> list[subprocess.Popen[bytes]]:
        """Stand-ins on every host of ``hosts`` whose role listens; returns once they all
        hold their ports (else stops them and raises)."""
        chosen = [h for h in hosts if listen_specs(spec, h.role)]
        started = [self.start_standin(spec, h) for h in chosen]
        missing = self.wait_listening(spec, wait_s, chosen)
        if missing:
            for proc in started:
                procs.stop(proc)
            raise netns.LabError(f"stand-ins not listening after {wait_s:g} s: {missing}")
        return started

    def start_agent(
        self,
        host: LabHost,
        mode: str = "auto",
        once: bool = False,
        settle_s: float = 0.0,
        linger_s: float = 0.0,
        nofile: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """``netcheck-agent serve`` on ``host`` against this lab's controller: it enrols with
        its join token first (when its state dir holds no certificate yet), then speaks
        mutual TLS."""
        creds = argv.AgentTrust(self.ca_file, self.agent_dir(host), self.join_token_file(host))
        cmd = argv.agent_argv(host, self.controller_url, creds, mode, once, settle_s, linger_s)
        return procs.start(host.name, cmd, self.netns_of(host), self.state, nofile)

    # -- asking the controller, waiting ---------------------------------------------------

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` from the controller (from inside the ctl namespace when there is one)."""
        return waits.http_get(self.controller_url + path, self.ctl_netns, timeout, self.reader)

    def wait_listening(
        self, spec: Spec, limit_s: float, hosts: Iterable[LabHost] | None = None
    ) -> list[str]:
        """Wait until every host (default: all) holds its role's ports; the hosts that still
        miss some at the limit. Ports below 1024 only where they can be bound."""
        low_ok = self.kind == "netns" or can_bind_low_ports()
        wanted = {
            h.name: (
                h.address,
                self.netns_of(h),
                frozenset(
                    ls.port for ls in listen_specs(spec, h.role) if low_ok or ls.port >= 1024
                ),
            )
            for h in (self.layout.hosts if hosts is None else hosts)
        }
        return waits.wait_listening(wanted, limit_s)

    def wait_round(self, since: float, round_max_s: float, limit_s: float) -> list[str]:
        """Wait until every agent reported a round that started after ``since``; the late."""
        agents = [h.name for h in self.layout.hosts if h.agent]
        return waits.wait_round(
            self.controller_url, self.ctl_netns, agents, since, round_max_s, limit_s, self.reader
        )


def is_root() -> bool:
    return os.geteuid() == 0


def have_netns_tools() -> bool:
    return shutil.which("ip") is not None and shutil.which("nft") is not None


def loopback_layout(layout: Layout) -> Layout:
    net = loopback_net(layout.prefix)
    hosts = tuple(
        dataclasses.replace(
            h,
            address=str(net.network_address + h.index),
            mgmt_address=str(net.network_address + h.index),
        )
        for h in layout.hosts
    )
    return Layout(hosts, layout.prefix)


def write_lab_topology(state: Path, period_s: float) -> Path:
    """A copy of topology.yaml for the lab's controller, with a short probe period."""
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["matrix"] = str((TOPOLOGY.parent / doc["matrix"]).resolve())
    doc.setdefault("policy", {})["probe_period_seconds"] = period_s
    out = state / "topology.yaml"
    out.write_text(
        "# The lab's copy of topology.yaml: only policy.probe_period_seconds differs.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return out


def down(state: Path | None = None, prefix: str | None = None) -> dict[str, int]:
    """Remove every process and namespace of the lab (also an earlier, crashed one).

    The state dir's files (inventory, topology copy, database, logs) stay for a look
    afterwards; only ``lab.json``, which says a lab is up, goes."""
    state = state or procs.state_dir()
    prefix = prefix or lab_prefix()
    stopped = procs.stop_recorded(state) if state.exists() else []
    leftovers = netns.leftover_namespaces(prefix) if have_netns_tools() and is_root() else ()
    # Anything still running inside our namespaces was started by the lab.
    in_ns = [pid for ns in leftovers for pid in netns.pids_in(ns)]
    procs.terminate(in_ns)
    netns.delete_namespaces(leftovers)
    (state / "lab.json").unlink(missing_ok=True)
    return {"processes": len(stopped) + len(in_ns), "namespaces": len(leftovers)}


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port


def up(
    scenario_name: str = "audit",
    kind: Kind | None = None,
    state: Path | None = None,
    page_port: int = 8480,
    controller_port: int = CONTROLLER_PORT,
    period_s: float = LAB_PERIOD_S,
    prefix: str | None = None,
    probe_mode: str = "auto",
    start: bool = True,
) -> Lab:
    """Build and start the whole lab; raises (after cleaning up) when anything fails.

    ``prefix`` names the namespaces (``nclab-`` by default; tests and benchmarks use their
    own, so a test run and a demo never tear each other down). ``start=False``: only the
    network (namespaces, routes, the scenario's firewall) and the state dir's files
    (inventory, topology copy, CA, read token, join tokens); the caller starts what it needs
    with the :class:`Lab`'s ``start_*`` methods."""
    state = state or procs.state_dir()
    prefix = prefix or lab_prefix()
    if kind is None:
        kind = "netns" if is_root() and have_netns_tools() else "loopback"
    spec = load_spec(TOPOLOGY)
    layout = build_layout({n: (r.site, r.agent) for n, r in spec.roles.items()}, prefix)
    scen = scenario.load_scenario(scenario_name, spec, layout)  # validate before any change
    down(state, prefix)
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, mode=0o700)
    try:
        lab = _build(layout, scen, kind, state, page_port, controller_port, period_s)
        if start:
            _start(lab, spec, probe_mode)
        return lab
    except BaseException:
        down(state, prefix)
        raise


@contextlib.contextmanager
def session(
    scenario_name: str,
    prefix: str,
    state: Path,
    kind: Kind | None = None,
    start: bool = True,
    period_s: float = LAB_PERIOD_S,
    probe_mode: str = "auto",
) -> Iterator[Lab]:
    """:func:`up`, then :func:`down` whatever happens."""
    try:
        yield up(
            scenario_name, kind, state, period_s=period_s, prefix=prefix,
            probe_mode=probe_mode, start=start,
        )  # fmt: skip
    finally:
        down(state, prefix)


@contextlib.contextmanager
def ready_session(
    scenario_name: str,
    prefix: str,
    state: Path,
    kind: Kind | None = None,
    probe_mode: str = "auto",
    listen_s: float = 20.0,
    round_max_s: float = 6.0,
) -> Iterator[Lab]:
    """:func:`session`, handed over once every host holds its ports and every agent reported
    a round that began after that (:class:`~deploy.lab.netns.LabError` naming the missing
    ones otherwise)."""
    with session(scenario_name, prefix, state, kind, probe_mode=probe_mode) as lab:
        missing = lab.wait_listening(load_spec(TOPOLOGY), listen_s)
        if missing:
            raise netns.LabError(f"not listening after {listen_s:g} s: {missing}")
        late = lab.wait_round(time.time(), round_max_s, 3 * LAB_PERIOD_S + 20)
        if late:
            raise netns.LabError(f"no round reported by {late}")
        yield lab


def _build(
    layout: Layout,
    scen: scenario.Scenario,
    kind: Kind,
    state: Path,
    page_port: int,
    controller_port: int,
    period_s: float,
) -> Lab:
    if kind == "loopback":
        layout = loopback_layout(layout)
        ctl_addr, ctl_ns = "127.0.0.1", None
        controller_port = _free_port(controller_port)
    else:
        ctl_addr, ctl_ns = CONTROLLER_ADDRESS, ctl_netns(layout.prefix)
        netns.create(layout, icmp_ratelimit=scen.icmp_ratelimit == "kernel-default")
        for r in ROUTERS:
            script = nftables.router_ruleset(scen.blocks, r, scen.nat)
            netns.apply_firewall(r, script, layout.prefix)
        for h in layout.hosts:
            own = scen.host_blocks(h.address)
            if own:
                netns.apply_ruleset(h.netns, nftables.host_ruleset(own))
    controller_url = f"https://{ctl_addr}:{controller_port}"
    page_url = f"https://127.0.0.1:{_free_port(page_port)}/" if ctl_ns else f"{controller_url}/"
    extras = _extras(scen, layout) if kind == "netns" else ""
    lab = Lab(kind, state, layout, scen.name, controller_url, page_url, ctl_ns, extras)
    lab.inventory.write_text(inventory_yaml(layout))
    write_lab_topology(state, period_s)
    trust.init_ca(lab.pki, ctl_addr, state)
    trust.write_secret(lab.read_token_file, trust.new_token())
    lab.issue_join_tokens(lab.db)
    lab.save()
    return lab


def _extras(scen: scenario.Scenario, layout: Layout) -> str:
    hosts = [h.name for h in layout.hosts if scen.host_blocks(h.address)]
    out = f" and in the own firewalls of {', '.join(hosts)}" if hosts else ""
    if scen.nat:
        routers = ", ".join(sorted({n.router for n in scen.nat}))
        out += f", source NAT on {routers} ({len(scen.nat)} rules)"
    if scen.icmp_ratelimit == "kernel-default":
        out += ", the routers with the kernel's ICMP rate limiting"
    return out


def _start(lab: Lab, spec: Spec, probe_mode: str) -> None:
    lab.start_controller()
    if lab.ctl_netns is not None:
        listen = lab.page_url.removeprefix("https://").rstrip("/")
        to = lab.controller_url.removeprefix("https://")
        procs.start("forward", argv.forward_argv(listen, lab.ctl_netns, to), None, lab.state)
    for h in lab.layout.hosts:
        if h.agent:
            lab.start_agent(h, probe_mode)
        else:
            lab.start_standin(spec, h)


def load_lab(state: Path | None = None) -> Lab | None:
    """The lab described in the state dir (what ``up`` made), if any: the description only;
    :func:`observe` says what of it really runs."""
    state = state or procs.state_dir()
    try:
        info = json.loads((state / "lab.json").read_text())
    except (OSError, ValueError):
        return None
    spec = load_spec(TOPOLOGY)
    layout = build_layout(
        {n: (r.site, r.agent) for n, r in spec.roles.items()}, info.get("prefix", PREFIX)
    )
    if info["kind"] == "loopback":
        layout = loopback_layout(layout)
    return Lab(
        info["kind"],
        state,
        layout,
        info["scenario"],
        info["controller_url"],
        info["page_url"],
        info["ctl_netns"],
    )


@dataclass(frozen=True)
class Observed:
    """What of a lab exists right now, found without trusting the state dir's description."""

    namespaces: tuple[str, ...]  # the prefix's namespaces that exist
    firewalls: tuple[str, ...]  # routers whose namespace holds the scenario's nftables table
    alive: dict[str, int]  # pid file name -> pid, for the processes still running (ours)
    recorded: int  # pid files
    host_firewalls: tuple[str, ...] = ()  # host namespaces holding the table (at: host rules)


def observe(state: Path, prefix: str) -> Observed:
    root = is_root() and have_netns_tools()
    names = netns.leftover_namespaces(prefix) if root else ()
    firewalls = tuple(
        r
        for r in ROUTERS
        if router_netns(r, prefix) in names and netns.has_firewall(r, scenario.NFT_TABLE, prefix)
    )
    recorded = procs.recorded_pids(state) if state.exists() else {}
    alive = procs.alive_recorded(state) if state.exists() else {}
    hosts = tuple(
        ns
        for ns in names
        if ns not in {ctl_netns(prefix), *(router_netns(r, prefix) for r in ROUTERS)}
        and netns.has_table(ns, scenario.NFT_TABLE)
    )
    return Observed(names, firewalls, alive, len(recorded), hosts)
