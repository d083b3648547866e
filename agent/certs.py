"""A throw-away self-signed certificate for the stand-in TLS listeners (valid
:data:`STANDIN_DAYS`: it must never trip the expiry alerts).

Made at start in a private temporary directory, with the ``openssl`` command, or the
``cryptography`` package where there is no openssl. The subject names netcheck, so a probe can
tell a stand-in listener from a real service.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from netcheck.agent.errors import CertError as CertError

STANDIN_ORG = "netcheck stand-in"
# How long a stand-in certificate is valid: far past the TLS expiry alerts' 14 days, so a
# stand-in listener never pages (it is made anew at each start; nothing trusts it).
STANDIN_DAYS = 3650


def _with_cryptography(cert: Path, key: Path, common_name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, STANDIN_ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=STANDIN_DAYS))
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _with_openssl(cert: Path, key: Path, common_name: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertError("neither the cryptography package nor the openssl command is available")
    subprocess.run(
        [
            *(exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(STANDIN_DAYS)),
            *("-subj", f"/O={STANDIN_ORG}/CN={common_name}"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


class StandinCert:
    """Certificate and key files in a temporary directory, removed by :meth:`cleanup`."""

    def __init__(self, common_name: str | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="netcheck-agent-")
        self.cert = Path(self._dir.name) / "cert.pem"
        self.key = Path(self._dir.name) / "key.pem"
        cn = common_name or socket.gethostname() or "netcheck"
        # The openssl command first: it costs this process no memory (the agent must stay
        # small), the cryptography package where there is no openssl.
        if shutil.which("openssl"):
            _with_openssl(self.cert, self.key, cn)
        else:
            try:
                _with_cryptography(self.cert, self.key, cn)
            except ImportError as exc:
                raise CertError("neither openssl nor the cryptography package") from exc

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def cleanup(self) -> None:
        self._dir.cleanup()
