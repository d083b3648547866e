"""The site CA on real TLS: handshakes on 127.0.0.1 with certificates controller/pki.py makes.

The server is aiohttp with ``server_ssl_context`` (CERT_OPTIONAL); the client is the agent's
own HTTP client with a stdlib ``ssl`` context, as in production.
"""

from __future__ import annotations

import datetime
import json
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from netcheck.agent import httpc
from netcheck.controller import pki

UTC = datetime.UTC


def key_and_csr(cn: str = "ignored") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("netcheck://agent/x/y")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def client_ctx(
    tmp: Path,
    ca_file: Path,
    key: ec.EllipticCurvePrivateKey | None = None,
    cert: bytes | None = None,
    tls: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if tls is not None:
        ctx.minimum_version = ctx.maximum_version = tls
    if key is not None and cert is not None:
        both = tmp / f"client-{x509.load_pem_x509_certificate(cert).serial_number:x}.pem"
        both.write_bytes(key_pem(key) + cert)
        ctx.load_cert_chain(str(both))
    return ctx


@pytest.fixture
def site(tmp_path: Path) -> tuple[pki.CaFiles, pki.Ca]:
    files = pki.init_ca(tmp_path / "ca", ["localhost", "netcheck.example"], ["127.0.0.1", "::1"])
    return files, pki.load_ca(tmp_path / "ca")


Served = tuple[str, list[dict[str, object]], pki.Revocations]


@pytest.fixture
async def served(site: tuple[pki.CaFiles, pki.Ca]) -> AsyncIterator[Served]:
    """An HTTPS server answering with the identity its TLS peer's certificate names."""
    files, _ = site
    seen: list[dict[str, object]] = []
    revocations = pki.Revocations()

    async def whoami(request: web.Request) -> web.Response:
        obj = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        ident = pki.identity_of(der)
        assert ident == pki.identity_of(peer)  # both forms read the same
        answer: dict[str, object] = {"identity": None}
        if ident is not None:
            answer = {
                "identity": [ident.role, ident.host],
                "serial": ident.serial,
                "revoked": revocations.is_revoked(ident),
                "fingerprint": pki.fingerprint(der) if der else None,
            }
        seen.append(answer)
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site_ = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context_for(files))
    await site_.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}/whoami", seen, revocations
    finally:
        await runner.cleanup()


async def get(url: str, ctx: ssl.SSLContext) -> dict[str, object]:
    resp = await httpc.request("GET", url, ssl_context=ctx, timeout_s=5)
    assert resp.status == 200
    out: dict[str, object] = json.loads(resp.body)
    return out


# -- files -----------------------------------------------------------------------------------


