"""File trees shaped like the guests of the matrix, for the guest agent's fact collectors.

Each :class:`Guest` writes a root directory as that system ships it: os-release and release
files with their vendors' contents, the EFI variables directory of a UEFI boot (with the
SecureBoot variable's 4 attribute bytes and its value), a real initrd image (cpio "newc",
gzip or xz, an early-microcode archive first as dracut makes it), modules.dep of the running
kernel, grub's files, the network configuration of the family's manager, dpkg's status file
on Ubuntu. Addresses are from the lab's 198.18.0.0/15.
"""

from __future__ import annotations

import gzip
import lzma
from dataclasses import dataclass, field
from pathlib import Path

GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def cpio(names: list[str]) -> bytes:
    """A cpio "newc" archive holding an empty file per name (and the trailer)."""
    out = b""
    for i, name in enumerate([*names, "TRAILER!!!"]):
        data = b"" if name == "TRAILER!!!" else b"x"
        raw = name.encode() + b"\0"
        head = "070701" + "".join(
            f"{v:08x}" for v in (i + 1, 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        )
        entry = head.encode() + raw
        entry += b"\0" * (-len(entry) % 4) + data
        out += entry + b"\0" * (-len(entry) % 4)
    return out


def initrd(kernel: str, iscsi: bool, compress: str = "gzip", microcode: bool = False) -> bytes:
    mods = f"usr/lib/modules/{kernel}/kernel/drivers"
    names = ["init", "usr/bin/systemctl", f"{mods}/scsi/sd_mod.ko.xz", f"{mods}/net/vmxnet3.ko.xz"]
    if iscsi:
        names += [f"{mods}/scsi/libiscsi.ko.xz", f"{mods}/scsi/iscsi_tcp.ko.xz", "usr/sbin/iscsid"]
    body = cpio(names)
    packed = gzip.compress(body) if compress == "gzip" else lzma.compress(body)
    early = cpio(["kernel/x86/microcode/GenuineIntel.bin"]) + b"\0" * 512 if microcode else b""
    return early + packed


@dataclass
class Guest:
    key: str
    files: dict[str, str | bytes]
    kernel: str
    # expected facts
    os_name: str
    boot: str  # the matrix's column
    expect: dict[str, object] = field(default_factory=dict)

    def write(self, root: Path) -> Path:
        for rel, data in self.files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                path.write_text(data)
        return root


def _efi(secure: bool | None) -> dict[str, str | bytes]:
    out: dict[str, str | bytes] = {"sys/firmware/efi/systab": "ACPI20=0x7fb7e014\n"}
    if secure is not None:
        out[f"sys/firmware/efi/efivars/SecureBoot-{GUID}"] = b"\x06\x00\x00\x00" + bytes([secure])
    return out


def _modules(kernel: str, iscsi: bool) -> dict[str, str | bytes]:
    dep = "kernel/drivers/scsi/sd_mod.ko.xz:\nkernel/drivers/net/vmxnet3.ko.xz:\n"
    if iscsi:
        dep += (
            "kernel/drivers/scsi/iscsi_tcp.ko.xz: kernel/drivers/scsi/libiscsi_tcp.ko.xz "
            "kernel/drivers/scsi/libiscsi.ko.xz\nkernel/drivers/scsi/libiscsi.ko.xz:\n"
        )
    return {f"lib/modules/{kernel}/modules.dep": dep}


def _iscsi(iqn: str) -> dict[str, str | bytes]:
    return {"usr/sbin/iscsiadm": "", "etc/iscsi/initiatorname.iscsi": f"InitiatorName={iqn}\n"}


def _passwd() -> dict[str, str | bytes]:
    return {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
        "hdm:x:1000:1000:HDM prepare:/home/hdm:/bin/bash\n",
        "home/hdm/.bashrc": "",
        "boot/.keep": "",
    }


def _rhel_like(
    os_release: str | None, release: dict[str, str], kernel: str
) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = dict(release)
    if os_release is not None:
        files["etc/os-release"] = os_release
    files.update(_passwd())
    files["usr/sbin/grub2-mkconfig"] = ""
    return files


def _dpkg(*installed: str) -> str:
    entries = [
        f"Package: {p}\nStatus: install ok installed\nPriority: optional\nVersion: 1.0\n"
        for p in installed
    ]
    entries.append("Package: removed-thing\nStatus: deinstall ok config-files\nVersion: 1\n")
    return "\n".join(entries)


def guests() -> list[Guest]:
    out: list[Guest] = []
    # RHEL 7.4, UEFI with Secure Boot, static IP (ifcfg), iSCSI everywhere
    k = "3.10.0-693.el7.x86_64"
    f = _rhel_like(
        'NAME="Red Hat Enterprise Linux Server"\nVERSION="7.4 (Maipo)"\nID="rhel"\n'
        'ID_LIKE="fedora"\nVARIANT="Server"\nVARIANT_ID="server"\nVERSION_ID="7.4"\n'
        'PRETTY_NAME="Red Hat Enterprise Linux Server 7.4 (Maipo)"\n',
        {"etc/redhat-release": "Red Hat Enterprise Linux Server release 7.4 (Maipo)\n"},
        k,
    )
    f |= _efi(True) | _modules(k, True) | _iscsi("iqn.1994-05.com.redhat:web01")
    f[f"boot/initramfs-{k}.img"] = initrd(k, True, microcode=True)
    f["boot/efi/EFI/redhat/grub.cfg"] = "set timeout=5\n"
    f["usr/bin/vmtoolsd"] = ""
    f["etc/sysconfig/network-scripts/ifcfg-eth0"] = (
        "TYPE=Ethernet\nBOOTPROTO=static\nDEVICE=eth0\nONBOOT=yes\nIPADDR=198.18.1.101\nPREFIX=24\n"
    )
    f["etc/sysconfig/network-scripts/ifcfg-lo"] = "DEVICE=lo\nIPADDR=127.0.0.1\n"
    out.append(Guest("rhel-7.4", f, k, "RHEL 7.4", "UEFI Secure", {
        "iscsi.initrd_module": True, "iscsi.kernel_module": True, "grub.kind": "grub2",
        "grub.layout": "efi", "grub.config": "/boot/efi/EFI/redhat/grub.cfg",
        "net.eth0.method": "static", "net.eth0.address": "198.18.1.101", "net.static_ip": True,
        "vmware_tools.installed": True, "iscsi.iscsiadm": True,
        "iscsi.initiator_name": "iqn.1994-05.com.redhat:web01",
    }))  # fmt: skip
    # RHEL 8.3, BIOS, NetworkManager DHCP, no iSCSI in the initrd
    k = "4.18.0-240.el8.x86_64"
    f = _rhel_like(
        'NAME="Red Hat Enterprise Linux"\nVERSION="8.3 (Ootpa)"\nID="rhel"\n'
        'ID_LIKE="fedora"\nVERSION_ID="8.3"\nPLATFORM_ID="platform:el8"\n'
        'PRETTY_NAME="Red Hat Enterprise Linux 8.3 (Ootpa)"\n',
        {"etc/redhat-release": "Red Hat Enterprise Linux release 8.3 (Ootpa)\n"},
        k,
    )
    f |= _modules(k, True)
    f[f"boot/initramfs-{k}.img"] = initrd(k, False, microcode=True)
    f["boot/grub2/grub.cfg"] = "set default=0\n"
    f["etc/NetworkManager/system-connections/ens192.nmconnection"] = (
        "[connection]\nid=ens192\ntype=ethernet\ninterface-name=ens192\n\n"
        "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=ignore\n"
    )
    out.append(Guest("rhel-8.3", f, k, "RHEL 8.3", "MBR", {
        "iscsi.initrd_module": False, "iscsi.kernel_module": True, "grub.layout": "bios",
        "grub.config": "/boot/grub2/grub.cfg", "net.ens192.method": "dhcp",
        "net.static_ip": False, "iscsi.iscsiadm": False, "vmware_tools.installed": False,
    }))  # fmt: skip
    # CentOS 7.6 (1810), BIOS, xz initrd with iSCSI
    k = "3.10.0-957.el7.x86_64"
    f = _rhel_like(
        'NAME="CentOS Linux"\nVERSION="7 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\n'
        'VERSION_ID="7"\nPRETTY_NAME="CentOS Linux 7 (Core)"\n',
        {
            "etc/centos-release": "CentOS Linux release 7.6.1810 (Core) \n",
            "etc/redhat-release": "CentOS Linux release 7.6.1810 (Core) \n",
        },
        k,
    )
    f |= _modules(k, True) | _iscsi("iqn.1994-05.com.redhat:c7")
    f[f"boot/initramfs-{k}.img"] = initrd(k, True, compress="xz")
    f["boot/grub2/grub.cfg"] = "set default=0\n"
    out.append(Guest("centos-7.6", f, k, "CentOS 7.6(1810)", "MBR", {
        "iscsi.initrd_module": True, "os.version": "7.6",
    }))  # fmt: skip
    # CentOS 8.2, UEFI without Secure Boot
    k = "4.18.0-193.el8.x86_64"
    f = _rhel_like(
        'NAME="CentOS Linux"\nVERSION="8 (Core)"\nID="centos"\nID_LIKE="rhel fedora"\n'
        'VERSION_ID="8"\nPLATFORM_ID="platform:el8"\n',
        {"etc/centos-release": "CentOS Linux release 8.2.2004 (Core) \n"},
        k,
    )
    f |= _efi(False) | _modules(k, True)
    f["boot/efi/EFI/centos/grub.cfg"] = "set timeout=5\n"
    out.append(Guest("centos-8.2", f, k, "CentOS 8.2", "UEFI", {
        "iscsi.initrd_module": None, "grub.config": "/boot/efi/EFI/centos/grub.cfg",
    }))  # fmt: skip
    # Oracle Linux 7.7 and 8.3 (os-release), 6.8 (no os-release: oracle-release first)
    for ver, k in (("7.7", "4.14.35-1902.el7uek.x86_64"), ("8.3", "5.4.17-2011.el8uek.x86_64")):
        f = _rhel_like(
            f'NAME="Oracle Linux Server"\nVERSION="{ver}"\nID="ol"\nID_LIKE="fedora"\n'
            f'VERSION_ID="{ver}"\nPRETTY_NAME="Oracle Linux Server {ver}"\n',
            {
                "etc/oracle-release": f"Oracle Linux Server release {ver}\n",
                "etc/redhat-release": f"Red Hat Enterprise Linux Server release {ver} (Maipo)\n",
            },
            k,
        )
        f["boot/grub2/grub.cfg"] = ""
        out.append(
            Guest(f"ol-{ver}", f, k, f"Oracle_Linux {ver}", "MBR", {"os.family": "Oracle_Linux"})
        )
    k = "4.1.12-124.el6uek.x86_64"
    f = _rhel_like(
        None,
        {
            "etc/oracle-release": "Oracle Linux Server release 6.8\n",
            "etc/redhat-release": "Red Hat Enterprise Linux Server release 6.8 (Santiago)\n",
        },
        k,
    )
    del f["usr/sbin/grub2-mkconfig"]
    f["boot/grub/grub.conf"] = "default=0\ntimeout=5\n"
    out.append(Guest("ol-6.8", f, k, "Oracle_Linux 6.8", "MBR", {
        "grub.kind": "grub", "grub.config": "/boot/grub/grub.conf", "grub.mkconfig": None,
    }))  # fmt: skip
    # RHEL 6.9: no os-release at all
    k = "2.6.32-696.el6.x86_64"
    f = _rhel_like(
        None, {"etc/redhat-release": "Red Hat Enterprise Linux Server release 6.9 (Santiago)\n"}, k
    )
    f["boot/grub/grub.conf"] = "default=0\n"
    out.append(
        Guest("rhel-6.9", f, k, "RHEL 6.9", "MBR", {"os.source": "file:/etc/redhat-release"})
    )
    # SLES 12 SP5 (BIOS, wicked DHCP) and 15 SP2 (UEFI, Secure Boot off, wicked static)
    for sp, vid, k, efi in (
        ("12-SP5", "12.5", "4.12.14-120-default", False),
        ("15-SP2", "15.2", "5.3.18-22-default", True),
    ):
        f = {
            "etc/os-release": f'NAME="SLES"\nVERSION="{sp}"\nVERSION_ID="{vid}"\n'
            f'PRETTY_NAME="SUSE Linux Enterprise Server {sp.replace("-", " ")}"\nID="sles"\n'
            'ID_LIKE="suse"\nANSI_COLOR="0;32"\nCPE_NAME="cpe:/o:suse:sles:12:sp5"\n',
            **_passwd(),
            **_modules(k, True),
            **_iscsi("iqn.1996-04.de.suse:01:abc"),
            "usr/sbin/grub2-mkconfig": "",
            f"boot/initrd-{k}": initrd(k, True),
        }
        if efi:
            f |= _efi(False)
            f["boot/efi/EFI/sles/grub.cfg"] = "configfile $prefix/grub.cfg\n"
            f["etc/sysconfig/network/ifcfg-eth0"] = (
                "BOOTPROTO='static'\nSTARTMODE='auto'\nIPADDR='198.18.1.115/24'\n"
            )
        else:
            f["boot/grub2/grub.cfg"] = "set default=0\n"
            f["etc/sysconfig/network/ifcfg-eth0"] = "BOOTPROTO='dhcp'\nSTARTMODE='auto'\n"
        boot = "UEFI" if efi else "MBR"
        out.append(Guest(f"sles-{sp}", f, k, f"SLES {sp}", boot, {
            "iscsi.initrd_module": True, "net.eth0.method": "static" if efi else "dhcp",
            "grub.layout": "efi" if efi else "bios",
        }))  # fmt: skip
    # Ubuntu 16.04 (ifupdown static), 18.04 (netplan DHCP), 20.04 (netplan static, UEFI)
    for ver, full, code, k in (
        ("16.04", "16.04.7 LTS (Xenial Xerus)", "xenial", "4.4.0-186-generic"),
        ("18.04", "18.04.5 LTS (Bionic Beaver)", "bionic", "4.15.0-112-generic"),
        ("20.04", "20.04.1 LTS (Focal Fossa)", "focal", "5.4.0-42-generic"),
    ):
        f = {
            "etc/os-release": f'NAME="Ubuntu"\nVERSION="{full}"\nID=ubuntu\nID_LIKE=debian\n'
            f'PRETTY_NAME="Ubuntu {full.split(" (")[0]}"\nVERSION_ID="{ver}"\n'
            f"VERSION_CODENAME={code}\nUBUNTU_CODENAME={code}\n",
            **_passwd(),
            **_modules(k, True),
            "var/lib/dpkg/status": _dpkg("open-vm-tools", "open-iscsi", "grub-pc"),
            "usr/sbin/grub-mkconfig": "",
            "usr/sbin/update-grub": "",
            "boot/grub/grub.cfg": "set default=0\n",
            f"boot/initrd.img-{k}": initrd(k, ver != "18.04"),
        }
        expect: dict[str, object] = {
            "vmware_tools.installed": True, "iscsi.package": True, "grub.kind": "grub2",
            "grub.mkconfig": "grub-mkconfig", "iscsi.initrd_module": ver != "18.04",
        }  # fmt: skip
        boot = "MBR"
        if ver == "16.04":
            f["etc/network/interfaces"] = (
                "auto lo\niface lo inet loopback\n\nauto ens160\niface ens160 inet static\n"
                "    address 198.18.1.116\n    netmask 255.255.255.0\n"
            )
            expect |= {"net.ens160.method": "static", "net.ens160.address": "198.18.1.116"}
        elif ver == "18.04":
            f["etc/netplan/50-cloud-init.yaml"] = (
                "network:\n    ethernets:\n        ens160:\n            dhcp4: true\n"
                "    version: 2\n"
            )
            expect |= {"net.ens160.method": "dhcp", "net.static_ip": False}
        else:
            f |= _efi(False)
            f["boot/efi/EFI/ubuntu/grub.cfg"] = "configfile $prefix/grub.cfg\n"
            f["etc/netplan/00-installer-config.yaml"] = (
                "# This is the network config written by 'subiquity'\nnetwork:\n  ethernets:\n"
                "    ens160:\n      addresses:\n      - 198.18.1.120/24\n"
                "      gateway4: 198.18.1.1\n"
                "      nameservers:\n        addresses:\n        - 198.18.1.53\n"
                "        search: []\n  version: 2\n"
            )
            expect |= {
                "net.ens160.method": "static",
                "net.ens160.address": "198.18.1.120",
                "grub.layout": "efi",
                "grub.config": "/boot/efi/EFI/ubuntu/grub.cfg",
            }
            boot = "UEFI"
        out.append(Guest(f"ubuntu-{ver}", f, k, f"Ubuntu Server {ver}", boot, expect))
    # Photon OS 3 and 4: UEFI (the matrix has no MBR row for them), systemd-networkd
    for ver, k, secure in (("3.0", "4.19.112-1.ph3", False), ("4.0", "5.10.4-16.ph4", True)):
        f = {
            "etc/os-release": f'NAME="VMware Photon OS"\nVERSION="{ver}"\nID=photon\n'
            f'VERSION_ID={ver}\nPRETTY_NAME="VMware Photon OS/Linux"\n'
            'ANSI_COLOR="1;34"\nHOME_URL="https://vmware.github.io/photon/"\n',
            "etc/photon-release": f"VMware Photon OS {ver}\nPHOTON_BUILD_NUMBER=1\n",
            **_passwd(),
            **_efi(secure),
            **_modules(k, True),
            "usr/sbin/grub2-mkconfig": "",
            "boot/efi/EFI/BOOT/grub.cfg": "search -n -u abc -s\nconfigfile /boot/grub2/grub.cfg\n",
            "boot/grub2/grub.cfg": "set default=0\n",
            f"boot/initrd.img-{k}": initrd(k, False),
            "etc/systemd/network/10-static-en.network": "[Match]\nName=eth0\n\n[Network]\n"
            "Address=198.18.2.101/24\nGateway=198.18.2.1\nDNS=198.18.2.53\n",
            "etc/systemd/network/99-dhcp-en.network": "[Match]\nName=e*\n\n[Network]\nDHCP=yes\n",
        }
        major = ver.split(".")[0]
        out.append(Guest(f"photon-{major}", f, k, f"Photon OS {major}",
                         "UEFI Secure" if secure else "UEFI", {
            "net.eth0.method": "static", "net.eth0.address": "198.18.2.101",
            "grub.config": "/boot/efi/EFI/BOOT/grub.cfg", "iscsi.initrd_module": False,
        }))  # fmt: skip
    return out
