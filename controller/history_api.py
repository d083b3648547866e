"""``GET /api/v1/history``: a check's or an interaction's changes and outages (a read).

Parameters (each at most once; anything else is refused 400 with the reason):

- ``check=<check id>`` or ``interaction=<n>``: exactly one of them;
- ``since=<time>``: only changes at or after it, and outages that ended at or after it (or
  have not ended); ISO 8601 (``2026-12-01T10:00:00Z``, a zone is required) or seconds since
  the epoch;
- ``limit=<n>``: at most n changes (the newest) and n outages, 1 to
  :data:`~controller.limits.HISTORY_LIMIT_MAX` (default :data:`~controller.limits.HISTORY_LIMIT`).

The answer (a stable contract; the page's timeline is built from it)::

    {"changes": [{"at": ISO, "check_id": str, "verdict": str, "state": str, "cause": str}],
     "outages": [{"check_id": str, "start": ISO, "end": ISO | null}]}

changes oldest first; outages by start, the current one (``end`` null) included. A check id
or interaction that is neither expected nor in history is refused (400), so a typo does not
read as "no history".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from netcheck.controller.history import Query
from netcheck.controller.limits import HISTORY_LIMIT, HISTORY_LIMIT_MAX
from netcheck.controller.render.common import iso
from netcheck.controller.spec import MAX_INTERACTION_ID

PARAMETERS = ("check", "interaction", "since", "limit")
MAX_CHECK_ID = 1_000  # characters (a check id is interaction, two host names and a port)


class BadQuery(ValueError):
    """The reason a history query is refused (HTTP 400)."""


def _time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise BadQuery(
                f"since={text!r} is neither an ISO 8601 time (2026-12-01T10:00:00Z) nor "
                "seconds since the epoch"
            ) from None
        if when.tzinfo is None:
            raise BadQuery(f"since={text!r} has no time zone (add Z for UTC)") from None
        return when.timestamp()
    if not math.isfinite(value) or value < 0:
        raise BadQuery(f"since={text!r} is not a time")
    return value


def parse(query: Mapping[str, str], keys: Sequence[str]) -> Query:
    """The query of ``GET /api/v1/history`` (``keys``: every parameter name as sent, repeats
    included: ``[k for k, _ in request.query.items()]``), or :class:`BadQuery`."""
    unknown = sorted({k for k in keys if k not in PARAMETERS})
    if unknown:
        raise BadQuery(
            f"unknown parameter {unknown[0]!r} (parameters are: {', '.join(PARAMETERS)})"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise BadQuery(f"parameter {repeated[0]!r} given more than once")
    check = query.get("check")
    inter_text = query.get("interaction")
    if (check is None) == (inter_text is None):
        raise BadQuery("give exactly one of check=<check id> and interaction=<n>")
    interaction: int | None = None
    if check is not None and not 0 < len(check) <= MAX_CHECK_ID:
        raise BadQuery(f"check must be a check id of 1 to {MAX_CHECK_ID} characters")
    if inter_text is not None:
        if not inter_text.isdigit() or not 1 <= int(inter_text) <= MAX_INTERACTION_ID:
            raise BadQuery(
                f"interaction={inter_text[:40]!r} is not an interaction id "
                f"(1 to {MAX_INTERACTION_ID})"
            )
        interaction = int(inter_text)
    limit = HISTORY_LIMIT
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text) <= HISTORY_LIMIT_MAX:
            raise BadQuery(f"limit={text[:40]!r} is not a number from 1 to {HISTORY_LIMIT_MAX}")
        limit = int(text)
    since = _time(query["since"][:100]) if "since" in query else None
    return Query(check, interaction, since, limit)


def answer(
    changes: list[tuple[float, str, str, str, str]],
    outages: list[tuple[str, float, float | None]],
) -> dict[str, Any]:
    """The JSON answer (the contract in the module doc)."""
    return {
        "changes": [
            {"at": iso(at), "check_id": cid, "verdict": verdict, "state": state, "cause": cause}
            for at, cid, verdict, state, cause in changes
        ],
        "outages": [
            {"check_id": cid, "start": iso(start), "end": iso(end)} for cid, start, end in outages
        ],
    }
