"""The guest's HTTP(S) client (:mod:`http.client` and :mod:`ssl`): TLS 1.2+, the
controller's certificate checked against the site's CA and its name, and this guest's own
certificate for mutual TLS once enrolled. Answers are read up to :data:`MAX_BODY` bytes."""

import http.client
import json
import ssl
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024 * 1024  # a plan of 100,000 checks is about 20 MB of JSON


class HttpError(Exception):
    """No answer: the connection, TLS or the timeout failed."""


def server_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1  # TLS 1.2+ (3.6 has no TLSVersion)
    return ctx


def client_context(ca_file: str, identity: str) -> ssl.SSLContext:
    """Mutual TLS: the site's CA, this guest's key and certificate (one PEM file)."""
    ctx = server_context(ca_file)
    ctx.load_cert_chain(identity)
    return ctx


class Client:
    """POSTs JSON to one controller (``https://`` with a context, or ``http://`` with a token)."""

    def __init__(
        self,
        base_url: str,
        ctx: Optional[ssl.SSLContext] = None,
        token: Optional[str] = None,
        timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s):// controller URL: %r" % base_url)
        if token is not None and any(c in token for c in "\r\n\0"):
            raise ValueError("the token holds a line break or a NUL")
        self.url = base_url.rstrip("/")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.ctx, self.token, self.timeout_s = ctx, token, timeout_s

    def post(self, path: str, payload: Any) -> Tuple[int, Any]:
        """(HTTP status, the answer's JSON or None); :class:`HttpError` when there is none."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers: Dict[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        if self.scheme == "https":
            ctx = self.ctx or ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout_s, context=ctx
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("POST", self.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            raw = resp.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
            raise HttpError("%s%s: %s" % (self.url, path, exc or type(exc).__name__)) from None
        finally:
            conn.close()
        if len(raw) > MAX_BODY:
            raise HttpError("%s%s: answer larger than %d bytes" % (self.url, path, MAX_BODY))
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            answer = None
        return resp.status, answer


def error_text(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("error") or answer.get("detail") or answer)[:300]
    return str(answer)[:300]
