"""The iSCSI initiator: its package, ``iscsiadm``, the initiator name
(``/etc/iscsi/initiatorname.iscsi``), and the ``iscsi_tcp`` module for the running kernel
(``/lib/modules/$(uname -r)``) and in the current initrd (:mod:`.initrd`)."""

from typing import List

from netcheck.agent.guest.facts import initrd, packages
from netcheck.agent.guest.facts.base import Fact, Root, fact

PACKAGES = ("iscsi-initiator-utils", "open-iscsi")
ISCSIADM = ("usr/sbin/iscsiadm", "sbin/iscsiadm", "usr/bin/iscsiadm")
INITIATOR_NAME = "etc/iscsi/initiatorname.iscsi"
MODULE = "iscsi_tcp"


def kernel_module(root: Root) -> Fact:
    """``iscsi_tcp`` under /lib/modules/<release> (modules.dep, else the file itself)."""
    if not root.kernel:
        return fact("iscsi.kernel_module", None, "file:/lib/modules", "running kernel unknown")
    base = root.first("lib/modules/" + root.kernel, "usr/lib/modules/" + root.kernel)
    if base is None:
        return fact("iscsi.kernel_module", False, "dir:/lib/modules/" + root.kernel, "no such dir")
    dep = root.text(base + "/modules.dep", 16 * 1024 * 1024)
    if dep is not None:
        found = any(
            line.split(":", 1)[0].rsplit("/", 1)[-1].split(".ko")[0] == MODULE
            for line in dep.splitlines()
        )
        return fact("iscsi.kernel_module", found, "file:/" + base + "/modules.dep", root.kernel)
    rel = base + "/kernel/drivers/scsi"
    found = any(n.split(".ko")[0] == MODULE for n in root.listdir(rel))
    return fact("iscsi.kernel_module", found, "dir:/" + rel, root.kernel)


def collect(root: Root) -> List[Fact]:
    ok, src, which = packages.installed(root, PACKAGES)
    out = [fact("iscsi.package", ok, src, which)]
    adm = root.first(*ISCSIADM)
    out.append(fact("iscsi.iscsiadm", adm is not None, "file:/" + (adm or ISCSIADM[0])))
    text = root.text(INITIATOR_NAME, 4096)
    name = None
    if text is not None:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("InitiatorName="):
                name = line.split("=", 1)[1].strip() or None
    why = "" if text is not None else "no such file"
    out.append(fact("iscsi.initiator_name", name, "file:/" + INITIATOR_NAME, why))
    out.append(kernel_module(root))
    out.append(initrd.module_fact(root, MODULE))
    return out
