"""Store: real SQLite files, closed and reopened."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from netcheck.agent.wire import (
    ListenerStatus,
    PeerSeen,
    ProbeResult,
    Registration,
    ResultBatch,
    ServiceCheck,
    check_id,
    encode,
)
from netcheck.controller import schema
from netcheck.controller.schema import SchemaError
from netcheck.controller.store import PEERS_PER_PORT, Store, result_row, sent


def res(port: int, started_at: float, state: str = "open") -> ProbeResult:
    return ProbeResult(
        check_id=check_id(4, "pio-1", "prem-mgr", port),
        interaction=4,
        src_host="pio-1",
        src_address="198.18.1.10",
        dst_host="prem-mgr",
        dst_address="198.18.1.30",
        port=port,
        state=state,  # type: ignore[arg-type]
        mode="connect",
        attempts=1,
        started_at=started_at,
        latency_s=0.001,
        service_check=ServiceCheck("tls", "ok", tls_subject="CN=x", tls_not_after=2e9),
    )


REG = Registration("pio", "pio-1", "198.18.1.10", "0.1", "connect")


def test_write_close_reopen(tmp_path: Path) -> None:
    db = tmp_path / "nc.sqlite"
    s = Store.open(db)
    s.register(REG, 100.0)
    batch = ResultBatch(
        role="pio",
        host="pio-1",
        results=(res(8000, 10.0), res(8001, 10.0, "filtered")),
        listeners=(ListenerStatus(32820, "listening", 5.0),),
        peers=(PeerSeen(32820, "198.18.1.30", 9.0),),
        dropped=3,
    )
    assert s.ingest(batch, 101.0) == 2
    s.count_rejected("auth")
    s.close()

    s = Store.open(db)
    assert s.results() == [res(8000, 10.0), res(8001, 10.0, "filtered")]
    assert s.listeners() == {"pio-1": (ListenerStatus(32820, "listening", 5.0),)}
    assert s.peers() == {"pio-1": (PeerSeen(32820, "198.18.1.30", 9.0),)}
    (agent,) = s.agents()
    assert (agent.role, agent.host, agent.last_report) == ("pio", "pio-1", 101.0)
    assert s.counters() == {
        "results_ingested": 2,
        "batches_ingested": 1,
        "dropped:pio:pio-1": 3,
        "rejected:auth": 1,
    }
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    s.close()


def test_small_reads_do_not_wait_for_a_long_one(tmp_path: Path) -> None:
    """The counters (every scrape), the health figures and readiness have a read connection
    of their own: a snapshot of a big site holds the other one for seconds, and a scrape
    waited behind it (p99 0.45 s over mutual TLS during 1,000-agent bursts)."""
    import threading

    s = Store.open(tmp_path / "nc.sqlite")
    try:
        s.register(REG, 100.0)
        assert s.ingest(ResultBatch(role="pio", host="pio-1", results=(res(8000, 10.0),)), 101.0)
        got: dict[str, Any] = {}

        def small_reads() -> None:
            got["counters"] = s.counters()
            got["stats"] = s.stats()
            s.ping()

        with s._rlocks[False]:  # a long read in progress (as Store.snapshot holds it)
            t = threading.Thread(target=small_reads)
            t.start()
            t.join(10)
            assert not t.is_alive(), "the small reads waited for the long one"
        assert got["counters"]["results_ingested"] == 1
        assert got["stats"] == {"results": 1, "agents": 1}
        assert s.snapshot().results == (res(8000, 10.0),)  # the long-read connection still works
    finally:
        s.close()


def test_newest_result_wins_and_listeners_replace(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    s.register(REG, 0.0)
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 20.0),)), 1.0)
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 10.0, "refused"),)), 2.0)
    assert [r.state for r in s.results()] == ["open"]
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 30.0, "refused"),)), 3.0)
    assert [r.state for r in s.results()] == ["refused"]
    s.ingest(ResultBatch("pio", "pio-1", listeners=(ListenerStatus(1, "listening", 0.0),)), 4.0)
    s.ingest(ResultBatch("pio", "pio-1", listeners=(ListenerStatus(2, "denied", 0.0),)), 5.0)
    assert [x.port for x in s.listeners()["pio-1"]] == [2]
    s.close()


def test_peers_keep_how_they_were_seen_and_the_ttl(tmp_path: Path) -> None:
    """One row per (port, source, how): a SYN the capture saw next to the connection the
    listener accepted; the newest TTL wins."""
    s = Store.open(tmp_path / "n.sqlite")
    syn = PeerSeen(22, "198.18.1.10", 5.0, "syn", 63)
    s.ingest(ResultBatch("pio", "pio-1", peers=(syn, PeerSeen(22, "198.18.1.10", 4.0))), 1.0)
    s.ingest(ResultBatch("pio", "pio-1", peers=(PeerSeen(22, "198.18.1.10", 6.0, "syn", 62),)), 2.0)
    s.ingest(ResultBatch("pio", "pio-1", peers=(PeerSeen(22, "198.18.1.10", 3.0, "syn", 9),)), 3.0)
    assert s.peers() == {
        "pio-1": (PeerSeen(22, "198.18.1.10", 4.0), PeerSeen(22, "198.18.1.10", 6.0, "syn", 62))
    }
    s.close()


def test_peers_are_bounded(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    peers = tuple(PeerSeen(443, f"198.18.5.{i}", float(i)) for i in range(PEERS_PER_PORT + 10))
    s.ingest(ResultBatch("pio", "pio-1", peers=peers), 1.0)
    kept = s.peers()["pio-1"]
    assert len(kept) == PEERS_PER_PORT
    assert min(p.at for p in kept) == 10.0
    s.close()


def test_failed_batch_writes_nothing(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 1.0),)), 1.0)
    bad = ResultBatch("pio", "pio-1", results=(res(23, 1.0), res(24, float("nan"))))
    # NaN breaks the NOT NULL column: the whole batch rolls back.
    with pytest.raises(sqlite3.IntegrityError):
        s.ingest(bad, 2.0)
    assert [r.port for r in s.results()] == [22]
    assert s.counters()["batches_ingested"] == 1
    s.close()


def test_ingest_speed(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    batches = [
        ResultBatch(
            "pio", "pio-1", results=tuple(res(1000 + b * 1000 + i, 1.0) for i in range(1000))
        )
        for b in range(10)
    ]
    t0 = time.perf_counter()
    for b in batches:
        s.ingest(b, 2.0)
    rate = 10_000 / (time.perf_counter() - t0)
    print(f"store ingest: {rate:.0f} results/s")
    assert len(s.results()) == 10_000
    assert rate > 5_000  # the floor on a loaded 2-core machine; measured figures in the report
    s.close()


def test_listeners_keep_the_newest_status_per_port(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    up = ListenerStatus(22, "listening", 5.0)
    closed = ListenerStatus(22, "closed", 50.0)
    s.ingest(ResultBatch("pio", "pio-1", listeners=(up, ListenerStatus(9, "denied", 5.0))), 1.0)
    s.ingest(ResultBatch("pio", "pio-1", listeners=(closed,), sent_at=60.0), 61.0)
    # A late batch sent before the close changes nothing, and removes nothing.
    s.ingest(ResultBatch("pio", "pio-1", listeners=(up,), sent_at=40.0), 62.0)
    assert s.listeners() == {"pio-1": (closed,)}
    s.close()
    s = Store.open(tmp_path / "nc.sqlite")
    assert s.listeners() == {"pio-1": (closed,)}
    s.close()


def test_group_is_one_transaction(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    good = ResultBatch("pio", "pio-1", results=(res(22, 1.0),), dropped=2)
    bad = ResultBatch("pio", "pio-1", results=(res(23, float("nan")),))
    with pytest.raises(sqlite3.IntegrityError):
        s.ingest_group([good, bad], 2.0, ["auth"])
    assert (s.results(), s.counters()) == ([], {})
    before = s.version
    assert s.ingest_group([good, good], 3.0, ["auth", "auth"]) == [1, 1]
    assert s.version == before + 1
    assert s.counters() == {
        "results_ingested": 1,  # the same result sent twice is stored, and counted, once
        "batches_ingested": 2,
        "dropped:pio:pio-1": 4,
        "rejected:auth": 2,
    }
    s.close()


def test_every_result_field_round_trips(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    r = dataclasses.replace(
        res(443, 5.0, "refused"),
        last_hop="198.18.0.1",
        responder="198.18.0.2",
        rst_from_firewall=True,
        error="x",
    )
    s.ingest(ResultBatch("pio", "pio-1", results=(r, res(444, 5.0))), 6.0)
    assert s.results() == [r, res(444, 5.0)]
    assert s.results()[0].rst_from_firewall is True
    s.close()


# The agents table as every layout up to 8 had it (layout 9 adds peers_until).
AGENTS_BEFORE_9 = """
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    address TEXT NOT NULL,
    mode TEXT NOT NULL,
    version TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_report REAL
);
"""
# The layouts files were written with before user_version, as the code of the time created
# them (CREATE statements copied from controller/store.py at commits 109efb6 and 99c64b6).
LAYOUT_0_1 = (
    AGENTS_BEFORE_9
    + """
