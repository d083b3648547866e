"""Boot mode (UEFI when ``/sys/firmware/efi`` exists, else BIOS/MBR) and Secure Boot (the
``SecureBoot`` EFI variable: 4 bytes of attributes, then 1 for on, 0 for off)."""

from typing import List

from netcheck.agent.guest.facts.base import Fact, Root, fact

EFI = "sys/firmware/efi"
GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURE_BOOT = EFI + "/efivars/SecureBoot-" + GLOBAL_GUID
SECURE_BOOT_OLD = EFI + "/vars/SecureBoot-" + GLOBAL_GUID + "/data"  # efivars' old sysfs


def collect(root: Root) -> List[Fact]:
    src = "dir:/" + EFI
    if not root.is_dir(EFI):
        return [
            fact("boot.mode", "MBR", src, "no /sys/firmware/efi: BIOS boot"),
            fact("boot.secure_boot", False, src, "BIOS boot"),
            fact("boot.matrix", "MBR", src),
        ]
    data = root.read(SECURE_BOOT, 64)
    var = "file:/" + SECURE_BOOT
    if data is not None and len(data) >= 5:
        on = data[4] == 1
    else:
        old = root.read(SECURE_BOOT_OLD, 64)
        if old is not None and len(old) >= 1:
            on, var = old[0] == 1, "file:/" + SECURE_BOOT_OLD
        else:
            return [
                fact("boot.mode", "UEFI", src),
                fact("boot.secure_boot", None, var, "no readable SecureBoot variable"),
                fact("boot.matrix", "UEFI", src, "Secure Boot unknown"),
            ]
    return [
        fact("boot.mode", "UEFI", src),
        fact("boot.secure_boot", on, var),
        fact("boot.matrix", "UEFI Secure" if on else "UEFI", var),
    ]
