# netcheck guest facts for Windows (Windows PowerShell 5.1). Prints one JSON object that
# netcheck.agent.guest.facts.windows parses; the guest agent runs it as
#   powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File facts.ps1
# It reads only: no setting is changed. Each part that fails gives null, never an error.
# NOT RUN ON WINDOWS in netcheck's own tests (no Windows there): its parser is tested on
# outputs shaped like ConvertTo-Json's (tests/test_guest_windows.py).
$ErrorActionPreference = 'SilentlyContinue'

function Try-Get([scriptblock]$Block) {
    try { & $Block } catch { $null }
}

$os = Try-Get { Get-CimInstance -ClassName Win32_OperatingSystem |
    Select-Object Caption, Version, BuildNumber, OSArchitecture }

# $env:firmware_type is "UEFI" or "Legacy" (Windows 8 / Server 2012 and later).
$firmware = $env:firmware_type
$secure = $null
if ($firmware -eq 'UEFI') {
    $secure = Try-Get { Confirm-SecureBootUEFI }
}

$vmtools = Try-Get { Get-Service -Name VMTools -ErrorAction Stop |
    Select-Object Name, DisplayName, Status, StartType }
$msiscsi = Try-Get { Get-Service -Name MSiSCSI -ErrorAction Stop |
    Select-Object Name, DisplayName, Status, StartType }

# NVSPBIND: HDM copies nvspbind.exe to the temp directory and installs it when missing.
$nvspbind = $null
foreach ($dir in @($env:TEMP, "$env:SystemRoot\System32", "$env:ProgramFiles\nvspbind")) {
    if ($dir -and (Test-Path (Join-Path $dir 'nvspbind.exe'))) {
        $nvspbind = (Join-Path $dir 'nvspbind.exe'); break
    }
}

$bindings = Try-Get { Get-NetAdapterBinding -ComponentID ms_wfplwf_upper, ms_ndiscap_lower, ms_ndiscap |
    Select-Object Name, ComponentID, Enabled }

$adapters = @()
foreach ($if in (Try-Get { Get-NetIPInterface -AddressFamily IPv4 -ConnectionState Connected })) {
    if ($if.InterfaceAlias -like 'Loopback*') { continue }
    $addrs = Try-Get { (Get-NetIPAddress -InterfaceIndex $if.ifIndex -AddressFamily IPv4).IPAddress }
    $adapters += [pscustomobject]@{ Name = $if.InterfaceAlias; Dhcp = [string]$if.Dhcp; IPv4Address = $addrs }
}

$programData = $env:ProgramData
$drive = Try-Get { Get-PSDrive -Name ($programData.Substring(0, 1)) }
$space = [pscustomobject]@{ ProgramData = $programData; FreeBytes = $(if ($drive) { [int64]$drive.Free } else { $null }) }

[pscustomobject]@{
    os          = $os
    firmware    = $firmware
    secure_boot = $secure
    vmtools     = $vmtools
    msiscsi     = $msiscsi
    nvspbind    = $nvspbind
    bindings    = $bindings
    adapters    = $adapters
    space       = $space
} | ConvertTo-Json -Depth 4 -Compress
