"""The guest agent's fact collectors (netcheck.agent.guest.facts), stdlib only in the code
under test: against file trees shaped like each Linux family of the guest OS matrix
(tests/guest_trees.py), with a real process for "running", and on this machine for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from guest_trees import Guest, cpio, guests, initrd

from netcheck.agent.guest.facts import collect, network
from netcheck.agent.guest.facts import initrd as initrd_facts
from netcheck.agent.guest.facts.base import Root
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
GUESTS = guests()
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def by_name(facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in facts}


@pytest.fixture
def no_proc(tmp_path: Path) -> str:
    """A /proc with no processes (the tree's own: no vmtoolsd runs there)."""
    d = tmp_path / "proc"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("guest", GUESTS, ids=[g.key for g in GUESTS])
def test_each_family_of_the_matrix(guest: Guest, tmp_path: Path, no_proc: str) -> None:
    root = guest.write(tmp_path / "root")
    facts = by_name(collect(Root(str(root), proc=no_proc, kernel=guest.kernel), user="hdm"))
    assert facts["os.name"]["value"] == guest.os_name, facts["os.name"]
    assert facts["boot.matrix"]["value"] == guest.boot
    # the names are the matrix's own: the gate finds the row
    spec = load_spec(REPO / "topology.yaml")
    assert spec.matrix_row(guest.os_name, guest.boot) is not None
    for name, want in guest.expect.items():
        if name == "os.source":
            assert facts["os.name"]["source"] == want
            continue
        assert facts[name]["value"] == want, (name, facts[name])
    # every fact says how it was found
    assert all(f["source"] for f in facts.values())
    assert facts["vmware_tools.running"]["value"] is False
    assert facts["space.home"]["value"] == "/home/hdm"
    assert isinstance(facts["space.home_free_bytes"]["value"], int)
    assert facts["iscsi.initrd_module"]["source"].startswith(("file:/boot", "command:"))


def test_secure_boot_variable_on_off_and_missing(tmp_path: Path) -> None:
    guid = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
    var = tmp_path / "sys/firmware/efi/efivars" / f"SecureBoot-{guid}"
    var.parent.mkdir(parents=True)
    seen = []
    for data in (b"\x06\x00\x00\x00\x01", b"\x06\x00\x00\x00\x00", None):
        if data is None:
            var.unlink()
        else:
            var.write_bytes(data)
        f = by_name(collect(Root(str(tmp_path), kernel="x")))
        seen.append((f["boot.mode"]["value"], f["boot.secure_boot"]["value"]))
        assert (
            f["boot.secure_boot"]["source"] == f"file:/sys/firmware/efi/efivars/SecureBoot-{guid}"
        )
    assert seen == [("UEFI", True), ("UEFI", False), ("UEFI", None)]


@pytest.fixture
def vmtoolsd(tmp_path: Path) -> Iterator[int]:
    """A real process named vmtoolsd (a copy of sleep under that name)."""
    exe = tmp_path / "bin" / "vmtoolsd"
    exe.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    try:
        for _ in range(100):  # until the kernel shows its new name
            comm = Path(f"/proc/{proc.pid}/comm")
            if comm.exists() and comm.read_text().strip() == "vmtoolsd":
                break
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_vmware_tools_running_is_a_real_process(tmp_path: Path, vmtoolsd: int) -> None:
    root = GUESTS[0].write(tmp_path / "root")
    facts = by_name(collect(Root(str(root), proc="/proc", kernel=GUESTS[0].kernel)))
    assert facts["vmware_tools.running"]["value"] is True
    assert facts["vmware_tools.running"]["detail"] == f"vmtoolsd pid {vmtoolsd}"
    assert facts["vmware_tools.running"]["source"] == "proc:/proc"


def test_initrd_images_of_every_shape() -> None:
    k = "5.4.0-42-generic"
    for shape in ({}, {"compress": "xz"}, {"microcode": True}):
        names = initrd_facts.read_image(initrd(k, True, **shape))
        assert f"usr/lib/modules/{k}/kernel/drivers/scsi/iscsi_tcp.ko.xz" in names, shape
        assert "init" in names
    assert initrd_facts.read_image(cpio(["a", "b/c"])) == ["a", "b/c"]
    assert initrd_facts.read_image(b"\x28\xb5\x2f\xfd zstd is not read") == []


def test_an_unreadable_initrd_is_unknown_not_false(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "initrd.img-1").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    f = initrd_facts.module_fact(Root(str(tmp_path), kernel="1"), "iscsi_tcp")
    assert f["value"] is None and "compression" in f["detail"]


def test_netplan_takes_only_the_interfaces_own_addresses() -> None:
    text = (
        "network:\n  version: 2\n  ethernets:\n    ens160:\n      dhcp4: no\n"
        "      nameservers:\n        addresses: [198.18.1.53]\n"
        "      addresses: [198.18.1.7/24, 198.18.1.8/24]\n"
        "    ens192:\n      dhcp4: yes\n  bonds:\n    bond0:\n      addresses:\n"
        "        - 198.18.1.9/24\n"
    )
    assert network._netplan(text) == {
        "ens160": [False, "198.18.1.7/24"],
        "ens192": [True, ""],
        "bond0": [False, "198.18.1.9/24"],
    }


def test_reads_are_bounded(tmp_path: Path) -> None:
    big = tmp_path / "etc" / "os-release"
    big.parent.mkdir(parents=True)
    big.write_text('ID="rhel"\nVERSION_ID="8.3"\n' + "#" * (4 * 1024 * 1024))
    root = Root(str(tmp_path), kernel="x")
    assert len(root.read("etc/os-release") or b"") == 256 * 1024
    assert by_name(collect(root))["os.name"]["value"] == "RHEL 8.3"


def test_facts_json_on_this_machine_from_the_single_file(tmp_path: Path) -> None:
    """`facts --json` for real, from the built netcheck-guest.pyz on the system's python3
    with no site-packages (-I -S)."""
    pyz = tmp_path / "netcheck-guest.pyz"
    build = subprocess.run(
        [sys.executable, str(REPO / "deploy/zipapp/build.py"), "--guest", "--out", str(pyz)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Python 3.6+" in build.stdout
    done = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(pyz), "facts", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    facts = by_name(json.loads(done.stdout)["facts"])
    osr = dict(
        line.split("=", 1)
        for line in Path("/etc/os-release").read_text().splitlines()
        if "=" in line
    )
    assert facts["os.version"]["value"] == osr.get("VERSION_ID", "").strip('"')
    efi = Path("/sys/firmware/efi").is_dir()
    assert facts["boot.mode"]["value"] == ("UEFI" if efi else "MBR")
    st = os.statvfs("/boot")
    free = facts["space.boot_free_bytes"]["value"]
    assert isinstance(free, int) and abs(free - st.f_bavail * st.f_frsize) < 1024**3
    names = [n for n in os.listdir("/sys/class/net") if n != "lo"]
    assert {f"net.{n}.method" for n in names} <= set(facts)
    assert facts["vmware_tools.running"]["value"] is False  # no vmtoolsd here
    assert all({"name", "value", "source", "detail"} == set(f) for f in facts.values())
    text = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", str(pyz), "facts"], capture_output=True, text=True,
        timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "boot.mode" in text and "file:/etc/os-release" in text


def test_the_initrd_is_listed_again_only_when_it_changes(tmp_path: Path) -> None:
    image = tmp_path / "boot" / "initrd.img-1"
    image.parent.mkdir()
    image.write_bytes(initrd("1", False))
    root = Root(str(tmp_path), kernel="1")
    assert initrd_facts.module_fact(root, "iscsi_tcp")["value"] is False
    image.write_bytes(initrd("1", True, compress="xz"))  # a rebuilt initrd: size differs
    assert initrd_facts.module_fact(root, "iscsi_tcp")["value"] is True
