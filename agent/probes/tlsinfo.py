"""What a TLS peer's certificate says: subject and expiry (cryptography when installed)."""

from __future__ import annotations

import shutil
import subprocess
from email.utils import parsedate_to_datetime


def describe_certificate(der: bytes) -> tuple[str | None, float | None]:
    """(subject as RFC 4514 text, notAfter as epoch seconds) of a DER certificate."""
    try:
        from cryptography import x509
    except ImportError:
        return _with_openssl(der)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None, None
    return cert.subject.rfc4514_string(), cert.not_valid_after_utc.timestamp()


def _with_openssl(der: bytes) -> tuple[str | None, float | None]:
    exe = shutil.which("openssl")
    if exe is None:
        return None, None
    try:
        out = subprocess.run(
            [
                exe,
                "x509",
                "-inform",
                "DER",
                "-noout",
                "-subject",
                "-enddate",
                "-nameopt",
                "RFC2253",
            ],
            input=der,
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return None, None
    subject: str | None = None
    not_after: float | None = None
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key == "subject":
            subject = value.strip()
        elif key == "notAfter":
            try:
                not_after = parsedate_to_datetime(value.strip().replace("  ", " ")).timestamp()
            except (TypeError, ValueError):
                not_after = None
    return subject, not_after
