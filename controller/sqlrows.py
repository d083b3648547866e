"""Many rows in few statements: ``INSERT ... VALUES (row), (row), ... [ON CONFLICT ...]``.

Used by the store's writes (:mod:`controller.store`, :mod:`controller.history`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from typing import Any

PARAMS = 30_000  # below SQLite's limit on bound parameters per statement (32,766)


@dataclasses.dataclass(frozen=True)
class Upsert:
    """An ``INSERT ... VALUES (row), (row), ... ON CONFLICT ...`` for many rows at once."""

    head: str
    width: int
    tail: str = ""

    def run(self, c: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Write ``rows`` with one statement per :data:`PARAMS` parameters.

        Not ``executemany``: the sqlite3 module lets go of the GIL around every step, so a
        worker thread doing one step per row waits for the event loop's thread again and
        again (up to the 5 ms switch interval each time); one statement per chunk does not.
        Nor one JSON parameter read with ``json_each``: about twice the time.
        """
        per = max(1, PARAMS // self.width)
        one = "(" + ", ".join("?" * self.width) + ")"
        for i in range(0, len(rows), per):
            chunk = rows[i : i + per]
            values = ", ".join([one] * len(chunk))
            c.execute(f"{self.head} VALUES {values} {self.tail}", [v for r in chunk for v in r])
