"""The agent's side of trust (issue 11), with real TLS and real processes.

``netcheck-agent enrol`` and ``serve`` run as subprocesses against a real HTTPS server on
127.0.0.1 whose certificates come from controller/pki.py (``init_ca``) and whose join tokens
live in a real SQLite file (controller/joins.py). The server is test_enrol's (thin handlers
over controller/enrolment.py) plus register/results handlers that accept only a verified,
unrevoked client certificate naming the host the body speaks for, and record its serial.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import signal
import sqlite3
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from port_helpers import free_ports
from test_enrol import HOSTS, Controller, make_app

from netcheck.agent import enrol as agent_enrol
from netcheck.agent.wire import (
    CheckSpec,
    ListenSpec,
    Plan,
    Registration,
    ResultBatch,
    decode,
    encode,
)
from netcheck.controller import pki
from netcheck.controller.joins import IssuedCerts, JoinTokens

REPO = Path(__file__).resolve().parent.parent
ROLE, HOST, ADDR = "pio", "pio-1", "127.0.0.41"
IDENT = ("--role", ROLE, "--host", HOST)
needs_openssl = pytest.mark.skipif(
    not any((Path(d) / "openssl").exists() for d in os.get_exec_path()), reason="no openssl"
)


def self_probing_plan(ports: list[int], period_s: float = 300.0) -> Plan:
    """pio-1 holds `ports` on ADDR and probes each of them."""
    listen = tuple(ListenSpec(port=p, service="tcp") for p in ports)
    checks = tuple(
        CheckSpec(
            check_id=f"4:{HOST}>{HOST}:{p}",
            interaction=4,
            dst_role=ROLE,
            dst_host=HOST,
            dst_address=ADDR,
            port=p,
            service="tcp",
        )
        for p in ports
    )
    return Plan(
        role=ROLE, host=HOST, address=ADDR, listen=listen, checks=checks, period_s=period_s,
        timeout_s=1.0, retries=0,
    )  # fmt: skip


@dataclass
class Site:
    """The HTTPS server and what it saw: (serial, body) of each accepted request."""

    ctl: Controller
    plan: Plan
    registrations: list[tuple[int, Registration]] = field(default_factory=list)
    batches: list[tuple[int, ResultBatch]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    renew_failures: int = 0  # answer the next renewals 503
    enrol_failures: int = 0  # answer the next enrolments 503
    renewals: int = 0
    first_batch: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return self.ctl.url

    @property
    def ca(self) -> Path:
        return self.ctl.files.ca_cert

    def token(self, host: str = HOST) -> str:
        return self.ctl.token(ROLE, host)

    def serials(self) -> list[int]:
        return [s for s, _ in self.batches]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _identity(request: web.Request) -> pki.Identity | None:
    obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    return pki.identity_of(obj.getpeercert(binary_form=True) if obj is not None else None)


def add_agent_routes(app: web.Application, site: Site) -> None:
    def who(request: web.Request, role: str, host: str) -> pki.Identity | web.Response:
        ident = _identity(request)
        if ident is None or ident.serial in site.ctl.revocations:
            return web.json_response({"error": "no valid client certificate"}, status=401)
        if (ident.role, ident.host) != (role, host):
            return web.json_response({"error": f"you are {ident.host}"}, status=403)
        return ident

    async def register(request: web.Request) -> web.Response:
        reg = decode(Registration, await request.json())
        ident = who(request, reg.role, reg.host)
        if isinstance(ident, web.Response):
            return ident
        site.registrations.append((ident.serial, reg))
        return web.json_response(encode(site.plan))

    async def results(request: web.Request) -> web.Response:
        batch = decode(ResultBatch, await request.json())
        ident = who(request, batch.role, batch.host)
        if isinstance(ident, web.Response):
            return ident
        site.batches.append((ident.serial, batch))
        if batch.results:
            site.first_batch.set()
        return web.json_response({"accepted": len(batch.results)})

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        site.paths.append(request.path)
        if request.path == agent_enrol.ENROL_PATH and site.enrol_failures > 0:
            site.enrol_failures -= 1
            return web.json_response({"error": "database is busy"}, status=503)
        if request.path == agent_enrol.RENEW_PATH:
            # The first renewal waits for a batch sent with the first certificate.
            await asyncio.wait_for(site.first_batch.wait(), 30)
            site.renewals += 1
            if site.renew_failures > 0:
                site.renew_failures -= 1
                return web.json_response({"error": "try later"}, status=503)
        return await handler(request)

    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/results", results)
    app.middlewares.append(record)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    files = pki.init_ca(tmp_path / "pki", ["localhost"], ["127.0.0.1"])
    conn = sqlite3.connect(str(tmp_path / "netcheck.db"), isolation_level=None)
    ctl = Controller(
        "",
        files,
        pki.load_ca(tmp_path / "pki"),
        JoinTokens(conn),
        IssuedCerts(conn),
        pki.Revocations(),
        set(HOSTS),
    )
    s = Site(ctl, self_probing_plan(free_ports(2, ADDR)))
    app = make_app(ctl)
    add_agent_routes(app, s)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context_for(files)).start()
    ctl.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield s
    finally:
        await runner.cleanup()
        conn.close()


async def agent(*argv: str, limit_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.agent", *argv),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def serve_args(site: Site, state: Path, *extra: str) -> list[str]:
    return [
        *("serve", "--controller", site.url, "--state-dir", str(state)),
        *("--role", ROLE, "--host", HOST, "--address", ADDR, "--mode", "connect"),
        *("--splay", "0", *extra),
    ]


def write_token(path: Path, token: str) -> Path:
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@needs_openssl
async def test_enrol_then_serve_once_over_mutual_tls(site: Site, tmp_path: Path) -> None:
    state, token = tmp_path / "state", site.token()
    token_file = write_token(tmp_path / "join", token)
    code, out, err = await agent(
        *("enrol", "--controller", site.url, "--ca", str(site.ca)),
        *("--join-token-file", str(token_file), "--state-dir", str(state)),
        *("--role", ROLE, "--host", HOST),
    )
    assert code == 0, err
    identity = state / agent_enrol.IDENTITY
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    serial = serial_of(identity)
    assert f"enrolled {ROLE}/{HOST}: {identity}" in out and f"serial {serial:x}" in out
    for text in (out, err):
        assert token not in text and token.split(".")[-1] not in text
        assert "PRIVATE KEY" not in text
    # Without --ca: the CA stored at enrolment verifies the controller.
    code, out, err = await agent(*serve_args(site, state, "--once"))
    assert code == 0, err
    assert "plain HTTP" not in err and token not in err
    assert [(s, r.host, r.address) for s, r in site.registrations] == [(serial, HOST, ADDR)]
    assert set(site.serials()) == {serial}
    results = {r.port: r.state for _, b in site.batches for r in b.results}
    assert results == {p.port: "open" for p in site.plan.listen}
    # The token is used up: enrolling again with it is refused (exit 1, the reason).
    code, _, err = await agent(
        *("enrol", "--controller", site.url, "--ca", str(site.ca)),
        *("--join-token-file", str(token_file), "--state-dir", str(tmp_path / "again")),
        *("--role", ROLE, "--host", HOST),
    )
    assert code == 1 and "403" in err and "already used" in err, err


@needs_openssl
async def test_serve_enrols_first_with_a_join_token(site: Site, tmp_path: Path) -> None:
    state = tmp_path / "state"
    token_file = write_token(tmp_path / "join", site.token())
    argv = serve_args(site, state, "--once", "--ca", str(site.ca))
    code, _, err = await agent(*argv, "--join-token-file", str(token_file))
    assert code == 0, err
    serial = serial_of(state / agent_enrol.IDENTITY)
    assert site.paths[0] == agent_enrol.ENROL_PATH
    assert {s for s, _ in site.registrations} | set(site.serials()) == {serial}
    # Next start: the certificate is there, the (used) token is not sent again.
    code, _, err = await agent(*argv, "--join-token-file", str(token_file))
    assert code == 0, err
    assert site.paths.count(agent_enrol.ENROL_PATH) == 1
    assert set(site.serials()) == {serial}


async def test_serve_tries_enrolment_again_after_a_server_error(site: Site, tmp_path: Path) -> None:
    """A 5xx at enrolment (the controller failed) is tried again with backoff; the token is
    still good, so the second try enrols and the agent reports."""
    state = tmp_path / "state"
    token_file = write_token(tmp_path / "join", site.token())
    site.enrol_failures = 1
    argv = serve_args(site, state, "--once", "--ca", str(site.ca))
    code, _, err = await agent(*argv, "--join-token-file", str(token_file))
    assert code == 0, err
    assert "trying again in 1 s" in err
    assert site.paths[:2] == [agent_enrol.ENROL_PATH, agent_enrol.ENROL_PATH]
    assert set(site.serials()) == {serial_of(state / agent_enrol.IDENTITY)}


def backdate(site: Site, state: Path, expires_in_s: float) -> int:
    """Replace the certificate in `state` with one for the same key, issued a day ago so it
    expires in `expires_in_s`: long past 2/3 of its lifetime. Its serial."""
    path = state / agent_enrol.IDENTITY
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    issued = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1, seconds=-expires_in_s)
    cert = pki.sign_csr(site.ctl.ca, csr, pki.AgentName(ROLE, HOST), days=1, now=issued)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    agent_enrol.save_identity(state, key_pem, cert, None)
    return x509.load_pem_x509_certificate(cert).serial_number


@needs_openssl
async def test_renewal_near_expiry_keeps_results_flowing(site: Site, tmp_path: Path) -> None:
    """A certificate 90 s from expiry (a day old): the agent renews it in the background,
    the first attempt fails (503) and is retried, and the rounds go on without a gap: the
    same registration, every result delivered, the later batches under the new serial."""
    state = tmp_path / "state"
    await agent_enrol.enrol(site.url, site.token(), site.ca, state, ROLE, HOST)
    old = backdate(site, state, expires_in_s=90)
    assert agent_enrol.needs_renewal(state / agent_enrol.IDENTITY, time.time())
    site.plan = self_probing_plan(free_ports(2, ADDR), period_s=0.5)
    site.renew_failures = 1
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.agent"),
        *serve_args(site, state, "--renew-retry", "0.5"),
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        for _ in range(300):
            new = [s for s in site.serials() if s != old]
            if len(new) >= 3 or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err_b = await asyncio.wait_for(proc.communicate(), 30)
    err = err_b.decode()
    assert proc.returncode == 0, err
    renewed = serial_of(state / agent_enrol.IDENTITY)
    assert renewed != old and not agent_enrol.needs_renewal(
        state / agent_enrol.IDENTITY, time.time()
    )
    assert stat.S_IMODE((state / agent_enrol.IDENTITY).stat().st_mode) == 0o600
    assert site.renewals == 2, err  # one refused, one retried
    assert "certificate renewal failed" in err and "try later" in err
    assert f"certificate renewed: serial {renewed:x}" in err
    serials = site.serials()
    assert serials[0] == old and serials[-1] == renewed, serials
    assert set(serials) == {old, renewed}
    assert serials.index(renewed) > 0 and old not in serials[serials.index(renewed) :]
    assert len(site.registrations) == 1  # the swap kept the link: no new registration
    per_round = {len(b.results) for _, b in site.batches if b.results}
    assert per_round == {len(site.plan.checks)} and all(b.dropped == 0 for _, b in site.batches)
    assert all(r.state == "open" for _, b in site.batches for r in b.results)


@needs_openssl
async def test_wrong_ca_refused_before_the_token_is_sent(site: Site, tmp_path: Path) -> None:
    other = pki.init_ca(tmp_path / "other", ["localhost"], ["127.0.0.1"])
    token = site.token()
    state = tmp_path / "state"
    trust = [
        "--ca",
        str(other.ca_cert),
        "--join-token-file",
        str(write_token(tmp_path / "j", token)),
    ]
    for argv in (
        [*("enrol", "--controller", site.url, "--state-dir", str(state)), *IDENT, *trust],
        serve_args(site, state, "--once", *trust),  # serve enrols first
    ):
        code, out, err = await agent(*argv)
        assert code == 1, err
        assert "CERTIFICATE_VERIFY_FAILED" in err and "Traceback" not in err
        assert token not in out + err
        assert not (state / agent_enrol.IDENTITY).exists()
    assert site.paths == []  # no request reached the server, so no token did
    site.ctl.joins.check(token, HOST, time.time())  # still unused


@needs_openssl
async def test_serve_once_with_a_revoked_certificate_exits_1(site: Site, tmp_path: Path) -> None:
    state = tmp_path / "state"
    await agent_enrol.enrol(site.url, site.token(), site.ca, state, ROLE, HOST)
    site.ctl.revocations.revoke(serial_of(state / agent_enrol.IDENTITY))
    code, _, err = await agent(*serve_args(site, state, "--once"), limit_s=20)
    assert code == 1, err
    assert "registration refused: HTTP 401 no valid client certificate" in err
    assert site.batches == []


def test_no_certificate_no_join_token_and_other_bad_combinations_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from netcheck.agent.cli import main

    state = tmp_path / "empty"
    token = write_token(tmp_path / "tok", "shared-token")
    base = ["serve", "--role", ROLE, "--host", HOST, "--address", ADDR, "--once"]
    https = ["--controller", "https://127.0.0.1:9"]
    cases = [
        ([*base, *https, "--state-dir", str(state)], f"no certificate in {state}: give --join"),
        ([*base, *https, "--token-file", str(token)], "give --state-dir"),
        (
            [*base, *https, "--state-dir", str(state), "--token-file", str(token)],
            "--token-file is for http:// only",
        ),
        (
            [*base, "--controller", "http://127.0.0.1:9", "--state-dir", str(state)],
            "need an https:// controller",
        ),
        (
            [
                *("enrol", "--controller", "http://127.0.0.1:9", "--ca", str(token)),
                *("--join-token-file", str(token), "--state-dir", str(state), *IDENT),
            ],
            "enrolment needs an https:// controller",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert "shared-token" not in err and "Traceback" not in err
    assert not state.exists()  # refused before anything was made


# -- footprint: the busiest agent, over mutual TLS and over plain HTTP -------------------------


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.mark.slow
@needs_openssl
async def test_rss_with_mutual_tls_against_plain_http(site: Site, tmp_path: Path) -> None:
    """The footprint test's agent (90 stand-in listeners of every service, probed) served
    once over mutual TLS and once over plain HTTP in the same run: RSS within 40 MiB both
    ways, and the figures printed (pytest -s) for the benchmark notes."""
    from agent_helpers import self_plan

    state = tmp_path / "state"
    await agent_enrol.enrol(site.url, site.token(), site.ca, state, ROLE, HOST)
    plan = self_plan(free_ports(90, ADDR), ADDR)
    site.plan = dataclasses.replace(plan, role=ROLE, host=HOST)
    plain = await start_plain(site)
    figures = {}
    try:
        for label, argv, env in (
            ("mTLS", serve_args(site, state), {}),
            (
                "plain",
                [
                    *("serve", "--controller", plain[0], *IDENT),
                    *("--address", ADDR, "--mode", "connect", "--splay", "0"),
                ],
                {"NETCHECK_TOKEN": "plain-footprint"},
            ),
        ):
            before = len(site.batches)
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "netcheck.agent", *argv),
                cwd=REPO,
                env={**os.environ, **env},
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                for _ in range(300):
                    if any(b.results for _, b in site.batches[before:]) or proc.returncode:
                        break
                    await asyncio.sleep(0.1)
                got = [b for _, b in site.batches[before:] if b.results]
                assert got and len(got[-1].results) == 90, label
                await asyncio.sleep(0.5)
                figures[label] = rss_kib(proc.pid)
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
    finally:
        await plain[1].cleanup()
    print(
        "agent RSS, 90 listeners: "
        + ", ".join(
            f"{k} {v[0] / 1024:.1f} MiB (peak {v[1] / 1024:.1f})" for k, v in figures.items()
        )
    )
    for label, (_, peak) in figures.items():
        assert peak <= 40 * 1024, f"{label}: peak RSS {peak / 1024:.1f} MiB"


async def start_plain(site: Site) -> tuple[str, web.AppRunner]:
    """The same register/results over plain HTTP with a bearer token (serial recorded 0)."""

    async def register(request: web.Request) -> web.Response:
        return web.json_response(encode(site.plan))

    async def results(request: web.Request) -> web.Response:
        site.batches.append((0, decode(ResultBatch, await request.json())))
        return web.json_response({"accepted": 1})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/results", results)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner


def test_the_config_never_shows_a_token() -> None:
    """A logged or printed DaemonConfig hides the bearer and the join token."""
    from netcheck.agent.daemon import DaemonConfig

    cfg = DaemonConfig(
        controller="https://x:1", token="bearer-secret", role=ROLE, host=HOST, address=ADDR,
        bind=ADDR, join_token="join-secret",
    )  # fmt: skip
    assert "secret" not in repr(cfg) and "secret" not in str(cfg)


# -- end to end: the real controller (netcheck-controller ca init / enrol / serve --pki) -------


async def run_controller(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.controller", *argv),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


@needs_openssl
async def test_end_to_end_with_the_real_controller(tmp_path: Path) -> None:
    """``netcheck-controller ca init``, ``enrol`` and ``serve --pki``, as processes; the
    agent enrols with the printed token, registers and posts its results over mutual TLS;
    the controller stores them under the certificate's identity."""
    from test_agent_link import AGENT_ADDR, PEER_ADDR, write_site

    from netcheck.controller.store import Store

    port = free_ports(1, PEER_ADDR)[0]
    topology, inventory = write_site(
        tmp_path, [(port, "tcp")], pio_hosts={"pio-1": AGENT_ADDR, "pio-2": PEER_ADDR}
    )
    pki_dir, db, state = tmp_path / "pki", tmp_path / "netcheck.sqlite", tmp_path / "state"
    site = ("--topology", str(topology), "--inventory", str(inventory))
    await run_controller("ca", "init", "--pki", str(pki_dir), "--address", "127.0.0.1")
    out = await run_controller("enrol", "--db", str(db), *site, "--role", "pio", "--host", "pio-1")
    [(host, token)] = [line.split() for line in out.splitlines()]
    assert host == "pio-1"
    listen = free_ports(1)[0]
    controller = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "netcheck.controller", "serve", *site, "--db", str(db)),
        *("--listen", f"127.0.0.1:{listen}", "--pki", str(pki_dir), "--open-reads"),
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{listen}"
    try:
        ctx = agent_enrol.server_verifying_context(pki_dir / "ca.pem")
        for _ in range(100):
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", listen, ssl=ctx), 2
                )
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                await asyncio.sleep(0.1)
        code, _, err = await agent(
            *("serve", "--controller", url, "--ca", str(pki_dir / "ca.pem")),
            *(
                "--state-dir",
                str(state),
                "--join-token-file",
                str(write_token(tmp_path / "j", token)),
            ),
            *("--role", "pio", "--host", "pio-1", "--address", AGENT_ADDR),
            *("--mode", "connect", "--once", "--splay", "0"),
        )
        assert code == 0, err
        assert token not in err
    finally:
        controller.send_signal(signal.SIGTERM)
        _, cerr = await asyncio.wait_for(controller.communicate(), 30)
    assert token not in cerr.decode()
    serial = serial_of(state / agent_enrol.IDENTITY)
    store = Store.open(db)
    try:
        results, by = store.results(), store.sent_by()
    finally:
        store.close()
    assert sorted((r.src_host, r.dst_host, r.port, r.state) for r in results) == [
        ("pio-1", "pio-1", port, "open"),  # its own stand-in listener
        ("pio-1", "pio-2", port, "refused"),  # no agent on pio-2
    ]
    assert by == {r.check_id: f"cert:{serial:x}" for r in results}
