"""Prometheus families of the interconnect qualification (controller.interconnect). Pure.

Bounded labels: interaction, source role and destination role (never hosts), so a site of
many host pairs per interaction is one series per role pair: the worst figure over its pairs
(the smallest MTU and throughput, the largest round trip and loss), and the smallest margin
to the threshold (negative: beyond it). Base units: bytes, seconds, a ratio, bits per second.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from netcheck.controller.interconnect import PathVerdict

_VERDICTS = ("pass", "fail", "unknown")
# figure -> (scale from the report's unit to the metric's base unit)
_BASE = {
    "mtu": 1.0,
    "rtt": 1e-3,
    "loss": 1e-2,
    "throughput_up": 1e6,
    "throughput_down": 1e6,
}


def path_families(paths: Sequence[PathVerdict]) -> Iterator[Metric]:
    labels = ["interaction", "src_role", "dst_role"]
    count = GaugeMetricFamily(
        "netcheck_paths",
        "Qualified data paths (host pairs) per interaction and role pair, by verdict.",
        labels=[*labels, "verdict"],
    )
    mtu = GaugeMetricFamily(
        "netcheck_path_mtu_bytes",
        "Smallest path MTU measured over the role pair's host pairs (DF set, on the data port).",
        labels=labels,
    )
    rtt = GaugeMetricFamily(
        "netcheck_path_rtt_seconds",
        "Largest mean round trip over the role pair's host pairs (connects and echoes).",
        labels=labels,
    )
    loss = GaugeMetricFamily(
        "netcheck_path_loss_ratio",
        "Largest share of unanswered connects over the role pair's host pairs (0..1).",
        labels=labels,
    )
    tput = GaugeMetricFamily(
        "netcheck_path_throughput_bits_per_second",
        "Smallest throughput measured over the role pair's host pairs, per direction.",
        labels=[*labels, "direction"],
    )
    holes = GaugeMetricFamily(
        "netcheck_path_black_holes",
        "Host pairs of the role pair whose path drops large packets without ICMP.",
        labels=labels,
    )
    margin = GaugeMetricFamily(
        "netcheck_path_threshold_margin",
        "Smallest distance of a figure to its threshold over the role pair's host pairs, in "
        "the figure's base unit (bytes, seconds, ratio, bits/s); negative: beyond it.",
        labels=[*labels, "figure"],
    )
    verdicts: dict[tuple[str, str, str], dict[str, int]] = defaultdict(
        dict.fromkeys(_VERDICTS, 0).copy
    )
    worst: dict[tuple[str, ...], float] = {}
    margins: dict[tuple[str, ...], float] = {}
    hole: dict[tuple[str, str, str], int] = defaultdict(int)

    def keep(key: tuple[str, ...], value: float | None, smallest: bool) -> None:
        if value is None:
            return
        old = worst.get(key)
        if old is None or (value < old if smallest else value > old):
            worst[key] = value

    for p in paths:
        key = (str(p.interaction), p.src_role, p.dst_role)
        verdicts[key][p.verdict] += 1
        m = p.measurement
        if m is None or p.verdict == "unknown":
            continue
        hole[key] += int(m.black_hole)
        keep(("mtu", *key), m.mtu, True)
        keep(("rtt", *key), m.rtt_avg_s, False)
        keep(("loss", *key), m.loss, False)
        up = m.up_mbit_s * 1e6 if m.up_mbit_s is not None else None
        down = m.down_mbit_s * 1e6 if m.down_mbit_s is not None else None
        keep(("up", *key), up, True)
        keep(("down", *key), down, True)
        for f in p.figures:
            if f.margin is not None:
                mk = (*key, f.figure)
                value = f.margin * _BASE[f.figure]
                margins[mk] = min(margins.get(mk, value), value)
    for key, counts in sorted(verdicts.items()):
        for v in _VERDICTS:
            count.add_metric([*key, v], counts[v])
        if any(k[1:] == key for k in worst):
            holes.add_metric(list(key), hole[key])
    for wkey, value in sorted(worst.items()):
        what, rest = wkey[0], list(wkey[1:])
        family = {"mtu": mtu, "rtt": rtt, "loss": loss}.get(what)
        if family is not None:
            family.add_metric(rest, value)
        else:
            tput.add_metric([*rest, what], value)
    for mkey, value in sorted(margins.items()):
        margin.add_metric(list(mkey), value)
    yield from (count, mtu, rtt, loss, tput, holes, margin)
