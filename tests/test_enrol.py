"""Enrolment end to end: the agent's enrol.py against a real aiohttp HTTPS server.

The server's handlers are as thin as the controller's are to be: parse, call
controller/enrolment.py, answer. The agent makes its key with the system's openssl (or, with
none, receives one), then talks mutual TLS with the certificate it got.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sqlite3
import ssl
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from netcheck.agent import enrol as agent_enrol
from netcheck.agent import httpc
from netcheck.agent.errors import InputError
from netcheck.controller import enrolment, pki
from netcheck.controller.joins import IssuedCerts, JoinTokens

HOSTS = {("prem_esxi", "prem-esxi-1"), ("prem_esxi", "prem-esxi-2"), ("pio", "pio-1")}
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


@dataclass
class Controller:
    url: str
    files: pki.CaFiles
    ca: pki.Ca
    joins: JoinTokens
    issued: IssuedCerts
    revocations: pki.Revocations
    inventory: set[tuple[str, str]]

    def has(self, role: str, host: str) -> bool:
        return (role, host) in self.inventory

    def token(self, role: str, *hosts: str, ttl_s: float = 600, age_s: float = 0) -> str:
        return self.joins.issue(role, hosts, ttl_s, known=self.has, now=time.time() - age_s)


def _peer(request: web.Request) -> pki.Identity | None:
    obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    return pki.identity_of(obj.getpeercert(binary_form=True) if obj is not None else None)


def _answer(c: Controller, cert: bytes, key: bytes | None = None) -> web.Response:
    body = {"certificate": cert.decode(), "ca": c.ca.cert_pem.decode()}
    if key is not None:
        body["key"] = key.decode()
    return web.json_response(body)


def make_app(c: Controller) -> web.Application:
    async def enrol(request: web.Request) -> web.Response:
        try:
            req = enrolment.parse_enrol_request(await request.read())
            args = (c.joins, c.ca, c.has, req.token)
            if req.csr is None:
                key, cert = enrolment.enrol_new_key(
                    *args, time.time(), host=req.host, role=req.role, issued=c.issued
                )
                return _answer(c, cert, key)
            cert = enrolment.enrol(
                *args, req.csr, time.time(), host=req.host, role=req.role, issued=c.issued
            )
            return _answer(c, cert)
        except enrolment.EnrolError as exc:
            return web.json_response(exc.body(), status=exc.status)

    async def renew(request: web.Request) -> web.Response:
        try:
            csr = enrolment.parse_renew_request(await request.read())
            args = (c.ca, _peer(request), c.has, c.revocations)
            if csr is None:
                key, cert = enrolment.renew_new_key(*args, time.time(), issued=c.issued)
                return _answer(c, cert, key)
            return _answer(c, enrolment.renew(*args, csr, time.time(), issued=c.issued))
        except enrolment.EnrolError as exc:
            return web.json_response(exc.body(), status=exc.status)

    async def whoami(request: web.Request) -> web.Response:
        ident = _peer(request)
        if ident is None or ident.serial in c.revocations:
            return web.json_response({"error": "no valid identity"}, status=401)
        return web.json_response({"role": ident.role, "host": ident.host, "serial": ident.serial})

    app = web.Application()
    app.router.add_post(agent_enrol.ENROL_PATH, enrol)
    app.router.add_post(agent_enrol.RENEW_PATH, renew)
    app.router.add_get("/whoami", whoami)
    return app


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    files = pki.init_ca(tmp_path / "ca", ["localhost"], ["127.0.0.1"])
    conn = sqlite3.connect(str(tmp_path / "netcheck.db"), isolation_level=None)
    c = Controller(
        "",
        files,
        pki.load_ca(tmp_path / "ca"),
        JoinTokens(conn),
        IssuedCerts(conn),
        pki.Revocations(),
        set(HOSTS),
    )
    runner = web.AppRunner(make_app(c))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context_for(files))
    await site.start()
    c.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield c
    finally:
        await runner.cleanup()
        conn.close()


async def whoami(c: Controller, state: Path) -> tuple[int, dict[str, object]]:
    ctx = agent_enrol.client_context(state)
    resp = await httpc.request("GET", c.url + "/whoami", ssl_context=ctx, timeout_s=5)
    return resp.status, json.loads(resp.body)


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@needs_openssl
async def test_enrol_then_mutual_tls(controller: Controller, tmp_path: Path) -> None:
    c, state = controller, tmp_path / "agent"
    token = c.token("prem_esxi", "prem-esxi-1")
    path = await agent_enrol.enrol(c.url, token, c.files.ca_cert, state, "prem_esxi", "prem-esxi-1")
    assert path == state / agent_enrol.IDENTITY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in path.read_bytes()
    assert (state / agent_enrol.CA).read_bytes() == c.files.ca_cert.read_bytes()
    assert sorted(p.name for p in state.iterdir()) == ["agent.pem", "ca.pem"]  # no leftovers
    status, body = await whoami(c, state)
    assert (status, body["role"], body["host"]) == (200, "prem_esxi", "prem-esxi-1")
    assert body["serial"] == serial_of(path)
    [row] = c.issued.of_host("prem_esxi", "prem-esxi-1")
    assert row.serial == serial_of(path)


@needs_openssl
async def test_reused_token_refused(controller: Controller, tmp_path: Path) -> None:
    c = controller
    token = c.token("pio", "pio-1")
    await agent_enrol.enrol(c.url, token, c.files.ca_cert, tmp_path / "a", "pio", "pio-1")
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*already used"):
        await agent_enrol.enrol(c.url, token, c.files.ca_cert, tmp_path / "b", "pio", "pio-1")
    assert not (tmp_path / "b").exists()
    assert len(c.issued.of_host("pio", "pio-1")) == 1


@needs_openssl
async def test_expired_token_refused(controller: Controller, tmp_path: Path) -> None:
    c = controller
    token = c.token("pio", "pio-1", ttl_s=300, age_s=301)  # issued 301 s ago, for 300 s
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*expired"):
        await agent_enrol.enrol(c.url, token, c.files.ca_cert, tmp_path / "a", "pio", "pio-1")


@needs_openssl
async def test_token_for_another_host_or_role_refused(
    controller: Controller, tmp_path: Path
) -> None:
    c = controller
    token = c.token("prem_esxi", "prem-esxi-1")
    state = tmp_path / "a"
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*not for host 'prem-esxi-2'"):
        await agent_enrol.enrol(c.url, token, c.files.ca_cert, state, "prem_esxi", "prem-esxi-2")
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*for role 'prem_esxi', not 'pio'"):
        await agent_enrol.enrol(c.url, token, c.files.ca_cert, state, "pio", "prem-esxi-1")
    # Refusals used nothing up.
    await agent_enrol.enrol(c.url, token, c.files.ca_cert, state, "prem_esxi", "prem-esxi-1")


@needs_openssl
async def test_host_removed_from_inventory_refused(controller: Controller, tmp_path: Path) -> None:
    c = controller
    token = c.token("pio", "pio-1")
    c.inventory.discard(("pio", "pio-1"))
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*no longer a pio"):
        await agent_enrol.enrol(c.url, token, c.files.ca_cert, tmp_path / "a", "pio", "pio-1")


@needs_openssl
async def test_controller_not_verified_no_token_sent(
    controller: Controller, tmp_path: Path
) -> None:
    c = controller
    other = pki.init_ca(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    token = c.token("pio", "pio-1")
    with pytest.raises(agent_enrol.EnrolError, match="CERTIFICATE_VERIFY_FAILED"):
        await agent_enrol.enrol(c.url, token, other.ca_cert, tmp_path / "a", "pio", "pio-1")
    c.joins.check(token, "pio-1", time.time())  # the token never reached the controller
    with pytest.raises(InputError, match="https"):
        plain = c.url.replace("https", "http")
        await agent_enrol.enrol(plain, token, c.files.ca_cert, tmp_path / "a", "pio", "pio-1")


@needs_openssl
async def test_renewal_over_mutual_tls_then_revocation(
    controller: Controller, tmp_path: Path
) -> None:
    c, state = controller, tmp_path / "agent"
    token = c.token("prem_esxi", "prem-esxi-2")
    path = await agent_enrol.enrol(c.url, token, c.files.ca_cert, state, "prem_esxi", "prem-esxi-2")
    first_serial, first_key = serial_of(path), path.read_bytes().split(b"-----BEGIN CERT")[0]
    await agent_enrol.renew(c.url, state, "prem_esxi", "prem-esxi-2")
    assert serial_of(path) != first_serial
    assert path.read_bytes().split(b"-----BEGIN CERT")[0] != first_key  # a new key too
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, body = await whoami(c, state)
    assert (status, body["serial"]) == (200, serial_of(path))
    # Revoking the host: both its certificates, at once; renewal refused too.
    c.revocations.revoke(*c.issued.revoke_host("prem_esxi", "prem-esxi-2", time.time()))
    assert (await whoami(c, state))[0] == 401
    with pytest.raises(agent_enrol.EnrolError, match=r"403 .*revoked"):
        await agent_enrol.renew(c.url, state, "prem_esxi", "prem-esxi-2")


async def test_renewal_needs_a_client_certificate(controller: Controller, tmp_path: Path) -> None:
    c = controller
    ctx = agent_enrol.server_verifying_context(c.files.ca_cert)
    resp = await httpc.request(
        "POST", c.url + agent_enrol.RENEW_PATH, body=b'{"key": "controller"}', ssl_context=ctx
    )
    assert resp.status == 403
    assert json.loads(resp.body)["error"] == "unknown"


async def test_without_openssl_the_controller_makes_the_key(
    controller: Controller, tmp_path: Path
) -> None:
    c, state = controller, tmp_path / "agent"
    token = c.token("pio", "pio-1")
    path = await agent_enrol.enrol(
        c.url, token, c.files.ca_cert, state, "pio", "pio-1", openssl=None
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await whoami(c, state))[1]["host"] == "pio-1"
    before = serial_of(path)
    await agent_enrol.renew(c.url, state, "pio", "pio-1", openssl="no-such-openssl-command")
    assert serial_of(path) != before
    assert (await whoami(c, state))[0] == 200


async def test_bad_requests_are_400_and_change_nothing(controller: Controller) -> None:
    c = controller
    token = c.token("pio", "pio-1")
    ctx = agent_enrol.server_verifying_context(c.files.ca_cert)
    bodies = [
        b"not json",
        b"[]",
        json.dumps({"token": token, "host": "pio-1"}).encode(),  # neither CSR nor key
        json.dumps({"token": token, "host": "pio-1", "csr": "junk"}).encode(),
        json.dumps({"token": token, "host": "pio-1", "csr": None, "key": "x"}).encode(),
        json.dumps({"token": token, "host": "pio-1", "key": "controller", "x": 1}).encode(),
        b"{" + b" " * enrolment.MAX_BODY + b"}",
    ]
    for body in bodies:
        resp = await httpc.request(
            "POST", c.url + agent_enrol.ENROL_PATH, body=body, ssl_context=ctx, timeout_s=5
        )
        assert resp.status == 400, body[:60]
        assert json.loads(resp.body)["error"] in ("bad-request", "bad-csr")
    c.joins.check(token, "pio-1", time.time())  # still unused


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_enrol_function_checks_the_csr_before_using_the_token(controller: Controller) -> None:
    c, now = controller, time.time()
    token = c.token("pio", "pio-1")
    good = _csr(ec.generate_private_key(ec.SECP256R1()))
    tampered = good.replace(good.splitlines()[3], good.splitlines()[3][::-1])
    with pytest.raises(enrolment.EnrolError) as exc:
        enrolment.enrol(c.joins, c.ca, c.has, token, tampered, now, host="pio-1")
    assert (exc.value.reason, exc.value.status) == ("bad-csr", 400)
    cert = enrolment.enrol(c.joins, c.ca, c.has, token, good, now, host="pio-1", days=7)
    parsed = x509.load_pem_x509_certificate(cert)
    assert parsed.not_valid_after_utc - parsed.not_valid_before_utc == datetime.timedelta(
        days=7, minutes=5
    )


@needs_openssl
def test_needs_renewal_reads_the_validity(controller: Controller, tmp_path: Path) -> None:
    c = controller
    key, csr = agent_enrol.make_key_and_csr("openssl", "pio", "pio-1")
    t0 = datetime.datetime(2031, 3, 1, tzinfo=datetime.UTC)
    cert = pki.sign_csr(c.ca, csr, pki.AgentName("pio", "pio-1"), days=30, now=t0)
    path = agent_enrol.save_identity(tmp_path, key, cert, c.ca.cert_pem)
    parsed = x509.load_pem_x509_certificate(cert)
    assert agent_enrol.validity(path) == (
        parsed.not_valid_before_utc.timestamp(),
        parsed.not_valid_after_utc.timestamp(),
    )
    day = 86400.0
    start = t0.timestamp()
    assert not agent_enrol.needs_renewal(path, start + 19 * day)  # 11 of 30 days left
    assert agent_enrol.needs_renewal(path, start + 21 * day)  # 9 days left: under a third
    assert agent_enrol.needs_renewal(path, start + 31 * day)
    assert not agent_enrol.needs_renewal(path, start + 21 * day, fraction=0.25)
    assert agent_enrol.needs_renewal(tmp_path / "missing.pem", start)
    (tmp_path / "junk.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    assert agent_enrol.needs_renewal(tmp_path / "junk.pem", start)


@needs_openssl
def test_key_file_is_private_and_mismatched_certificate_refused(
    controller: Controller, tmp_path: Path
) -> None:
    c = controller
    key, csr = agent_enrol.make_key_and_csr("openssl", "pio", "pio-1")
    assert b"PRIVATE KEY" in key and b"CERTIFICATE REQUEST" in csr
    pki.load_csr(csr)  # a CSR the controller accepts
    _, other_csr = agent_enrol.make_key_and_csr("openssl", "pio", "pio-1")
    wrong = pki.sign_csr(c.ca, other_csr, pki.AgentName("pio", "pio-1"))
    with pytest.raises(agent_enrol.EnrolError, match="does not match the key"):
        agent_enrol.save_identity(tmp_path / "s", key, wrong, c.ca.cert_pem)
    assert not (tmp_path / "s" / agent_enrol.IDENTITY).exists()
    assert [p.name for p in (tmp_path / "s").iterdir()] == []  # the check file is gone
    path = agent_enrol.save_identity(
        tmp_path / "s", key, pki.sign_csr(c.ca, csr, pki.AgentName("pio", "pio-1")), c.ca.cert_pem
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ssl.create_default_context().load_cert_chain(str(path))
