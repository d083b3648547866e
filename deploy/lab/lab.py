"""Bring the lab up and down: namespaces, firewall, controller, stand-ins, agents.

``up`` always starts with ``down`` (idempotent), so a crashed run never blocks the next one.
Two kinds of lab:

* ``netns`` (root): the namespaced site of :mod:`deploy.lab.layout`, the scenario's nftables
  rules on the routers, the controller in ``nclab-ctl`` at 198.19.0.1:8400, and its page on
  the host's loopback through :mod:`deploy.lab.forward`.
* ``loopback`` (no root, or ``--loopback``): every host on its own 127.0.1.N address, the
  controller on 127.0.0.1:8400 (``--port``), no firewall at all (the scenario is not applied);
  ports below 1024 cannot be bound by a normal user, so those listeners report ``denied``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from deploy.lab import netns, procs, scenario
from deploy.lab.enter import call_in
from deploy.lab.layout import (
    CONTROLLER_ADDRESS,
    CONTROLLER_PORT,
    PREFIX,
    ROUTERS,
    Layout,
    build_layout,
    ctl_netns,
    inventory_yaml,
)
from netcheck.agent.caps import can_bind_low_ports
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
    """Remove every process and namespace of the lab (also an earlier, crashed one)."""
    state = state or procs.state_dir()
    prefix = prefix or lab_prefix()
    stopped = procs.stop_recorded(state) if state.exists() else []
    leftovers = netns.leftover_namespaces(prefix) if have_netns_tools() and is_root() else ()
    # Anything still running inside our namespaces was started by the lab.
    in_ns = [pid for ns in leftovers for pid in netns.pids_in(ns)]
    procs.terminate(in_ns)
    netns.delete_namespaces(leftovers)
    return {"processes": len(stopped) + len(in_ns), "namespaces": len(leftovers)}


def _free_port(preferred: int) -> int:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            return port


def _services_for(spec: Spec, role: str) -> list[str]:
    args: list[str] = []
    for ls in listen_specs(spec, role):
        service = ls.service if ls.service in ("vsphere", "https", "tls", "authd") else "tcp"
        args += ["--port", f"{ls.port}:{service}"]
    return args


def up(
    scenario_name: str = "audit",
    kind: Kind | None = None,
    state: Path | None = None,
    page_port: int = 8480,
    controller_port: int = CONTROLLER_PORT,
    period_s: float = LAB_PERIOD_S,
    prefix: str | None = None,
    probe_mode: str = "auto",
) -> Lab:
    """Build and start the whole lab; raises (after cleaning up) when anything fails.

    ``prefix`` names the namespaces (``nclab-`` by default; tests use their own, so a test
    run and a demo never tear each other down)."""
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
        return _start(
            spec, layout, scen, kind, state, page_port, controller_port, period_s, probe_mode
        )
    except BaseException:
        down(state, prefix)
        raise


def _start(
    spec: Spec,
    layout: Layout,
    scen: scenario.Scenario,
    kind: Kind,
    state: Path,
    page_port: int,
    controller_port: int,
    period_s: float,
    probe_mode: str,
) -> Lab:
    if kind == "loopback":
        layout = loopback_layout(layout)
        ctl_addr, ctl_ns = "127.0.0.1", None
        controller_port = _free_port(controller_port)
    else:
        ctl_addr, ctl_ns = CONTROLLER_ADDRESS, ctl_netns(layout.prefix)
        netns.create(layout)
        for r in ROUTERS:
            netns.apply_firewall(r, scenario.nft_ruleset(scen.blocks, r), layout.prefix)
    inventory = state / "inventory.yaml"
    inventory.write_text(inventory_yaml(layout))
    token = state / "token"
    token.touch(mode=0o600)
    token.write_text(secrets.token_urlsafe(32) + "\n")
    topo = write_lab_topology(state, period_s)
    controller_url = f"http://{ctl_addr}:{controller_port}"
    procs.start(
        "controller",
        ["-m", "netcheck.controller", "serve", "--topology", str(topo),
         "--inventory", str(inventory),
         "--listen", f"{ctl_addr}:{controller_port}", "--db", str(state / "netcheck.db"),
         "--token-file", str(token)],
        ctl_ns,
        state,
    )  # fmt: skip
    if ctl_ns is not None:
        page_port = _free_port(page_port)
        procs.start(
            "forward",
            ["-m", "deploy.lab.forward", "--listen", f"127.0.0.1:{page_port}",
             "--netns", ctl_ns, "--to", f"{ctl_addr}:{controller_port}"],
            None,
            state,
        )  # fmt: skip
        page_url = f"http://127.0.0.1:{page_port}/"
    else:
        page_url = f"{controller_url}/"
    lab = Lab(kind, state, layout, scen.name, controller_url, page_url, ctl_ns)
    lab.save()
    wait_healthy(lab, 20.0)
    for h in layout.hosts:
        ns = h.netns if kind == "netns" else None
        if h.agent:
            argv = ["-m", "netcheck.agent", "serve", "--controller", controller_url,
                    "--token-file", str(token), "--role", h.role, "--host", h.name,
                    "--address", h.address, "--mode", probe_mode]  # fmt: skip
        else:
            api = "VirtualCenter" if h.role.endswith("vcenter") else "HostAgent"
            argv = ["-m", "deploy.lab.standin", "--bind", h.address, "--name", h.name,
                    "--api-type", api, *_services_for(spec, h.role)]  # fmt: skip
        procs.start(h.name, argv, ns, state)
    return lab


def http_get(lab: Lab, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``path`` from the controller (from inside the ctl namespace when there is one)."""

    def fetch() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(lab.controller_url + path, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    return call_in(lab.ctl_netns, fetch)


def wait_healthy(lab: Lab, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if http_get(lab, "/healthz", 1.0)[0] == 200:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    log = (lab.state / "logs" / "controller.log").read_text(errors="replace")[-2000:]
    raise netns.LabError(f"the controller did not answer /healthz ({last}); its log:\n{log}")


def _listening(address: str, netns_name: str | None) -> set[int]:
    """Ports in LISTEN state on ``address`` (IPv4), read from /proc inside the namespace."""
    want = ipaddress.IPv4Address(address).packed[::-1].hex().upper()

    def read() -> set[int]:
        out: set[int] = set()
        for line in Path("/proc/thread-self/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, st = fields[1], fields[3]
            ip_hex, port_hex = local.split(":")
            if st == "0A" and ip_hex in (want, "00000000"):
                out.add(int(port_hex, 16))
        return out

    return call_in(netns_name, read)


def wait_listening(lab: Lab, spec: Spec, limit_s: float) -> list[str]:
    """Wait until every host holds its ports; the hosts that still miss some at the limit."""
    low_ok = lab.kind == "netns" or can_bind_low_ports()
    wanted = {
        h.name: {ls.port for ls in listen_specs(spec, h.role) if low_ok or ls.port >= 1024}
        for h in lab.layout.hosts
    }
    deadline = time.monotonic() + limit_s
    missing: list[str] = list(wanted)
    while missing and time.monotonic() < deadline:
        time.sleep(0.3)
        missing = [
            h.name
            for h in lab.layout.hosts
            if h.name in missing
            and not wanted[h.name]
            <= _listening(h.address, h.netns if lab.kind == "netns" else None)
        ]
    return missing


def last_reports(lab: Lab) -> dict[str, float]:
    """host -> unix time of its agent's last accepted batch (from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(lab, "/metrics")
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "netcheck_agent_last_report_timestamp_seconds":
            for s in fam.samples:
                out[s.labels.get("host", "")] = s.value
    return out


def wait_round(lab: Lab, since: float, round_max_s: float, limit_s: float) -> list[str]:
    """Wait until every agent reported a round that started after ``since``; the late ones."""
    agents = [h.name for h in lab.layout.hosts if h.agent]
    deadline = time.monotonic() + limit_s
    late = agents
    while time.monotonic() < deadline:
        seen = last_reports(lab)
        late = [a for a in agents if seen.get(a, 0.0) < since + round_max_s]
        if not late:
            break
        time.sleep(0.5)
    return late


def load_lab(state: Path | None = None) -> Lab | None:
    """The running lab described in the state dir, if any."""
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
