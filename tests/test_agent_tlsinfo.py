"""The stdlib certificate reader against the cryptography package, on real certificates."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest

from netcheck.agent.probes.tlsinfo import describe_certificate

pytest.importorskip("cryptography.x509")
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_cert(name: x509.Name, not_after: datetime.datetime) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def attr(oid: x509.ObjectIdentifier, value: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(oid, value)


NAMES = [
    x509.Name(
        [attr(NameOID.ORGANIZATION_NAME, "netcheck stand-in"), attr(NameOID.COMMON_NAME, "h")]
    ),
    x509.Name(
        [
            attr(NameOID.COUNTRY_NAME, "US"),
            attr(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            attr(NameOID.LOCALITY_NAME, "Palo Alto"),
            attr(NameOID.ORGANIZATION_NAME, "VMware, Inc."),
            attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "vSphere"),
            attr(NameOID.COMMON_NAME, "vc.example.com"),
        ]
    ),
    # RFC 4514 escaping: specials, leading '#' and space, trailing space, non-ASCII.
    x509.Name([attr(NameOID.COMMON_NAME, '#a+b,"c"<d>;e\\ ')]),
    x509.Name([attr(NameOID.COMMON_NAME, " Grüße ünï")]),
    # Types without an RFC 4514 short name print as dotted OIDs; DC and UID have one.
    x509.Name(
        [
            attr(NameOID.DOMAIN_COMPONENT, "com"),
            attr(NameOID.USER_ID, "u1"),
            attr(NameOID.EMAIL_ADDRESS, "x@y.z"),
            attr(NameOID.SERIAL_NUMBER, "42"),
        ]
    ),
    # A multi-valued RDN.
    x509.Name(
        [
            x509.RelativeDistinguishedName(
                [attr(NameOID.COMMON_NAME, "a"), attr(NameOID.ORGANIZATION_NAME, "b")]
            )
        ]
    ),
]


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
@pytest.mark.parametrize(
    "not_after",
    [
        datetime.datetime(2030, 6, 1, 12, 30, 5, tzinfo=datetime.UTC),  # UTCTime
        datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),  # GeneralizedTime
    ],
)
def test_same_subject_and_expiry_as_cryptography(
    name: x509.Name, not_after: datetime.datetime
) -> None:
    der = make_cert(name, not_after)
    cert = x509.load_der_x509_certificate(der)
    assert describe_certificate(der) == (
        cert.subject.rfc4514_string(),
        cert.not_valid_after_utc.timestamp(),
    )
    assert describe_certificate(der)[1] == not_after.timestamp()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_made_certificate(tmp_path: Path) -> None:
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
            *("-keyout", str(tmp_path / "k.pem"), "-outform", "DER"),
            *("-out", str(tmp_path / "c.der"), "-days", "3"),
            *("-subj", "/C=DE/O=netcheck stand-in/CN=x.example"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    der = (tmp_path / "c.der").read_bytes()
    subject, not_after = describe_certificate(der)
    assert subject == "CN=x.example,O=netcheck stand-in,C=DE"
    ref = x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
    assert not_after == ref


@pytest.mark.parametrize(
    "junk",
    [b"", b"\x30", b"\x30\x85\x00\x00\x00\x00\x01", b"\x02\x01\x00", b"\x30\x03\x30\x01\x00"],
)
def test_malformed_is_none(junk: bytes) -> None:
    assert describe_certificate(junk) == (None, None)


def test_truncated_certificate_is_none() -> None:
    der = make_cert(NAMES[1], datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    for cut in (10, len(der) // 3, len(der) // 2):
        assert describe_certificate(der[:cut]) == (None, None)
