"""Trust end to end: a real `netcheck-controller serve --pki` process, real TLS handshakes.

The CA, the server certificate, the join tokens and the revocations are made by the
project's own commands (`ca init`, `enrol`, `revoke`, each its own process); the agents'
keys and CSRs by `cryptography`, their certificates by the controller's enrolment endpoint.
The client is the standard library's http.client with ssl contexts loading those files.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.client
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from check_helpers import result_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from port_helpers import free_port

from netcheck.agent.wire import Registration, ResultBatch, check_id, encode
from netcheck.controller import pki
from netcheck.controller.expand import ExpectedCheck, expand, listen_specs
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.spec import Spec, load_spec

REPO = Path(__file__).resolve().parent.parent
TOPO, INV = str(REPO / "topology.yaml"), str(REPO / "inventory.example.yaml")
SPEC_ARGS = ["--topology", TOPO, "--inventory", INV]
READ_TOKEN = "read-token-0123456789abcdef"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "netcheck.controller", *argv],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@dataclass
class Site:
    dir: Path
    pki: Path
    db: Path
    port: int
    spec: Spec
    inv: Inventory

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / pki.CA_CERT))
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        return ctx

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ctx: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; a 429 (past the per-source refusal limit) waits and tries again."""
        for _ in range(30):
            status, answer, retry_after = self._once(method, path, body, ctx, headers)
            if status != 429:
                return status, answer
            assert retry_after >= 1
            time.sleep(retry_after)
        raise AssertionError("still 429 after 30 tries")

    def _once(
        self,
        method: str,
        path: str,
        body: Any,
        ctx: ssl.SSLContext | None,
        headers: dict[str, str] | None,
    ) -> tuple[int, Any, int]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=ctx or self.context(), timeout=10
        )
        try:
            data = json.dumps(body).encode() if body is not None else None
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            retry_after = int(resp.headers.get("Retry-After") or 0)
            try:
                return resp.status, json.loads(raw), retry_after
            except ValueError:
                return resp.status, raw.decode(errors="replace"), retry_after
        finally:
            conn.close()

    def read(self, path: str) -> Any:
        status, body = self.request("GET", path, headers={"Authorization": f"Bearer {READ_TOKEN}"})
        assert status == 200, body
        return body

    def stored(self) -> tuple[int, int, int]:
        """(results, agents, counters total) straight from the SQLite file."""
        with closing(sqlite3.connect(self.db)) as c:
            (n,) = c.execute("SELECT count(*) FROM results").fetchone()
            (a,) = c.execute("SELECT count(*) FROM agents").fetchone()
            (t,) = c.execute("SELECT coalesce(sum(value), 0) FROM counters").fetchone()
        return int(n), int(a), int(t)

    def join_token(self, role: str, host: str) -> str:
        out = cli("enrol", "--db", str(self.db), *SPEC_ARGS, "--role", role, "--host", host)
        (line,) = out.stdout.splitlines()
        name, token = line.split()
        assert name == host
        return token

    def enrol(self, role: str, host: str) -> tuple[Path, Path]:
        """A key made here, a CSR, a join token from `enrol`, the certificate from the API."""
        key_path, cert_path = self.dir / f"{host}.key", self.dir / f"{host}.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .sign(key, hashes.SHA256())
        )
        body = {
            "token": self.join_token(role, host),
            "host": host,
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        }
        status, answer = self.request("POST", "/api/v1/enrol", body)
        assert status == 200, answer
        assert answer["ca"] == (self.pki / pki.CA_CERT).read_text()
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_path.write_text(answer["certificate"])
        return cert_path, key_path

    def agent(self, role: str, host: str) -> ssl.SSLContext:
        return self.context(*self.enrol(role, host))

    def address(self, host: str) -> str:
        found = self.inv.by_name(host)
        assert found is not None
        return found[1].address

    def checks_of(self, host: str) -> list[ExpectedCheck]:
        return [c for c in expand(self.spec, self.inv) if c.src_host == host]


def registration(role: str, host: str, address: str) -> dict[str, Any]:
    return encode(Registration(role, host, address, "0.1", "connect"))  # type: ignore[no-any-return]


def results_batch(role: str, host: str, checks: list[ExpectedCheck], **kw: Any) -> dict[str, Any]:
    now = time.time()
    results = tuple(result_for(c, "open", started_at=now - 1, attempts=1) for c in checks)
    return encode(ResultBatch(role, host, results=results, sent_at=now, **kw))  # type: ignore[no-any-return]


