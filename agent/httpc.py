"""A small HTTP/1.1 client on asyncio streams: what the agent needs to talk to its controller.

Standard library only (the agent must stay small and run from a single file on a guest with
only Python 3): one request per connection (``Connection: close``), ``http`` or ``https``
(certificate and host name verified by default, or a caller's :class:`ssl.SSLContext`, so
mutual TLS is one ``load_cert_chain`` away), bodies by ``Content-Length``, chunked, or up to
the end of the connection, a total deadline and a bound on the answer's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


class HttpError(Exception):
    """The server's answer was not HTTP, or broke a limit."""


@dataclasses.dataclass(frozen=True)
class Url:
    scheme: str
    host: str
    port: int
    path: str

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> Url:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Url(parts.scheme, parts.hostname, port, path)


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def encode_request(method: str, url: Url, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {url.path} HTTP/1.1", f"Host: {url.authority}", "Connection: close"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, headers with lower-case names) of a response head (up to its blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(code), headers


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HttpError(f"bad chunk size {size_line[:20]!r}") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > limit:
            raise HttpError(f"answer larger than {limit} bytes")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def _read_body(
    reader: asyncio.StreamReader, method: str, status: int, headers: dict[str, str], limit: int
) -> bytes:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader, limit)
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise HttpError(f"bad Content-Length {headers['content-length']!r}") from exc
        if not 0 <= length <= limit:
            raise HttpError(f"answer of {length} bytes (limit {limit})")
        return await reader.readexactly(length)
    body = await reader.read(limit + 1)
    while body and len(body) <= limit:
        more = await reader.read(limit + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > limit:
        raise HttpError(f"answer larger than {limit} bytes")
    return body


async def _exchange(
    method: str, url: Url, request: bytes, tls: ssl.SSLContext | None, limit: int
) -> Response:
    reader, writer = await asyncio.open_connection(
        url.host,
        url.port,
        ssl=tls,
        server_hostname=url.host if tls is not None else None,
        limit=MAX_HEAD,
    )
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            body = await _read_body(reader, method, status, headers, limit)
        except asyncio.LimitOverrunError as exc:
            raise HttpError(f"a response line longer than {MAX_HEAD} bytes") from exc
        return Response(status, headers, body)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    max_body: int = MAX_BODY,
) -> Response:
    """One HTTP exchange within `timeout_s` in all.

    Raises :class:`OSError` (refused, reset, TLS failure), :class:`TimeoutError`,
    :class:`HttpError` (not HTTP, too large) or :class:`EOFError` (closed mid-answer).
    """
    target = parse_url(url)
    tls = None
    if target.scheme == "https":
        tls = ssl_context if ssl_context is not None else ssl.create_default_context()
    raw = encode_request(method, target, headers or {}, body)
    async with asyncio.timeout(timeout_s):
        return await _exchange(method, target, raw, tls, max_body)