CREATE TABLE IF NOT EXISTS results (
    check_id TEXT PRIMARY KEY,
    src_host TEXT NOT NULL,
    started_at REAL NOT NULL,
    received_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS listeners (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (host, port)
);
CREATE TABLE IF NOT EXISTS peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (host, port, src_address)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
"""
)
LAYOUT_BEFORE_VERSIONS = (
    AGENTS_BEFORE_9
    + """
CREATE TABLE IF NOT EXISTS listeners (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    owner TEXT NOT NULL,
    error TEXT NOT NULL,
    reported_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port)
);
CREATE TABLE IF NOT EXISTS peers (
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    src_address TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (host, port, src_address)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (check_id TEXT PRIMARY KEY, interaction INTEGER NOT NULL, \
src_host TEXT NOT NULL, src_address TEXT NOT NULL, dst_host TEXT NOT NULL, dst_address TEXT \
NOT NULL, port INTEGER NOT NULL, state TEXT NOT NULL, mode TEXT NOT NULL, attempts INTEGER NOT \
NULL, started_at REAL NOT NULL, latency_s REAL, service_check TEXT, last_hop TEXT, responder \
TEXT, rst_from_firewall INTEGER, error TEXT DEFAULT '', received_at REAL NOT NULL);
"""
)
OLD_ROWS = """
INSERT INTO agents VALUES ('pio-1', 'pio', '198.18.1.10', 'connect', '0.1', 1.0, 9.0);
INSERT INTO listeners (host, port, state, since, owner, error)
    VALUES ('pio-1', 22, 'listening', 1.0, '', '');
INSERT INTO peers VALUES ('pio-1', 22, '198.18.1.30', 8.0);
INSERT INTO counters VALUES ('results_ingested', 2), ('rejected:auth', 1);
"""


def layout(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's columns (name, type, NOT NULL, default, key) and its indexes."""
    with closing(sqlite3.connect(db)) as c:
        names = [n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            n: [tuple(col[1:]) for col in c.execute(f"PRAGMA table_info({n})")]
            + [tuple(ix[1:]) for ix in c.execute(f"PRAGMA index_list({n})")]
            for n in sorted(names)
        }


def file_version(db: Path) -> int:
    with closing(sqlite3.connect(db)) as c:
        return int(c.execute("PRAGMA user_version").fetchone()[0])


def check_old_rows_survived(s: Store) -> None:
    assert s.listeners() == {"pio-1": (ListenerStatus(22, "listening", 1.0),)}
    assert s.peers() == {"pio-1": (PeerSeen(22, "198.18.1.30", 8.0),)}
    (a,) = s.agents()
    assert (a.role, a.host, a.address, a.last_report) == ("pio", "pio-1", "198.18.1.10", 9.0)
    assert s.counters() == {"results_ingested": 2, "rejected:auth": 1}


def old_row(r: ProbeResult, received_at: float) -> tuple[Any, ...]:
    """A results row as versions 1 to 3 wrote it: no hop counts (added by version 4)."""
    return (*result_row(r, received_at)[: len(schema.RESULT_COLUMNS) - 2], received_at)


def test_a_file_of_the_layout_before_user_version_is_migrated(tmp_path: Path) -> None:
    """The layout this code replaced (no user_version): every row kept, the version set."""
    db = tmp_path / "before.sqlite"
    raw = dataclasses.replace(res(23, 2.0, "refused"), rst_from_firewall=True, error="x")
    old = [res(22, 1.0), raw]
    with closing(sqlite3.connect(db)) as c:
        c.executescript(LAYOUT_BEFORE_VERSIONS + OLD_ROWS)
        c.executemany(
            f"INSERT INTO results VALUES ({', '.join('?' * 18)})",
            [old_row(r, 9.0) for r in old],
        )
        c.commit()
    assert file_version(db) == 0
    s = Store.open(db)
    assert s.results() == old
    check_old_rows_survived(s)
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 3.0, "filtered"),)), 10.0)
    assert [r.state for r in s.results()] == ["filtered", "refused"]
    s.close()
    assert file_version(db) == schema.VERSION
    new = tmp_path / "new.sqlite"
    Store.open(new).close()
    assert layout(db) == layout(new)
    Store.open(db).close()  # a current file opens as it is
    assert file_version(db) == schema.VERSION


