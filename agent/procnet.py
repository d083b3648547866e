"""Who owns a listening TCP port: /proc/net/tcp{,6} for the socket inode, /proc/*/fd for it."""

from __future__ import annotations

import os
from pathlib import Path

_LISTEN = "0A"


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[str]:
    """Socket inodes in LISTEN state on `port` (any local address)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                inodes.add(fields[9])
    return inodes


def port_owner(port: int, proc: Path = Path("/proc"), max_pids: int = 5000) -> str:
    """``"name[pid]"`` of the process listening on `port`, or "" when the OS does not say."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return ""
    targets = {f"socket:[{i}]" for i in inodes}
    pids = [p for p in os.listdir(proc) if p.isdigit()][:max_pids]
    for pid in pids:
        fd_dir = proc / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if link in targets:
                try:
                    comm = (proc / pid / "comm").read_text().strip()
                except OSError:
                    comm = "?"
                return f"{comm}[{pid}]"
    return "unknown process (socket inode " + ",".join(sorted(inodes)) + ")"
