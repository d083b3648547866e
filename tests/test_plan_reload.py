"""Plans follow the site (issue 14, item 1), with a real controller process and real agent
processes on loopback: an edited inventory and topology (a host added, a host removed, a
port range moved) are reloaded on SIGHUP, and the running agents probe the new plan in the
first round after it, without a restart, their unchanged listeners untouched; removed
checks disappear (not "unexpected"); a broken edit keeps the old configuration running and
shows its file:line error in the log, the metrics and the report's config block; a change
of the files is picked up without SIGHUP too."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from port_helpers import free_port
from reload_helpers import (
    PIO_ADDRESSES,
    VC_ADDRESSES,
    Site,
    free_range,
    inventory,
    line_of,
    topology,
    wait_for,
)

PERIOD = 2.0
# The agent checks its plan before a round for at most max(1, period / 2) s (daemon).
CHECK_BUDGET = 1.0
PIOS = list(PIO_ADDRESSES.values())


def all_tested(report: dict[str, Any]) -> bool:
    return bool(report["checks"]) and all(c["cause"] != "not_tested" for c in report["checks"])


def report_when(
    site: Site, what: str, ok: Callable[[dict[str, Any]], Any], timeout_s: float
) -> dict[str, Any]:
    """The first report (polled) for which `ok` holds."""

    def poll() -> dict[str, Any] | None:
        rep = site.report()
        return rep if ok(rep) else None

    found: dict[str, Any] = wait_for(what, poll, timeout_s)
    return found


def listeners_of(report: dict[str, Any], host: str) -> dict[int, dict[str, Any]]:
    return {s["port"]: s for s in report["listeners"].get(host, [])}


def first_after(site: Site, ids: set[str], t0: float, timeout_s: float) -> dict[str, float]:
    """For each check id, the earliest started_at after `t0` seen in the store (polled
    faster than a round), once every id has one."""
    seen: dict[str, float] = {}

    def poll() -> dict[str, float] | None:
        for cid, at in site.stored().items():
            if cid in ids and at > t0:
                seen[cid] = min(at, seen.get(cid, at))
        return dict(seen) if set(seen) == ids else None

    found: dict[str, float] = wait_for(f"{len(ids)} checks probed", poll, timeout_s, 0.05)
    return found


def test_sighup_reloads_the_site_and_refuses_a_broken_edit(tmp_path: Path) -> None:
    p1 = free_range(1, PIOS)
    r = free_range(3, PIOS)  # the range r..r+1 moves to r+1..r+2
    v = free_port(VC_ADDRESSES["vc-1"])
    site = Site(tmp_path)
    site.topology.write_text(topology([str(p1), f"{r}-{r + 1}"], v, PERIOD))
    site.inventory.write_text(inventory(["pio-1", "pio-2"], ["vc-1"]))
    try:
        site.start()
        pio1 = site.start_agent("pio-1")
        site.start_agent("pio-2")
        before = report_when(site, "every check probed", all_tested, 40)
        ids_before = {c["check_id"] for c in before["checks"]}
        held = listeners_of(before, "pio-1")
        assert {p: s["state"] for p, s in held.items()} == dict.fromkeys(
            [p1, r, r + 1], "listening"
        )
        assert before["config"]["error"] is None and site.metric("netcheck_config_reload_ok") == 1

        # The edit: pio-2 leaves, pio-3 and vc-2 come, the range moves by one port.
        site.topology.write_text(topology([str(p1), f"{r + 1}-{r + 2}"], v, PERIOD))
        site.inventory.write_text(inventory(["pio-1", "pio-3"], ["vc-1", "vc-2"]))
        t0 = site.hup()
        digest = before["config"]["digest"]
        after = report_when(
            site, "the new configuration", lambda x: x["config"]["digest"] != digest, 15
        )
        t1 = time.time()
        stored = site.stored()
        ids = {c["check_id"]: c for c in after["checks"]}
        new = {i for i in ids if i not in ids_before}
        removed = ids_before - set(ids)
        assert new and removed
        assert all("pio-2" in i or i.endswith(f":{r}") for i in removed), removed
        assert not any("pio-2" in i or i.endswith(f":{r}") for i in ids)
        # New checks are "not tested" until probed.
        for i in new:
            if stored.get(i, 0) <= t0:
                assert ids[i]["cause"] == "not_tested", ids[i]
        # Removed checks disappear: not unexpected (pio-1's old round may still arrive).
        assert after["summary"]["unexpected"] == 0 and after["unexpected"] == []
        # So does the removed host (its agent still runs: refused, not shown).
        assert "pio-2" not in after["listeners"]
        assert "pio-2" not in {a["host"] for a in after["agents"]}
        assert after["config"]["error"] is None

        site.start_agent("pio-3")
        mine = {i for i, c in ids.items() if c["src_host"] == "pio-1"}
        # Rounds that start once the new configuration serves (t1) probe the new plan: a
        # round may start between the signal and the swap with the old one.
        first = first_after(site, mine, t1, 4 * PERIOD + 10)
        round_start = min(first[i] for i in mine - new)  # pio-1's first round after t1
        # The first round after the reload probed the new plan, within one probe period.
        assert all(first[i] <= round_start + 1.0 for i in mine & new), (first, round_start)
        assert round_start - t0 <= 1.1 * PERIOD + CHECK_BUDGET + 1.0, round_start - t0
        assert pio1.poll() is None  # no restart
        assert "new plan" in site.agent_log("pio-1")

        # Unchanged listeners kept their sockets (same since); the dropped port is free.
        def settled() -> dict[int, dict[str, Any]] | None:
            now = listeners_of(site.report(), "pio-1")
            return now if set(now) == {p1, r + 1, r + 2} else None

        held_now = wait_for("pio-1's new listener picture", settled, 3 * PERIOD + 5)
        assert {p: s["state"] for p, s in held_now.items()} == dict.fromkeys(
            [p1, r + 1, r + 2], "listening"
        )
        assert held_now[p1]["since"] == held[p1]["since"]
        assert held_now[r + 1]["since"] == held[r + 1]["since"]
        with socket.socket() as s:
            s.bind((PIO_ADDRESSES["pio-1"], r))  # released
        wait_for(
            "pio-1 and pio-3 see each other",
            lambda: all(
                c["verdict"] == "pass" for c in site.report()["checks"] if c["interaction"] == 4
            ),
            6 * PERIOD + 10,
        )
        running = site.report()
        assert running["summary"]["unexpected"] == 0

        # A broken edit: refused with its file:line, the configuration above keeps running.
        broken = inventory(["pio-1", "pio-3"], ["vc-1", "vc-2"], duplicate="pio-1")
        site.inventory.write_text(broken)
        t_bad = site.hup()
        refused = report_when(
            site, "the refused reload in the report", lambda x: x["config"]["error"], 15
        )
        error = refused["config"]["error"]
        line = line_of(broken, "127.0.0.29")
        assert (error["file"], error["line"]) == (str(site.inventory), line), error
        assert "duplicate host name 'pio-1'" in error["message"]
        assert refused["config"]["digest"] == running["config"]["digest"]
        assert {c["check_id"] for c in refused["checks"]} == set(ids)
        assert site.metric("netcheck_config_reload_ok") == 0
        assert site.metric("netcheck_config_reloads_failed_total") == 1
        assert site.metric("netcheck_config_reloads_total") == 1
        # The refused edit's file and line in a series of its own (NetcheckConfigReloadRefused).
        (series,) = [
            x
            for x in site.get("/metrics").decode().splitlines()
            if x.startswith("netcheck_config_reload_error{")
        ]
        assert f'file="{site.inventory}"' in series and f'line="{line}"' in series, series
        assert "duplicate host name" in series and series.endswith(" 1.0")
        log = site.log.read_text()
        assert "refused" in log and f"{site.inventory}:{line}: duplicate host name" in log
        # The agents keep probing the plan that runs.
        first_after(site, mine, t_bad, 3 * PERIOD + 10)

        # Put right: the error is gone, nothing else changes.
        site.inventory.write_text(inventory(["pio-1", "pio-3"], ["vc-1", "vc-2"]))
        site.hup()
        fixed = report_when(site, "the error cleared", lambda x: x["config"]["error"] is None, 15)
        assert fixed["config"]["digest"] == running["config"]["digest"]
        assert site.metric("netcheck_config_reload_ok") == 1
        assert "netcheck_config_reload_error{" not in site.get("/metrics").decode()
    finally:
        site.close()


def test_a_changed_file_is_reloaded_without_sighup(tmp_path: Path) -> None:
    r = free_range(2, PIOS)
    v = free_port(VC_ADDRESSES["vc-1"])
    site = Site(tmp_path, watch_s=0.5)
    site.topology.write_text(topology([str(r)], v, PERIOD))
    site.inventory.write_text(inventory(["pio-1"], ["vc-1"]))
    try:
        site.start()
        site.start_agent("pio-1")
        before = report_when(site, "every check probed", all_tested, 40)
        digest = before["config"]["digest"]
        site.topology.write_text(topology([f"{r}-{r + 1}"], v, PERIOD))
        t0 = time.time()
        after = report_when(
            site, "the changed topology", lambda x: x["config"]["digest"] != digest, 15
        )
        new = {c["check_id"] for c in after["checks"]} - {c["check_id"] for c in before["checks"]}
        assert new == {f"4:pio-1>pio-1:{r + 1}"}
        first_after(site, new, t0, 3 * PERIOD + 10)

        # A broken edit of the topology, found by the watcher: shown, refused.
        bad = topology([f"{r}-{r + 1}", "70000"], v, PERIOD)
        site.topology.write_text(bad)
        refused = report_when(
            site, "the broken topology refused", lambda x: x["config"]["error"], 15
        )
        error = refused["config"]["error"]
        assert error["file"] == str(site.topology) and error["line"] == line_of(bad, '"70000"')
        assert refused["config"]["digest"] == after["config"]["digest"]
        assert site.metric("netcheck_config_reload_ok") == 0
        time.sleep(1.5)  # polled three times more: a refused edit is not tried again
        assert site.metric("netcheck_config_reloads_failed_total") == 1

        site.topology.write_text(topology([f"{r}-{r + 1}"], v, PERIOD))
        fixed = report_when(site, "the error cleared", lambda x: x["config"]["error"] is None, 15)
        assert fixed["config"]["digest"] == after["config"]["digest"]
        assert site.metric("netcheck_config_reload_ok") == 1
    finally:
        site.close()
