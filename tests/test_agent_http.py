"""The agent's stdlib HTTP pieces against real sockets: the client (agent.httpc, the standard
library's http.client in a thread, behind agent.link.HttpTransport) and the /healthz +
/metrics server (agent.health), with real aiohttp servers, promtool and prometheus_client's
parser as the other side."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from netcheck.agent import exposition, httpc
from netcheck.agent.certs import StandinCert
from netcheck.agent.errors import InputError
from netcheck.agent.health import AgentState, HealthServer
from netcheck.agent.link import HttpTransport, Link, LinkError, TransportError
from netcheck.agent.wire import Registration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_app(
    handler: Handler, tls: ssl.SSLContext | None = None, port: int = 0, **runner_kw: float
) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, **runner_kw)  # type: ignore[arg-type]
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


async def echo_handler(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "auth": request.headers.get("Authorization"),
            "host": request.headers.get("Host"),
            "body": body.decode(),
            "client_port": peer[1] if peer else None,
        }
    )


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    runner = await serve_app(echo_handler)
    try:
        yield port_of(runner)
    finally:
        await runner.cleanup()


async def test_post_json_round_trip_on_one_kept_alive_connection(echo: int) -> None:
    transport = HttpTransport(f"http://127.0.0.1:{echo}/", "tok-1", timeout_s=5)
    try:
        status, body = await transport.post("/api/v1/x?a=1", {"k": [1, "é"]})
        assert status == 200
        assert body["method"] == "POST" and body["path"] == "/api/v1/x?a=1"
        assert body["auth"] == "Bearer tok-1"
        assert body["host"] == f"127.0.0.1:{echo}"
        assert json.loads(body["body"]) == {"k": [1, "é"]}
        _, again = await transport.post("/api/v1/x", {})
        assert again["client_port"] == body["client_port"]  # the same connection
    finally:
        await transport.close()


async def test_a_connection_closed_by_the_server_is_reopened() -> None:
    """aiohttp closes idle connections after keepalive_timeout: the next POST opens a new
    one instead of failing; so does a server that restarted in between."""
    runner = await serve_app(echo_handler, keepalive_timeout=0.2)
    port = port_of(runner)
    transport = HttpTransport(f"http://127.0.0.1:{port}", "t", timeout_s=5)
    try:
        _, first = await transport.post("/", {})
        await asyncio.sleep(0.5)
        status, second = await transport.post("/", {})
        assert status == 200 and second["client_port"] != first["client_port"]
        await runner.cleanup()
        runner = await serve_app(echo_handler, port=port)
        assert (await transport.post("/", {}))[0] == 200
    finally:
        await transport.close()
        await runner.cleanup()


async def test_answer_size_is_bounded() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(f'{{"part":{i}}}'.encode() if i == 49 else b" " * 1000)
        await resp.write_eof()
        return resp

    runner = await serve_app(handler)
    try:
        url = f"http://127.0.0.1:{port_of(runner)}/"
        resp = await httpc.request("GET", url, timeout_s=5)
        assert resp.status == 200 and resp.headers["transfer-encoding"] == "chunked"
        assert json.loads(resp.body) == {"part": 49}
        with pytest.raises(httpc.HttpError, match="larger than"):
            await httpc.request("GET", url, timeout_s=5, max_body=10_000)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(answer: bytes | None) -> AsyncIterator[int]:
    """A port that reads the request (head and body), answers `answer` and closes (None:
    stays silent). The whole request is read first: closing with unread bytes would make the
    kernel send a reset, and the client would see that instead of the broken answer."""
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        if answer is not None:
            writer.write(answer)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nshort", "IncompleteRead"),
        (b"", "RemoteDisconnected"),
    ],
)
async def test_broken_answers_are_transport_errors(answer: bytes, error: str) -> None:
    async with raw_server(answer) as port:
        transport = HttpTransport(f"http://127.0.0.1:{port}", "t", timeout_s=5)
        with pytest.raises(TransportError, match=error):
            await transport.post("/", {})


async def test_silent_server_times_out_and_refused_port_fails() -> None:
    async with raw_server(None) as port:
        transport = HttpTransport(f"http://127.0.0.1:{port}", "t", timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(TransportError, match=r"no answer within 0\.5 s"):
            await transport.post("/", {})
        assert 0.4 < time.monotonic() - t0 < 2.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        await HttpTransport(f"http://127.0.0.1:{closed}", "t").post("/", {})


async def test_https_verifies_by_default_and_accepts_a_trusted_context() -> None:
    cert = StandinCert("127.0.0.1")

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response({"tls": True})

    runner = await serve_app(handler, cert.server_context())
    try:
        url = f"https://127.0.0.1:{port_of(runner)}"
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await HttpTransport(url, "t", timeout_s=5).post("/", {})
        trusted = ssl.create_default_context(cafile=str(cert.cert))
        trusted.check_hostname = False  # the stand-in certificate names no address
        transport = HttpTransport(url, "t", 5, trusted)
        assert await transport.post("/", {}) == (200, {"tls": True})
        await transport.close()
        plain = HttpTransport(url.replace("https:", "http:"), "t", timeout_s=5)
        with pytest.raises(TransportError):  # plain HTTP to a TLS port
            await plain.post("/", {})
    finally:
        await runner.cleanup()
        cert.cleanup()


def test_bad_urls_and_tokens_are_input_errors() -> None:
    for url in ("ftp://x", "http://", "http://h:99999"):
        with pytest.raises(InputError):
            HttpTransport(url, "t")
    with pytest.raises(InputError, match="line break"):
        HttpTransport("http://h", "tok\r\nEvil: 1")
    parsed = httpc.parse_url("https://[::1]:8443/p?q=1")
    assert (parsed.host, parsed.port, parsed.path) == ("::1", 8443, "/p?q=1")


# -- the health server ----------------------------------------------------------------


REG = Registration(role="pio", host="pio-1", address="127.0.0.1", version="t", mode="connect")


@pytest.fixture
async def health() -> AsyncIterator[tuple[HealthServer, AgentState]]:
    link = Link(HttpTransport("http://127.0.0.1:9", "t"), REG)
    state = AgentState(mode="connect", link=link)
    state.probes.update({"open": 3, "filtered": 2})
    state.rounds = 2
    server = HealthServer(state, request_timeout_s=0.5)
    await server.start("127.0.0.1", 0)
    try:
        yield server, state
    finally:
        await server.close()


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    cmd = ["promtool", "check", "metrics"]
    return subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=60)


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def test_healthz_and_metrics(health: tuple[HealthServer, AgentState]) -> None:
    server, state = health
    base = f"http://127.0.0.1:{server.port}"
    status, _, body = await asyncio.to_thread(fetch, base + "/healthz")
    got = json.loads(body)
    assert status == 200 and got["status"] == "ok" and got["rounds"] == 2
    assert got["registered"] is False and got["last_report"] is None
    assert state.link is not None
    state.link.last_report = 1712345678.25
    status, headers, body = await asyncio.to_thread(fetch, base + "/metrics?x=1")
    assert status == 200 and headers["Content-Type"] == exposition.CONTENT_TYPE
    text = body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("netcheck_agent_probes_total", (("state", "open"),))] == 3
    assert samples[("netcheck_agent_probes_total", (("state", "refused"),))] == 0
    assert samples[("netcheck_agent_listeners", (("state", "listening"),))] == 0
    assert samples[("netcheck_agent_last_report_timestamp_seconds", ())] == 1712345678.25
    assert samples[("netcheck_agent_probe_rounds_total", ())] == 2
    assert samples[("netcheck_agent_info", (("mode", "connect"), ("version", "0.1.0")))] == 1
    for name in ("buffered_results", "rejected_batches_total"):
        assert samples[(f"netcheck_agent_{name}", ())] == 0
    for kind in ("result", "peer"):
        assert samples[("netcheck_agent_dropped_results_total", (("kind", kind),))] == 0
    if shutil.which("promtool"):
        out = await asyncio.to_thread(promtool_check, text)
        assert out.returncode == 0, out.stdout + out.stderr
    status, headers, body = await asyncio.to_thread(fetch, base + "/metrics", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(text)


async def test_other_paths_methods_and_garbage(health: tuple[HealthServer, AgentState]) -> None:
    server, _ = health
    base = f"http://127.0.0.1:{server.port}"
    assert (await asyncio.to_thread(fetch, base + "/"))[0] == 404
    status, headers, _ = await asyncio.to_thread(fetch, base + "/metrics", "POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    answer = await exchange(server.port, b"\x16\x03\x01garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_oversized_or_slow_requests_get_nothing(
    health: tuple[HealthServer, AgentState],
) -> None:
    server, _ = health
    assert await exchange(server.port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000) == b""
    t0 = time.monotonic()
    assert await exchange(server.port, b"GET /metrics HTTP/1.1\r\n") == b""  # never finished
    assert 0.4 < time.monotonic() - t0 < 2.0


async def test_close_drops_idle_clients(health: tuple[HealthServer, AgentState]) -> None:
    server, _ = health
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await server.close()
    assert time.monotonic() - t0 < 0.3
    writer.close()


def test_exposition_escaping_reads_back() -> None:
    fam = exposition.Family(
        "x_info",
        "gauge",
        'help with \\ and\nnewline and "quotes"',
        (exposition.Sample((("v", 'a"b\\c\nd'),), 1.5), exposition.Sample((("v", "e"),), 2e20)),
    )
    text = exposition.render([fam, exposition.counter("x_events", "Events.", float("inf"))])
    (info, events) = text_string_to_metric_families(text)
    assert info.documentation == 'help with \\ and\nnewline and "quotes"'
    assert [(s.labels["v"], s.value) for s in info.samples] == [('a"b\\c\nd', 1.5), ("e", 2e20)]
    assert events.type == "counter" and events.samples[0].value == float("inf")
    assert exposition.render([]) == ""


async def test_link_errors_carry_the_http_status(echo: int) -> None:
    link = Link(HttpTransport(f"http://127.0.0.1:{echo}", "t"), REG)
    try:
        with pytest.raises(LinkError, match="invalid plan"):
            await link.register()  # the echo server answers 200 with something that is no plan
    finally:
        await link.transport.close()


async def test_tls_works_with_the_smaller_read_buffer() -> None:
    """Over asyncio's TLS (the listeners' and the probes'), with 32 KiB reads (the agent's
    setting), a 200 KB upload and a 200 KB answer arrive whole."""
    import asyncio.sslproto

    from netcheck.agent.tlsbuffers import READ_BUFFER, shrink_tls_read_buffer

    saved = asyncio.sslproto.SSLProtocol.max_size
    cert = StandinCert("127.0.0.1")
    blob = b"x" * 200_000

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=blob if await request.read() == blob else b"short")

    try:
        assert shrink_tls_read_buffer()
        assert asyncio.sslproto.SSLProtocol.max_size == READ_BUFFER
        runner = await serve_app(handler, cert.server_context())
        trusted = ssl.create_default_context(cafile=str(cert.cert))
        trusted.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(runner), ssl=trusted)
        head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(blob)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + blob)
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n" + blob)
        await runner.cleanup()
    finally:
        asyncio.sslproto.SSLProtocol.max_size = saved
        cert.cleanup()
