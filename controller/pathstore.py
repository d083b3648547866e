"""The agents' path measurements (interconnect requests) as the store holds them.

An ``interconnect`` request that an agent ended ``done`` keeps its report, with the paths it
measured, in the store's ``requests`` table (:mod:`controller.requests`). Evaluation reads
the newest of them (:func:`read_paths`, inside the store's snapshot transaction): at most
:data:`MAX_REPORTS` reports, newest first, merged per path by
:func:`controller.interconnect.newest_measurements`.
"""

from __future__ import annotations

import sqlite3

from pydantic import TypeAdapter, ValidationError

from netcheck.agent.wire import PathMeasurement, RequestReport
from netcheck.controller.interconnect import newest_measurements

MAX_REPORTS = 500
_REPORT = TypeAdapter(RequestReport)


def read_paths(c: sqlite3.Connection) -> dict[tuple[int, str, str], PathMeasurement]:
    """(interaction, src_host, dst_host) -> the newest measurement of that path."""
    try:
        rows = c.execute(
            "SELECT report FROM requests WHERE kind = 'interconnect' AND state = 'done' "
            "AND report IS NOT NULL ORDER BY updated_at DESC LIMIT ?",
            (MAX_REPORTS,),
        ).fetchall()
    except sqlite3.OperationalError:  # a store file from before the requests table
        return {}
    reports = []
    for (text,) in rows:
        try:
            reports.append(_REPORT.validate_json(text).paths)
        except ValidationError:
            continue  # checked when it was stored; a row this version cannot read is skipped
    return newest_measurements(reports)