def wait_up(site: Site, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(150):
        if proc.poll() is not None:
            pytest.fail(f"the controller exited: {proc.stderr.read() if proc.stderr else ''!r}")
        try:
            if site.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("the controller did not start")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("trust")
    out = cli("ca", "init", "--pki", str(d / "pki"))
    assert "SHA-256 fingerprint" in out.stdout and "PRIVATE KEY" not in out.stdout
    assert (d / "pki" / pki.CA_KEY).stat().st_mode & 0o077 == 0
    (d / "read-token").write_text(READ_TOKEN + "\n")
    spec = load_spec(TOPO)
    s = Site(d, d / "pki", d / "nc.db", free_port(), spec, load_inventory(INV, spec))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "netcheck.controller", "serve", *SPEC_ARGS),
            *("--db", str(s.db), "--listen", f"127.0.0.1:{s.port}", "--pki", str(s.pki)),
            *("--read-token-file", str(d / "read-token")),
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_up(s, proc)
        yield s
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert READ_TOKEN.encode() not in err and b"PRIVATE KEY" not in err


def test_without_a_certificate_enrolment_works_and_agent_endpoints_refuse(site: Site) -> None:
    status, body = site.request("POST", "/api/v1/register", registration("pio", "pio-1", "x"))
    assert (status, body["reason"]) == (401, "auth")
    assert "client certificate is required" in body["error"]
    assert site.request("POST", "/api/v1/results", results_batch("pio", "pio-1", []))[0] == 401
    assert site.request("GET", "/api/v1/plan?role=pio&host=pio-1")[0] == 401
    ctx = site.agent("prem_vm", "web-01")  # enrolment needs no client certificate
    reg = registration("prem_vm", "web-01", site.address("web-01"))
    status, plan = site.request("POST", "/api/v1/register", reg, ctx=ctx)
    assert (status, plan["host"]) == (200, "web-01")


def test_a_join_token_works_once(site: Site) -> None:
    token = site.join_token("prem_vm", "db-01")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    body = {"token": token, "host": "db-01", "csr": csr}
    assert site.request("POST", "/api/v1/enrol", body)[0] == 200
    status, answer = site.request("POST", "/api/v1/enrol", body)
    assert (status, answer["error"]) == (403, "used")
    status, answer = site.request("POST", "/api/v1/enrol", {**body, "token": "x" * 12 + ".y"})
    assert status == 403


def handshake_refused(site: Site, ctx: ssl.SSLContext) -> bool:
    reg = registration("pio", "pio-1", site.address("pio-1"))
    try:
        status, _ = site.request("POST", "/api/v1/register", reg, ctx=ctx)
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return True
    raise AssertionError(f"the handshake was accepted (status {status})")


def test_a_certificate_of_another_ca_or_expired_fails_the_handshake(
    site: Site, tmp_path: Path
) -> None:
    other = pki.init_ca(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    key_path = tmp_path / "k.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    name = pki.AgentName("pio", "pio-1")
    foreign = tmp_path / "foreign.pem"
    foreign.write_bytes(pki.sign_csr(pki.load_ca(other.ca_cert.parent), csr, name))
    assert handshake_refused(site, site.context(foreign, key_path))
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40)
    expired = tmp_path / "expired.pem"
    expired.write_bytes(pki.sign_csr(pki.load_ca(site.pki), csr, name, 1, now=past))
    assert handshake_refused(site, site.context(expired, key_path))


def test_a_revoked_certificate_is_refused_at_the_next_request(site: Site) -> None:
    ctx = site.agent("cloud_vm", "cloud-vm-2")
    reg = registration("cloud_vm", "cloud-vm-2", site.address("cloud-vm-2"))
    assert site.request("POST", "/api/v1/register", reg, ctx=ctx)[0] == 200
    out = cli("revoke", "--db", str(site.db), "--host", "cloud-vm-2")
    assert out.stdout.startswith("revoked cloud-vm-2 cert:")
    status, body = site.request("POST", "/api/v1/register", reg, ctx=ctx)
    assert (status, body["reason"]) == (401, "revoked")
    status, body = site.request("POST", "/api/v1/renew", {"key": "controller"}, ctx=ctx)
    assert status == 401


