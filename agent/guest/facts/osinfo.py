"""The guest's OS family, name and version, in the guest OS matrix's own names.

``/etc/os-release`` first (ID and VERSION_ID; SLES's VERSION "12-SP5"), then the release files
of the systems that say more there or have no os-release: ``/etc/centos-release`` (CentOS 7's
1810-style build: "CentOS 7.6(1810)"), ``/etc/oracle-release`` (Oracle Linux 6, whose
redhat-release claims to be RHEL), ``/etc/redhat-release`` (RHEL 6).
"""

import re
from typing import List, Optional, Tuple

from netcheck.agent.guest.facts.base import Fact, Root, fact, key_values

# os-release ID -> the matrix's family and the prefix of its OS names.
FAMILIES = {
    "rhel": ("RHEL", "RHEL"),
    "centos": ("CentOS", "CentOS"),
    "ol": ("Oracle_Linux", "Oracle_Linux"),
    "sles": ("SLES", "SLES"),
    "sles_sap": ("SLES", "SLES"),
    "ubuntu": ("Ubuntu", "Ubuntu Server"),
    "photon": ("Photon", "Photon OS"),
}
_RELEASE = re.compile(r"release\s+(\d+)(?:\.(\d+))?(?:\.(\d+))?")


def _release_file(root: Root) -> Optional[Tuple[str, str, str, str]]:
    """(family, matrix name, version, source) from a RHEL-style release file."""
    for rel, family, prefix in (
        ("etc/centos-release", "CentOS", "CentOS"),
        ("etc/oracle-release", "Oracle_Linux", "Oracle_Linux"),
        ("etc/redhat-release", "RHEL", "RHEL"),
    ):
        text = root.text(rel, 4096)
        if text is None:
            continue
        m = _RELEASE.search(text)
        if not m:
            continue
        major, minor, build = m.group(1), m.group(2), m.group(3)
        version = major + ("." + minor if minor else "")
        name = prefix + " " + version
        if family == "CentOS" and major == "7" and build and len(build) == 4:
            name += "(" + build + ")"  # the matrix's "CentOS 7.6(1810)"
        if family == "RHEL" and "centos" in text.lower():
            continue
        return family, name, version, "file:/" + rel
    return None


def collect(root: Root) -> List[Fact]:
    text = root.text("etc/os-release", 16384)
    if text is None:
        text = root.text("usr/lib/os-release", 16384)
    osr = key_values(text) if text else {}
    ident = osr.get("ID", "").lower()
    version = osr.get("VERSION_ID", "")
    src = "file:/etc/os-release"
    release = _release_file(root)
    if ident in ("centos", "rhel", "ol") and release is not None and release[0] != "RHEL":
        family, name, version, src = release  # CentOS's build, Oracle's own file
    elif ident in ("centos", "rhel", "ol") and release is not None and "." not in version:
        family, name, version, src = release
    elif ident in FAMILIES:
        family, prefix = FAMILIES[ident]
        if family == "SLES":
            v = osr.get("VERSION", version)  # "12-SP5", "15-SP2"
            name = prefix + " " + v
        elif family == "Photon":
            name = prefix + " " + version.split(".")[0]
        else:
            name = prefix + " " + version
    elif release is not None:
        family, name, version, src = release
    elif ident:
        family, name = ident, (osr.get("NAME", ident) + " " + version).strip()
    else:
        return [
            fact("os.family", None, "file:/etc/os-release", "no os-release nor release file"),
            fact("os.name", None, "file:/etc/os-release"),
            fact("os.version", None, "file:/etc/os-release"),
        ]
    pretty = osr.get("PRETTY_NAME", "")
    return [
        fact("os.family", family, src),
        fact("os.name", name, src, pretty),
        fact("os.version", version, src),
    ]
