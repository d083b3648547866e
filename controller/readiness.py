"""A guest VM's readiness for HDM's "Prepare to migrate" steps, from its guest agent's facts.

The seed's appendix lists what HDM does inside each guest before a migration: 7 steps on
Linux, 8 on Windows. Each step here names the facts it rests on and what they say for one
migration mode: ``ok``; ``blocks`` (HDM's step would fail: VMware tools not running in a warm
mode, no room for the prepare tool, no grub to configure); ``warns`` (HDM will do something
that needs something: it installs a missing iSCSI initiator, which needs a package source;
it adds the iSCSI module to the initrd); ``unknown`` (the guest did not say: no guest agent,
or the fact could not be read). Only migration modes (those the matrix speaks for) prepare a
guest; the deployment mode has no steps.

:func:`effective` takes the VM's OS, boot mode and static IP from the guest when it reported
them; the inventory's values become a cross-check (a mismatch warns, naming both).
:func:`no_agent_note` says, for a VM with no guest agent, why (the guests whose base install
has no Python 3.6+) and which of its checks the appliance side still covers. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from netcheck.controller.facts import GuestFacts
from netcheck.controller.inventory import Host
from netcheck.controller.spec import Policy, Spec, matrix_key

StepStatus = Literal["ok", "blocks", "warns", "unknown"]
MiB = 1024 * 1024
# CHOICE: the seed gives no sizes. The prepare tool (~/.PIO/hyc, ProgramData\PIO\hyc) is
# given 200 MiB; /boot needs room for one more initrd with the iSCSI module (30-80 MB on the
# matrix's systems, dracut writes the new one beside the old): 100 MiB.
MIN_TOOL_FREE = 200 * MiB
MIN_BOOT_FREE = 100 * MiB

# Guests whose base install has no Python 3.6+ (the guest agent's floor), matched on the
# matrix key of the OS name, with what to add and from where.
NO_PYTHON3: tuple[tuple[str, str], ...] = (
    (r"^(rhel|oraclelinux)6", "Python 2.6 only: no guest agent (unsupported)"),
    (
        r"^(rhel|centos)7\.[0-6](\(|$)",
        "Python 2.7 only in the base install: a Python 3.6 from the vendor's optional "
        "repositories (rh-python36) or EPEL (python36)",
    ),
    (r"^sles12", "python3 is 3.4: a Python 3.6+ package from SUSE's modules, else no agent"),
    (r"^ubuntuserver16\.04", "python3 is 3.5: a Python 3.6+ package, else no guest agent"),
)


@dataclass(frozen=True)
class StepFinding:
    """One prepare step of HDM, and what the guest's facts say of it for one mode."""

    step: int
    title: str
    status: StepStatus
    facts: tuple[str, ...]  # the fact names it rests on
    text: str


LINUX_STEPS = (
    "VMware tools installed and running",
    "prepare tool copied to ~/.PIO/hyc",
    "iSCSI initiator package installed",
    "iSCSI driver/module in the initrd",
    "grub scripts for customised entries and EFI",
    "grub configured for iSCSI boot",
    "network configuration fetched, set again after migration",
)
WINDOWS_STEPS = (
    "VMware tools installed and running",
    "prepare tool copied to ProgramData\\PIO\\hyc",
    "NVSPBIND package copied to the temp directory",
    "NVSPBIND package installed",
    "WFP lightweight filters disabled (ms_wfplwf_upper, ms_ndiscap_lower, ms_ndiscap)",
    "msiscsi service on, start mode automatic",
    "scheduled task bringing offline devices online",
    "network configuration fetched, set again after migration",
)


def is_migration(spec: Spec, mode: str) -> bool:
    return bool(spec.modes[mode].matrix_columns)


def _mib(n: object) -> str:
    return f"{n / MiB:,.0f} MiB" if isinstance(n, int) else "unknown"