def test_a_file_of_version_1_is_migrated(tmp_path: Path) -> None:
    """Version 0.1 kept one JSON body per result (its results had no rst_from_firewall)."""
    db = tmp_path / "v1.sqlite"
    old = [res(22, 1.0), dataclasses.replace(res(23, 2.0, "filtered"), error="x")]
    bodies = [{k: v for k, v in encode(r).items() if k != "rst_from_firewall"} for r in old]
    with closing(sqlite3.connect(db)) as c:
        c.executescript(
            LAYOUT_0_1 + OLD_ROWS.replace(" (host, port, state, since, owner, error)", "")
        )
        c.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?)",
            [
                (r.check_id, r.src_host, r.started_at, 9.0, json.dumps(b))
                for r, b in zip(old, bodies, strict=True)
            ],
        )
        c.commit()
    s = Store.open(db)
    assert s.results() == old
    check_old_rows_survived(s)
    s.ingest(ResultBatch("pio", "pio-1", results=(res(22, 3.0, "refused"),)), 10.0)
    assert [r.state for r in s.results()] == ["refused", "filtered"]
    s.close()
    with closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT received_at FROM results ORDER BY check_id").fetchall() == [
            (10.0,),
            (9.0,),
        ]
    new = tmp_path / "new.sqlite"
    Store.open(new).close()
    assert layout(db) == layout(new)
    assert file_version(db) == schema.VERSION


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    body = {k: v for k, v in encode(res(22, 1.0)).items() if k != "started_at"}
    with closing(sqlite3.connect(db)) as c:
        c.executescript(LAYOUT_0_1)
        c.execute("INSERT INTO results VALUES ('x', 'pio-1', 1.0, 9.0, ?)", (json.dumps(body),))
        c.commit()
    before = layout(db)
    with pytest.raises(sqlite3.IntegrityError, match="started_at"):
        Store.open(db)
    assert (layout(db), file_version(db)) == (before, 0)


