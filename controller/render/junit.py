"""The JUnit XML report: one testcase per expected check, one testsuite per interaction."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from netcheck.controller.model import Evaluation, GateDecision
from netcheck.controller.render.common import check_label, interaction_label, iso, rows_of
from netcheck.controller.spec import Spec

# Characters XML 1.0 cannot carry at all, even escaped (a diagnosis may quote a banner).
_BAD = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


def xml_safe(text: str) -> str:
    return text.translate(_BAD)


def render(spec: Spec, ev: Evaluation, gates: Sequence[GateDecision]) -> str:
    del gates  # a gate is a judgement over checks, not a test of its own
    root = ET.Element("testsuites", name=f"netcheck {ev.site}")
    total = failures = skipped = 0
    for inter in spec.interactions:
        rows = rows_of(ev, inter.id)
        classname = interaction_label(inter)
        n_fail = sum(r.verdict == "fail" for r in rows)
        n_skip = sum(r.verdict == "unknown" for r in rows)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=classname,
            tests=str(len(rows)),
            failures=str(n_fail),
            errors="0",
            skipped=str(n_skip),
            timestamp=iso(ev.generated_at) or "",
        )
        for row in rows:
            case = ET.SubElement(
                suite, "testcase", classname=classname, name=xml_safe(check_label(row))
            )
            r = row.result
            case.set("time", f"{r.latency_s:.6f}" if r and r.latency_s is not None else "0")
            if row.verdict == "fail":
                el = ET.SubElement(case, "failure", message=row.cause, type=row.cause)
                el.text = xml_safe(row.diagnosis)
            elif row.verdict == "unknown":
                ET.SubElement(case, "skipped", message=xml_safe(f"{row.cause}: {row.diagnosis}"))
        total += len(rows)
        failures += n_fail
        skipped += n_skip
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("skipped", str(skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
