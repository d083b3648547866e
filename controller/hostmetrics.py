"""Host-level metric families, each bounded to :data:`SERIES_CAP` series. Pure.

The other families label roles, interactions and ports only; these name hosts, so their size
follows the site. Each is cut at :data:`SERIES_CAP` series (the most useful first: failing
ranges in order, never-registered agents before registered ones), and
``netcheck_metric_series_dropped{family}`` says how many were left out at this scrape (0 when
none: the series is always there, and ``NetcheckMetricSeriesDropped`` alerts on it). The
report and the page always hold everything.

- ``netcheck_failing_ports{interaction, src_role, src_host, src_address, dst_role, dst_host,
  dst_address, ports, cause, side, hop, seen_from}``: one series per failing range
  (:func:`~controller.ranges.failing_ranges`: consecutive failing ports of one interaction,
  host pair and cause) and diagnosis, its value the number of checks. ``hop`` is the
  enforcing device in words (as the ticket heads it), ``side`` network | host | "" (not
  known), ``seen_from`` the addresses the destination saw instead of the source's (NAT).
  Alerts aggregate the diagnosis labels away, so a diagnosis that sharpens between two probe
  rounds does not restart an alert's ``for``.
- ``netcheck_tls_certificate_not_after_timestamp_seconds{dst_role, dst_host, dst_address,
  subject, ports}``: one series per distinct certificate of a host (its subject and notAfter:
  the wire carries no serial), whatever the number of ports serving it.
- ``netcheck_agent_registered{role, host, address}``: every agent the site expects, 1 once it
  registered, 0 while it never did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from netcheck.controller.awaited import expected_agents, registered
from netcheck.controller.model import Device, Evaluation, Side
from netcheck.controller.ports import port_ranges
from netcheck.controller.ranges import failing_ranges
from netcheck.controller.render.rules import device_heading
from netcheck.controller.spec import Spec

# Series per host-level family at most (README "Metrics", deploy/README.md).
SERIES_CAP = 2000
# A label value longer than this is cut (a certificate subject, a list of NAT addresses).
LABEL_MAX = 256

FAILING = "netcheck_failing_ports"
TLS = "netcheck_tls_certificate_not_after_timestamp_seconds"
REGISTERED = "netcheck_agent_registered"
CAPPED = (FAILING, TLS, REGISTERED)


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_MAX else text[: LABEL_MAX - 3] + "..."


@dataclass
class _Bounded:
    """A family that takes at most ``cap`` series and counts the rest."""

    family: GaugeMetricFamily
    cap: int
    taken: int = 0
    dropped: int = 0

    def add(self, labels: list[str], value: float) -> None:
        if self.taken >= self.cap:
            self.dropped += 1
            return
        self.taken += 1
        self.family.add_metric([_cut(x) for x in labels], value)


def _failing(ev: Evaluation, cap: int) -> _Bounded:
    out = _Bounded(
        GaugeMetricFamily(
            FAILING,
            "Failing checks per range of consecutive ports of one interaction, host pair and "
            "cause, by diagnosis (side, enforcing hop, NAT sources): the number of checks.",
            labels=[
                *("interaction", "src_role", "src_host", "src_address"),
                *("dst_role", "dst_host", "dst_address"),
                *("ports", "cause", "side", "hop", "seen_from"),
            ],
        ),
        cap,
    )
    for rng in failing_ranges(ev.rows):
        found: dict[tuple[Side | None, Device | None, tuple[str, ...]], int] = {}
        for row in rng.rows:
            k = (row.side, row.device, row.seen_from)
            found[k] = found.get(k, 0) + 1
        if out.taken >= cap:  # past the bound: counted, no labels built
            out.dropped += len(found)
            continue
        ident = [str(rng.interaction), rng.src_role, rng.src_host, rng.src_address]
        ident += [rng.dst_role, rng.dst_host, rng.dst_address, rng.ports, rng.cause]
        diag: dict[tuple[str, str, str], int] = {}
        for (side, device, seen_from), n in found.items():
            side_words: str = side or ""
            words = (side_words, device_heading(device, side), ",".join(seen_from))
            diag[words] = diag.get(words, 0) + n
        for words in sorted(diag):
            out.add([*ident, *words], diag[words])
    return out


def _tls(ev: Evaluation, cap: int) -> _Bounded:
    out = _Bounded(
        GaugeMetricFamily(
            TLS,
            "Expiry of each distinct TLS certificate a host serves (subject and notAfter), "
            "with the ports it was seen on; unix time.",
            labels=["dst_role", "dst_host", "dst_address", "subject", "ports"],
        ),
        cap,
    )
    certs: dict[tuple[str, str, str, str, float], set[int]] = {}
    for row in ev.rows:
        sc = row.result.service_check if row.result else None
        if sc is None or sc.tls_not_after is None:
            continue
        s = row.check.spec
        key = (s.dst_role, s.dst_host, s.dst_address, sc.tls_subject or "", sc.tls_not_after)
        certs.setdefault(key, set()).add(s.port)
    # The soonest expiry first: under the cap, the certificates an alert needs stay.
    for key in sorted(certs, key=lambda k: (k[4], k[:4])):
        out.add([*key[:4], port_ranges(certs[key])], key[4])
    return out


def _registered(spec: Spec, ev: Evaluation, cap: int) -> _Bounded:
    out = _Bounded(
        GaugeMetricFamily(
            REGISTERED,
            "Every agent the site expects (a host of a role that runs one): 1 once it "
            "registered, 0 while it never did.",
            labels=["role", "host", "address"],
        ),
        cap,
    )
    seen = registered(ev)
    agents = expected_agents(spec, ev)
    for a in sorted(agents, key=lambda a: ((a.role, a.host) in seen, a)):
        out.add([a.role, a.host, a.address], 1.0 if (a.role, a.host) in seen else 0.0)
    return out


def host_families(spec: Spec, ev: Evaluation, cap: int = SERIES_CAP) -> Iterator[Metric]:
    """The host-level families of ``ev``, each at most ``cap`` series, and the count of
    series each left out."""
    bounded = {
        FAILING: _failing(ev, cap),
        TLS: _tls(ev, cap),
        REGISTERED: _registered(spec, ev, cap),
    }
    dropped = GaugeMetricFamily(
        "netcheck_metric_series_dropped",
        f"Series a host-level family left out at this scrape (at most {cap} series each).",
        labels=["family"],
    )
    for name in CAPPED:
        yield bounded[name].family
        dropped.add_metric([name], bounded[name].dropped)
    yield dropped