def test_renewal_keeps_the_identity(site: Site) -> None:
    ctx = site.agent("cloud_vm", "cloud-vm-1")
    status, answer = site.request("POST", "/api/v1/renew", {"key": "controller"}, ctx=ctx)
    assert status == 200, answer
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ident = pki.identity_of(cert.public_bytes(serialization.Encoding.DER))
    assert ident is not None and (ident.role, ident.host) == ("cloud_vm", "cloud-vm-1")
    assert answer["not_after"] == int(cert.not_valid_after_utc.timestamp())


def test_one_host_cannot_speak_for_another(site: Site) -> None:
    ctx = site.agent("pio", "pio-1")
    reg = registration("pio", "pio-1", site.address("pio-1"))
    assert site.request("POST", "/api/v1/register", reg, ctx=ctx)[0] == 200
    before, gate = site.stored(), site.read("/api/v1/gate?mode=deployment")
    mgr = site.checks_of("prem-mgr")
    # B's results under B's name, with A's certificate.
    status, body = site.request(
        "POST", "/api/v1/results", results_batch("prem_manager", "prem-mgr", mgr), ctx=ctx
    )
    assert (status, body["reason"]) == (403, "identity")
    # A check outside A's plan, with A as its source.
    c = mgr[0]
    outside = dataclasses.replace(
        result_for(c, "open", started_at=time.time() - 1, attempts=1),
        src_host="pio-1",
        src_address=site.address("pio-1"),
        check_id=check_id(c.spec.interaction, "pio-1", c.spec.dst_host, c.spec.port),
    )
    planned = {x.spec.check_id for x in site.checks_of("pio-1")}
    assert outside.check_id not in planned
    b = encode(ResultBatch("pio", "pio-1", results=(outside,), sent_at=time.time()))
    status, body = site.request("POST", "/api/v1/results", b, ctx=ctx)
    assert (status, body["reason"]) == (403, "plan"), body
    # Listener states for a port pio does not hold.
    held = {ls.port for ls in listen_specs(site.spec, "pio")}
    port = next(p for p in range(1, 65536) if p not in held)
    listeners = [{"port": port, "state": "listening", "since": 1.0, "owner": "", "error": ""}]
    b = {**results_batch("pio", "pio-1", []), "listeners": listeners}
    status, body = site.request("POST", "/api/v1/results", b, ctx=ctx)
    assert (status, body["reason"]) == (403, "listener"), body
    # A registration with a foreign address.
    status, body = site.request(
        "POST", "/api/v1/register", registration("pio", "pio-1", "198.18.9.9"), ctx=ctx
    )
    assert (status, body["reason"]) == (403, "address")
    assert body["error"] == (
        "address 198.18.9.9 is not the inventory's address 198.18.1.10 for host pio-1"
    )
    assert site.stored() == before
    assert site.read("/api/v1/gate?mode=deployment")["blocking"] == gate["blocking"]
    report = site.read("/api/v1/report?format=json")
    refused = [r for r in report["refused_registrations"] if r["host"] == "pio-1"]
    assert refused[-1]["address"] == "198.18.9.9" and refused[-1]["expected"] == "198.18.1.10"
    assert refused[-1]["sent_by"].startswith("cert:")
    metrics = site.read("/metrics")
    for reason in ("identity", "plan", "listener", "address"):
        line = f'netcheck_refusals_total{{reason="{reason}"}} '
        assert float(metrics.split(line)[1].split()[0]) >= 1
    # A's own planned results are accepted, and say who sent them.
    mine = site.checks_of("pio-1")
    status, body = site.request(
        "POST", "/api/v1/results", results_batch("pio", "pio-1", mine), ctx=ctx
    )
    assert (status, body["accepted"]) == (200, len(mine))
    rows = {r["check_id"]: r for r in site.read("/api/v1/report?format=json")["checks"]}
    serial = x509.load_pem_x509_certificate((site.dir / "pio-1.pem").read_bytes()).serial_number
    assert {rows[c.spec.check_id]["sent_by"] for c in mine} == {f"cert:{serial:x}"}
    gate = site.read("/api/v1/gate?mode=deployment")
    assert gate["sent_by"][f"cert:{serial:x}"] >= 1


