"""Protocol checks on an open connection: is the expected service what answers?

``check(service, sock, host, limit_s)`` takes ownership of the connected socket and returns
a :class:`ServiceCheck` (``None`` for plain ``tcp``). Outcomes: ``ok`` the service (or a
netcheck stand-in for it) answered as expected, ``mismatch`` something else answered,
``error`` the check could not finish (timeout, reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable

from netcheck.agent.certs import STANDIN_ORG
from netcheck.agent.probes.tlsinfo import describe_certificate
from netcheck.agent.protocols import AUTHD_PREFIX, iscsi_discovery_login, parse_iscsi_login_response
from netcheck.agent.wire import Service, ServiceCheck

SOAP_RETRIEVE_SERVICE_CONTENT = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:vim25="urn:vim25"><soapenv:Body><vim25:RetrieveServiceContent>'
    '<vim25:_this type="ServiceInstance">ServiceInstance</vim25:_this>'
    "</vim25:RetrieveServiceContent></soapenv:Body></soapenv:Envelope>"
)


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


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _first_line(reader: asyncio.StreamReader, limit: int = 512) -> bytes:
    data = await reader.read(limit)
    return data.split(b"\n", 1)[0].rstrip(b"\r")


async def _ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ServiceCheck:
    line = await _first_line(reader)
    text = line.decode("ascii", "replace")
    if line.startswith(b"SSH-"):
        return ServiceCheck(service="ssh", outcome="ok", detail=text)
    return ServiceCheck(service="ssh", outcome="mismatch", detail=f"no SSH banner: {text[:80]!r}")


async def _authd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ServiceCheck:
    line = await _first_line(reader)
    text = line.decode("ascii", "replace")
    if line.startswith(AUTHD_PREFIX):
        return ServiceCheck(service="authd", outcome="ok", detail=text)
    return ServiceCheck(
        service="authd", outcome="mismatch", detail=f"no authd banner: {text[:80]!r}"
    )


async def _iscsi(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ServiceCheck:
    writer.write(iscsi_discovery_login())
    await writer.drain()
    try:
        bhs = await reader.readexactly(48)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return ServiceCheck(
                service="iscsi", outcome="mismatch", detail="closed without a Login Response"
            )
        bhs = exc.partial
    status = parse_iscsi_login_response(bhs)
    if status is None:
        return ServiceCheck(
            service="iscsi", outcome="mismatch", detail="not an iSCSI Login Response"
        )
    return ServiceCheck(
        service="iscsi",
        outcome="ok",
        detail=f"iSCSI Login Response, status class {status[0]} detail {status[1]}",
    )


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


async def _tls(service: Service, sock: socket.socket, host: str, limit_s: float) -> ServiceCheck:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(sock=sock, ssl=_client_context(), server_hostname=""), limit_s
        )
    except ssl.SSLError as exc:
        sock.close()
        return ServiceCheck(service=service, outcome="mismatch", detail=f"no TLS handshake: {exc}")
    except BaseException:
        sock.close()
        raise
    try:
        ssl_obj = writer.get_extra_info("ssl_object")
        der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
        subject, not_after = describe_certificate(der) if der else (None, None)
        version = ssl_obj.version() if ssl_obj is not None else "?"
        detail = f"{version} handshake ok"
        if not_after is not None and not_after < time.time():
            detail += "; certificate EXPIRED"
        standin = subject is not None and f"O={STANDIN_ORG}" in subject
        if standin:
            detail += "; netcheck stand-in listener"
        elif service in ("https", "docker", "vsphere"):
            extra = await asyncio.wait_for(_layer7(service, reader, writer, host), limit_s)
            if extra[0] == "mismatch":
                return ServiceCheck(
                    service=service,
                    outcome="mismatch",
                    detail=f"{detail}; {extra[1]}",
                    tls_subject=subject,
                    tls_not_after=not_after,
                )
            detail += f"; {extra[1]}"
        return ServiceCheck(
            service=service,
            outcome="ok",
            detail=detail,
            tls_subject=subject,
            tls_not_after=not_after,
        )
    finally:
        await _close(writer)


async def _layer7(
    service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
) -> tuple[str, str]:
    """("ok"|"mismatch", detail) of the HTTP request that proves the service behind TLS."""
    try:
        if service == "docker":
            status, body = await _http(reader, writer, _request("GET", host, "/_ping"))
            if status == 200 and body.strip() == b"OK":
                return "ok", "Docker /_ping OK"
            if status is None:
                return (
                    "ok",
                    "no answer to /_ping (Docker with tlsverify needs a client certificate)",
                )
            return "mismatch", f"/_ping answered HTTP {status}, not Docker's OK"
        if service == "vsphere":
            soap = _request(
                "POST",
                host,
                "/sdk",
                SOAP_RETRIEVE_SERVICE_CONTENT,
                'SOAPAction: "urn:vim25/6.0"\r\n',
            )
            status, body = await _http(reader, writer, soap)
            api = re.search(rb"<apiType>([^<]+)</apiType>", body)
            if api:
                return "ok", f"vSphere API: apiType {api.group(1).decode(errors='replace')}"
            if status is None:
                return "mismatch", "no answer to SOAP RetrieveServiceContent on /sdk"
            return "mismatch", f"/sdk answered HTTP {status} without an apiType"
        status, _ = await _http(reader, writer, _request("HEAD", host, "/"))
        return "ok", (f"HTTP {status}" if status is not None else "no HTTP answer")
    except (OSError, ssl.SSLError) as exc:
        if "CERTIFICATE_REQUIRED" in str(exc) or "certificate required" in str(exc):
            return "ok", "server requires a client certificate"
        return "ok", f"no HTTP answer ({type(exc).__name__})"


_PLAIN: dict[
    str, Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[ServiceCheck]]
] = {
    "ssh": _ssh,
    "authd": _authd,
    "iscsi": _iscsi,
}


async def check(
    service: Service, sock: socket.socket, host: str, limit_s: float
) -> ServiceCheck | None:
    """The protocol check for `service` over the connected `sock` (closed on return)."""
    if service == "tcp":
        sock.close()
        return None
    try:
        if service in _PLAIN:
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                return await asyncio.wait_for(_PLAIN[service](reader, writer), limit_s)
            finally:
                await _close(writer)
        async with _tls_slots():
            return await _tls(service, sock, host, limit_s)
    except TimeoutError:
        return ServiceCheck(
            service=service,
            outcome="error",
            detail=f"no answer within {limit_s:g} s",
        )
    except (OSError, ssl.SSLError, EOFError) as exc:
        return ServiceCheck(
            service=service,
            outcome="error",
            detail=f"{type(exc).__name__}: {exc}",
        )
