"""grub: which one (grub 2 or legacy grub), BIOS or EFI layout, the config file HDM's grub
step regenerates, and whether the tools that regenerate it are there."""

from typing import List

from netcheck.agent.guest.facts.base import Fact, Root, fact

EFI_VENDORS = (
    "redhat",
    "centos",
    "rocky",
    "sles",
    "opensuse",
    "ubuntu",
    "debian",
    "photon",
    "BOOT",
)
BIOS_CONFIGS = ("boot/grub2/grub.cfg", "boot/grub/grub.cfg")
LEGACY_CONFIGS = ("boot/grub/grub.conf", "boot/grub/menu.lst")
TOOLS = ("grub2-mkconfig", "grub-mkconfig", "update-grub")
TOOL_DIRS = ("usr/sbin", "sbin", "usr/bin", "bin")


def collect(root: Root) -> List[Fact]:
    efi = root.is_dir("sys/firmware/efi")
    efi_cfgs = [
        "boot/efi/EFI/%s/grub.cfg" % v
        for v in EFI_VENDORS
        if root.exists("boot/efi/EFI/%s/grub.cfg" % v)
    ]
    bios = root.first(*BIOS_CONFIGS)
    legacy = root.first(*LEGACY_CONFIGS)
    tools = [t for t in TOOLS if any(root.exists(d + "/" + t) for d in TOOL_DIRS)]
    if efi and efi_cfgs:
        config, layout = efi_cfgs[0], "efi"
    elif bios:
        config, layout = bios, "efi" if efi else "bios"
    elif legacy:
        config, layout = legacy, "efi" if efi else "bios"
    else:
        config, layout = "", "efi" if efi else "bios"
    if bios or efi_cfgs or tools:
        kind = "grub2"
        kind_src = "file:/" + (config or "usr/sbin/" + (tools[0] if tools else TOOLS[0]))
    elif legacy:
        kind, kind_src = "grub", "file:/" + legacy
    else:
        kind, kind_src = "", "file:/boot"
    return [
        fact("grub.kind", kind or None, kind_src, "" if kind else "no grub configuration found"),
        fact("grub.layout", layout, "dir:/sys/firmware/efi"),
        fact("grub.config", "/" + config if config else None, "file:/" + (config or "boot")),
        fact(
            "grub.mkconfig",
            tools[0] if tools else None,
            "file:/" + TOOL_DIRS[0],
            "" if tools else "none of " + ", ".join(TOOLS),
        ),
    ]
