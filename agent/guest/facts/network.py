"""Each interface's address and whether it is static or DHCP, from the configuration of
whichever manager the guest uses: NetworkManager keyfiles, ifcfg files (RHEL's
network-scripts, SLES's wicked), netplan, ifupdown, systemd-networkd. On a live guest the
addresses come from the interfaces themselves (SIOCGIFADDR), the method from the files.

Facts: ``net.<if>.method`` (static | dhcp), ``net.<if>.address``, and ``net.static_ip``
(true when any interface is static: the matrix's "Guest Static IP" columns apply).
"""

import socket
import struct
from typing import Any, Dict, List, Optional, Tuple

from netcheck.agent.guest.facts.base import Fact, Root, fact, ini_sections, key_values

MAX_INTERFACES = 64
SIOCGIFADDR = 0x8915
# name -> (method, address or "", source)
Found = Dict[str, Tuple[str, str, str]]


def _put(found: Found, name: str, method: str, address: str, source: str) -> None:
    if name and name != "lo" and name not in found and len(found) < MAX_INTERFACES:
        found[name] = (method, address.split("/")[0], source)


def network_manager(root: Root, found: Found) -> None:
    d = "etc/NetworkManager/system-connections"
    for n in root.listdir(d, 256):
        text = root.text(d + "/" + n, 65536)
        if text is None:
            continue
        ini = ini_sections(text)
        name = ini.get("connection", {}).get("interface-name", "")
        v4 = ini.get("ipv4", {})
        method = {"manual": "static", "auto": "dhcp"}.get(v4.get("method", ""), "")
        addr = v4.get("address1", v4.get("addresses1", "")).split(",")[0]
        if method:
            _put(found, name, method, addr, "file:/" + d + "/" + n)


def ifcfg(root: Root, found: Found) -> None:
    for d in ("etc/sysconfig/network-scripts", "etc/sysconfig/network"):
        for n in root.listdir(d, 512):
            if not n.startswith("ifcfg-") or n.endswith((".bak", "~", ".orig")):
                continue
            kv = key_values(root.text(d + "/" + n, 65536) or "")
            proto = kv.get("BOOTPROTO", "").lower()
            method = ""
            if proto.startswith("dhcp"):
                method = "dhcp"
            elif proto in ("static", "none") or (proto == "" and kv.get("IPADDR")):
                method = "static"
            name = kv.get("DEVICE", n[len("ifcfg-") :])
            if method:
                _put(found, name, method, kv.get("IPADDR", ""), "file:/" + d + "/" + n)


def _netplan(text: str) -> Dict[str, List[Any]]:
    """interface -> [dhcp4, first address], by indentation (no YAML parser in the stdlib).
    Only an interface's own keys count (``nameservers: addresses:`` are DNS servers)."""
    groups = ("ethernets", "bonds", "vlans", "bridges", "wifis")
    out: Dict[str, List[Any]] = {}
    group = iface = -1  # the indents of the current group and interface (-1: none)
    child = -1  # the indent of the interface's own keys
    name = ""
    in_addresses = False
    for raw in text.splitlines()[:4096]:
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        body = line.strip()
        if indent <= group:
            group = iface = -1
        if indent <= iface:
            iface = -1
        if body.endswith(":") and body[:-1].strip() in groups:
            group = indent
            continue
        if group < 0:
            continue
        if iface < 0:
            if body.endswith(":"):
                name, iface, child, in_addresses = body[:-1].strip().strip("\"'"), indent, -1, False
                out.setdefault(name, [False, ""])
            continue
        if body.startswith("- "):
            if in_addresses and not out[name][1]:
                out[name][1] = body[2:].strip().strip("\"'")
            continue
        if child < 0:
            child = indent
        if indent != child:
            continue
        key, _, value = body.partition(":")
        key, value = key.strip(), value.strip()
        in_addresses = key == "addresses" and not value
        if key == "dhcp4":
            out[name][0] = value.lower() in ("true", "yes", "on")
        elif key == "addresses" and value.startswith("["):
            first = value.strip("[]").split(",")[0].strip().strip("\"'")
            out[name][1] = out[name][1] or first
    return out


def netplan(root: Root, found: Found) -> None:
    d = "etc/netplan"
    for n in root.listdir(d, 256):
        if not n.endswith((".yaml", ".yml")):
            continue
        for name, (dhcp, addr) in sorted(_netplan(root.text(d + "/" + n, 65536) or "").items()):
            method = "dhcp" if dhcp else "static" if addr else ""
            if method:
                _put(found, name, method, addr, "file:/" + d + "/" + n)


def ifupdown(root: Root, found: Found) -> None:
    files = ["etc/network/interfaces"]
    files += [
        "etc/network/interfaces.d/" + n for n in root.listdir("etc/network/interfaces.d", 256)
    ]
    for rel in files:
        current: Optional[List[str]] = None
        entries: List[List[str]] = []
        for line in (root.text(rel, 65536) or "").splitlines()[:4096]:
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "iface" and words[2] == "inet":
                current = [words[1], words[3], ""]
                entries.append(current)
            elif current is not None and len(words) >= 2 and words[0] == "address":
                current[2] = words[1]
        for name, how, addr in entries:
            method = {"static": "static", "dhcp": "dhcp"}.get(how, "")
            if method:
                _put(found, name, method, addr, "file:/" + rel)


def networkd(root: Root, found: Found) -> None:
    d = "etc/systemd/network"
    for n in root.listdir(d, 256):
        if not n.endswith(".network"):
            continue
        ini = ini_sections(root.text(d + "/" + n, 65536) or "")
        name = ini.get("Match", {}).get("Name", "")
        net = ini.get("Network", {})
        dhcp = net.get("DHCP", "no").lower() in ("yes", "true", "ipv4", "both")
        addr = net.get("Address", ini.get("Address", {}).get("Address", ""))
        method = "dhcp" if dhcp else "static" if addr else ""
        if method and "*" not in name:
            _put(found, name, method, addr, "file:/" + d + "/" + n)


def live_address(name: str) -> str:
    """The interface's IPv4 address (SIOCGIFADDR), "" when it has none."""
    import fcntl  # not on Windows (whose facts come from facts.ps1)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
        except OSError:
            return ""
    return socket.inet_ntoa(packed[20:24])


def collect(root: Root) -> List[Fact]:
    found: Found = {}
    for reader in (network_manager, ifcfg, netplan, ifupdown, networkd):
        reader(root, found)
    out: List[Fact] = []
    if root.live:
        for name in root.listdir("sys/class/net", MAX_INTERFACES):
            if name == "lo":
                continue
            addr = live_address(name)
            method, _, src = found.get(name, ("", "", ""))
            if not method:
                detail = "no configuration file names it"
                out.append(fact("net.%s.method" % name, None, "file:/etc", detail))
            else:
                out.append(fact("net.%s.method" % name, method, src))
            out.append(fact("net.%s.address" % name, addr or None, "ioctl:SIOCGIFADDR"))
    else:
        for name, (method, addr, src) in sorted(found.items()):
            out.append(fact("net.%s.method" % name, method, src))
            out.append(fact("net.%s.address" % name, addr or None, src))
    statics = sorted(
        f["name"].split(".")[1]
        for f in out
        if f["name"].endswith(".method") and f["value"] == "static"
    )
    known = any(f["name"].endswith(".method") and f["value"] for f in out)
    summary = ", ".join(statics) if statics else ""
    out.append(
        fact("net.static_ip", bool(statics) if known else None, "network configuration", summary)
    )
    return out
