"""The exposure audit: which reachable ports the spec does not list for a host pair. Pure.

An exposure sweep (a request of kind ``exposure``, :mod:`~netcheck.controller.requests`)
reports every TCP port of each destination its agent probes that accepted a connection.
For the pair (source host, destination host) the spec lists the ports of the source's
expected checks to that destination that must be open; every other open port is a
:class:`Finding` ("close this"), with the banner the service sent, if any. The newest
ended sweep of each agent counts (an agent swept again replaces its findings).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from netcheck.agent.wire import SweptHost
from netcheck.controller.expand import ExpectedCheck
from netcheck.controller.render.rules import close_rules
from netcheck.controller.requests import RequestBook, StoredRequest

BySource = Mapping[tuple[str, str], Sequence[ExpectedCheck]]


@dataclass(frozen=True)
class Finding:
    """A port open from `src_host` to `dst_host` that the spec does not list for the pair."""

    src_role: str
    src_host: str
    src_address: str
    dst_host: str
    dst_address: str
    port: int
    banner: str
    request_id: str
    found_at: float


@dataclass(frozen=True)
class Sweep:
    """One agent's newest ended exposure sweep: what it swept and what it found."""

    request_id: str
    src_role: str
    src_host: str
    state: str  # done | failed | expired
    at: float
    detail: str
    swept: tuple[SweptHost, ...]
    documented_open: int  # open ports the spec lists for their pair
    findings: tuple[Finding, ...]
    # The agent's newest sweep when it ended later than this one without being done (failed
    # or expired: its findings are this one's until a sweep is done again), else None.
    newer: StoredRequest | None = None


@dataclass(frozen=True)
class Exposure:
    """Every agent's newest sweep, and all their findings."""

    sweeps: tuple[Sweep, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for s in self.sweeps for f in s.findings)


NONE = Exposure()


def documented(by_source: BySource, role: str, host: str) -> dict[str, frozenset[int]]:
    """destination host -> the ports the spec lists (must be open) from `host` to it."""
    out: dict[str, set[int]] = {}
    for c in by_source.get((role, host), ()):
        if c.spec.expect == "open":
            out.setdefault(c.spec.dst_host, set()).add(c.spec.port)
    return {k: frozenset(v) for k, v in out.items()}


def _newest_per_agent(
    ended: Sequence[StoredRequest], done: Sequence[StoredRequest]
) -> list[tuple[StoredRequest, StoredRequest | None]]:
    """(the sweep whose findings count, a newer sweep that was not done) per agent: the
    newest done sweep counts, and a failed or expired one only for an agent never done."""
    newest = {(s.request.role, s.request.host): s for s in ended if s.request.kind == "exposure"}
    good = {(s.request.role, s.request.host): s for s in done if s.request.kind == "exposure"}
    out = []
    for key in sorted(newest.keys() | good.keys()):
        base = good.get(key) or newest[key]
        last = newest.get(key)
        newer = last if last is not None and last.request.id != base.request.id else None
        out.append((base, newer))
    return out


def audit(
    ended: Sequence[StoredRequest], by_source: BySource, done: Sequence[StoredRequest] = ()
) -> Exposure:
    """The exposure of each agent's newest done sweep (`done`: the request book's), or of its
    newest ended one (`ended`) when none was done; a later failed or expired sweep is named
    beside the findings it did not replace."""
    sweeps = []
    for s, newer in _newest_per_agent(ended, done):
        req = s.request
        listed = documented(by_source, req.role, req.host)
        src_address = next((c.src_address for c in by_source.get((req.role, req.host), ())), "")
        rep = s.report
        findings: list[Finding] = []
        ok = 0
        for p in rep.open_ports if rep is not None else ():
            if p.port in listed.get(p.dst_host, frozenset()):
                ok += 1
                continue
            findings.append(
                Finding(
                    req.role,
                    req.host,
                    src_address,
                    p.dst_host,
                    p.dst_address,
                    p.port,
                    p.banner,
                    req.id,
                    rep.at if rep is not None else s.updated_at,
                )
            )
        sweeps.append(
            Sweep(
                req.id,
                req.role,
                req.host,
                s.state,
                s.updated_at,
                s.detail,
                rep.swept if rep is not None else (),
                ok,
                tuple(findings),
                newer,
            )
        )
    return Exposure(tuple(sweeps))


