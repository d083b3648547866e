"""The store's SQLite layout, written out, and the numbered migrations from every older one.

``PRAGMA user_version`` holds the layout's number. :func:`prepare` brings a file to
:data:`VERSION` in ONE transaction: an empty file gets the current tables, an older file
runs each migration after its number in turn, and a file newer than this code is refused
(:class:`SchemaError`) before anything is written to it.

The versions:

1. netcheck 0.1: one JSON body per result; listeners without ``reported_at``.
2. One column per :class:`~netcheck.agent.wire.ProbeResult` field (the nested
   ``service_check`` as JSON); ``listeners.reported_at`` orders listener pictures.
3. Trust (issue 11): ``results.sent_by`` names the identity that sent each result (``cert:``
   and the client certificate's serial in hex, ``token`` for the shared token of
   ``--insecure-http``, ``import`` for ``netcheck-controller import``; ``''`` for results
   stored before); the enrolment ledger of :mod:`~netcheck.controller.joins` (join tokens,
   their hosts, the certificates issued).
4. Diagnosis (issue 13): ``results.responder_hops`` and ``results.last_hop_hops`` (NULL for
   results stored before).
5. ``peers.how`` and ``peers.ttl``: how a peer was seen (accepted | syn), one row per
   (host, port, source, how).
6. Requests (issue 16): ``requests``, the operator's work for one agent (kind, parameters,
   deadline, state, the agent's last report as JSON), :mod:`~netcheck.controller.requests`.
7. History (issue 14): ``history_checks`` (each check's first result, last change, last
   verdict, state and cause, and since when it has its verdict), ``history_changes`` (every
   change of verdict, state or cause) and ``outages`` (each ended run of ``fail``, start and
   end), :mod:`~netcheck.controller.history`. Files of version 6 start with empty history.
8. Guest facts (issue 15): ``guest_facts``, each guest VM's newest facts (name, value as
   JSON, how it was found, when reported), :mod:`~netcheck.controller.facts`.
9. ``agents.peers_until``: up to when each agent's peers (accepted, and SYNs its interface
   captured) are all reported; before it, its silence about a source is evidence (NULL: not
   stated, e.g. an agent older than the field).

Files made before the number existed carry ``user_version`` 0. :func:`unnumbered` tells
their two layouts apart once, by the results table (a ``body`` column: version 1), and
they continue from there; nothing else ever looks at columns.

A wire field added to ProbeResult needs a new version: its column in :data:`RESULTS`, a
migration that adds it, and :data:`VERSION` + 1 (``tests/test_store.py`` fails until the
columns and the fields agree).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from netcheck.controller.errors import StoreError

# The tables of version 2, as data (name -> CREATE TABLE). The column types are the ones
# version 2 was first written with; ``error`` happens to allow NULL (the wire never sends it).
RESULTS = """CREATE TABLE results (
    check_id TEXT PRIMARY KEY,
    interaction INTEGER NOT NULL,
    src_host TEXT NOT NULL,
    src_address TEXT NOT NULL,
    dst_host TEXT NOT NULL,
    dst_address TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    mode TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at REAL NOT NULL,
    latency_s REAL,
    service_check TEXT,
    last_hop TEXT,
    responder TEXT,
    rst_from_firewall INTEGER,
    error TEXT DEFAULT '',
    received_at REAL NOT NULL,
    sent_by TEXT NOT NULL DEFAULT '',
    responder_hops INTEGER,
    last_hop_hops INTEGER
)"""
AGENTS = """CREATE TABLE agents (
    host TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    address TEXT NOT NULL,
    mode TEXT NOT NULL,
    version TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_report REAL,
    peers_until REAL
)"""
LISTENERS = """CREATE TABLE listeners (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    error TEXT NOT NULL,
    reported_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port)
)"""
PEERS = """CREATE TABLE peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    how TEXT NOT NULL DEFAULT 'accepted',
    ttl INTEGER,
    PRIMARY KEY (host, port, src_address, how)
)"""
COUNTERS = """CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
)"""

# The enrolment ledger (version 3), used by joins.JoinTokens and joins.IssuedCerts.
JOIN_TOKENS = """CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    role TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL
)"""
JOIN_HOSTS = """CREATE TABLE join_hosts (
    token_id TEXT NOT NULL REFERENCES join_tokens(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    used_at REAL,
    PRIMARY KEY (token_id, host)
)"""
ISSUED_CERTS = """CREATE TABLE issued_certs (
    serial TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    issued_at REAL NOT NULL,
    not_after REAL NOT NULL,
    revoked_at REAL
)"""
ISSUED_CERTS_HOST = "CREATE INDEX issued_certs_host ON issued_certs (role, host)"
LEDGER: tuple[str, ...] = (JOIN_TOKENS, JOIN_HOSTS, ISSUED_CERTS, ISSUED_CERTS_HOST)

# Requests (version 6): one row per request, with the agent's last report (JSON, bounded by
# the wire's limits) once it sent one. State: pending (not yet acknowledged), running, done,
# failed, expired (its deadline passed before it ended).
REQUESTS = """CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at REAL NOT NULL,
    deadline REAL NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    report TEXT
)"""
REQUESTS_TARGET = "CREATE INDEX requests_target ON requests (role, host, state)"

# History (version 7), written by controller.history in the store's write transactions.
HISTORY_CHECKS = """CREATE TABLE history_checks (
    check_id TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_change REAL NOT NULL,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    cause TEXT NOT NULL,
    since REAL NOT NULL
)"""
HISTORY_CHANGES = """CREATE TABLE history_changes (
    id INTEGER PRIMARY KEY,
    check_id TEXT NOT NULL,
    at REAL NOT NULL,
    verdict TEXT NOT NULL,
    state TEXT NOT NULL,
    cause TEXT NOT NULL,
    flap INTEGER NOT NULL DEFAULT 0
)"""
HISTORY_CHANGES_CHECK = "CREATE INDEX history_changes_check ON history_changes (check_id, at)"
HISTORY_FLAPS = "CREATE INDEX history_flaps ON history_changes (at) WHERE flap = 1"
OUTAGES = """CREATE TABLE outages (
    id INTEGER PRIMARY KEY,
    check_id TEXT NOT NULL,
    start_at REAL NOT NULL,
    end_at REAL NOT NULL
)"""
OUTAGES_CHECK = "CREATE INDEX outages_check ON outages (check_id, start_at)"
HISTORY: tuple[str, ...] = (
    HISTORY_CHECKS,
    HISTORY_CHANGES,
    HISTORY_CHANGES_CHECK,
    HISTORY_FLAPS,
    OUTAGES,
    OUTAGES_CHECK,
)

# A guest's newest facts (version 8), one row per (host, fact name): controller/facts.py.
GUEST_FACTS = """CREATE TABLE guest_facts (
    host TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT,
    source TEXT NOT NULL,
    detail TEXT NOT NULL,
    reported_at REAL NOT NULL,
    PRIMARY KEY (host, name)
)"""

VERSION = 9
TABLES: dict[str, str] = {
    "agents": AGENTS,
    "results": RESULTS,
    "listeners": LISTENERS,
    "peers": PEERS,
    "counters": COUNTERS,
    "join_tokens": JOIN_TOKENS,
    "join_hosts": JOIN_HOSTS,
    "issued_certs": ISSUED_CERTS,
    "requests": REQUESTS,
    "history_checks": HISTORY_CHECKS,
    "history_changes": HISTORY_CHANGES,
    "outages": OUTAGES,
    "guest_facts": GUEST_FACTS,
}
INDEXES: tuple[str, ...] = (
    ISSUED_CERTS_HOST,
    REQUESTS_TARGET,
    HISTORY_CHANGES_CHECK,
    HISTORY_FLAPS,
    OUTAGES_CHECK,
)
# The results columns that hold ProbeResult's fields, in the dataclass's order.
RESULT_COLUMNS: tuple[str, ...] = (
    "check_id",
    "interaction",
    "src_host",
    "src_address",
    "dst_host",
    "dst_address",
    "port",
    "state",
    "mode",
    "attempts",
    "started_at",
    "latency_s",
    "service_check",
    "last_hop",
    "responder",
    "rst_from_firewall",
    "error",
    "responder_hops",
    "last_hop_hops",
)


class SchemaError(StoreError):
    """The database file has a layout this code cannot use (made by a newer netcheck)."""


# The results table as version 2 made it (the step to 3 adds sent_by).
_RESULTS_2 = """CREATE TABLE results (
    check_id TEXT PRIMARY KEY,
    interaction INTEGER NOT NULL,
    src_host TEXT NOT NULL,
    src_address TEXT NOT NULL,
    dst_host TEXT NOT NULL,
    dst_address TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    mode TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at REAL NOT NULL,
    latency_s REAL,
    service_check TEXT,
    last_hop TEXT,
    responder TEXT,
    rst_from_firewall INTEGER,
    error TEXT DEFAULT '',
    received_at REAL NOT NULL
)"""

# Version 1 -> 2, in SQL. Each result's JSON body becomes its columns (SQLite's JSON
# operators: a JSON true reads as 1, a missing key as NULL); the results table of version 2
# is spelled here, not taken from RESULTS, so later versions cannot change this step.
_TO_2 = (
    "ALTER TABLE listeners ADD COLUMN reported_at REAL NOT NULL DEFAULT 0",
    "ALTER TABLE results RENAME TO results_v1",
    _RESULTS_2,
    """INSERT INTO results SELECT
        body ->> '$.check_id', body ->> '$.interaction', body ->> '$.src_host',
        body ->> '$.src_address', body ->> '$.dst_host', body ->> '$.dst_address',
        body ->> '$.port', body ->> '$.state', body ->> '$.mode', body ->> '$.attempts',
        body ->> '$.started_at', body ->> '$.latency_s', body ->> '$.service_check',
        body ->> '$.last_hop', body ->> '$.responder', body ->> '$.rst_from_firewall',
        coalesce(body ->> '$.error', ''), received_at
    FROM results_v1""",
    "DROP TABLE results_v1",
)


def _run(statements: Sequence[str]) -> Callable[[sqlite3.Connection], None]:
    def migrate(c: sqlite3.Connection) -> None:
        for statement in statements:
            c.execute(statement)

    return migrate


# Version 2 -> 3: who sent each result (unknown for the results already there), and the
# enrolment ledger. Spelled here for the same reason as _TO_2.
_TO_3 = (
    "ALTER TABLE results ADD COLUMN sent_by TEXT NOT NULL DEFAULT ''",
    """CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 BLOB NOT NULL,
    role TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL
)""",
    """CREATE TABLE join_hosts (
    token_id TEXT NOT NULL REFERENCES join_tokens(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    used_at REAL,
    PRIMARY KEY (token_id, host)
)""",
    """CREATE TABLE issued_certs (
    serial TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    host TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    issued_at REAL NOT NULL,
    not_after REAL NOT NULL,
    revoked_at REAL
)""",
    "CREATE INDEX issued_certs_host ON issued_certs (role, host)",
)

# Version 3 -> 4: the hop counts of the diagnosis (unknown for the results already there).
_TO_4 = (
    "ALTER TABLE results ADD COLUMN responder_hops INTEGER",
    "ALTER TABLE results ADD COLUMN last_hop_hops INTEGER",
)

# The peers table of versions 1-4 (the step to 5 adds how and ttl).
_PEERS_4 = """CREATE TABLE peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (host, port, src_address)
)"""

# Version 4 -> 5: how a peer was seen (a listener accepted it, or the interface capture saw
# its SYN) and the SYN's TTL; one row per (host, port, source, how). Spelled here for the
# same reason as _TO_2.
_TO_5 = (
    "ALTER TABLE peers RENAME TO peers_v4",
    """CREATE TABLE peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    how TEXT NOT NULL DEFAULT 'accepted',
    ttl INTEGER,
    PRIMARY KEY (host, port, src_address, how)
)""",
    "INSERT INTO peers (host, port, src_address, at) SELECT host, port, src_address, at "
    "FROM peers_v4",
    "DROP TABLE peers_v4",
)

# version -> the step that makes it from the version before.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    2: _run(_TO_2),
    3: _run(_TO_3),
    4: _run(_TO_4),
    5: _run(_TO_5),
    6: _run((REQUESTS, REQUESTS_TARGET)),
    7: _run(HISTORY),
    8: _run((GUEST_FACTS,)),
    9: _run(("ALTER TABLE agents ADD COLUMN peers_until REAL",)),
}


def user_version(c: sqlite3.Connection) -> int:
    (v,) = c.execute("PRAGMA user_version").fetchone()
    return int(v)


def unnumbered(c: sqlite3.Connection) -> int:
    """The version of a file with ``user_version`` 0: 0 when it holds no store yet."""
    columns = {row[1] for row in c.execute("PRAGMA table_info(results)")}
    if not columns:
        return 0
    return 1 if "body" in columns else 2


def refuse_newer(c: sqlite3.Connection, path: str) -> None:
    """:class:`SchemaError` when the file was made by a newer netcheck (nothing written)."""
    found = user_version(c)
    if found > VERSION:
        raise SchemaError(
            f"{path}: the database has layout version {found}, newer than this netcheck's "
            f"({VERSION}); open it with a newer netcheck, or give another --db"
        )


def prepare(c: sqlite3.Connection, path: str) -> int:
    """Create or migrate the file to :data:`VERSION` in one transaction; the version found.

    ``c`` is in autocommit mode (``isolation_level=None``). Any error rolls everything back.
    A current file takes no write lock (a reader opening it does not wait for the server).
    """
    if user_version(c) == VERSION:
        return VERSION
    c.execute("BEGIN IMMEDIATE")
    try:
        refuse_newer(c, path)
        found = user_version(c) or unnumbered(c)
        if found == 0:
            for create in (*TABLES.values(), *INDEXES):
                c.execute(create)
        for version in range(found + 1, VERSION + 1) if found else ():
            MIGRATIONS[version](c)
        if user_version(c) != VERSION:
            c.execute(f"PRAGMA user_version = {VERSION:d}")
        c.execute("COMMIT")
    except BaseException:
        c.execute("ROLLBACK")
        raise
    return found
