"""The Prometheus text exposition format (version 0.0.4), written without prometheus_client.

The agent exports a handful of families; building their text here costs no import (the
client library adds about 2 MB to a process whose budget is 40 MB). :func:`render` is pure:
families in, text out, with the format's escaping rules for help text and label values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MetricType = Literal["counter", "gauge"]


@dataclasses.dataclass(frozen=True)
class Sample:
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclasses.dataclass(frozen=True)
class Family:
    """One metric family; a counter's samples are written with the ``_total`` suffix."""

    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...]


def gauge(name: str, help_text: str, value: float) -> Family:
    return Family(name, "gauge", help_text, (Sample((), value),))


def counter(name: str, help_text: str, value: float) -> Family:
    return Family(name, "counter", help_text, (Sample((), value),))


def labelled(
    name: str, kind: MetricType, help_text: str, label: str, values: Iterable[tuple[str, float]]
) -> Family:
    """A family with one label, one sample per (label value, value)."""
    samples = tuple(Sample(((label, key),), value) for key, value in values)
    return Family(name, kind, help_text, samples)


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    out: list[str] = []
    for fam in families:
        # As prometheus_client writes 0.0.4: a counter's HELP and TYPE name its samples.
        sample_name = fam.name + "_total" if fam.type == "counter" else fam.name
        out.append(f"# HELP {sample_name} {escape_help(fam.help)}")
        out.append(f"# TYPE {sample_name} {fam.type}")
        for sample in fam.samples:
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in sample.labels)
            braces = f"{{{labels}}}" if labels else ""
            out.append(f"{sample_name}{braces} {format_value(sample.value)}")
    return "\n".join(out) + "\n" if out else ""