def test_init_ca_files_modes_and_refusal(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    files = pki.init_ca(d, ["localhost"], ["127.0.0.1"])
    for key in (files.ca_key, files.server_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_cert.stat().st_mode) == 0o644
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporary left
    first = files.ca_cert.read_bytes()
    with pytest.raises(pki.PkiError, match="already there"):
        pki.init_ca(d, ["localhost"], ["127.0.0.1"])
    assert files.ca_cert.read_bytes() == first  # refused: nothing changed
    pki.init_ca(d, ["localhost"], ["127.0.0.1"], force=True)
    assert files.ca_cert.read_bytes() != first
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600


def test_init_ca_bad_address_changes_nothing(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="not an IP address"):
        pki.init_ca(tmp_path / "ca", ["localhost"], ["198.18.1.300"])
    assert not (tmp_path / "ca").exists()


def test_server_certificate_sans_and_usage(site: tuple[pki.CaFiles, pki.Ca]) -> None:
    files, ca = site
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "netcheck.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca.cert)


def test_client_certificate_ignores_the_csr(site: tuple[pki.CaFiles, pki.Ca]) -> None:
    _, ca = site
    key, csr = key_and_csr("evil-host")
    now = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    pem = pki.sign_csr(ca, csr, pki.AgentName("prem_esxi", "prem-esxi-1"), days=30, now=now)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.rfc4514_string() == "CN=prem-esxi-1,OU=prem_esxi,O=netcheck"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "netcheck://agent/prem_esxi/prem-esxi-1"
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - now == datetime.timedelta(days=30)
    assert cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ident = pki.identity_of(cert.public_bytes(serialization.Encoding.DER))
    assert ident == pki.Identity(
        "prem_esxi", "prem-esxi-1", cert.serial_number, cert.not_valid_after_utc
    )
    other = pki.sign_csr(ca, csr, pki.AgentName("prem_esxi", "prem-esxi-1"), now=now)
    assert x509.load_pem_x509_certificate(other).serial_number != cert.serial_number


def test_bad_names_refused() -> None:
    for role, host in (("prem_esxi", "a/b"), ("../x", "h"), ("r", ""), ("r", "h\n")):
        with pytest.raises(pki.PkiError):
            pki.AgentName(role, host)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _csr_signed_by(
    info_of: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
) -> bytes:
    """A CSR naming `info_of`'s public key, its signature made by `signer`."""
    info = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(info_of, hashes.SHA256())
        .tbs_certrequest_bytes
    )
    sig = signer.sign(info, ec.ECDSA(hashes.SHA256()))
    algo = bytes.fromhex("300a06082a8648ce3d040302")  # ecdsa-with-SHA256
    bits = b"\x03" + _der_len(len(sig) + 1) + b"\x00" + sig
    body = info + algo + bits
    der = b"\x30" + _der_len(len(body)) + body
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def test_csr_signed_by_another_key_refused(site: tuple[pki.CaFiles, pki.Ca]) -> None:
    _, ca = site
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = pki.AgentName("pio", "pio-1")
    pki.sign_csr(ca, _csr_signed_by(a, a), name)  # the forging helper makes good ones too
    with pytest.raises(pki.PkiError, match="signature does not match"):
        pki.sign_csr(ca, _csr_signed_by(a, b), name)


