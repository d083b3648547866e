"""History (controller.history) on a real SQLite file: changes, outages, flaps, bounds,
spec changes, restarts, another writer; and what the gate, the spec and the reports make
of it."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
import typing
from contextlib import closing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from check_helpers import result_for

from netcheck.agent.wire import ProbeResult, ProbeState, ResultBatch, ServiceCheck, ServiceOutcome
from netcheck.controller import history, schema
from netcheck.controller.evaluate import evaluate, judge_alone
from netcheck.controller.expand import ExpectedCheck, expected
from netcheck.controller.gate import gate
from netcheck.controller.history import Query
from netcheck.controller.inventory import Inventory
from netcheck.controller.limits import HISTORY_RETENTION_SECONDS
from netcheck.controller.render import json_report, markdown
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import Spec, load_spec
from netcheck.controller.store import Store

REPO = Path(__file__).resolve().parent.parent
V6_TABLES = {
    "agents",
    "results",
    "listeners",
    "peers",
    "counters",
    "join_tokens",
    "join_hosts",
    "issued_certs",
    "requests",
}
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def checks(spec: Spec, inv: Inventory) -> tuple[ExpectedCheck, ...]:
    return expected(spec, inv).checks


def open_check(checks: tuple[ExpectedCheck, ...], n: int = 0) -> ExpectedCheck:
    return [c for c in checks if c.src_host == "pio-1" and c.spec.expect == "open"][n]


def res(c: ExpectedCheck, state: ProbeState, t: float, **kw: Any) -> ProbeResult:
    return result_for(c, state, started_at=t, **kw)


def post(s: Store, *results: ProbeResult, now: float | None = None) -> None:
    at = now if now is not None else max(r.started_at for r in results) + 1
    s.ingest(ResultBatch("pio", "pio-1", results=tuple(results)), at)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as c:
        return c.execute(sql).fetchall()


def changes_of(s: Store, cid: str) -> list[tuple[float, str, str, str]]:
    ch, _ = s.history_of(Query(cid, None, None, 1000))
    return [(at, v, st, cause) for at, _, v, st, cause in ch]


def outages_of(s: Store, cid: str) -> list[tuple[float, float | None]]:
    _, out = s.history_of(Query(cid, None, None, 1000))
    return [(start, end) for _, start, end in out]


@pytest.fixture
def store(tmp_path: Path, checks: tuple[ExpectedCheck, ...]) -> Store:
    s = Store.open(tmp_path / "h.sqlite")
    s.expect(checks)
    return s


def test_an_outage_has_its_start_and_end_and_counts_two_flaps(
    store: Store, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    cid = c.spec.check_id
    post(store, res(c, "open", T0))
    post(store, res(c, "open", T0 + 300))  # steady: no change
    post(store, res(c, "filtered", T0 + 600))
    failing = store.snapshot(T0 + 700, 3600).history[cid]
    assert (failing.first_seen, failing.last_change, failing.failing_since) == (
        T0,
        T0 + 600,
        T0 + 600,
    )
    assert outages_of(store, cid) == [(T0 + 600, None)]  # the current outage
    post(store, res(c, "filtered", T0 + 900))
    post(store, res(c, "open", T0 + 1200))
    assert changes_of(store, cid) == [
        (T0, "pass", "open", "ok"),
        (T0 + 600, "fail", "filtered", "dropped"),
        (T0 + 1200, "pass", "open", "ok"),
    ]
    assert outages_of(store, cid) == [(T0 + 600, T0 + 1200)]
    h = store.snapshot(T0 + 1300, 3600).history[cid]
    assert (h.verdict, h.since, h.failing_since, h.flaps) == ("pass", T0 + 1200, None, 2)
    # Flaps count within the window only.
    assert store.snapshot(T0 + 600 + 3600 + 1, 3600).history[cid].flaps == 1
    assert store.snapshot().history[cid].flaps == 0  # no window given


def test_a_cause_change_is_a_change_within_the_same_outage(
    store: Store, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    cid = c.spec.check_id
    post(store, res(c, "filtered", T0))
    post(store, res(c, "refused", T0 + 10))  # fail -> fail, dropped -> refused
    post(store, res(c, "refused", T0 + 20, responder="198.18.9.1"))  # a firewall's reset
    assert changes_of(store, cid) == [
        (T0, "fail", "filtered", "dropped"),
        (T0 + 10, "fail", "refused", "refused"),
        (T0 + 20, "fail", "refused", "rejected"),
    ]
    h = store.snapshot(T0 + 30, 3600).history[cid]
    assert (h.failing_since, h.flaps) == (T0, 0)
    assert outages_of(store, cid) == [(T0, None)]


def test_late_and_repeated_results_change_nothing(
    store: Store, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    cid = c.spec.check_id
    post(store, res(c, "open", T0 + 100))
    post(store, res(c, "filtered", T0 + 50))  # older than the stored one: superseded
    post(store, res(c, "open", T0 + 100))  # the same again
    # One group, out of order: the store keeps the newest, history sees the same order.
    post(store, res(c, "filtered", T0 + 300), res(c, "open", T0 + 200))
    assert changes_of(store, cid) == [
        (T0 + 100, "pass", "open", "ok"),
        (T0 + 300, "fail", "filtered", "dropped"),
    ]


def test_unexpected_results_have_no_history(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    s = Store.open(tmp_path / "h.sqlite")
    s.expect([x for x in checks if x.spec.check_id != c.spec.check_id])
    post(s, res(c, "open", T0))
    assert s.snapshot().history == {}
    assert not s.history_knows(Query(c.spec.check_id, None, None, 10))
    assert s.history_knows(Query(open_check(checks, 1).spec.check_id, None, None, 10))


def test_history_survives_a_restart_and_is_not_recorded_twice(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    cid = c.spec.check_id
    db = tmp_path / "h.sqlite"
    s = Store.open(db)
    s.expect(checks)
    post(s, res(c, "open", T0), res(open_check(checks, 1), "filtered", T0))
    post(s, res(c, "filtered", T0 + 10))
    s.close()
    s = Store.open(db)
    s.expect(checks)  # the same spec: every stored result judges as recorded
    assert len(changes_of(s, cid)) == 2
    post(s, res(c, "filtered", T0 + 20))  # steady after the restart: no change
    post(s, res(c, "open", T0 + 30))
    assert changes_of(s, cid)[-1] == (T0 + 30, "pass", "open", "ok")
    assert outages_of(s, cid) == [(T0 + 10, T0 + 30)]
    assert len(changes_of(s, cid)) == 3
    s.close()


def test_a_changed_expectation_is_a_change_at_the_newest_results_time(
    store: Store, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    cid = c.spec.check_id
    post(store, res(c, "open", T0))
    post(store, res(c, "open", T0 + 300))
    closed = dataclasses.replace(c, spec=dataclasses.replace(c.spec, expect="closed"))
    store.expect([closed if x is c else x for x in checks])
    assert changes_of(store, cid) == [
        (T0, "pass", "open", "ok"),
        (T0 + 300, "fail", "open", "unexpected_open"),
    ]
    assert store.snapshot(T0 + 400, 3600).history[cid].failing_since == T0 + 300
    post(store, res(c, "filtered", T0 + 600))  # closed, as now expected
    assert changes_of(store, cid)[-1] == (T0 + 600, "pass", "filtered", "ok")
    assert outages_of(store, cid) == [(T0 + 300, T0 + 600)]


def test_results_another_process_wrote_become_history(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...]
) -> None:
    """``netcheck-controller import`` into the file of a running server: the server's next
    commit takes the imported result as an observation at its own time."""
    c, other = open_check(checks), open_check(checks, 1)
    db = tmp_path / "h.sqlite"
    server = Store.open(db)
    server.expect(checks)
    post(server, res(c, "open", T0))
    importer = Store.open(db)  # no expectations: it records no history itself
    post(importer, res(c, "filtered", T0 + 10))
    importer.close()
    post(server, res(other, "open", T0 + 20))
    assert changes_of(server, c.spec.check_id) == [
        (T0, "pass", "open", "ok"),
        (T0 + 10, "fail", "filtered", "dropped"),
    ]
    post(server, res(c, "open", T0 + 30))
    assert outages_of(server, c.spec.check_id) == [(T0 + 10, T0 + 30)]
    server.close()


def test_a_file_of_version_6_starts_its_history_from_the_stored_results(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...]
) -> None:
    c = open_check(checks)
    db = tmp_path / "v6.sqlite"
    s = Store.open(db)
    post(s, res(c, "filtered", T0))
    s.close()
    with closing(sqlite3.connect(db)) as conn:  # back to layout 6: no history tables
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in set(tables) - V6_TABLES:  # history's, and any layout's after it
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE agents DROP COLUMN peers_until")  # layout 9's
        conn.execute("PRAGMA user_version = 6")
        conn.commit()
    s = Store.open(db)
    assert s.snapshot().history == {}
    s.expect(checks)
    h = s.snapshot(T0 + 10, 3600).history[c.spec.check_id]
    assert (h.first_seen, h.failing_since) == (T0, T0)
    s.close()
    assert rows(db, "PRAGMA user_version") == [(schema.VERSION,)]


def test_bounds_per_check_in_all_and_by_age(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "HISTORY_ROWS_PER_CHECK", 5)
    monkeypatch.setattr(history, "HISTORY_ROWS", 30)
    monkeypatch.setattr(history, "OUTAGE_ROWS", 3)
    db = tmp_path / "h.sqlite"
    s = Store.open(db)
    s.expect(checks)
    flappy, quiet, other = open_check(checks), open_check(checks, 1), open_check(checks, 2)
    post(s, res(quiet, "open", T0), res(other, "filtered", T0))
    for i in range(1, 21):  # 20 changes, 10 outages
        post(s, res(flappy, "filtered" if i % 2 else "open", T0 + i), now=T0 + 100)
    s.ingest(ResultBatch("pio", "pio-1", results=()), T0 + 200)  # no result: no prune
    post(s, res(quiet, "open", T0 + 300), now=T0 + 400)  # a prune (the first was at T0+100)
    counts = dict(rows(db, "SELECT check_id, count(*) FROM history_changes GROUP BY check_id"))
    assert counts[flappy.spec.check_id] == 5  # the newest five
    assert counts[quiet.spec.check_id] == 1 and counts[other.spec.check_id] == 1
    assert len(outages_of(s, flappy.spec.check_id)) == 3
    # In all: the newest rows, whichever check they are of.
    monkeypatch.setattr(history, "HISTORY_ROWS", 3)
    post(s, res(quiet, "open", T0 + 400), now=T0 + 500)
    assert len(rows(db, "SELECT id FROM history_changes")) == 3
    # The current outage is kept whatever its age; ended ones and changes expire.
    far = T0 + HISTORY_RETENTION_SECONDS + 1000
    post(s, res(quiet, "filtered", far - 10), now=far)
    assert rows(db, "SELECT count(*) FROM history_changes WHERE at < " + str(T0 + 500)) == [(0,)]
    assert outages_of(s, flappy.spec.check_id) == []
    assert outages_of(s, other.spec.check_id) == [(T0, None)]
    h = s.snapshot(far, 3600).history
    assert h[other.spec.check_id].failing_since == T0  # the summary outlives its changes
    s.close()


def test_summaries_of_checks_no_longer_expected_expire(
    tmp_path: Path, checks: tuple[ExpectedCheck, ...]
) -> None:
    c, other = open_check(checks), open_check(checks, 1)
    s = Store.open(tmp_path / "h.sqlite")
    s.expect(checks)
    post(s, res(c, "open", T0), res(other, "open", T0))
    s.expect([x for x in checks if x is not c])  # c removed from the spec
    assert c.spec.check_id in s.snapshot().history  # kept for now
    far = T0 + HISTORY_RETENTION_SECONDS + 1000
    post(s, res(other, "filtered", far - 10), now=far)
    assert set(s.snapshot().history) == {other.spec.check_id}
    s.close()


def test_history_queries_by_interaction_since_and_limit(
    store: Store, checks: tuple[ExpectedCheck, ...]
) -> None:
    c, d = next(
        (a, b)
        for a in checks
        for b in checks
        if a.spec.interaction == b.spec.interaction and a is not b and a.spec.expect == "open"
    )
    for i in range(6):
        post(store, res(c, "open" if i % 2 else "filtered", T0 + i), res(d, "open", T0 + i))
    q = Query(None, c.spec.interaction, None, 1000)
    ch, out = store.history_of(q)
    assert [x[1] for x in ch].count(d.spec.check_id) == 1
    assert [x[0] for x in ch] == sorted(x[0] for x in ch)
    assert [(o[1], o[2]) for o in out if o[0] == c.spec.check_id] == [
        (T0, T0 + 1),
        (T0 + 2, T0 + 3),
        (T0 + 4, T0 + 5),
    ]
    ch, out = store.history_of(Query(c.spec.check_id, None, T0 + 3, 2))
    assert [x[0] for x in ch] == [T0 + 4, T0 + 5]  # the newest two since T0 + 3
    assert [(o[1], o[2]) for o in out] == [(T0 + 2, T0 + 3), (T0 + 4, T0 + 5)]
    assert store.history_of(Query(None, 999_999, None, 10)) == ([], [])


def test_the_gate_wants_checks_passing_for_the_policys_time(
    tmp_path: Path, spec: Spec, inv: Inventory
) -> None:
    strict = dataclasses.replace(
        spec, policy=spec.policy.model_copy(update={"gate_min_passing_seconds": 300})
    )
    exp = expected(strict, inv)
    s = Store.open(tmp_path / "h.sqlite")
    s.expect(exp.checks)
    mode = next(iter(strict.modes))
    mine = [c for c in exp.checks if mode in c.modes]
    flappy = next(c for c in mine if c.spec.expect == "open")
    by_src: dict[tuple[str, str], list[ProbeResult]] = {}
    for c in mine:
        ok: ProbeState = "open" if c.spec.expect == "open" else "filtered"
        by_src.setdefault((c.src_role, c.src_host), []).append(res(c, ok, T0))
    for (role, host), results in by_src.items():
        s.ingest(ResultBatch(role, host, results=tuple(results)), T0 + 1)

    def decide(now: float) -> tuple[str, tuple[str, ...]]:
        ev = evaluate(strict, exp, s.snapshot(now, strict.policy.flap_window_seconds), now)
        d = gate(strict, inv, ev, mode)
        return d.decision, d.reasons

    states: list[ProbeState] = ["filtered", "open", "filtered", "open"]
    for i, state in enumerate(states, start=1):
        s.ingest(
            ResultBatch(
                flappy.src_role, flappy.src_host, results=(res(flappy, state, T0 + i * 100),)
            ),
            T0 + i * 100 + 1,
        )
    decision, reasons = decide(T0 + 440)
    assert decision == "undecided"
    assert any(
        "passing for 40 s of the required 300 s; flapped 4 times in the window" in r
        for r in reasons
    )
    assert decide(T0 + 400 + 300)[0] == "go"
    # Without history of a passing check (a store that never recorded it), no go either.
    fresh = Store.open(tmp_path / "other.sqlite")
    for (role, host), results in by_src.items():
        fresh.ingest(ResultBatch(role, host, results=tuple(results)), T0 + 1)
    ev = evaluate(strict, exp, fresh.snapshot(T0 + 900, 3600), T0 + 900)
    d = gate(strict, inv, ev, mode)
    assert d.decision == "undecided"
    assert any("its history does not say since when" in r for r in d.reasons)
    # The default policy (0): passing now is enough.
    assert gate(spec, inv, evaluate(spec, exp, fresh.snapshot(), T0 + 800), mode).decision == "go"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("  gate_min_passing_seconds: -1", "gate_min_passing_seconds"),
        ("  flap_window_seconds: 10", "flap_window_seconds"),
        ("  flap_window_seconds: 99999999", "flap_window_seconds"),
        ("  gate_min_passing_seconds: soon", "gate_min_passing_seconds"),
    ],
)
def test_the_history_policy_is_validated_with_its_line(
    tmp_path: Path, line: str, words: str
) -> None:
    lines = (REPO / "topology.yaml").read_text().splitlines()
    key = line.split(":")[0]
    target = next(i for i, x in enumerate(lines) if x.startswith(key + ":"))
    lines[target] = line
    (tmp_path / "topology.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "guest_os_matrix.yaml").write_text((REPO / "guest_os_matrix.yaml").read_text())
    with pytest.raises(InputError) as err:
        load_spec(tmp_path / "topology.yaml")
    message = str(err.value)
    assert f"topology.yaml:{target + 1}" in message and words in message, message


def test_reports_carry_history(
    store: Store, spec: Spec, inv: Inventory, checks: tuple[ExpectedCheck, ...]
) -> None:
    c, d = open_check(checks), open_check(checks, 1)
    post(store, res(c, "open", T0), res(d, "open", T0))
    post(store, res(c, "filtered", T0 + 60), res(d, "open", T0 + 60))
    post(store, res(c, "open", T0 + 120))
    post(store, res(c, "filtered", T0 + 180))
    now = T0 + 180 + 2400
    exp = expected(spec, inv)
    ev = evaluate(spec, exp, store.snapshot(now - 2400 + 5, 3600), now - 2400 + 5)
    ev = dataclasses.replace(ev, generated_at=now)  # the same results, read 40 min later
    report = json.loads(json_report.render(spec, ev, []))
    schema_doc = json.loads((REPO / "controller/render/report.schema.json").read_text())
    check_schema = {**schema_doc["$defs"]["check"], "$defs": schema_doc["$defs"]}
    for item in report["checks"]:
        jsonschema.validate(item, check_schema)
    by_id = {x["check_id"]: x for x in report["checks"]}
    assert by_id[c.spec.check_id]["first_seen"] == "2027-01-15T08:00:00Z"
    assert by_id[c.spec.check_id]["failing_since"] == "2027-01-15T08:03:00Z"
    assert by_id[c.spec.check_id]["last_change"] == "2027-01-15T08:03:00Z"
    assert by_id[c.spec.check_id]["flaps"] == 3
    assert by_id[d.spec.check_id]["failing_since"] is None
    assert by_id[d.spec.check_id]["flaps"] == 0
    untested = next(x for x in report["checks"] if x["state"] is None)
    assert (untested["first_seen"], untested["last_change"], untested["flaps"]) == (None, None, 0)
    md = markdown.render(spec, ev, [])
    assert "failing since 2027-01-15T08:03:00Z (40 min); flapped 3 times in the window" in md


def test_a_results_judgment_alone_depends_only_on_the_key_history_caches_it_by(
    checks: tuple[ExpectedCheck, ...],
) -> None:
    """history.Recorder caches judge_alone by (expect, state, service outcome, responder is
    the destination or not, rst_from_firewall): every other field must not matter."""
    states: tuple[ProbeState, ...] = typing.get_args(ProbeState)
    outcomes = (None, *typing.get_args(ServiceOutcome))
    sample = [c for i, c in enumerate(checks) if i % 7 == 0]
    judged: dict[tuple[Any, ...], set[tuple[str, str]]] = {}
    for c in sample:
        for state, outcome, responder, rst, mode, hop, error in itertools.product(
            states,
            outcomes,
            (None, c.spec.dst_address, "198.18.9.1", "198.18.9.2"),
            (None, True, False),
            ("connect", "syn"),
            (None, "198.18.9.3"),
            ("", "no route"),
        ):
            sc = ServiceCheck(c.spec.service, outcome, "detail") if outcome else None
            r = res(
                c, state, T0, service_check=sc, responder=responder, rst_from_firewall=rst,
                mode=mode, last_hop=hop, error=error,
            )  # fmt: skip
            row = judge_alone(c, r)
            same = None if responder is None else responder == c.spec.dst_address
            key = (c.spec.expect, state, outcome, same, rst)
            judged.setdefault(key, set()).add((row.verdict, row.cause))
    assert judged and all(len(v) == 1 for v in judged.values()), {
        k: v for k, v in judged.items() if len(v) > 1
    }
