"""Join tokens and the issued-certificate ledger, on real SQLite files."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from netcheck.controller.joins import IssuedCerts, JoinError, JoinTokens
from netcheck.controller.pki import Revocations

NOW = 1_700_000_000.0
HOSTS = {("prem_esxi", "prem-esxi-1"), ("prem_esxi", "prem-esxi-2"), ("pio", "pio-1")}


def known(role: str, host: str) -> bool:
    return (role, host) in HOSTS


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "netcheck.db"


@pytest.fixture
def joins(db: Path) -> Iterator[JoinTokens]:
    conn = connect(db)
    yield JoinTokens(conn)
    conn.close()


def reason(exc: pytest.ExceptionInfo[JoinError]) -> str:
    return exc.value.reason


def test_issue_and_use_once(joins: JoinTokens, db: Path) -> None:
    token = joins.issue("pio", ["pio-1"], 600, known=known, now=NOW)
    token_id, _, secret = token.partition(".")
    assert len(secret) >= 43  # 32 random bytes, URL-safe base64
    join = joins.consume(token, "pio-1", NOW + 1)
    assert (join.role, join.hosts, join.token_id) == ("pio", ("pio-1",), token_id)
    with pytest.raises(JoinError) as exc:
        joins.consume(token, "pio-1", NOW + 2)
    assert reason(exc) == "used"
    with pytest.raises(JoinError) as exc:
        joins.check(token, "pio-1", NOW + 2)
    assert reason(exc) == "used"


def test_only_a_hash_is_stored(joins: JoinTokens, db: Path) -> None:
    token = joins.issue("pio", ["pio-1"], 600, known=known, now=NOW)
    secret = token.partition(".")[2]
    raw = db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes())
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw


def test_expired_token_refused(joins: JoinTokens) -> None:
    token = joins.issue("pio", ["pio-1"], 60, known=known, now=NOW)
    joins.check(token, "pio-1", NOW + 59.9)
    with pytest.raises(JoinError) as exc:
        joins.consume(token, "pio-1", NOW + 60)
    assert reason(exc) == "expired"
    assert joins.pending(NOW + 60) == []


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "unknown"),  # one character off
        (lambda t: "0" * 12 + t[12:], "unknown"),  # another id
        (lambda t: t.replace(".", ""), "malformed"),
        (lambda t: "", "malformed"),
        (lambda t: t.partition(".")[0] + ".", "malformed"),
    ],
)
def test_wrong_tokens_refused(joins: JoinTokens, mangle: Callable[[str], str], why: str) -> None:
    token = joins.issue("pio", ["pio-1"], 600, known=known, now=NOW)
    with pytest.raises(JoinError) as exc:
        joins.consume(mangle(token), "pio-1", NOW)
    assert reason(exc) == why
    joins.consume(token, "pio-1", NOW)  # the real one is still good


def test_token_is_for_its_hosts_only(joins: JoinTokens) -> None:
    token = joins.issue("prem_esxi", ["prem-esxi-1", "prem-esxi-2"], 600, known=known, now=NOW)
    with pytest.raises(JoinError) as exc:
        joins.consume(token, "pio-1", NOW)
    assert reason(exc) == "wrong-host"
    joins.consume(token, "prem-esxi-1", NOW)
    assert [j.hosts for j in joins.pending(NOW)] == [("prem-esxi-2",)]
    joins.consume(token, "prem-esxi-2", NOW)  # each host of the set once
    with pytest.raises(JoinError) as exc:
        joins.consume(token, "prem-esxi-2", NOW)
    assert reason(exc) == "used"
    assert joins.pending(NOW) == []


def test_unknown_hosts_refused_at_issue(joins: JoinTokens, db: Path) -> None:
    with pytest.raises(JoinError, match="not-in-inventory") as exc:
        joins.issue("prem_esxi", ["prem-esxi-1", "not-in-inventory"], 600, known=known, now=NOW)
    assert reason(exc) == "unknown-host"
    with pytest.raises(JoinError) as exc:
        joins.issue("pio", ["prem-esxi-1"], 600, known=known, now=NOW)  # a host of another role
    assert reason(exc) == "unknown-host"
    for hosts, ttl in (([], 600.0), (["pio-1"], 0.0), (["pio-1"], 30 * 86400.0)):
        with pytest.raises(JoinError) as exc:
            joins.issue("pio", hosts, ttl, known=known, now=NOW)
        assert reason(exc) == "bad-request"
    conn = connect(db)
    assert conn.execute("SELECT count(*) FROM join_tokens").fetchone() == (0,)  # nothing stored
    conn.close()


def test_racing_agents_one_wins(db: Path) -> None:
    token = JoinTokens(connect(db)).issue("pio", ["pio-1"], 600, known=known, now=NOW)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        mine = JoinTokens(connect(db))  # a connection each, as separate processes would
        barrier.wait()
        try:
            mine.consume(token, "pio-1", NOW)
            outcomes.append("won")
        except JoinError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes) == ["used"] * 7 + ["won"]


def test_survives_a_restart_cancel_and_purge(db: Path) -> None:
    first = JoinTokens(connect(db))
    used = first.issue("pio", ["pio-1"], 600, known=known, now=NOW)
    first.consume(used, "pio-1", NOW)
    kept = first.issue("prem_esxi", ["prem-esxi-1"], 600, known=known, now=NOW)
    short = first.issue("prem_esxi", ["prem-esxi-2"], 10, known=known, now=NOW)
    again = JoinTokens(connect(db))
    with pytest.raises(JoinError) as exc:
        again.consume(used, "pio-1", NOW)
    assert reason(exc) == "used"
    assert again.purge(NOW + 10) == 1
    with pytest.raises(JoinError) as exc:
        again.check(short, "prem-esxi-2", NOW)
    assert reason(exc) == "unknown"
    assert again.cancel(kept.partition(".")[0]) is True
    assert again.cancel(kept.partition(".")[0]) is False
    with pytest.raises(JoinError) as exc:
        again.consume(kept, "prem-esxi-1", NOW)
    assert reason(exc) == "unknown"


def test_issued_certificates_revoked_per_host(db: Path) -> None:
    ledger = IssuedCerts(connect(db))
    ledger.record(0xABC, "pio", "pio-1", "fp1", NOW, NOW + 86400)
    ledger.record(0xDEF, "pio", "pio-1", "fp2", NOW + 1, NOW + 86400)
    ledger.record(2**158 + 5, "prem_esxi", "prem-esxi-1", "fp3", NOW, NOW + 86400)
    ledger.record(0x123, "prem_esxi", "prem-esxi-1", "fp4", NOW - 90000, NOW - 1)  # expired
    assert ledger.revoke_host("pio", "pio-1", NOW + 5) == [0xABC, 0xDEF]
    assert ledger.revoke_host("pio", "pio-1", NOW + 6) == []  # already
    assert ledger.revoke_serial(0x123, NOW + 7) is True
    assert ledger.revoke_serial(0x999, NOW + 7) is False  # never issued here
    # After a restart: the revoked and still valid serials seed the in-memory set.
    revocations = Revocations(IssuedCerts(connect(db)).revoked(NOW + 10))
    assert 0xABC in revocations and 0xDEF in revocations
    assert 2**158 + 5 not in revocations  # 159-bit serials survive the round trip
    assert 0x123 not in revocations  # expired: the handshake refuses it anyway
    rows = ledger.of_host("prem_esxi", "prem-esxi-1")
    assert [(r.serial, r.revoked_at) for r in rows] == [(0x123, NOW + 7), (2**158 + 5, None)]
