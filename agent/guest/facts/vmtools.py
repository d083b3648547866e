"""VMware tools: installed (open-vm-tools or VMware's own package, or the vmtoolsd binary)
and running (a ``vmtoolsd`` process in /proc; else what systemd says of the service)."""

from typing import List

from netcheck.agent.guest import commands
from netcheck.agent.guest.facts import packages, processes
from netcheck.agent.guest.facts.base import Fact, Root, fact

PACKAGES = ("open-vm-tools", "VMwareTools", "vmware-tools")
BINARIES = ("usr/bin/vmtoolsd", "usr/sbin/vmtoolsd", "usr/lib/vmware-tools/sbin64/vmtoolsd")
SERVICES = ("vmtoolsd", "vmware-tools", "open-vm-tools")


def collect(root: Root) -> List[Fact]:
    ok, src, which = packages.installed(root, PACKAGES)
    binary = root.first(*BINARIES)
    if ok:
        installed = fact("vmware_tools.installed", True, src, which)
    elif binary is not None:
        installed = fact("vmware_tools.installed", True, "file:/" + binary)
    else:
        why = "no package " + "/".join(PACKAGES) + ", no vmtoolsd binary"
        installed = fact(
            "vmware_tools.installed", False, src if ok is False else "file:/" + BINARIES[0], why
        )
    pids = processes.running(root.proc, "vmtoolsd")
    if pids:
        running = fact(
            "vmware_tools.running", True, "proc:" + root.proc, "vmtoolsd pid %d" % pids[0]
        )
    else:
        running = fact("vmware_tools.running", False, "proc:" + root.proc, "no vmtoolsd process")
        systemctl = commands.which("systemctl") if root.live else None
        if systemctl is not None:
            for name in SERVICES:
                code, out, _ = commands.run([systemctl, "is-active", name + ".service"], 10)
                state = out.decode("utf-8", "replace").strip()
                if code == 0:
                    running = fact(
                        "vmware_tools.running", True, "service:systemd", name + " " + state
                    )
                    break
    return [installed, running]
