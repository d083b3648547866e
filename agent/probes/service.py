"""Protocol checks on an open connection: is the expected service what answers?

``check(service, sock, host, limit_s)`` takes ownership of the connected socket and returns
a :class:`ServiceCheck` (``None`` for plain ``tcp``). Outcomes: ``ok`` the service (or a
netcheck stand-in for it) answered as expected, ``mismatch`` something else answered,
``error`` the check could not finish (timeout, reset).

:data:`SERVICE_CHECKS` says, for every service, whether a TLS handshake comes first and which
exchange proves the service (over TLS when there is one). ``limit_s`` is the whole check's
budget, owned by the caller (what is left of the probe's timeout): waiting for a TLS slot,
the handshake and the exchange all fit in it, and closing the connection takes at most what
is left (then it is aborted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping

from netcheck.agent.certs import STANDIN_ORG
from netcheck.agent.probes.tlsinfo import describe_certificate
from netcheck.agent.protocols import AUTHD_PREFIX, iscsi_discovery_login, parse_iscsi_login_response
from netcheck.agent.wire import Service, ServiceCheck, ServiceOutcome

SOAP_RETRIEVE_SERVICE_CONTENT = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:vim25="urn:vim25"><soapenv:Body><vim25:RetrieveServiceContent>'
    '<vim25:_this type="ServiceInstance">ServiceInstance</vim25:_this>'
    "</vim25:RetrieveServiceContent></soapenv:Body></soapenv:Envelope>"
)
# A graceful close waits at most this long (and never past the check's budget).
CLOSE_WAIT_S = 1.0

# What an exchange found: (ok | mismatch, detail).
Found = tuple[ServiceOutcome, str]
Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[Found]]


@dataclasses.dataclass(frozen=True)
class ServiceProbe:
    """How one service is recognised on an open connection."""

    # A TLS handshake first (its certificate is reported).
    tls: bool = False
    # Then this exchange (over TLS when `tls`); None: nothing more to do.
    exchange: Exchange | None = None
    # What the exchange waits for, for the text of a timeout.
    waits_for: str = ""

    @property
    def checks_anything(self) -> bool:
        return self.tls or self.exchange is not None


_CLIENT_CONTEXT: list[ssl.SSLContext] = []
# TLS checks at once, per event loop: asyncio gives every TLS connection a 256 KiB read
# buffer, so a plan with thousands of TLS ports would otherwise cost hundreds of MiB.
MAX_TLS_CHECKS = 32
_TLS_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _tls_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _TLS_SLOTS.get(loop)
    if slots is None:
        slots = _TLS_SLOTS[loop] = asyncio.Semaphore(MAX_TLS_CHECKS)
    return slots


def _client_context() -> ssl.SSLContext:
    """One context for every TLS probe of the process (made at the first one)."""
    if not _CLIENT_CONTEXT:
        # We check the path and read the certificate; trust is not what is audited here.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _CLIENT_CONTEXT.append(ctx)
    return _CLIENT_CONTEXT[0]


async def _first_line(reader: asyncio.StreamReader, limit: int = 512) -> bytes:
    data = await reader.read(limit)
    return data.split(b"\n", 1)[0].rstrip(b"\r")


async def _ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    line = await _first_line(reader)
    text = line.decode("ascii", "replace")
    if line.startswith(b"SSH-"):
        return "ok", text
    return "mismatch", f"no SSH banner: {text[:80]!r}"


async def _authd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    line = await _first_line(reader)
    text = line.decode("ascii", "replace")
    if line.startswith(AUTHD_PREFIX):
        return "ok", text
    return "mismatch", f"no authd banner: {text[:80]!r}"


async def _iscsi(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    writer.write(iscsi_discovery_login())
    await writer.drain()
    try:
        bhs = await reader.readexactly(48)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return "mismatch", "closed without a Login Response"
        bhs = exc.partial
    status = parse_iscsi_login_response(bhs)
    if status is None:
        return "mismatch", "not an iSCSI Login Response"
    return "ok", f"iSCSI Login Response, status class {status[0]} detail {status[1]}"


async def _http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int | None, bytes]:
    writer.write(request)
    await writer.drain()
    raw = await reader.read(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/\d(?:\.\d)? (\d{3})", head)
    return (int(match.group(1)) if match else None), body


def _request(method: str, host: str, path: str, body: str = "", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}"
    if body:
        head += f"Content-Type: text/xml; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n" + body).encode()


async def _https(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    status, _ = await _http(reader, writer, _request("HEAD", host, "/"))
    return "ok", (f"HTTP {status}" if status is not None else "no HTTP answer")


async def _docker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    status, body = await _http(reader, writer, _request("GET", host, "/_ping"))
    if status == 200 and body.strip() == b"OK":
        return "ok", "Docker /_ping OK"
    if status is None:
        return "ok", "no answer to /_ping (Docker with tlsverify needs a client certificate)"
    return "mismatch", f"/_ping answered HTTP {status}, not Docker's OK"


async def _vsphere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> Found:
    soap = _request(
        "POST", host, "/sdk", SOAP_RETRIEVE_SERVICE_CONTENT, 'SOAPAction: "urn:vim25/6.0"\r\n'
    )
    status, body = await _http(reader, writer, soap)
    api = re.search(rb"<apiType>([^<]+)</apiType>", body)
    if api:
        return "ok", f"vSphere API: apiType {api.group(1).decode(errors='replace')}"
    if status is None:
        return "mismatch", "no answer to SOAP RetrieveServiceContent on /sdk"
    return "mismatch", f"/sdk answered HTTP {status} without an apiType"


SERVICE_CHECKS: Mapping[Service, ServiceProbe] = {
    "tcp": ServiceProbe(),  # the connect is the whole check
    "ssh": ServiceProbe(exchange=_ssh, waits_for="the SSH banner"),
    "authd": ServiceProbe(exchange=_authd, waits_for="the authd banner"),
    "iscsi": ServiceProbe(exchange=_iscsi, waits_for="an iSCSI Login Response"),
    "tls": ServiceProbe(tls=True),
    "https": ServiceProbe(tls=True, exchange=_https, waits_for="an answer to HEAD /"),
    "docker": ServiceProbe(tls=True, exchange=_docker, waits_for="an answer to GET /_ping"),
    "vsphere": ServiceProbe(
        tls=True, exchange=_vsphere, waits_for="an answer to SOAP RetrieveServiceContent"
    ),
}


@dataclasses.dataclass
class _Session:
    """One check's connection as it goes: what it waits for, its stream, its TLS slot, and
    the peer's certificate once the handshake is done."""

    step: str = "the connection to be set up"
    writer: asyncio.StreamWriter | None = None
    slot: asyncio.Semaphore | None = None
    tls_subject: str | None = None
    tls_not_after: float | None = None

    def failed(self, service: Service, detail: str) -> ServiceCheck:
        return ServiceCheck(
            service=service,
            outcome="error",
            detail=detail,
            tls_subject=self.tls_subject,
            tls_not_after=self.tls_not_after,
        )

    async def close(self, sock: socket.socket, wait_s: float) -> None:
        """Close gracefully within `wait_s` (else abort), then give the TLS slot back."""
        try:
            if self.writer is None:
                sock.close()
                return
            self.writer.close()
            closed = False
            try:
                await asyncio.wait_for(self.writer.wait_closed(), max(0.0, wait_s))
                closed = True
            except (OSError, TimeoutError):
                pass
            finally:
                if not closed:
                    self.writer.transport.abort()
        finally:
            if self.slot is not None:
                self.slot.release()
                self.slot = None