def test_a_file_newer_than_the_code_is_refused_unchanged(tmp_path: Path) -> None:
    db = tmp_path / "future.sqlite"
    with closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE results (check_id TEXT PRIMARY KEY, shape TEXT)")
        c.execute(f"PRAGMA user_version = {schema.VERSION + 1}")
        c.commit()
    before = db.read_bytes()
    with pytest.raises(SchemaError, match=f"layout version {schema.VERSION + 1}, newer than"):
        Store.open(db)
    assert db.read_bytes() == before
    assert not (tmp_path / "future.sqlite-wal").exists()


def test_the_results_columns_are_the_wire_fields(tmp_path: Path) -> None:
    """A ProbeResult field added without a schema version fails here."""
    fields = tuple(f.name for f in dataclasses.fields(ProbeResult))
    assert fields == schema.RESULT_COLUMNS
    db = tmp_path / "nc.sqlite"
    Store.open(db).close()
    columns = tuple(col[0] for col in layout(db)["results"] if isinstance(col[1], str))
    # Every field has its column (fields added later come after received_at and sent_by, as
    # their migration's ALTER TABLE put them).
    assert {*fields, "received_at"} <= set(columns)
    assert set(schema.TABLES) == set(layout(db))


def test_snapshot_is_one_immutable_picture(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "nc.sqlite")
    s.register(REG, 1.0)
    batch = ResultBatch(
        "pio",
        "pio-1",
        results=(res(22, 1.0),),
        listeners=(ListenerStatus(22, "listening", 1.0),),
        peers=(PeerSeen(22, "198.18.1.30", 1.5),),
    )
    s.ingest(batch, 2.0)
    seen = s.snapshot()
    assert seen.results == tuple(s.results())
    assert (seen.listeners, seen.peers) == (s.listeners(), s.peers())
    assert seen.agents == tuple(s.agents())
    with pytest.raises(TypeError):
        seen.listeners["pio-1"] = ()  # type: ignore[index]
    s.ingest(ResultBatch("pio", "pio-1", results=(res(23, 1.0),)), 3.0)
    assert len(seen.results) == 1  # a snapshot does not follow later writes
    s.close()