class _Steps:
    def __init__(self, facts: GuestFacts | None, warm: bool, titles: tuple[str, ...]) -> None:
        self.f, self.warm, self.titles = facts, warm, titles
        self.out: list[StepFinding] = []

    def add(self, step: int, status: StepStatus, names: tuple[str, ...], text: str) -> None:
        self.out.append(StepFinding(step, self.titles[step - 1], status, names, text))

    def unknown(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if self.f is None or not self.f.known(n)]

    def vmware_tools(self) -> None:
        names = ("vmware_tools.installed", "vmware_tools.running")
        if self.unknown(names):
            self.add(1, "unknown", names, "VMware tools state not reported")
            return
        assert self.f is not None
        if self.f.value(names[1]) is True:
            self.add(1, "ok", names, "vmtoolsd running")
            return
        what = "installed but not running" if self.f.value(names[0]) else "not installed"
        status: StepStatus = "blocks" if self.warm else "warns"
        mode = "a warm migration needs them running" if self.warm else "HDM checks them first"
        self.add(1, status, names, f"VMware tools {what}: {mode}")

    def tool_room(self, step: int) -> None:
        names = ("space.home_free_bytes",)
        if self.unknown(names):
            self.add(step, "unknown", names, "free space in the preparing user's home unknown")
            return
        assert self.f is not None
        free = self.f.value(names[0])
        home = self.f.text("space.home") or "home"
        if isinstance(free, int) and free < MIN_TOOL_FREE:
            text = f"{_mib(free)} free in {home}, the prepare tool needs {_mib(MIN_TOOL_FREE)}"
            self.add(step, "blocks", names, text)
        else:
            self.add(step, "ok", names, f"{_mib(free)} free in {home}")

    def network(self, step: int) -> None:
        names = ("net.static_ip",)
        if self.unknown(names):
            self.add(step, "unknown", names, "static or DHCP not known for every interface")
            return
        assert self.f is not None
        static = self.f.value(names[0])
        which = self.f.facts[names[0]].detail
        text = (
            f"static IP ({which}): the matrix's Guest Static IP column applies"
            if static
            else "DHCP"
        )
        self.add(step, "ok", names, text)


def _linux(s: _Steps) -> None:
    s.vmware_tools()
    s.tool_room(2)
    f = s.f
    pkg = ("iscsi.package", "iscsi.iscsiadm")
    if f is None or not any(f.known(n) for n in pkg):
        s.add(3, "unknown", pkg, "iSCSI initiator not reported")
    elif f.value("iscsi.package") is True or f.value("iscsi.iscsiadm") is True:
        s.add(3, "ok", pkg, "iSCSI initiator installed")
    else:
        s.add(3, "warns", pkg, "no iSCSI initiator: HDM will install it (needs a package source)")
    mod = ("iscsi.initrd_module", "iscsi.kernel_module", "space.boot_free_bytes")
    boot_free = f.value("space.boot_free_bytes") if f else None
    if isinstance(boot_free, int) and boot_free < MIN_BOOT_FREE:
        text = f"{_mib(boot_free)} free in /boot, a new initrd needs {_mib(MIN_BOOT_FREE)}"
        s.add(4, "blocks", mod, text)
    elif f is None or not f.known("iscsi.initrd_module"):
        s.add(4, "unknown", mod, "the initrd's modules not reported")
    elif f.value("iscsi.initrd_module") is True:
        s.add(4, "ok", mod, "iscsi_tcp in the current initrd")
    elif f.value("iscsi.kernel_module") is False:
        text = "iscsi_tcp neither in the initrd nor in the running kernel's modules: HDM "
        s.add(4, "warns", mod, text + "installs the initiator package, then rebuilds the initrd")
    else:
        s.add(4, "warns", mod, "iscsi_tcp not in the initrd: HDM will add it (dracut/initramfs)")
    grub = ("grub.kind", "grub.layout", "grub.config", "grub.mkconfig")
    if f is None or not f.known("grub.layout"):
        s.add(5, "unknown", grub, "grub not reported")
        s.add(6, "unknown", grub, "grub not reported")
    else:
        kind, config, tool = f.text("grub.kind"), f.text("grub.config"), f.text("grub.mkconfig")
        layout = f.text("grub.layout")
        if not kind or not config:
            s.add(5, "blocks", grub, "no grub configuration found: HDM's grub scripts need one")
        elif kind == "grub":
            s.add(5, "warns", grub, f"legacy grub ({config}), {layout} layout")
        else:
            s.add(5, "ok", grub, f"{kind}, {layout} layout, {config}")
        if not config:
            s.add(6, "blocks", grub, "no grub configuration to update for iSCSI boot")
        elif not tool and kind != "grub":
            s.add(
                6, "warns", grub, f"{config} but no grub2-mkconfig/grub-mkconfig to regenerate it"
            )
        else:
            s.add(6, "ok", grub, f"{config} regenerated by {tool or 'editing grub.conf'}")
    s.network(7)


