"""The Windows facts: deploy/guest/facts.ps1's JSON, parsed by the guest agent.

NOT RUN ON WINDOWS: this machine has no Windows and no PowerShell. The script's parser
(netcheck.agent.guest.facts.windows) is tested on outputs shaped exactly as Windows
PowerShell 5.1's ``ConvertTo-Json -Compress`` writes them: enums as numbers
(ServiceControllerStatus 4 = Running, ServiceStartMode 2 = Automatic), a command that found
one item gives a bare value instead of a list, a failed part is null, apostrophes escaped as
``\\u0027``, and a UTF-8 byte order mark when the output went through a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from guest_helpers import guest_facts

from netcheck.agent.guest.facts import windows
from netcheck.controller.readiness import steps
from netcheck.controller.spec import load_spec

REPO = Path(__file__).resolve().parent.parent

SERVER_2016_UEFI_SECURE = (
    '{"os":{"Caption":"Microsoft Windows Server 2016 Datacenter","Version":"10.0.14393",'
    '"BuildNumber":"14393","OSArchitecture":"64-bit"},"firmware":"UEFI","secure_boot":true,'
    '"vmtools":{"Name":"VMTools","DisplayName":"VMware Tools","Status":4,"StartType":2},'
    '"msiscsi":{"Name":"MSiSCSI","DisplayName":"Microsoft iSCSI Initiator Service",'
    '"Status":1,"StartType":3},"nvspbind":null,'
    '"bindings":[{"Name":"Ethernet0","ComponentID":"ms_wfplwf_upper","Enabled":true},'
    '{"Name":"Ethernet0","ComponentID":"ms_ndiscap_lower","Enabled":false},'
    '{"Name":"Ethernet0","ComponentID":"ms_ndiscap","Enabled":true}],'
    '"adapters":[{"Name":"Ethernet0","Dhcp":"Disabled","IPv4Address":"198.18.1.102"}],'
    '"space":{"ProgramData":"C:\\\\ProgramData","FreeBytes":53687091200}}'
)
# Server 2012 R2 on BIOS: Confirm-SecureBootUEFI not run (null), one binding found (a bare
# object, not a list), two addresses on the one adapter, DHCP on, MSiSCSI running, automatic.
SERVER_2012_BIOS = (
    "\ufeff"
    '{"os":{"Caption":"Microsoft Windows Server 2012 R2 Standard","Version":"6.3.9600",'
    '"BuildNumber":"9600","OSArchitecture":"64-bit"},"firmware":"Legacy","secure_boot":null,'
    '"vmtools":{"Name":"VMTools","DisplayName":"VMware Tools","Status":1,"StartType":2},'
    '"msiscsi":{"Name":"MSiSCSI","DisplayName":"Microsoft iSCSI Initiator Service",'
    '"Status":4,"StartType":2},"nvspbind":"C:\\\\Windows\\\\System32\\\\nvspbind.exe",'
    '"bindings":{"Name":"Ethernet0","ComponentID":"ms_wfplwf_upper","Enabled":false},'
    '"adapters":[{"Name":"Ethernet0 2","Dhcp":"Enabled",'
    '"IPv4Address":["198.18.1.130","198.18.1.131"]}],'
    '"space":{"ProgramData":"C:\\\\ProgramData","FreeBytes":104857600}}'
)
# Windows 2008 R2: no $env:firmware_type, no Get-NetAdapterBinding/Get-NetIPInterface (null),
# no VMware Tools service at all.
WINDOWS_2008 = (
    '{"os":{"Caption":"Microsoft Windows Server 2008 R2 Enterprise ","Version":"6.1.7601",'
    '"BuildNumber":"7601","OSArchitecture":"64-bit"},"firmware":null,"secure_boot":null,'
    '"vmtools":null,"msiscsi":{"Name":"MSiSCSI","DisplayName":"Microsoft iSCSI Initiator'
    ' Service","Status":1,"StartType":3},"nvspbind":null,"bindings":null,"adapters":[],'
    '"space":{"ProgramData":"C:\\\\ProgramData","FreeBytes":null}}'
)


def parsed(text: str) -> dict[str, Any]:
    return {f["name"]: f for f in windows.parse(text)}


def test_server_2016_uefi_secure() -> None:
    f = parsed(SERVER_2016_UEFI_SECURE)
    assert f["os.name"]["value"] == "Windows Server 2016 (64 bit)"
    assert f["os.family"]["value"] == "Windows"
    assert f["boot.matrix"]["value"] == "UEFI Secure"
    assert f["boot.secure_boot"]["source"] == "powershell:Confirm-SecureBootUEFI"
    assert f["vmware_tools.running"]["value"] is True
    assert f["iscsi.service.running"]["value"] is False
    assert f["iscsi.service.start_mode"]["value"] == "Manual"
    assert f["windows.wfp.ms_wfplwf_upper.enabled"]["value"] is True
    assert f["windows.wfp.ms_ndiscap_lower.enabled"]["value"] is False
    assert f["net.Ethernet0.method"]["value"] == "static"
    assert f["net.static_ip"]["value"] is True
    assert f["space.home_free_bytes"]["value"] == 53687091200
    spec = load_spec(REPO / "topology.yaml")
    assert spec.matrix_row(f["os.name"]["value"], f["boot.matrix"]["value"]) is not None


def test_server_2012_bios_with_powershell_shapes() -> None:
    f = parsed(SERVER_2012_BIOS)
    assert f["os.name"]["value"] == "Windows Server 2012 R2 (64 bit)"
    assert (f["boot.mode"]["value"], f["boot.secure_boot"]["value"]) == ("MBR", False)
    assert f["boot.matrix"]["value"] == "MBR"
    assert f["vmware_tools.installed"]["value"] is True
    assert f["vmware_tools.running"]["value"] is False
    assert f["windows.wfp.ms_wfplwf_upper.enabled"]["value"] is False  # a bare object
    assert f["windows.wfp.ms_ndiscap.enabled"]["value"] is None  # not reported
    assert f["net.Ethernet0_2.method"]["value"] == "dhcp"
    assert f["net.Ethernet0_2.address"]["value"] == "198.18.1.130"
    assert f["net.static_ip"]["value"] is False
    assert f["windows.nvspbind"]["value"] is True


def test_windows_2008_missing_parts_are_unknown_or_absent() -> None:
    f = parsed(WINDOWS_2008)
    assert f["os.name"]["value"] == "Windows 2008 R2"
    assert f["boot.mode"]["value"] is None
    assert f["vmware_tools.installed"]["value"] is False
    assert f["space.home_free_bytes"]["value"] is None


@pytest.mark.parametrize(
    "text", ["[]", '{"firmware":"UEFI"}', "not json", "{" * 10, " " * (2 * 1024 * 1024)]
)
def test_not_the_scripts_output_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        windows.parse(text)


def test_the_windows_prepare_steps_from_those_facts() -> None:
    spec = load_spec(REPO / "topology.yaml")
    facts = guest_facts("db-01", windows.parse(SERVER_2012_BIOS))
    warm = {p.step: p for p in steps(spec, "warm_vcd", facts)}
    assert len(warm) == 8
    assert warm[1].status == "blocks"  # VMware tools installed but not running, warm
    assert warm[2].status == "blocks"  # 100 MiB free for the prepare tool
    assert warm[4].status == "ok" and warm[5].status == "ok" and warm[6].status == "ok"
    facts = guest_facts("db-01", windows.parse(SERVER_2016_UEFI_SECURE))
    cold = {p.step: p for p in steps(spec, "cold_vcd", facts)}
    assert cold[1].status == "ok"
    assert cold[4].status == "warns" and "installs" in cold[4].text  # NVSPBIND missing
    assert cold[5].status == "warns" and "ms_wfplwf_upper, ms_ndiscap" in cold[5].text
    assert cold[6].status == "warns" and "automatic" in cold[6].text
    assert cold[7].status == "unknown"


def test_the_script_is_powershell_51_and_reads_only() -> None:
    text = (REPO / "deploy" / "guest" / "facts.ps1").read_text()
    for cmdlet in (
        "Get-CimInstance", "Confirm-SecureBootUEFI", "Get-Service -Name MSiSCSI",
        "Get-Service -Name VMTools", "Get-NetAdapterBinding", "ms_wfplwf_upper",
        "ms_ndiscap_lower", "ms_ndiscap", "nvspbind.exe", "Get-NetIPInterface",
        "ConvertTo-Json",
    ):  # fmt: skip
        assert cmdlet in text, cmdlet
    for verb in ("Set-", "Enable-", "Disable-", "Start-Service", "Remove-", "New-Item"):
        assert verb not in text, verb
