"""TCP connect probes of the guest's outbound checks, in a bounded pool of threads.

State per check as the wire names them: ``open`` (connected), ``refused`` (a reset),
``filtered`` (no answer within the timeout, every attempt), ``unreachable`` (ICMP host or
network unreachable), ``prohibited`` (administratively prohibited), ``error`` (anything
else). A check that is not open is tried ``retries`` more times.
"""

import errno
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from netcheck.agent.guest import payloads
from netcheck.agent.guest.plan import Plan

MAX_THREADS = 64
_STATES = {
    errno.ECONNREFUSED: "refused",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EACCES: "prohibited",
    errno.EPERM: "prohibited",
}


def connect_once(address: str, port: int, timeout_s: float) -> Tuple[str, Optional[float], str]:
    """(state, seconds to connect when open, error text) of one connect(2)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    start = time.monotonic()
    try:
        sock.connect((address, port))
        return "open", time.monotonic() - start, ""
    except socket.timeout:
        return "filtered", None, ""
    except OSError as exc:
        return _STATES.get(exc.errno or 0, "error"), None, str(exc)
    finally:
        sock.close()


def probe(check: Dict[str, Any], plan: Plan) -> Dict[str, Any]:
    started = time.time()
    per_try = plan.timeout_s / (plan.retries + 1)
    attempts = 0
    state, latency, error = "error", None, ""  # type: Tuple[str, Optional[float], str]
    for _ in range(plan.retries + 1):
        attempts += 1
        state, latency, error = connect_once(check["dst_address"], check["port"], per_try)
        if state in ("open", "refused"):
            break
    return payloads.probe_result(
        check, plan.host, plan.address, state, attempts, started, latency, error
    )


def run_round(plan: Plan) -> List[Dict[str, Any]]:
    """Every check of the plan, once: their results, in the plan's order."""
    if not plan.checks:
        return []
    workers = max(1, min(MAX_THREADS, plan.concurrency, len(plan.checks)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: probe(c, plan), plan.checks))