def to_dict(exposure: Exposure) -> dict[str, Any]:
    """The JSON report's ``exposure`` block (report.schema.json)."""
    return {
        "sweeps": [
            {
                "request_id": s.request_id,
                "src_role": s.src_role,
                "src_host": s.src_host,
                "state": s.state,
                "at": s.at,
                "detail": s.detail,
                "newer": None
                if s.newer is None
                else {
                    "request_id": s.newer.request.id,
                    "state": s.newer.state,
                    "at": s.newer.updated_at,
                    "detail": s.newer.detail,
                },
                "swept": [
                    {
                        "dst_host": h.dst_host,
                        "dst_address": h.dst_address,
                        "ports": h.ports,
                        "mode": h.mode,
                        "seconds": h.seconds,
                        "silent": h.silent,
                        "complete": h.complete,
                    }
                    for h in s.swept
                ],
                "documented_open": s.documented_open,
                "findings": len(s.findings),
            }
            for s in exposure.sweeps
        ],
        "findings": [
            {
                "src_role": f.src_role,
                "src_host": f.src_host,
                "src_address": f.src_address,
                "dst_host": f.dst_host,
                "dst_address": f.dst_address,
                "port": f.port,
                "banner": f.banner,
                "request_id": f.request_id,
                "found_at": f.found_at,
            }
            for f in exposure.findings
        ],
        "close": [
            {"rule": r.text, "src_host": r.src_host, "dst_host": r.dst_host, "ports": r.ports}
            for r in close_rules(exposure.findings)
        ],
    }


def markdown_section(exposure: Exposure) -> list[str]:
    """The Markdown report's exposure section (with the ticket's "close these")."""
    if not exposure.sweeps:
        return []
    findings = exposure.findings
    out = [f"## Exposure audit: undocumented open ports ({len(findings)})", ""]
    out.append("| Source | Sweep | Hosts swept | Documented open | Undocumented open |")
    out.append("|---|---|---|---|---|")
    for s in exposure.sweeps:
        hosts = ", ".join(
            f"{h.dst_host} ({h.ports} ports, {h.mode}{'' if h.complete else ', cut short'})"
            for h in s.swept
        )
        state = f"{s.state} {s.request_id[:8]}"
        if s.newer is not None:
            state += f" (newer sweep {s.newer.request.id[:8]} {s.newer.state}: {s.newer.detail})"
        out.append(
            f"| {s.src_host} | {state} | {hosts or '-'} | {s.documented_open} | {len(s.findings)} |"
        )
    out.append("")
    if not findings:
        return [*out, "Nothing open beyond what the spec lists."]
    out += ["### Close these", ""]
    out.append("| Rule | Source | Destination | Ports | Banners |")
    out.append("|---|---|---|---|---|")
    for r in close_rules(exposure.findings):
        banners = "; ".join(r.banners).replace("|", "\\|") or "-"
        out.append(
            f"| {r.text} | {r.src_host} ({r.src_address}) | {r.dst_host} ({r.dst_address}) | "
            f"{r.ports} | {banners} |"
        )
    return out


_CACHE: dict[str, tuple[tuple[int, int], Exposure]] = {}


def current(book: RequestBook, by_source: BySource) -> Exposure:
    """The audit of the book's newest sweeps (computed once per book version and site)."""
    key = (book.version, id(by_source))
    hit = _CACHE.get("current")
    if hit is not None and hit[0] == key:
        return hit[1]
    found = audit(book.ended(), by_source, book.done())
    _CACHE["current"] = (key, found)
    return found


def with_markdown(text: str, exposure: Exposure) -> str:
    """A Markdown report with the exposure section appended (none without a sweep)."""
    section = markdown_section(exposure)
    if not section:
        return text
    return text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"


# At most this many (source, destination) series; the rest is counted in the dropped gauge.
MAX_SERIES = 2_000


class ExposureCollector(Collector):
    """``netcheck_exposure_open_ports{src_host,dst_host}``: the open ports the spec does not
    list for the pair, from each agent's newest sweep (one series per pair swept, at most
    :data:`MAX_SERIES`); ``netcheck_exposure_sweep_timestamp_seconds{src_host}``: when it
    ended."""

    def __init__(self, book: RequestBook, by_source: Callable[[], BySource]) -> None:
        self._book, self._by_source = book, by_source

    def collect(self) -> Iterator[Metric]:
        found = current(self._book, self._by_source())
        opened = GaugeMetricFamily(
            "netcheck_exposure_open_ports",
            "Open TCP ports the spec does not list for this host pair (close them), from the "
            "source agent's newest exposure sweep.",
            labels=["src_host", "dst_host"],
        )
        when = GaugeMetricFamily(
            "netcheck_exposure_sweep_timestamp_seconds",
            "When the source agent's newest exposure sweep ended.",
            labels=["src_host"],
        )
        dropped = GaugeMetricFamily(
            "netcheck_exposure_series_dropped",
            f"Host pairs netcheck_exposure_open_ports left out at this scrape (at most "
            f"{MAX_SERIES} series; the report holds them all).",
        )
        n = 0
        # Pairs with findings first: past the bound, what is left out is a clean pair.
        pairs: list[tuple[int, str, str]] = []
        for s in found.sweeps:
            per_dst = Counter(f.dst_host for f in s.findings)
            pairs += [(per_dst.get(h.dst_host, 0), s.src_host, h.dst_host) for h in s.swept]
        pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
        for count, src, dst in pairs:
            if n < MAX_SERIES:
                opened.add_metric([src, dst], count)
            n += 1
        for s in found.sweeps:
            when.add_metric([s.src_host], s.at)
        dropped.add_metric([], max(0, n - MAX_SERIES))
        yield opened
        yield when
        yield dropped
