"""The enrolment ledger: one-time join tokens, and the client certificates issued for them.

A join token lets one host of the inventory (or each of a set of hosts of one role) trade a
CSR for a client certificate once, within a short time. It reads ``<id>.<secret>``, like a
kubelet bootstrap token: the id finds the row, the secret (``secrets.token_urlsafe(32)``) is
kept only as its SHA-256 and compared with :func:`hmac.compare_digest`. The secret is shown
once, by :meth:`JoinTokens.issue`. Each host of a token can use it once: consuming is one
``UPDATE ... WHERE used_at IS NULL``, so two agents racing with the same token cannot both win.

:class:`IssuedCerts` keeps the serials the controller signed, per host, so revoking a host
revokes every certificate it holds; :meth:`IssuedCerts.revoked` seeds
:class:`netcheck.controller.pki.Revocations` at start.

Both classes work on a caller's ``sqlite3`` connection (autocommit, ``isolation_level=None``,
as the store opens it); their tables come from the store's migrations
(:mod:`~netcheck.controller.schema`, version 3), or are made on a bare connection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netcheck.controller.schema import LEDGER

# The tables are the store's (schema.LEDGER, version 3); created here only when missing, so
# the classes also work on a bare connection (tests, tools).
SCHEMA = "".join(
    statement.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ", 1).replace(
        "CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1
    )
    + ";\n"
    for statement in LEDGER
)

MAX_TTL_S = 7 * 24 * 3600.0
_ID_CHARS = 12  # hex


class JoinError(Exception):
    """A join token that cannot be used; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("malformed", "unknown", "expired", "used", "wrong-host", "unknown-host", "bad-request")


@dataclass(frozen=True)
class Join:
    token_id: str
    role: str
    hosts: tuple[str, ...]
    expires_at: float


def _split(token: str) -> tuple[str, bytes]:
    token_id, sep, secret = token.strip().partition(".")
    if not sep or len(token_id) != _ID_CHARS or not secret or len(secret) > 128:
        raise JoinError("malformed", "not a join token (<id>.<secret>)")
    return token_id, hashlib.sha256(secret.encode()).digest()


