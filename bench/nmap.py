"""nmap as the comparison: run with a bound, read its XML (port states and its own progress)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from bench.cmd import Done, run
from netcheck.controller.ports import port_ranges

# netcheck's probe states, in nmap's words.
NMAP_STATE = {
    "open": "open",
    "refused": "closed",
    "filtered": "filtered",
    "unreachable": "filtered",
    "prohibited": "filtered",
}


@dataclasses.dataclass(frozen=True)
class NmapRun:
    wall_s: float
    finished: bool  # False: cut off at the bound
    states: dict[tuple[str, int], str]  # (address, port) -> open|closed|filtered|...
    percent: float | None  # its last progress report, when cut off
    eta_total_s: float | None  # its own estimate of the whole run, from that report


def version() -> str:
    if shutil.which("nmap") is None:
        return "not installed"
    out = subprocess.run(["nmap", "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"Nmap version (\S+)", out.stdout)
    return m.group(1) if m else "unknown"


def port_arg(ports: Sequence[int]) -> str:
    """Ports as nmap's -p list with ranges: [22, 80, 81, 82] -> "22,80-82"."""
    return port_ranges(ports, sep=",")


def parse_xml(text: str, ports: Sequence[int]) -> tuple[dict[tuple[str, int], str], float | None]:
    """Per-port states (collapsed "extraports" expanded over the unlisted ports) and the
    last progress percentage. Tolerates a document cut short by a kill."""
    states: dict[tuple[str, int], str] = {}
    percent: float | None = None
    for m in re.finditer(r'<taskprogress [^>]*percent="([\d.]+)"', text):
        percent = float(m.group(1))
    if "</nmaprun>" not in text:
        return states, percent
    root = ET.fromstring(text)
    for host in root.iter("host"):
        addr_el = host.find("address")
        if addr_el is None:
            continue
        addr = addr_el.get("addr", "")
        listed: set[int] = set()
        for port in host.iter("port"):
            st = port.find("state")
            pid = int(port.get("portid", "0"))
            listed.add(pid)
            states[(addr, pid)] = st.get("state", "?") if st is not None else "?"
        extra = [e.get("state", "?") for e in host.iter("extraports")]
        if len(extra) == 1:
            for p in ports:
                if p not in listed:
                    states[(addr, p)] = extra[0]
    return states, percent


def scan(
    kind: str, address: str, ports: Sequence[int], bound_s: float, netns: str | None
) -> NmapRun:
    """``nmap -sT|-sS -Pn -T4`` of `ports` on `address`, killed at `bound_s`."""
    argv = [
        "nmap",
        f"-s{kind}",
        "-Pn",
        "-T4",
        "-n",
        "--stats-every",
        "2s",
        "-p",
        port_arg(ports),
        "-oX",
        "-",
        address,
    ]
    done: Done = run(argv, bound_s, netns)
    states, percent = parse_xml(done.stdout, ports)
    eta = None
    if done.timed_out and percent:
        eta = done.wall_s * 100.0 / percent
    return NmapRun(done.wall_s, not done.timed_out and done.rc == 0, states, percent, eta)
