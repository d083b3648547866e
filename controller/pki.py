"""A site's private CA: the controller's server certificate and the agents' client certificates.

``init_ca`` makes a CA (EC P-256, which every OpenSSL the agents meet can use for TLS) and the
controller's server certificate, with the controller's DNS names and IP addresses as SANs.
``sign_csr`` turns an agent's certificate signing request into a short-lived client
certificate whose identity is one host of the inventory: ``O=netcheck, OU=<role>, CN=<host>``
in the subject and the URI SAN ``netcheck://agent/<role>/<host>``. Only the CSR's public key
is used (after its signature is checked): whatever else it asks for is ignored.

``server_ssl_context`` serves TLS 1.2+ and asks for a client certificate without requiring one
(``CERT_OPTIONAL``), so enrolment (a join token over server-authenticated TLS) and mutual TLS
share one port; a certificate that is presented must chain to the CA and be in date, or the
handshake fails. ``identity_of`` reads the verified peer certificate back; ``Revocations`` is
the in-memory set of revoked serials the app consults on every request, so a revocation takes
effect at once without any CRL to distribute.

Files: ``ca.pem``, ``ca-key.pem``, ``server.pem``, ``server-key.pem`` in one directory; every
file is written to a temporary name and renamed, keys are created with mode 0600.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SERVER_CERT = "server.pem"
SERVER_KEY = "server-key.pem"

ORGANIZATION = "netcheck"
URI_PREFIX = "netcheck://agent/"
CLIENT_DAYS = 30
SERVER_DAYS = 397
CA_DAYS = 3650
# Roles and host names as the spec and the inventory allow them (inventory.Host.name).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_SKEW = datetime.timedelta(minutes=5)


class PkiError(ValueError):
    """A CA directory, a certificate or a CSR that cannot be used; the text says why."""


@dataclass(frozen=True)
class AgentName:
    """Who a client certificate is issued to: one host of one role of the inventory."""

    role: str
    host: str

    def __post_init__(self) -> None:
        for what, value in (("role", self.role), ("host", self.host)):
            if not _NAME.fullmatch(value):
                raise PkiError(f"{what} {value!r} is not a valid name")

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{quote(self.role, safe='')}/{quote(self.host, safe='')}"


@dataclass(frozen=True)
class Identity:
    """A verified peer certificate, as the app uses it."""

    role: str
    host: str
    serial: int
    not_after: datetime.datetime  # UTC


@dataclass(frozen=True)
class CaFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> CaFiles:
        d = Path(directory)
        return cls(d / CA_CERT, d / CA_KEY, d / SERVER_CERT, d / SERVER_KEY)


@dataclass(frozen=True)
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


# -- files ------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new file created with `mode` next to `path`, then rename it over."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _serial() -> int:
    # 159 random bits, positive, as RFC 5280 allows (at most 20 octets).
    return secrets.randbits(159) | 1


# -- the CA and the server certificate -------------------------------------------------------


def _ca_cert(
    key: ec.EllipticCurvePrivateKey, site: str, now: datetime.datetime, days: int
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"netcheck CA {site}"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf(
    ca: Ca,
    subject: x509.Name,
    public: Any,
    san: Sequence[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def _server_sans(names: Iterable[str], addresses: Iterable[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names)]
    for a in dict.fromkeys(addresses):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            raise PkiError(f"{a!r} is not an IP address") from None
    if not sans:
        raise PkiError("the server certificate needs at least one DNS name or IP address")
    return sans


def issue_server_cert(
    ca: Ca,
    directory: str | Path,
    names: Iterable[str],
    addresses: Iterable[str],
    days: int = SERVER_DAYS,
    *,
    now: datetime.datetime | None = None,
) -> CaFiles:
    """(Re)issue the controller's server certificate and key in `directory`."""
    files = CaFiles.in_dir(directory)
    sans = _server_sans(names, addresses)
    t = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    first = sans[0]
    cn = str(first.value)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    cert = _leaf(
        ca,
        subject,
        key.public_key(),
        sans,
        ExtendedKeyUsageOID.SERVER_AUTH,
        t - _SKEW,
        t + datetime.timedelta(days=days),
    )
    write_atomic(files.server_key, _key_pem(key), 0o600)
    write_atomic(files.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def init_ca(
    directory: str | Path,
    names: Iterable[str],
    addresses: Iterable[str],
    days: int = SERVER_DAYS,
    *,
    ca_days: int = CA_DAYS,
    site: str = "site",
    force: bool = False,
    now: datetime.datetime | None = None,
) -> CaFiles:
    """Create a CA and the controller's server certificate (SANs: `names`, `addresses`).

    Refuses (:class:`PkiError`) when `directory` already holds a CA, unless `force`: a new CA
    makes every agent's certificate useless.
    """
    d = Path(directory)
    files = CaFiles.in_dir(d)
    names, addresses = list(names), list(addresses)
    _server_sans(names, addresses)  # bad input changes nothing
    if not force and (files.ca_cert.exists() or files.ca_key.exists()):
        raise PkiError(f"{d}: a CA is already there (force to replace it and every certificate)")
    d.mkdir(parents=True, exist_ok=True)
    t = _now(now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_cert(key, site, t, ca_days)
    write_atomic(files.ca_key, _key_pem(key), 0o600)
    write_atomic(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return issue_server_cert(Ca(cert, key), d, names, addresses, days, now=t)


def load_ca(directory: str | Path) -> Ca:
    files = CaFiles.in_dir(directory)
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except OSError as exc:
        raise PkiError(f"{exc.filename}: {exc.strerror}") from None
    except ValueError as exc:
        raise PkiError(f"{directory}: not a CA certificate and key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{files.ca_key}: not an EC key")
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
        raise PkiError(f"{files.ca_key}: does not match {files.ca_cert}")
    return Ca(cert, key)


# -- client certificates ---------------------------------------------------------------------


def load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    """A CSR whose signature matches its own public key, of a key type TLS can use."""
    raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(raw)
        public = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from None
    if not valid:
        raise PkiError("the CSR's signature does not match its public key")
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            raise PkiError(f"EC curve {public.curve.name} not accepted (P-256 or P-384)")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise PkiError(f"RSA key of {public.key_size} bits (at least 2048)")
    elif not isinstance(public, ed25519.Ed25519PublicKey):
        raise PkiError(f"key type {type(public).__name__} not accepted")
    return csr


def sign_csr(
    ca: Ca,
    csr_pem: bytes | str,
    identity: AgentName,
    days: int = CLIENT_DAYS,
    *,
    now: datetime.datetime | None = None,
) -> bytes:
    """A PEM client certificate for `identity` with the CSR's public key, valid `days`."""
    csr = load_csr(csr_pem)
    return _client_cert(ca, csr.public_key(), identity, days, _now(now))


def _client_cert(
    ca: Ca, public: Any, identity: AgentName, days: int, t: datetime.datetime
) -> bytes:
    if days <= 0:
        raise PkiError(f"a lifetime of {days} days")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.host),
        ]
    )
    cert = _leaf(
        ca,
        subject,
        public,
        [x509.UniformResourceIdentifier(identity.uri)],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        t - _SKEW,
        t + datetime.timedelta(days=days),
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def new_client_key_and_cert(
    ca: Ca,
    identity: AgentName,
    days: int = CLIENT_DAYS,
    *,
    now: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) made here, for an agent without ``openssl`` to make a key."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key), _client_cert(ca, key.public_key(), identity, days, _now(now))


# -- the peer's identity ---------------------------------------------------------------------


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lower-case hex."""
    return hashlib.sha256(der).hexdigest()


def same_fingerprint(a: str, b: str) -> bool:
    """Compare two fingerprints in constant time (case and ':' separators ignored)."""
    norm_a = a.replace(":", "").lower().encode()
    norm_b = b.replace(":", "").lower().encode()
    return hmac.compare_digest(norm_a, norm_b)


def _from_uri(uri: str) -> tuple[str, str] | None:
    if not uri.startswith(URI_PREFIX):
        return None
    parts = uri[len(URI_PREFIX) :].split("/")
    if len(parts) != 2:
        return None
    return unquote(parts[0]), unquote(parts[1])


def _identity_from_der(der: bytes) -> Identity | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    uris = [u for u in map(_from_uri, san.get_values_for_type(x509.UniformResourceIdentifier)) if u]
    ous = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(uris) != 1 or [uris[0][0]] != ous or [uris[0][1]] != cns:
        return None
    return Identity(uris[0][0], uris[0][1], cert.serial_number, cert.not_valid_after_utc)


def _identity_from_dict(peer: Mapping[str, Any]) -> Identity | None:
    uris = [
        u
        for kind, v in peer.get("subjectAltName", ())
        if kind == "URI"
        for u in [_from_uri(v)]
        if u
    ]
    subject = [pair for rdn in peer.get("subject", ()) for pair in rdn]
    ous = [v for k, v in subject if k == "organizationalUnitName"]
    cns = [v for k, v in subject if k == "commonName"]
    if len(uris) != 1 or [uris[0][0]] != ous or [uris[0][1]] != cns:
        return None
    try:
        serial = int(peer["serialNumber"], 16)
        after = datetime.datetime.fromtimestamp(
            ssl.cert_time_to_seconds(peer["notAfter"]), datetime.UTC
        )
    except (KeyError, ValueError):
        return None
    return Identity(uris[0][0], uris[0][1], serial, after)


def identity_of(peer: bytes | Mapping[str, Any] | None) -> Identity | None:
    """The agent a verified peer certificate names, or None (no certificate, or not an agent's).

    `peer`: the DER bytes (``getpeercert(binary_form=True)``) or the decoded dictionary
    (``getpeercert()``, aiohttp's ``transport.get_extra_info("peercert")``). Only call it on a
    certificate the TLS handshake verified against the CA: it checks names, not signatures.
    A certificate is an agent's when its single netcheck URI SAN agrees with its OU and CN.
    """
    if not peer:
        return None
    if isinstance(peer, bytes | bytearray):
        return _identity_from_der(bytes(peer))
    return _identity_from_dict(peer)


class Revocations:
    """Revoked serials, asked on every request (a set look-up under a lock)."""

    def __init__(self, serials: Iterable[int] = ()) -> None:
        self._serials = set(serials)
        self._lock = threading.Lock()

    def revoke(self, *serials: int) -> None:
        with self._lock:
            self._serials.update(serials)

    def __contains__(self, serial: object) -> bool:
        with self._lock:
            return serial in self._serials

    def __len__(self) -> int:
        with self._lock:
            return len(self._serials)

    def is_revoked(self, identity: Identity) -> bool:
        return identity.serial in self


# -- TLS contexts ----------------------------------------------------------------------------


def server_ssl_context(
    cert: str | Path,
    key: str | Path,
    ca: str | Path,
    *,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """TLS 1.2+ for the controller; client certificates verified against `ca`.

    ``require_client_cert=False`` (CERT_OPTIONAL): a client may come without one (enrolment,
    reads with a bearer token), but one it presents must verify, or the handshake fails.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context_for(files: CaFiles, *, require_client_cert: bool = False) -> ssl.SSLContext:
    return server_ssl_context(
        files.server_cert, files.server_key, files.ca_cert, require_client_cert=require_client_cert
    )
