"""Whether a package is installed: dpkg's status file, else ``rpm -q`` on a live guest."""

import re
from typing import Optional, Sequence, Tuple

from netcheck.agent.guest import commands
from netcheck.agent.guest.facts.base import Root

DPKG_STATUS = "var/lib/dpkg/status"


def installed(root: Root, names: Sequence[str]) -> Tuple[Optional[bool], str, str]:
    """(installed, source, which package): None when no package database answers."""
    status = root.text(DPKG_STATUS, 32 * 1024 * 1024)
    if status is not None:
        for name in names:
            pat = r"^Package: " + re.escape(name) + r"\n(?:[^\n]+\n)*?Status: install ok installed$"
            if re.search(pat, status, re.M):
                return True, "file:/" + DPKG_STATUS, name
        return False, "file:/" + DPKG_STATUS, ""
    rpm = commands.which("rpm") if root.live else None
    if rpm is None:
        return None, "package database", ""
    for name in names:
        code, out, _ = commands.run([rpm, "-q", name])
        if code == 0:
            return True, "command:rpm -q", out.decode("utf-8", "replace").strip()[:200]
    return False, "command:rpm -q", ""
