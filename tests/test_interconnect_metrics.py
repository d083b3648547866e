"""The interconnect qualification's metrics: bounded labels, worst figure per role pair."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from netcheck.agent.wire import PathMeasurement
from netcheck.controller.interconnect import PathKey, PathPolicy, Qualification, verdicts
from netcheck.controller.pathmetrics import path_families

POLICY = PathPolicy(
    interaction=9, min_mtu=1280, max_rtt_ms=30, max_loss_percent=1, min_throughput_mbit=1000
)


class _Paths(Collector):
    def __init__(self, paths: object) -> None:
        self.paths = paths

    def collect(self):  # type: ignore[no-untyped-def]
        yield from path_families(self.paths)  # type: ignore[arg-type]


def test_worst_figure_per_role_pair_and_margins_in_base_units() -> None:
    keys = [PathKey(9, "prem_manager", f"pm{i}", "cloud_manager", "cm", 6000) for i in range(3)]
    ms = {
        (9, "pm0", "cm"): PathMeasurement(9, "pm0", "cm", "a", 6000, 100.0, mtu=1500,
                                          rtt_avg_s=0.010, loss=0.0, up_mbit_s=900.0),
        (9, "pm1", "cm"): PathMeasurement(9, "pm1", "cm", "a", 6000, 100.0, mtu=1400,
                                          black_hole=True, rtt_avg_s=0.020, loss=0.1),
    }  # fmt: skip
    vs = verdicts(Qualification(paths=(POLICY,)), keys, ms, 100.0)
    reg = CollectorRegistry()
    reg.register(_Paths(vs))
    text = generate_latest(reg).decode()
    got = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }
    pair = (("dst_role", "cloud_manager"), ("interaction", "9"), ("src_role", "prem_manager"))

    def val(name: str, **extra: str) -> float:
        return got[(name, tuple(sorted((*pair, *extra.items()))))]

    assert val("netcheck_paths", verdict="fail") == 2
    assert val("netcheck_paths", verdict="unknown") == 1
    assert val("netcheck_path_mtu_bytes") == 1400
    assert val("netcheck_path_rtt_seconds") == 0.02
    assert val("netcheck_path_loss_ratio") == 0.1
    assert val("netcheck_path_black_holes") == 1
    assert val("netcheck_path_throughput_bits_per_second", direction="up") == 9e8
    # 900 Mbit/s against 1000: 100 Mbit/s short, in bits per second
    assert val("netcheck_path_threshold_margin", figure="throughput_up") == -1e8
    assert abs(val("netcheck_path_threshold_margin", figure="rtt") - 0.01) < 1e-9
    # no host names in any label
    assert "pm0" not in text and "pm1" not in text
