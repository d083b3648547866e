"""HTTP for the agent: the standard library's :mod:`http.client`, run in a thread.

No HTTP parsing of our own: :class:`Connection` is one kept-alive ``http.client`` connection
(``http`` or ``https``: certificate and host name verified by default, or a caller's
:class:`ssl.SSLContext`, so mutual TLS is a context with ``load_cert_chain``), re-opened when
the server closed it while idle (checked before each request) and after any error, with a
bound on the answer's size. Calls block: the agent runs them with :func:`asyncio.to_thread`
(:func:`request` for one exchange, ``agent.link.HttpTransport`` for the controller link).
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import selectors
import ssl
import threading
from urllib.parse import urlsplit

from netcheck.agent.errors import InputError, TransportError

MAX_BODY = 64 * 1024 * 1024


class HttpError(TransportError):
    """The server's answer was not HTTP, or broke a limit."""


@dataclasses.dataclass(frozen=True)
class Url:
    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> Url:
    """An ``http(s)`` URL's parts, or :class:`InputError`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InputError(f"{url!r}: {exc}") from None
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Url(parts.scheme, parts.hostname, port, path)


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


class Connection:
    """One kept-alive connection to `url`'s server; :meth:`exchange` blocks (use a thread).

    ``timeout_s`` bounds each step (connect, send, each read). Raises :class:`OSError`
    (refused, reset, TLS), :class:`TimeoutError`, or :class:`HttpError` (not HTTP, cut
    short, larger than `max_body`).
    """

    def __init__(
        self, url: str, timeout_s: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.url = parse_url(url)
        self.timeout_s = timeout_s
        self.ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._stale = False  # the context changed: the next request opens a new connection
        # One request at a time, also while a cancelled caller's thread still finishes one.
        self._lock = threading.Lock()

    def use_context(self, ssl_context: ssl.SSLContext) -> None:
        """Use `ssl_context` from the next request on (a renewed client certificate).

        Does not wait for a request in flight: that one finishes on its connection, and
        the next one opens a new connection with the new context."""
        self.ssl_context = ssl_context
        self._stale = True

    def _open(self) -> http.client.HTTPConnection:
        u = self.url
        if u.scheme == "http":
            return http.client.HTTPConnection(u.host, u.port, timeout=self.timeout_s)
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return http.client.HTTPSConnection(
            u.host, u.port, timeout=self.timeout_s, context=self.ssl_context
        )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _reusable(self) -> http.client.HTTPConnection | None:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            # An idle kept-alive socket that is readable was closed (or spoken to) by the
            # server: never send on it.
            # (A selector, not select(): descriptor numbers past 1,024 are normal here.)
            with selectors.DefaultSelector() as sel:
                sel.register(conn.sock, selectors.EVENT_READ)
                readable = sel.select(0)
            if readable:
                self.close()
        return self._conn

    def exchange(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        max_body: int = MAX_BODY,
    ) -> Response:
        with self._lock:
            if self._stale:
                self._stale = False
                self.close()
            conn = self._reusable() or self._open()
            self._conn = conn
            try:
                conn.request(method, self.url.path.rstrip("/") + path, body, headers or {})
                resp = conn.getresponse()
                if resp.length is not None:  # Content-Length: read() checks it all came
                    if resp.length > max_body:
                        raise HttpError(f"answer of {resp.length} bytes (limit {max_body})")
                    data = resp.read()
                else:  # chunked, or up to the end of the connection
                    data = resp.read(max_body + 1)
                    if len(data) > max_body:
                        raise HttpError(f"answer larger than {max_body} bytes")
                if resp.will_close:
                    self.close()
                return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            except http.client.HTTPException as exc:
                self.close()
                raise HttpError(f"{type(exc).__name__} {exc}".strip()) from exc
            except BaseException:
                self.close()
                raise


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
    """One HTTP exchange on its own connection, in a thread.

    Raises :class:`OSError` (refused, reset, TLS failure), :class:`TimeoutError` or
    :class:`HttpError` (not HTTP, cut short, too large).
    """
    conn = Connection(url, timeout_s, ssl_context)
    try:
        return await asyncio.to_thread(conn.exchange, method, "", body or None, headers, max_body)
    finally:
        conn.close()
