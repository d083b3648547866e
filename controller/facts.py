"""A guest's facts as the controller keeps them: the newest picture per guest VM.

A guest agent (:mod:`netcheck.agent.guest`) sends its whole picture of facts in its result
batches (:attr:`~netcheck.agent.wire.ResultBatch.facts`); the store keeps the newest per host
by the batch's ``sent_at`` (table ``guest_facts``, :mod:`controller.schema` version 7), in
the same transaction as the batch. A batch without facts leaves the stored picture alone.
:class:`GuestFacts` is what the gate and the reports read (:mod:`controller.readiness`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netcheck.agent.wire import Fact, ResultBatch


@dataclass(frozen=True)
class GuestFacts:
    """One guest's newest facts (name -> fact) and when its agent sent them."""

    host: str
    reported_at: float
    facts: Mapping[str, Fact] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        f = self.facts.get(name)
        return None if f is None else f.value

    def known(self, name: str) -> bool:
        return self.value(name) is not None

    def source(self, name: str) -> str:
        f = self.facts.get(name)
        return "" if f is None else f.source

    def text(self, name: str) -> str | None:
        v = self.value(name)
        return v if isinstance(v, str) and v else None

    @property
    def os_name(self) -> str | None:
        return self.text("os.name")

    @property
    def boot(self) -> str | None:
        """The matrix's boot column: MBR, UEFI or UEFI Secure."""
        return self.text("boot.matrix")

    @property
    def static_ip(self) -> bool | None:
        v = self.value("net.static_ip")
        return v if isinstance(v, bool) else None


def write_facts(c: sqlite3.Connection, batches: Sequence[ResultBatch], now: float) -> None:
    """Store each batch's facts as its host's picture, if newer than the stored one."""
    newest: dict[str, ResultBatch] = {}
    for b in batches:
        if b.facts and (b.host not in newest or b.sent_at >= newest[b.host].sent_at):
            newest[b.host] = b
    for host, b in sorted(newest.items()):
        at = b.sent_at or now
        row = c.execute(
            "SELECT max(reported_at) FROM guest_facts WHERE host = ?", (host,)
        ).fetchone()
        if row[0] is not None and row[0] > at:
            continue  # a late, older picture
        c.execute("DELETE FROM guest_facts WHERE host = ?", (host,))
        rows = {f.name: f for f in b.facts}  # a name twice: the last one
        c.executemany(
            "INSERT INTO guest_facts (host, name, value, source, detail, reported_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(host, f.name, json.dumps(f.value), f.source, f.detail, at) for f in rows.values()],
        )


def read_facts(c: sqlite3.Connection) -> dict[str, GuestFacts]:
    out: dict[str, dict[str, Fact]] = {}
    at: dict[str, float] = {}
    for host, name, value, source, detail, reported_at in c.execute(
        "SELECT host, name, value, source, detail, reported_at FROM guest_facts ORDER BY host, name"
    ):
        out.setdefault(host, {})[name] = Fact(name, json.loads(value), source, detail)
        at[host] = reported_at
    return {h: GuestFacts(h, at[h], fs) for h, fs in out.items()}