def _windows(s: _Steps) -> None:
    s.vmware_tools()
    s.tool_room(2)
    f = s.f
    nv = ("windows.nvspbind",)
    if f is None or not f.known(nv[0]):
        s.add(3, "unknown", nv, "NVSPBIND not reported")
        s.add(4, "unknown", nv, "NVSPBIND not reported")
    else:
        s.add(3, "ok", nv, "HDM copies it to the temp directory")
        present = f.value(nv[0]) is True
        s.add(4, "ok" if present else "warns", nv, "installed" if present else "HDM installs it")
    wfp = ("windows.wfp.ms_wfplwf_upper.enabled", "windows.wfp.ms_ndiscap_lower.enabled",
           "windows.wfp.ms_ndiscap.enabled")  # fmt: skip
    if f is None or not any(f.known(n) for n in wfp):
        s.add(5, "unknown", wfp, "the WFP filter bindings not reported")
    else:
        on = [n.split(".")[2] for n in wfp if f.value(n) is True]
        text = f"bound: {', '.join(on)}: HDM disables them" if on else "none bound"
        s.add(5, "warns" if on else "ok", wfp, text)
    svc = ("iscsi.service.installed", "iscsi.service.running", "iscsi.service.start_mode")
    if f is None or not f.known(svc[0]):
        s.add(6, "unknown", svc, "msiscsi not reported")
    elif f.value(svc[0]) is not True:
        s.add(6, "blocks", svc, "no msiscsi service: the iSCSI initiator is missing")
    else:
        running, start = f.value(svc[1]) is True, f.text(svc[2])
        ok = running and start == "Automatic"
        text = f"{'running' if running else 'stopped'}, start mode {start}"
        s.add(
            6, "ok" if ok else "warns", svc, text if ok else text + ": HDM turns it on, automatic"
        )
    s.add(7, "unknown", (), "not checked by the guest agent (HDM creates the task)")
    s.network(8)


def steps(spec: Spec, mode: str, facts: GuestFacts | None) -> tuple[StepFinding, ...]:
    """What each prepare step of HDM would meet on this guest in `mode` (none: not a migration)."""
    if not is_migration(spec, mode):
        return ()
    windows = facts is not None and facts.value("os.family") == "Windows"
    s = _Steps(facts, mode.startswith("warm"), WINDOWS_STEPS if windows else LINUX_STEPS)
    (_windows if windows else _linux)(s)
    return tuple(s.out)


def effective(host: Host, facts: GuestFacts | None) -> tuple[Host, list[str]]:
    """The VM as the gate judges it: OS, boot mode and static IP from the guest when it
    reported them; warnings where the inventory says otherwise (both named)."""
    if facts is None:
        return host, []
    update: dict[str, object] = {}
    warnings: list[str] = []
    os_name, boot, static = facts.os_name, facts.boot, facts.static_ip
    if os_name and boot:
        update.update(os=os_name, boot=boot)
        said = (host.os, host.boot) if host.os is not None and host.boot is not None else None
        if said is not None and matrix_key(*said) != matrix_key(os_name, boot):
            warnings.append(
                f"{host.name}: the inventory says {host.os} {host.boot}, the guest reports "
                f"{os_name} {boot} ({facts.source('os.name')}, {facts.source('boot.matrix')})"
                ": the guest's is used"
            )
    if static is not None:
        update["static_ip"] = static
        if static != host.static_ip:
            warnings.append(
                f"{host.name}: the inventory says static_ip {str(host.static_ip).lower()}, "
                f"the guest reports {'a static IP' if static else 'DHCP only'}: the guest's is used"
            )
    return (host.model_copy(update=update) if update else host), warnings


def stale_note(facts: GuestFacts, now: float, policy: Policy) -> str | None:
    """A warning when the guest's newest facts are older than the results' freshness limit
    (its agent stopped reporting: what it said may have changed since)."""
    age = now - facts.reported_at
    if age <= policy.freshness_seconds:
        return None
    return (
        f"{facts.host}: its guest agent's facts are {age:,.0f} s old (freshness limit "
        f"{policy.freshness_seconds:g} s): the guest may have changed since"
    )


def no_python3(os_name: str | None) -> str | None:
    """Why this OS's base install cannot run the guest agent, or None."""
    if not os_name:
        return None
    key = matrix_key(os_name, "mbr")[0]
    for pattern, why in NO_PYTHON3:
        if re.match(pattern, key):
            return why
    return None


def no_agent_note(host: Host, covered: int, guest_side: int) -> str:
    """The warning of a VM whose guest agent never reported."""
    why = no_python3(host.os)
    head = f"{host.name}: no guest agent report"
    if why:
        head += f" ({host.os}: {why})"
    return (
        f"{head}: its facts are unknown; {covered} of its checks are covered from the "
        f"appliance side, {guest_side} need the guest agent"
    )


def step_dict(p: StepFinding) -> dict[str, object]:
    """A step as JSON-ready data (the gate's and the report's ``prepare``)."""
    return {
        "step": p.step,
        "title": p.title,
        "status": p.status,
        "facts": list(p.facts),
        "text": p.text,
    }
