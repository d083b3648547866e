"""The guest's facts, each with how it was found (see :mod:`.base`). :func:`collect` runs
every Linux collector against one root; :mod:`.windows` reads the PowerShell script's JSON."""

import getpass
import os
import platform
from typing import Callable, List, Optional, Tuple

from netcheck.agent.guest.facts import boot, grub, iscsi, network, osinfo, space, vmtools
from netcheck.agent.guest.facts.base import Fact, Root, fact

MAX_FACTS = 512  # the wire's bound on one report's facts


def preparing_user() -> str:
    """The user HDM prepares the guest as: $NETCHECK_GUEST_USER, else who ran sudo, else us."""
    for var in ("NETCHECK_GUEST_USER", "SUDO_USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root"


def collect(root: Root, user: Optional[str] = None) -> List[Fact]:
    """Every fact of the guest at `root`; a collector that fails gives one fact saying so."""
    who = user or preparing_user()
    out = [fact("guest.python", platform.python_version(), "command:python3")]
    steps: List[Tuple[str, Callable[[Root], List[Fact]]]] = [
        ("os", osinfo.collect),
        ("boot", boot.collect),
        ("vmware_tools", vmtools.collect),
        ("iscsi", iscsi.collect),
        ("grub", grub.collect),
        ("space", lambda r: space.collect(r, who)),
        ("net", network.collect),
    ]
    for name, step in steps:
        try:
            out.extend(step(root))
        except Exception as exc:  # one broken collector must not hide the others
            out.append(
                fact(name + ".error", None, "collector", "%s: %s" % (type(exc).__name__, exc))
            )
    return out[:MAX_FACTS]
