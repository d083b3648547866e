"""topology.yaml's qualification section (file:line errors) and the path verdicts. Pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from netcheck.agent.qualify import PathMeasurement
from netcheck.controller.interconnect import (
    PathKey,
    PathPolicy,
    Qualification,
    gate_findings,
    judge,
    path_ports,
    verdicts,
)
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = """\
version: 1
matrix: matrix.yaml
QUAL
roles:
  a: {name: A, site: on_prem, agent: true}
  b: {name: B, site: cloud, agent: true}
interactions:
  - id: 9
    title: A to B
    source: a
    destination: b
    flows:
      - ports: "6000-6010"
        service: tcp
      - ports: "443"
        service: https
  - id: 13
    title: A to B, TLS only
    source: a
    destination: b
    flows:
      - ports: "8443"
        service: tls
modes:
  deploy:
    title: Deploy
    interactions: [9]
"""
MATRIX = "version: 1\nrows: []\n"


def _load(tmp: Path, qual: str) -> object:
    (tmp / "matrix.yaml").write_text(MATRIX)
    path = tmp / "topology.yaml"
    path.write_text(TOPOLOGY.replace("QUAL\n", qual))
    return load_spec(path)


CASES = [
    (
        "unknown interaction",
        "qualification:\n  paths:\n    - interaction: 99\n",
        "5: interaction 99 does not exist",
    ),
    (
        "twice",
        "qualification:\n  paths:\n    - interaction: 9\n    - interaction: 9\n",
        "6: interaction 9 is qualified twice (first at line 5)",
    ),
    (
        "port not of the interaction",
        "qualification:\n  paths:\n    - interaction: 9\n      port: 7000\n",
        "6: interaction 9: port 7000 is none of its ports",
    ),
    (
        "throughput range too wide",
        "qualification:\n  paths:\n    - interaction: 9\n      throughput_ports: '6000-6100'\n",
        "6: throughput_ports 6000-6100: 101 ports, more than 64 streams",
    ),
    (
        "throughput port outside",
        "qualification:\n  paths:\n    - interaction: 9\n      throughput_ports: '6005-6012'\n",
        "6: interaction 9: throughput port 6011 is none of its ports",
    ),
    (
        "not a range",
        "qualification:\n  paths:\n    - interaction: 9\n      throughput_ports: 'x-y'\n",
        "6: throughput_ports 'x-y' is not a port or a FIRST-LAST range",
    ),
    (
        "no tcp flow and no port",
        "qualification:\n  paths:\n    - interaction: 13\n",
        "5: interaction 13 has no plain-TCP flow",
    ),
    (
        "not required without a reason",
        "qualification:\n  paths:\n    - interaction: 9\n      required: false\n",
        "6: interaction 9: 'required: false' needs a 'reason'",
    ),
    (
        "negative RTT",
        "qualification:\n  paths:\n    - interaction: 9\n      max_rtt_ms: -1\n",
        "6: qualification.paths.0.max_rtt_ms",
    ),
    (
        "unknown key",
        "qualification:\n  paths:\n    - interaction: 9\n      max_jitter: 3\n",
        "max_jitter",
    ),
    ("unmeasured word", "qualification:\n  unmeasured: maybe\n", "4: qualification.unmeasured"),
]


@pytest.mark.parametrize(("qual", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_qualification_names_file_and_line(tmp_path: Path, qual: str, message: str) -> None:
    with pytest.raises(InputError) as info:
        _load(tmp_path, qual)
    assert f"{tmp_path / 'topology.yaml'}:" in str(info.value)
    assert message in str(info.value), str(info.value)


def test_shipped_policy_cites_hdm_and_marks_every_other_value() -> None:
    spec = load_spec(ROOT / "topology.yaml")
    q = spec.qualification
    assert q.throughput_every_seconds == 0  # never by default
    ic = q.for_interaction(9)
    assert ic is not None and ic.max_rtt_ms == 30 and ic.min_throughput_mbit == 1000
    assert [p.interaction for p in q.paths] == [9, 8, 10, 12, 11, 14]
    assert path_ports(ic, spec.interaction(9)) == (6000, tuple(range(6000, 6011)))
    p12 = q.for_interaction(12)
    assert p12 is not None and path_ports(p12, spec.interaction(12)) == (9001, (9001, 9002))
    text = (ROOT / "topology.yaml").read_text()
    section = text[text.index("\nqualification:") : text.index("\nroles:")]
    assert "HDM published" in section
    # every threshold other than the two published figures of 9 follows a CHOICE comment
    assert section.count("CHOICE:") >= 8


KEY = PathKey(9, "prem_manager", "pm", "cloud_manager", "cm", 6000)
POLICY = PathPolicy(
    interaction=9, min_mtu=1280, max_rtt_ms=30, max_loss_percent=1, min_throughput_mbit=1000
)


def _m(**kw: object) -> PathMeasurement:
    base: dict[str, object] = dict(
        interaction=9, src_host="pm", dst_host="cm", dst_address="198.18.2.30", port=6000,
        at=1000.0, mtu=1400, rtt_avg_s=0.012, loss=0.0,
    )  # fmt: skip
    base.update(kw)
    return PathMeasurement(**base)  # type: ignore[arg-type]


def test_a_path_within_its_thresholds_passes_with_margins() -> None:
    v = judge(KEY, POLICY, _m(up_mbit_s=1200.0, down_mbit_s=950.0), 1000.0, 3600)
    assert v.verdict == "fail"  # down is 50 Mbit/s short
    down = v.figure("throughput_down")
    assert down is not None and down.ok is False and down.margin == pytest.approx(-50)
    assert "throughput_down 950 Mbit/s, 50 Mbit/s below the 1000 Mbit/s threshold" in v.reason
    ok = judge(KEY, POLICY, _m(up_mbit_s=1200.0), 1000.0, 3600)
    assert ok.verdict == "pass" and "not measured yet: throughput_down" in ok.reason
    rtt = ok.figure("rtt")
    assert rtt is not None and rtt.margin == pytest.approx(18.0)
    assert rtt.describe() == "rtt 12.0 ms, 18.0 ms under the 30.0 ms threshold"
    mtu = ok.figure("mtu")
    assert mtu is not None and mtu.margin == 120 and mtu.ok


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        (dict(mtu=1200), "mtu 1200 bytes, 80 bytes below the 1280 bytes threshold"),
        (dict(rtt_avg_s=0.045), "rtt 45.0 ms, 15.0 ms over the 30.0 ms threshold"),
        (dict(loss=0.05), "loss 5.0 %, 4.0 % over the 1.0 % threshold"),
        (dict(black_hole=True, icmp=False), "MTU black hole: packets above 1400 bytes vanish"),
        (dict(mtu=None, error="mtu: small packets fail too"), "path MTU not found"),
    ],
)
def test_each_figure_beyond_its_threshold_fails_and_says_so(
    kw: dict[str, object], words: str
) -> None:
    v = judge(KEY, POLICY, _m(**kw), 1000.0, 3600)
    assert v.verdict == "fail" and words in v.reason, v.reason


def test_missing_and_stale_measurements_are_unknown() -> None:
    assert judge(KEY, POLICY, None, 1000.0, 3600).reason == "not measured yet"
    old = judge(KEY, POLICY, _m(at=0.0), 5000.0, 3600)
    assert old.verdict == "unknown" and "older than 3600 s" in old.reason
    nothing = judge(KEY, POLICY, _m(mtu=None, rtt_avg_s=None, loss=None, error=""), 1000.0, 3600)
    assert nothing.verdict == "unknown"


def test_verdicts_and_the_gate() -> None:
    q = Qualification(
        paths=(POLICY, PathPolicy(interaction=11, max_rtt_ms=5, required=False, reason="r"))
    )
    k11 = PathKey(11, "prem_esxi_manager", "em", "prem_esxi", "esx", 32821)
    other = PathKey(5, "pio", "p", "x", "y", 1)  # no policy: not judged
    ms = {
        (9, "pm", "cm"): _m(rtt_avg_s=0.050),
        (11, "em", "esx"): _m(interaction=11, rtt_avg_s=0.009),
    }
    vs = verdicts(q, [KEY, k11, other, KEY], ms, 1000.0)
    assert [(v.interaction, v.verdict) for v in vs] == [(9, "fail"), (11, "fail")]
    blocking, warnings = gate_findings(q, vs, [9, 11])
    assert len(blocking) == 1 and blocking[0].startswith(
        "interconnect not qualified: interaction 9 pm -> cm"
    )
    assert len(warnings) == 1 and "interaction 11" in warnings[0]  # not required: a warning
    assert gate_findings(q, vs, [1, 2]) == ([], [])
    unmeasured = verdicts(q, [KEY], {}, 1000.0)
    # nothing measured yet: the report says so; the gate neither blocks nor lists each path
    assert gate_findings(q, unmeasured, [9]) == ([], [])
    half = verdicts(q, [KEY, k11], {(11, "em", "esx"): ms[(11, "em", "esx")]}, 1000.0)
    assert gate_findings(q, half, [9, 11])[1][0].endswith("pm -> cm: not measured yet")
    strict = q.model_copy(update={"unmeasured": "block"})
    assert len(gate_findings(strict, unmeasured, [9])[0]) == 1
