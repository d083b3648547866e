"""Protocol facts shared by the stand-in listeners and the probes' service checks."""

from __future__ import annotations

import struct

from netcheck.agent import __version__

SSH_BANNER = f"SSH-2.0-netcheck_{__version__}\r\n".encode()
AUTHD_BANNER = (
    b"220 VMware Authentication Daemon Version 1.10: SSL Required, "
    b"ServerDaemonProtocol:SOAP, MKSDisplayProtocol:VNC , , NFCSSL supported/t\r\n"
)
AUTHD_PREFIX = b"220 VMware Authentication Daemon"
# Services whose stand-in answers with a TLS handshake.
TLS_SERVICES = frozenset({"tls", "https", "docker", "vsphere"})

# iSCSI (RFC 3720): a 48-byte Basic Header Segment, then a data segment padded to 4 bytes.
ISCSI_BHS = 48
ISCSI_LOGIN_REQUEST = 0x03
ISCSI_LOGIN_RESPONSE = 0x23


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def iscsi_discovery_login(itt: int = 1) -> bytes:
    """A Login Request PDU for a Discovery session (security stage, transit to operational)."""
    text = b"InitiatorName=iqn.2024-01.io.netcheck:probe\0SessionType=Discovery\0AuthMethod=None\0"
    bhs = bytearray(ISCSI_BHS)
    bhs[0] = 0x40 | ISCSI_LOGIN_REQUEST  # immediate
    bhs[1] = 0x80 | (0 << 2) | 1  # T=1, CSG=0 (security), NSG=1 (operational)
    bhs[5:8] = len(text).to_bytes(3, "big")
    bhs[8:14] = bytes([0x80, 0, 0, 0x6E, 0x63, 0x01])  # ISID: random format, "nc"
    struct.pack_into(">I", bhs, 16, itt)
    return bytes(bhs) + _pad4(text)


def iscsi_login_response(request: bytes, status_class: int, status_detail: int) -> bytes:
    """A minimal Login Response to `request` (no data segment)."""
    bhs = bytearray(ISCSI_BHS)
    bhs[0] = ISCSI_LOGIN_RESPONSE
    bhs[8:14] = request[8:14]  # ISID echoed
    bhs[16:20] = request[16:20]  # Initiator Task Tag echoed
    bhs[36] = status_class
    bhs[37] = status_detail
    return bytes(bhs)


def parse_iscsi_login_response(bhs: bytes) -> tuple[int, int] | None:
    """(status class, status detail) of a Login Response BHS, or None if it is not one."""
    if len(bhs) < ISCSI_BHS or bhs[0] & 0x3F != ISCSI_LOGIN_RESPONSE:
        return None
    return bhs[36], bhs[37]
