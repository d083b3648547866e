"""Enrolment: a join token and a CSR in, a client certificate for one inventory host out.

The HTTP protocol (JSON bodies, over HTTPS that the agent verifies with the site's CA):

``POST /api/v1/enrol`` without a client certificate,
  ``{"token": "<id>.<secret>", "role": "<role>", "host": "<host>", "csr": "<PEM>"}``
  -> 200 ``{"certificate": "<PEM>", "ca": "<PEM>"}``.
  ``role`` may be left out (the token says it); when given it must be the token's.
  Without ``openssl`` the agent cannot make a key (the ``ssl`` module only loads one), so it
  sends ``"csr": null`` and ``"key": "controller"`` instead, and gets the key it is to use in
  the answer as well: ``{"certificate", "key", "ca"}``. The channel is authenticated by the
  controller's certificate and the token, so only the token's holder can read that key.
``POST /api/v1/renew`` with the current client certificate (mutual TLS), ``{"csr": "<PEM>"}``
  -> 200 ``{"certificate": "<PEM>", "ca": "<PEM>"}`` for the same identity and the new key;
  ``{"key": "controller"}`` -> ``{"certificate", "key", "ca"}`` for an agent without openssl.

Refusals carry ``{"error": <reason>, "detail": <text>}`` and the status of
:class:`EnrolError` (400 for a malformed request or CSR, 403 for a token or host refused);
they change nothing: the token is used up only once the certificate can be made.

The functions here are pure apart from the ledger (:mod:`netcheck.controller.joins`), so the
aiohttp handlers stay thin.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from netcheck.controller.joins import IssuedCerts, JoinError, JoinTokens
from netcheck.controller.pki import (
    CLIENT_DAYS,
    AgentName,
    Ca,
    Identity,
    PkiError,
    fingerprint,
    load_csr,
    new_client_key_and_cert,
    sign_csr,
)

MAX_BODY = 16 * 1024
_CLIENT_ERRORS = frozenset({"malformed", "bad-request", "bad-csr"})

InventoryLookup = Callable[[str, str], bool]  # Inventory.has(role, host)


class EnrolError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        return 400 if self.reason in _CLIENT_ERRORS else 403

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class EnrolRequest:
    token: str
    host: str
    role: str | None
    csr: str | None  # None: the controller makes the key


def _json_object(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise EnrolError("bad-request", f"a body of {len(body)} bytes (at most {MAX_BODY})")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnrolError("bad-request", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnrolError("bad-request", "not a JSON object")
    return data


def _str(data: dict[str, Any], field: str, *, optional: bool = False) -> str | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise EnrolError("bad-request", f"{field!r} must be a non-empty string")
    return value


def parse_enrol_request(body: bytes) -> EnrolRequest:
    data = _json_object(body)
    unknown = sorted(set(data) - {"token", "host", "role", "csr", "key"})
    if unknown:
        raise EnrolError("bad-request", f"unknown fields: {', '.join(unknown)}")
    csr = _str(data, "csr", optional=True)
    key = data.get("key", "agent")
    if key not in ("agent", "controller"):
        raise EnrolError("bad-request", "'key' is 'agent' (send a CSR) or 'controller'")
    if (csr is None) != (key == "controller"):
        raise EnrolError("bad-request", "send either a CSR or 'key': 'controller'")
    token, host = _str(data, "token"), _str(data, "host")
    assert token is not None and host is not None
    return EnrolRequest(token, host, _str(data, "role", optional=True), csr)


def parse_renew_request(body: bytes) -> str | None:
    """The CSR of a renewal, or None when the controller is to make the key."""
    data = _json_object(body)
    if data == {"key": "controller"}:
        return None
    if set(data) != {"csr"}:
        raise EnrolError("bad-request", "a renewal is {'csr': PEM} or {'key': 'controller'}")
    return _str(data, "csr")


def _when(now: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(now, datetime.UTC)


def _record(issued: IssuedCerts | None, name: AgentName, cert_pem: bytes, now: float) -> None:
    if issued is None:
        return
    cert = x509.load_pem_x509_certificate(cert_pem)
    issued.record(
        cert.serial_number,
        name.role,
        name.host,
        fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        now,
        cert.not_valid_after_utc.timestamp(),
    )


def _admit(
    joins: JoinTokens,
    inventory_lookup: InventoryLookup,
    token: str,
    host: str,
    role: str | None,
    now: float,
) -> AgentName:
    """The identity a token grants to `host` (checked, not yet used up)."""
    try:
        join = joins.check(token, host, now)
    except JoinError as exc:
        raise EnrolError(exc.reason, str(exc)) from None
    if role is not None and role != join.role:
        raise EnrolError("wrong-host", f"the join token is for role {join.role!r}, not {role!r}")
    if not inventory_lookup(join.role, host):
        raise EnrolError("unknown-host", f"{host!r} is no longer a {join.role} of the inventory")
    try:
        return AgentName(join.role, host)
    except PkiError as exc:
        raise EnrolError("bad-request", str(exc)) from None


def _consume(joins: JoinTokens, token: str, host: str, now: float) -> None:
    try:
        joins.consume(token, host, now)
    except JoinError as exc:
        raise EnrolError(exc.reason, str(exc)) from None


def enrol(
    joins: JoinTokens,
    ca: Ca,
    inventory_lookup: InventoryLookup,
    token: str,
    csr_pem: str | bytes,
    now: float,
    *,
    host: str,
    role: str | None = None,
    days: int = CLIENT_DAYS,
    issued: IssuedCerts | None = None,
) -> bytes:
    """Trade a join token and a CSR for a PEM client certificate naming (role, `host`).

    Order: the token (cheap) first, then the CSR, then the inventory, and the token is used up
    last, so a refusal leaves it usable. :class:`EnrolError` says why.
    """
    name = _admit(joins, inventory_lookup, token, host, role, now)
    try:
        load_csr(csr_pem)
    except PkiError as exc:
        raise EnrolError("bad-csr", str(exc)) from None
    _consume(joins, token, host, now)
    cert = sign_csr(ca, csr_pem, name, days, now=_when(now))
    _record(issued, name, cert, now)
    return cert


def enrol_new_key(
    joins: JoinTokens,
    ca: Ca,
    inventory_lookup: InventoryLookup,
    token: str,
    now: float,
    *,
    host: str,
    role: str | None = None,
    days: int = CLIENT_DAYS,
    issued: IssuedCerts | None = None,
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for an agent that has no ``openssl`` to make its own key."""
    name = _admit(joins, inventory_lookup, token, host, role, now)
    _consume(joins, token, host, now)
    key, cert = new_client_key_and_cert(ca, name, days, now=_when(now))
    _record(issued, name, cert, now)
    return key, cert