def test_csr_garbage_and_weak_keys_refused(site: tuple[pki.CaFiles, pki.Ca]) -> None:
    _, ca = site
    name = pki.AgentName("pio", "pio-1")
    with pytest.raises(pki.PkiError, match="not a PEM"):
        pki.sign_csr(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", name)
    key = ec.generate_private_key(ec.SECP256K1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(pki.PkiError, match="secp256k1 not accepted"):
        pki.sign_csr(ca, csr, name)


def test_fingerprint_compare() -> None:
    fp = pki.fingerprint(b"abc")
    assert fp == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    colons = ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()
    assert pki.same_fingerprint(fp, colons)
    assert not pki.same_fingerprint(fp, pki.fingerprint(b"abd"))


# -- real handshakes -------------------------------------------------------------------------

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("tls", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_good_client_certificate_accepted(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served, tls: ssl.TLSVersion
) -> None:
    files, ca = site
    url, seen, _ = served
    key, csr = key_and_csr()
    cert = pki.sign_csr(ca, csr, pki.AgentName("prem_esxi", "prem-esxi-2"))
    answer = await get(url, client_ctx(tmp_path, files.ca_cert, key, cert, tls))
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    assert answer == {
        "identity": ["prem_esxi", "prem-esxi-2"],
        "serial": x509.load_pem_x509_certificate(cert).serial_number,
        "revoked": False,
        "fingerprint": pki.fingerprint(der),
    }
    assert len(seen) == 1


async def test_no_client_certificate_is_no_identity(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served
) -> None:
    files, _ = site
    url, _, _ = served
    assert await get(url, client_ctx(tmp_path, files.ca_cert)) == {"identity": None}


async def test_server_name_verified_by_the_client(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served
) -> None:
    files, _ = site
    url, _, _ = served
    other = pki.init_ca(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await get(url, client_ctx(tmp_path, other.ca_cert))
    # The right CA and a name the certificate carries: "localhost" instead of the address.
    resp = await httpc.request(
        "GET",
        url.replace("127.0.0.1", "localhost"),
        ssl_context=client_ctx(tmp_path, files.ca_cert),
    )
    assert resp.status == 200


async def refused(url: str, ctx: ssl.SSLContext, seen: list[dict[str, object]]) -> None:
    """The handshake fails: at once (TLS 1.2), or at the first read (TLS 1.3's late alert)."""
    with pytest.raises((OSError, EOFError, httpc.HttpError)):  # ssl.SSLError is an OSError
        await httpc.request("GET", url, ssl_context=ctx, timeout_s=5)
    assert seen == []  # the request never reached the application


@pytest.mark.parametrize("tls", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_certificate_from_another_ca_refused(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served, tls: ssl.TLSVersion
) -> None:
    files, _ = site
    url, seen, _ = served
    pki.init_ca(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    other = pki.load_ca(tmp_path / "other")
    key, csr = key_and_csr()
    # The very identity a real agent has, from a CA the controller does not trust.
    cert = pki.sign_csr(other, csr, pki.AgentName("prem_esxi", "prem-esxi-2"))
    await refused(url, client_ctx(tmp_path, files.ca_cert, key, cert, tls), seen)


@pytest.mark.parametrize("tls", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
async def test_expired_certificate_refused(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served, tls: ssl.TLSVersion
) -> None:
    files, ca = site
    url, seen, _ = served
    key, csr = key_and_csr()
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=31)
    cert = pki.sign_csr(ca, csr, pki.AgentName("pio", "pio-1"), days=30, now=past)
    assert x509.load_pem_x509_certificate(cert).not_valid_after_utc < datetime.datetime.now(UTC)
    await refused(url, client_ctx(tmp_path, files.ca_cert, key, cert, tls), seen)


async def test_server_certificate_is_no_client_certificate(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served
) -> None:
    files, _ = site
    url, seen, _ = served
    ctx = client_ctx(tmp_path, files.ca_cert)
    ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
    await refused(url, ctx, seen)  # serverAuth only: OpenSSL's ssl_client purpose check


async def test_revoked_serial_flagged_at_once(
    tmp_path: Path, site: tuple[pki.CaFiles, pki.Ca], served: Served
) -> None:
    files, ca = site
    url, _, revocations = served
    key, csr = key_and_csr()
    cert = pki.sign_csr(ca, csr, pki.AgentName("pio", "pio-1"))
    serial = x509.load_pem_x509_certificate(cert).serial_number
    ctx = client_ctx(tmp_path, files.ca_cert, key, cert)
    assert (await get(url, ctx))["revoked"] is False
    revocations.revoke(serial)
    assert (await get(url, ctx))["revoked"] is True  # the next request, no restart, no CRL
    assert serial in revocations and len(revocations) == 1


def test_identity_of_refuses_non_agent_certificates(site: tuple[pki.CaFiles, pki.Ca]) -> None:
    files, ca = site
    server_der = x509.load_pem_x509_certificate(files.server_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert pki.identity_of(server_der) is None  # no netcheck URI
    assert pki.identity_of(None) is None
    assert pki.identity_of(b"") is None
    assert pki.identity_of(b"\x30\x03garbage") is None

    def forged(build: Callable[[x509.CertificateBuilder], x509.CertificateBuilder]) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(7)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        return build(builder).sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "pio"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pio-1"),
        ]
    )

    def with_uris(*uris: str) -> Callable[[x509.CertificateBuilder], x509.CertificateBuilder]:
        san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        return lambda b: b.subject_name(subject).add_extension(san, critical=False)

    assert pki.identity_of(forged(with_uris("netcheck://agent/pio/pio-1"))) is not None
    # The URI and the subject must agree, and there must be exactly one agent URI.
    assert pki.identity_of(forged(with_uris("netcheck://agent/pio/pio-2"))) is None
    two = with_uris("netcheck://agent/pio/pio-1", "netcheck://agent/pio/pio-2")
    assert pki.identity_of(forged(two)) is None