def test_the_forgery_of_the_issue_leaves_the_gate_no_go(site: Site) -> None:
    """One real agent's credential: register as every host, post "open" for everything."""
    ctx = site.agent("prem_esxi_manager", "prem-esxi-mgr")
    before = site.stored()
    assert site.read("/api/v1/gate?mode=deployment")["decision"] == "no-go"
    refused, tried = 0, 0
    for role in site.spec.roles:
        for h in site.inv.of_role(role):
            if h.name == "prem-esxi-mgr" or not site.spec.roles[role].agent:
                continue
            tried += 2
            reg = registration(role, h.name, h.address)
            refused += site.request("POST", "/api/v1/register", reg, ctx=ctx)[0] == 403
            batch = results_batch(role, h.name, site.checks_of(h.name))
            refused += site.request("POST", "/api/v1/results", batch, ctx=ctx)[0] == 403
    assert refused == tried > 10
    assert site.stored() == before
    assert site.read("/api/v1/gate?mode=deployment")["decision"] == "no-go"


def test_reads_need_the_read_token(site: Site) -> None:
    for path in ("/", "/api/v1/report", "/api/v1/gate?mode=deployment", "/metrics"):
        status, _ = site.request("GET", path)
        assert status == 401, path
        assert site.request("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
        bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert site.request("GET", path, headers=bearer)[0] == 200, path
        basic = base64.b64encode(f"prometheus:{READ_TOKEN}".encode()).decode()
        assert site.request("GET", path, headers={"Authorization": f"Basic {basic}"})[0] == 200
    assert site.request("GET", "/healthz")[0] == 200


def test_open_reads_and_the_insecure_warning(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("agent-token-0123456789\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "netcheck.controller", "serve", *SPEC_ARGS),
            *("--db", str(tmp_path / "o.db"), "--listen", f"127.0.0.1:{port}"),
            *("--insecure-http", "--token-file", str(tmp_path / "token"), "--open-reads"),
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(150):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/v1/gate?mode=deployment")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                break
            except OSError:
                time.sleep(0.1)
        assert resp.status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"WARNING: --insecure-http" in err
    assert b"agent-token-0123456789" not in err


def test_an_agent_is_not_throttled_by_refusals_from_its_source(site: Site) -> None:
    """Past the per-source limit, anonymous requests get 429; a verified agent at the same
    address (agents behind one NAT) still gets its answer."""
    ctx = site.agent("cloud_cache", "cloud-cache")
    reg = registration("cloud_cache", "cloud-cache", site.address("cloud-cache"))
    statuses = [site._once("GET", "/metrics", None, None, None)[0] for _ in range(40)]
    assert 429 in statuses, statuses
    status, _, _ = site._once("POST", "/api/v1/register", reg, ctx, None)
    assert status == 200
    assert site._once("GET", "/metrics", None, None, None)[0] == 429


def test_agents_enrolling_at_once_all_get_a_certificate(site: Site) -> None:
    """Enrolments race each other and the revocation check of agents' requests (one ledger
    connection, used from the event loop and from worker threads): every one succeeds."""
    import concurrent.futures

    hosts = [("user", "admin-ws"), ("prem_manager", "prem-mgr"), ("cloud_manager", "cloud-mgr")]
    tokens = {host: site.join_token(role, host) for role, host in hosts}
    busy = site.agent("prem_vm", "db-01")

    def enrol(host: str) -> int:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .sign(key, hashes.SHA256())
        )
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        body = {"token": tokens[host], "host": host, "csr": pem}
        return site.request("POST", "/api/v1/enrol", body)[0]

    def poll() -> int:
        return site.request("GET", "/api/v1/plan?role=prem_vm&host=db-01", ctx=busy)[0]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        polls = [pool.submit(poll) for _ in range(12)]
        enrolled = list(pool.map(enrol, tokens))
    assert enrolled == [200, 200, 200]
    assert {f.result() for f in polls} == {200}


def test_a_busy_database_at_enrolment_is_503_and_the_token_stays_good(site: Site) -> None:
    """Another writer holds the database past the busy timeout: 503 with Retry-After (the
    agent tries again), not 500, and the join token is not used up."""
    token = site.join_token("cloud_vm", "cloud-vm-1")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloud-vm-1")]))
        .sign(key, hashes.SHA256())
    )
    body = {
        "token": token,
        "host": "cloud-vm-1",
        "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
    }
    blocker = sqlite3.connect(site.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        status, answer, retry_after = site._once("POST", "/api/v1/enrol", body, None, None)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert (status, retry_after) == (503, 1), answer
    assert site.request("POST", "/api/v1/enrol", body)[0] == 200
