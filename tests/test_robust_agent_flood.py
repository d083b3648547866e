"""A root agent in SYN mode under a 10,000-connection flood at its stand-in listeners, while it
probes: it stays up, its rounds go on and reach the controller, its connections stay under
the caps, and its RSS is measured against the 40 MB budget.

The flood itself (a namespace with only loopback, a real controller and agent, a flooder
that stops by itself) is :func:`bench.flood.run_flood`, the same run ``python -m bench
--only flood`` reports. Run under ``flock /tmp/netcheck-netns.lock``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_helpers import root_lab_skip_reason

from bench.flood import run_flood

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(root_lab_skip_reason() is not None, reason=str(root_lab_skip_reason())),
]

FLOOD = 10_000


def test_syn_agent_survives_a_10000_connection_flood(tmp_path: Path) -> None:
    run = run_flood(tmp_path, FLOOD)
    print(
        f"\nflood of {run.connections}: agent peak RSS {run.peak_rss_kib / 1024:.1f} MiB "
        f"(VmHWM {run.hwm_kib / 1024:.1f} MiB, {run.rss_before_kib / 1024:.1f} before the "
        f"flood), peak fds {run.peak_fds}, connections closed at a cap {run.capped:.0f}, "
        f"rounds stored after the flood began {run.rounds_after}"
    )
    assert run.connections == FLOOD
    assert run.agent_alive, run.agent_log[-3000:]
    assert run.rounds_after > 0, "no round was stored after the flood began"
    assert "Traceback" not in run.agent_log and "out of range" not in run.agent_log
    assert run.capped > 0  # the caps were met, and held
    assert run.peak_fds < 512 + 200
    # The flood itself costs almost nothing (before the caps: 68 MB under the flood), and
    # the SYN-mode agent stays inside its 40 MB budget (it reads replies by hand: importing
    # scapy to dissect them cost 32 MiB, 26 -> 58 MiB).
    cost = run.hwm_kib - run.rss_before_kib
    assert cost < 4 * 1024, f"the flood cost {cost} KiB"
    assert run.hwm_kib < 40 * 1024, f"peak RSS {run.hwm_kib} KiB is over the 40 MB budget"