# One lock per connection (by id: sqlite3.Connection takes no weak reference; a reused id
# only shares a lock with a later connection, which is harmless).
_LOCKS: dict[int, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


def connection_lock(conn: sqlite3.Connection) -> threading.RLock:
    """The one lock of ``conn``: :class:`JoinTokens` and :class:`IssuedCerts` share a
    connection, and two transactions begun on it from two threads at once fail ("cannot
    start a transaction within a transaction": agents enrolling together)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(conn), threading.RLock())


class JoinTokens:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = connection_lock(conn)
        with self._lock:
            conn.executescript(SCHEMA)

    def issue(
        self,
        role: str,
        hosts: Iterable[str],
        ttl_s: float,
        *,
        known: Callable[[str, str], bool],
        now: float,
    ) -> str:
        """A new token for `hosts` of `role`, valid `ttl_s` seconds; the only copy of the secret.

        `known(role, host)` says whether the inventory has that host (``Inventory.has``).
        """
        names = tuple(dict.fromkeys(hosts))
        if not names:
            raise JoinError("bad-request", "a join token needs at least one host")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise JoinError("bad-request", f"a lifetime of {ttl_s} s (0 to {MAX_TTL_S:.0f} s)")
        missing = [h for h in names if not known(role, h)]
        if missing:
            raise JoinError(
                "unknown-host", f"not hosts of role {role!r} in the inventory: {', '.join(missing)}"
            )
        token_id = secrets.token_hex(_ID_CHARS // 2)
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).digest()
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO join_tokens (id, secret_sha256, role, issued_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (token_id, digest, role, now, now + ttl_s),
            )
            self._conn.executemany(
                "INSERT INTO join_hosts (token_id, host) VALUES (?, ?)",
                [(token_id, h) for h in names],
            )
        return f"{token_id}.{secret}"

    def check(self, token: str, host: str, now: float) -> Join:
        """The token's grant for `host`, without using it up; :class:`JoinError` if none."""
        token_id, digest = _split(token)
        with self._lock:
            row = self._conn.execute(
                "SELECT secret_sha256, role, expires_at FROM join_tokens WHERE id = ?",
                (token_id,),
            ).fetchone()
            hosts = self._conn.execute(
                "SELECT host, used_at FROM join_hosts WHERE token_id = ?", (token_id,)
            ).fetchall()
        # Compare even when the id is unknown, so both cases take the same time.
        stored = bytes(row[0]) if row is not None else b"\0" * 32
        if not hmac.compare_digest(stored, digest) or row is None:
            raise JoinError("unknown", "unknown join token")
        role, expires_at = str(row[1]), float(row[2])
        if now >= expires_at:
            raise JoinError("expired", f"join token {token_id} expired")
        used = {str(h): u for h, u in hosts}
        if host not in used:
            raise JoinError("wrong-host", f"join token {token_id} is not for host {host!r}")
        if used[host] is not None:
            raise JoinError("used", f"join token {token_id} was already used by {host}")
        return Join(token_id, role, tuple(sorted(used)), expires_at)

    def consume(self, token: str, host: str, now: float) -> Join:
        """Use the token for `host`, once: a second call (or a racing one) gets ``used``."""
        join = self.check(token, host, now)
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "UPDATE join_hosts SET used_at = ? WHERE token_id = ? AND host = ?"
                " AND used_at IS NULL"
                " AND (SELECT expires_at FROM join_tokens WHERE id = ?) > ?",
                (now, join.token_id, host, join.token_id, now),
            )
            won = cur.rowcount == 1
        if not won:
            raise JoinError("used", f"join token {join.token_id} was already used by {host}")
        return join

    def cancel(self, token_id: str) -> bool:
        """Withdraw a token (by its public id); whether there was one."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM join_hosts WHERE token_id = ?", (token_id,))
            cur = self._conn.execute("DELETE FROM join_tokens WHERE id = ?", (token_id,))
            return cur.rowcount == 1

    def pending(self, now: float) -> list[Join]:
        """Tokens still in date with at least one host left to enrol (no secrets)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT t.id, t.role, t.expires_at, h.host FROM join_tokens t"
                " JOIN join_hosts h ON h.token_id = t.id"
                " WHERE t.expires_at > ? AND h.used_at IS NULL ORDER BY t.expires_at, t.id, h.host",
                (now,),
            ).fetchall()
        grouped: dict[str, tuple[str, float, list[str]]] = {}
        for token_id, role, expires_at, host in rows:
            grouped.setdefault(token_id, (role, expires_at, []))[2].append(host)
        return [Join(t, r, tuple(h), e) for t, (r, e, h) in grouped.items()]

    def purge(self, now: float) -> int:
        """Delete expired tokens; how many."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "DELETE FROM join_hosts WHERE token_id IN"
                " (SELECT id FROM join_tokens WHERE expires_at <= ?)",
                (now,),
            )
            return self._conn.execute(
                "DELETE FROM join_tokens WHERE expires_at <= ?", (now,)
            ).rowcount


@dataclass(frozen=True)
class IssuedCert:
    serial: int
    role: str
    host: str
    fingerprint: str
    issued_at: float
    not_after: float
    revoked_at: float | None


class IssuedCerts:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = connection_lock(conn)
        with self._lock:
            conn.executescript(SCHEMA)

    def record(
        self,
        serial: int,
        role: str,
        host: str,
        fingerprint: str,
        issued_at: float,
        not_after: float,
    ) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO issued_certs (serial, role, host, fingerprint, issued_at, not_after)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (format(serial, "x"), role, host, fingerprint, issued_at, not_after),
            )

    def revoke_serial(self, serial: int, now: float) -> bool:
        """Mark one certificate revoked; whether it was issued here and not revoked already."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "UPDATE issued_certs SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
                (now, format(serial, "x")),
            )
            return cur.rowcount == 1

    def revoke_host(self, role: str, host: str, now: float) -> list[int]:
        """Revoke every certificate of a host; the serials (to add to ``Revocations``)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            rows = self._conn.execute(
                "UPDATE issued_certs SET revoked_at = ? WHERE role = ? AND host = ?"
                " AND revoked_at IS NULL RETURNING serial",
                (now, role, host),
            ).fetchall()
        return sorted(int(r[0], 16) for r in rows)

    def revoked(self, now: float) -> set[int]:
        """Serials revoked and not yet expired (an expired one fails the handshake anyway)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT serial FROM issued_certs WHERE revoked_at IS NOT NULL AND not_after > ?",
                (now,),
            ).fetchall()
        return {int(r[0], 16) for r in rows}

    def roles_of(self, host: str) -> list[str]:
        """The roles certificates were issued to `host` under (normally one)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT role FROM issued_certs WHERE host = ? ORDER BY role", (host,)
            ).fetchall()
        return [r[0] for r in rows]

    def of_host(self, role: str, host: str) -> list[IssuedCert]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT serial, role, host, fingerprint, issued_at, not_after, revoked_at"
                " FROM issued_certs WHERE role = ? AND host = ? ORDER BY issued_at",
                (role, host),
            ).fetchall()
        return [IssuedCert(int(s, 16), r, h, f, i, n, v) for s, r, h, f, i, n, v in rows]