async def _plain(
    service: Service, how: ServiceProbe, sock: socket.socket, host: str, session: _Session
) -> ServiceCheck:
    reader, session.writer = await asyncio.open_connection(sock=sock)
    assert how.exchange is not None
    session.step = how.waits_for
    outcome, detail = await how.exchange(reader, session.writer, host)
    return ServiceCheck(service=service, outcome=outcome, detail=detail)


async def _over_tls(
    service: Service, how: ServiceProbe, sock: socket.socket, host: str, session: _Session
) -> ServiceCheck:
    session.step = f"a free TLS check slot (at most {MAX_TLS_CHECKS} at once)"
    slots = _tls_slots()
    await slots.acquire()
    session.slot = slots
    session.step = "the TLS handshake"
    try:
        reader, session.writer = await asyncio.open_connection(
            sock=sock, ssl=_client_context(), server_hostname=""
        )
    except ssl.SSLError as exc:
        return ServiceCheck(service=service, outcome="mismatch", detail=f"no TLS handshake: {exc}")
    ssl_obj = session.writer.get_extra_info("ssl_object")
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    subject, not_after = describe_certificate(der) if der else (None, None)
    session.tls_subject, session.tls_not_after = subject, not_after
    version = ssl_obj.version() if ssl_obj is not None else "?"
    detail = f"{version} handshake ok"
    if not_after is not None and not_after < time.time():
        detail += "; certificate EXPIRED"
    outcome: ServiceOutcome = "ok"
    if subject is not None and f"O={STANDIN_ORG}" in subject:
        detail += "; netcheck stand-in listener"
    elif how.exchange is not None:
        session.step = how.waits_for
        try:
            outcome, more = await how.exchange(reader, session.writer, host)
        except OSError as exc:  # ssl.SSLError included
            if "CERTIFICATE_REQUIRED" in str(exc) or "certificate required" in str(exc):
                more = "server requires a client certificate"
            else:
                more = f"no HTTP answer ({type(exc).__name__})"
        detail += f"; {more}"
    return ServiceCheck(
        service=service,
        outcome=outcome,
        detail=detail,
        tls_subject=subject,
        tls_not_after=not_after,
    )


async def check(
    service: Service, sock: socket.socket, host: str, limit_s: float
) -> ServiceCheck | None:
    """The protocol check for `service` over the connected `sock` (closed on return), all
    of it within `limit_s` seconds."""
    how = SERVICE_CHECKS[service]
    if not how.checks_anything:
        sock.close()
        return None
    if limit_s <= 0:
        sock.close()
        detail = "no time left for it: the connect took the check's whole timeout"
        return ServiceCheck(service=service, outcome="error", detail=detail)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    session = _Session()
    talk = _over_tls if how.tls else _plain
    try:
        async with asyncio.timeout_at(deadline):
            return await talk(service, how, sock, host, session)
    except TimeoutError:
        return session.failed(
            service, f"no answer within {limit_s:.2f} s, waiting for {session.step}"
        )
    except (OSError, EOFError) as exc:
        return session.failed(service, f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(OSError):
            await session.close(sock, min(CLOSE_WAIT_S, deadline - loop.time()))