def _renewable(
    identity: Identity | None, inventory_lookup: InventoryLookup, revoked: Container[int]
) -> AgentName:
    if identity is None:
        raise EnrolError("unknown", "renewal needs the agent's current client certificate")
    if identity.serial in revoked:
        raise EnrolError("revoked", f"certificate {identity.serial:x} is revoked")
    if not inventory_lookup(identity.role, identity.host):
        raise EnrolError(
            "unknown-host", f"{identity.host!r} is no longer a {identity.role} of the inventory"
        )
    return AgentName(identity.role, identity.host)


def renew(
    ca: Ca,
    identity: Identity | None,
    inventory_lookup: InventoryLookup,
    revoked: Container[int],
    csr_pem: str | bytes,
    now: float,
    *,
    days: int = CLIENT_DAYS,
    issued: IssuedCerts | None = None,
) -> bytes:
    """A new certificate for the identity of a verified, unrevoked client certificate.

    The old certificate stays valid until it expires (the agent may still be using it).
    """
    name = _renewable(identity, inventory_lookup, revoked)
    try:
        cert = sign_csr(ca, csr_pem, name, days, now=_when(now))
    except PkiError as exc:
        raise EnrolError("bad-csr", str(exc)) from None
    _record(issued, name, cert, now)
    return cert


def renew_new_key(
    ca: Ca,
    identity: Identity | None,
    inventory_lookup: InventoryLookup,
    revoked: Container[int],
    now: float,
    *,
    days: int = CLIENT_DAYS,
    issued: IssuedCerts | None = None,
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM): a renewal for an agent without ``openssl``."""
    name = _renewable(identity, inventory_lookup, revoked)
    key, cert = new_client_key_and_cert(ca, name, days, now=_when(now))
    _record(issued, name, cert, now)
    return key, cert
