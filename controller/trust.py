"""The running controller's PKI state: the CA, the enrolment ledger, revocations, identities.

One :class:`Trust` per app in ``--pki`` mode, opened after the store migrated the file (the
ledger's tables are the store's, version 3). It has its own SQLite connection, so that
``PRAGMA data_version`` on it moves whenever ANY other connection committed: a
``netcheck-controller revoke`` run from another process is seen on the very next request
(:meth:`Trust.refresh`, one pragma per request, and one small query only after a commit
elsewhere). A revoked certificate is refused at once; so is one for a host that is no longer
in the inventory.

:func:`peer_identity` reads the TLS peer certificate the handshake verified against the CA
(``ssl_object.getpeercert(binary_form=True)``) and names its agent
(:func:`~netcheck.controller.pki.identity_of`), cached per certificate.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from aiohttp import web

from netcheck.controller.authz import Sender
from netcheck.controller.inventory import Inventory
from netcheck.controller.joins import IssuedCerts, JoinTokens, connection_lock
from netcheck.controller.pki import Ca, CaFiles, Identity, identity_of, load_ca
from netcheck.controller.refusals import Denied
from netcheck.controller.store import Store


@contextlib.contextmanager
def ledger(db: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection to the store file `db` (created or migrated first) for the ledger."""
    Store.open(db).close()
    conn = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        yield conn
    finally:
        conn.close()


@functools.lru_cache(maxsize=8192)
def _identity(der: bytes) -> Identity | None:
    return identity_of(der)


def peer_identity(request: web.Request) -> Identity | None:
    """The agent named by the request's verified client certificate, or None."""
    transport = request.transport
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return None
    der = obj.getpeercert(binary_form=True)
    return _identity(der) if der else None


class Trust:
    def __init__(
        self,
        files: CaFiles,
        ca: Ca,
        conn: sqlite3.Connection,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.files, self.ca, self._conn, self._clock = files, ca, conn, clock
        self.joins = JoinTokens(conn)
        self.issued = IssuedCerts(conn)
        # The one lock of this connection, shared with the ledger objects: the connection is
        # used from the event loop (refresh) and from worker threads (enrolment, renewal).
        self._lock = connection_lock(conn)
        self._seen = -1
        self.revoked: frozenset[int] = frozenset()
        self.refresh()

    @classmethod
    def open(
        cls, pki_dir: str | Path, db: str | Path, clock: Callable[[], float] = time.time
    ) -> Trust:
        """The CA of `pki_dir` and the ledger in the store file `db` (already migrated)."""
        ca = load_ca(pki_dir)
        conn = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return cls(CaFiles.in_dir(pki_dir), ca, conn, clock)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def refresh(self) -> None:
        """Reload the revoked serials when any connection committed since the last look."""
        with self._lock:
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            if version == self._seen:
                return
            self._seen = version
        self.revoked = frozenset(self.issued.revoked(self._clock()))

    def sender(self, request: web.Request, inventory: Inventory) -> Sender:
        """Who sent `request`: a valid, unrevoked certificate of an inventory host, or Denied."""
        ident = peer_identity(request)
        if ident is None:
            raise Denied(
                401, "auth", "a client certificate is required (enrol first: POST /api/v1/enrol)"
            )
        self.refresh()
        if ident.serial in self.revoked:
            raise Denied(401, "revoked", f"certificate {ident.serial:x} is revoked")
        if not inventory.has(ident.role, ident.host):
            raise Denied(
                403, "unknown-host", f"{ident.host!r} is no longer a {ident.role} of the inventory"
            )
        return Sender.of_certificate(ident.role, ident.host, ident.serial)

    def ca_pem(self) -> str:
        return self.ca.cert_pem.decode()
