"""The facts of a Windows guest, from deploy/guest/facts.ps1's JSON (PowerShell 5.1's
``ConvertTo-Json``).

That output has PowerShell's shapes, which this parser takes as they come: a list of one
item is a bare object (5.1 unwraps single-element arrays), an enum is its number
(``Status`` 4 = Running, ``StartType`` 2 = Automatic) or, through CIM, its name ("Auto"),
booleans may be null (Confirm-SecureBootUEFI on a BIOS machine throws: the script says
null), and dates are ``"/Date(ms)/"``. Every fact says which cmdlet found it.
"""

import json
from typing import Any, Dict, List, Optional

from netcheck.agent.guest.facts.base import Fact, fact

MAX_JSON = 1024 * 1024
WFP_FILTERS = ("ms_wfplwf_upper", "ms_ndiscap_lower", "ms_ndiscap")
# System.ServiceProcess.ServiceControllerStatus and ServiceStartMode, as numbers.
SERVICE_STATUS = {1: "Stopped", 2: "StartPending", 3: "StopPending", 4: "Running", 7: "Paused"}
START_TYPE = {0: "Boot", 1: "System", 2: "Automatic", 3: "Manual", 4: "Disabled"}
# Win32_OperatingSystem.Caption -> the matrix's names.
MATRIX_OS = (
    ("Windows Server 2012 R2", "Windows Server 2012 R2 (64 bit)"),
    ("Windows Server 2016", "Windows Server 2016 (64 bit)"),
    ("Windows Server 2019", "Windows Server 2019 (64 bit)"),
    ("Windows Server 2008 R2", "Windows 2008 R2"),
)


def as_list(value: Any) -> List[Any]:
    """PowerShell's one-item arrays come out as the item; none come out as null."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _status(value: Any, table: Dict[int, str]) -> Optional[str]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return table.get(value, str(value))
    if isinstance(value, str):
        return {"Auto": "Automatic"}.get(value, value)
    if isinstance(value, dict) and "Value" in value:  # an enum serialised with -Depth
        return _status(value["Value"], table)
    return None


def _service(data: Dict[str, Any], key: str, name: str, prefix: str) -> List[Fact]:
    svc = data.get(key)
    src = "powershell:Get-Service " + name
    if not isinstance(svc, dict):
        return [
            fact(prefix + ".installed", False, src, "no service " + name),
            fact(prefix + ".running", False, src, "no service " + name),
        ]
    status = _status(svc.get("Status"), SERVICE_STATUS)
    start = _status(svc.get("StartType", svc.get("StartMode")), START_TYPE)
    return [
        fact(prefix + ".installed", True, src, str(svc.get("DisplayName") or name)),
        fact(prefix + ".running", status == "Running", src, "status %s" % status),
        fact(prefix + ".start_mode", start, src),
    ]


def matrix_name(caption: str) -> str:
    for spelling, name in MATRIX_OS:
        if spelling.lower() in caption.lower():
            return name
    return caption.replace("Microsoft ", "").strip()


def parse(text: str) -> List[Fact]:
    """The facts in the script's output; ValueError when it is not the script's JSON."""
    if len(text) > MAX_JSON:
        raise ValueError("the facts script's output is larger than %d bytes" % MAX_JSON)
    data = json.loads(text.lstrip("\ufeff"))
    if not isinstance(data, dict) or "os" not in data:
        raise ValueError("not the output of facts.ps1 (no 'os' object)")
    out: List[Fact] = []
    osd = data.get("os") or {}
    caption = str(osd.get("Caption") or "")
    cim = "powershell:Get-CimInstance Win32_OperatingSystem"
    out.append(fact("os.family", "Windows", cim))
    out.append(fact("os.name", matrix_name(caption) if caption else None, cim, caption))
    out.append(fact("os.version", osd.get("Version"), cim))
    firmware = data.get("firmware")
    secure = data.get("secure_boot")
    src = "powershell:Confirm-SecureBootUEFI"
    if firmware == "UEFI":
        out.append(fact("boot.mode", "UEFI", "powershell:$env:firmware_type"))
        out.append(fact("boot.secure_boot", secure if isinstance(secure, bool) else None, src))
        matrix = "UEFI Secure" if secure is True else "UEFI"
    else:
        out.append(
            fact(
                "boot.mode",
                "MBR" if firmware == "Legacy" else None,
                "powershell:$env:firmware_type",
                str(firmware),
            )
        )
        out.append(fact("boot.secure_boot", False if firmware == "Legacy" else None, src))
        matrix = "MBR" if firmware == "Legacy" else ""
    out.append(fact("boot.matrix", matrix or None, src))
    out.extend(_service(data, "vmtools", "VMTools", "vmware_tools"))
    out.extend(_service(data, "msiscsi", "MSiSCSI", "iscsi.service"))
    nvsp = data.get("nvspbind")
    out.append(fact("windows.nvspbind", bool(nvsp), "file:nvspbind.exe", str(nvsp or "not found")))
    bindings: Dict[str, Optional[bool]] = {}
    for b in as_list(data.get("bindings")):
        if isinstance(b, dict) and b.get("ComponentID") in WFP_FILTERS:
            cid = str(b["ComponentID"])
            on = b.get("Enabled")
            bindings[cid] = bool(on) or bindings.get(cid, False)
    for cid in WFP_FILTERS:
        src = "powershell:Get-NetAdapterBinding -ComponentID " + cid
        out.append(fact("windows.wfp." + cid + ".enabled", bindings.get(cid), src))
    statics = []
    for a in as_list(data.get("adapters")):
        if not isinstance(a, dict) or not a.get("Name"):
            continue
        name = str(a["Name"]).replace(" ", "_")
        dhcp = a.get("Dhcp")
        method = "dhcp" if dhcp in ("Enabled", 1, True) else "static" if dhcp is not None else None
        if method == "static":
            statics.append(name)
        src = "powershell:Get-NetIPInterface"
        out.append(fact("net.%s.method" % name, method, src))
        addrs = as_list(a.get("IPv4Address"))
        out.append(
            fact(
                "net.%s.address" % name,
                str(addrs[0]) if addrs else None,
                "powershell:Get-NetIPAddress",
            )
        )
    out.append(
        fact("net.static_ip", bool(statics), "powershell:Get-NetIPInterface", ", ".join(statics))
    )
    space = data.get("space") or {}
    out.append(fact("space.home", space.get("ProgramData"), "powershell:$env:ProgramData"))
    free = space.get("FreeBytes")
    out.append(
        fact(
            "space.home_free_bytes",
            free if isinstance(free, int) and not isinstance(free, bool) else None,
            "powershell:Get-PSDrive",
        )
    )
    return out