@pytest.mark.parametrize("background", [True, False])
def test_background_checkpoints_move_the_wal_only_when_asked(
    tmp_path: Path, background: bool
) -> None:
    db = tmp_path / "nc.sqlite"
    s = Store.open(db, background_checkpoints=background)
    for b in range(3):  # about 6 MB of WAL: past SQLite's automatic checkpoint (1,000 pages)
        big = tuple(res(10_000 * b + i, 1.0) for i in range(8000))
        s.ingest(ResultBatch("pio", "pio-1", results=big), 2.0)
    if background:
        assert db.stat().st_size < 100_000  # still all in the WAL
        s.checkpoint()
    assert db.stat().st_size > 1_000_000  # the pages are in the database file
    assert len(s.results()) == 24_000
    s.close()


def test_a_file_of_version_2_is_migrated(tmp_path: Path) -> None:
    """Version 2 had no sent_by and no enrolment ledger: rows kept, sent_by '' (unknown)."""
    db = tmp_path / "v2.sqlite"
    results_v2 = schema._RESULTS_2
    assert results_v2 != schema.RESULTS
    old = [res(22, 1.0), res(23, 2.0, "refused")]
    with closing(sqlite3.connect(db)) as c:
        c.executescript(AGENTS_BEFORE_9)
        for create in (results_v2, schema.LISTENERS, schema._PEERS_4):
            c.execute(create)
        c.execute(schema.COUNTERS)
        c.executescript(OLD_ROWS)
        c.executemany(
            f"INSERT INTO results VALUES ({', '.join('?' * 18)})",
            [old_row(r, 9.0) for r in old],
        )
        c.execute("PRAGMA user_version = 2")
        c.commit()
    s = Store.open(db)
    assert s.results() == old
    assert s.sent_by() == {}
    check_old_rows_survived(s)
    s.ingest(sent(ResultBatch("pio", "pio-1", results=(res(22, 3.0, "filtered"),)), "cert:ab"), 10)
    assert s.sent_by() == {old[0].check_id: "cert:ab"}
    assert s.snapshot().sent_by == {old[0].check_id: "cert:ab"}
    s.close()
    assert file_version(db) == schema.VERSION == 9
    new = tmp_path / "new.sqlite"
    Store.open(new).close()
    assert layout(db) == layout(new)
    with closing(sqlite3.connect(db)) as c:
        names = {n for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "issued_certs_host" in names
