"""Credentials on the HTTP side: the read credential, the shared agent token, the guard.

Reads (``/``, ``/api/v1/report``, ``/api/v1/gate``, ``/metrics`` and anything else that is
neither an agent endpoint nor a health probe) need the read credential unless the operator
opened them (``--open-reads``): ``Authorization: Bearer <token>``, or basic auth with any
user name and the token as password (so a browser's prompt works, and Prometheus'
``authorization`` or ``basic_auth`` scrape settings). ``/healthz`` and ``/readyz`` stay open:
they hold no data. Agent endpoints are checked by the handlers (a client certificate, or with
``--insecure-http`` the shared token, :func:`bearer_matches`).

Secrets are compared with :func:`hmac.compare_digest` and never logged. The :func:`guard`
middleware also answers 429 (``Retry-After``) to a source past its refusal limit before any
other work, and turns every :class:`~netcheck.controller.refusals.Denied` into its answer,
counted in memory (:mod:`~netcheck.controller.refusals`): a refusal writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from netcheck.controller.refusals import Denied, Refusals
from netcheck.controller.trust import peer_identity

AGENT_PATHS = frozenset(
    {
        "/api/v1/register",
        "/api/v1/results",
        "/api/v1/plan",
        "/api/v1/enrol",
        "/api/v1/renew",
        "/api/v1/agent-requests",
    }
)
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REALM = 'Basic realm="netcheck", charset="UTF-8"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def presented(header: str) -> str | None:
    """The secret in an Authorization header: a bearer token, or a basic auth password."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison (of the UTF-8 bytes); nothing given never matches.

    A header that is not UTF-8 (aiohttp keeps undecodable bytes as surrogates) is
    Denied(400).
    """
    if given is None or not expected:
        return False
    try:
        raw = given.encode()
    except UnicodeEncodeError:
        raise Denied(400, "auth", "the Authorization header is not UTF-8") from None
    return hmac.compare_digest(raw, expected.encode())


def bearer_matches(request: web.Request, expected: str) -> bool:
    """The shared agent token (``--insecure-http``): bearer only, as agents send it."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and same_secret(given.strip(), expected)


def source_of(request: web.Request) -> str:
    """The peer's address (what the refusal limit is kept per)."""
    return request.remote or "?"


def denied_response(denied: Denied) -> web.Response:
    resp = web.json_response(
        {"error": denied.message, "reason": denied.reason}, status=denied.status
    )
    if denied.status == 429:
        resp.headers["Retry-After"] = str(denied.retry_after)
    elif denied.status == 401 and denied.reason == "read":
        resp.headers["WWW-Authenticate"] = REALM
    return resp


def refuse(request: web.Request, refusals: Refusals, denied: Denied) -> web.Response:
    """Count `denied` (in memory), log it rate-limited, answer it (or 429 past the limit)."""
    answer = refusals.refuse(source_of(request), denied, f"{request.method} {request.path}")
    return denied_response(answer)


def guard(
    refusals: Refusals, read_token: str | None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: the per-source limit first, then the read credential where needed.

    `read_token` None: reads are open (``--open-reads``).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        # A client whose certificate the TLS handshake verified is never rate-limited by its
        # source address: agents behind one NAT must not be throttled by another's refusals.
        limited = None if peer_identity(request) else refusals.limited(source_of(request))
        if limited is not None:
            return denied_response(limited)
        try:
            if read_token is not None and request.path not in AGENT_PATHS:
                given = presented(request.headers.get("Authorization", ""))
                if not same_secret(given, read_token):
                    raise Denied(401, "read", "a read credential is required")
            return await handler(request)
        except Denied as denied:
            return refuse(request, refusals, denied)

    return middleware
