"""Free space in /boot (a new initrd) and in the preparing user's home (HDM copies its
prepare tool to ~/.PIO/hyc), by statvfs(2)."""

import os
from typing import List, Optional

from netcheck.agent.guest.facts.base import Fact, Root, fact


def home_of(root: Root, user: str) -> Optional[str]:
    """The user's home from the root's /etc/passwd (the account database on a live guest)."""
    text = root.text("etc/passwd", 4 * 1024 * 1024)
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[0] == user:
            return parts[5]
    if root.live:
        import pwd  # not on Windows (whose facts come from facts.ps1)

        try:
            return pwd.getpwnam(user).pw_dir
        except KeyError:
            return None
    return None


def free_bytes(path: str) -> Optional[int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return int(st.f_bavail * st.f_frsize)


def collect(root: Root, user: str) -> List[Fact]:
    out = [fact("space.boot_free_bytes", free_bytes(root.join("boot")), "statvfs:/boot")]
    home = home_of(root, user)
    out.append(fact("space.user", user, "file:/etc/passwd"))
    if home is None:
        out.append(fact("space.home", None, "file:/etc/passwd", "no user " + user))
        out.append(fact("space.home_free_bytes", None, "file:/etc/passwd", "no user " + user))
    else:
        out.append(fact("space.home", home, "file:/etc/passwd"))
        out.append(fact("space.home_free_bytes", free_bytes(root.join(home)), "statvfs:" + home))
    return out
