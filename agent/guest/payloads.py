"""The guest's messages in the wire contract's shapes (:mod:`netcheck.agent.wire`, version
1): Registration, ProbeResult, ListenerStatus, PeerSeen, ResultBatch and its ``facts``.
Plain dicts with exactly the wire's field names; tests/test_guest_wire.py decodes each with
both of the wire's decoders (the agent's and the controller's pydantic one)."""

from typing import Any, Dict, List, Optional

from netcheck.agent import __version__

WIRE_VERSION = 1
GUEST_VERSION = __version__ + "+guest"
# The wire's bounds on one batch (agent/wire.py, Limits).
MAX_BATCH_RESULTS = 10000
MAX_BATCH_PEERS = 10000
MAX_BATCH_FACTS = 512


def registration(role: str, host: str, address: str) -> Dict[str, Any]:
    return {
        "role": role,
        "host": host,
        "address": address,
        "version": GUEST_VERSION,
        "mode": "connect",
        "wire_version": WIRE_VERSION,
    }


def check_id(interaction: int, src_host: str, dst_host: str, port: int) -> str:
    """The wire's key of a check (agent/wire.py, check_id)."""
    return "%d:%s>%s:%d" % (interaction, src_host, dst_host, port)


def probe_result(
    check: Dict[str, Any],
    host: str,
    address: str,
    state: str,
    attempts: int,
    started_at: float,
    latency_s: Optional[float],
    error: str = "",
) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "check_id": check["check_id"],
        "interaction": check["interaction"],
        "src_host": host,
        "src_address": address,
        "dst_host": check["dst_host"],
        "dst_address": check["dst_address"],
        "port": check["port"],
        "state": state,
        "mode": "connect",
        "attempts": attempts,
        "started_at": started_at,
        "latency_s": latency_s,
        "error": error[:500],
    }
    return out


def listener_status(port: int, state: str, since: float, error: str = "") -> Dict[str, Any]:
    return {"port": port, "state": state, "since": since, "owner": "", "error": error[:500]}


def peer_seen(port: int, src_address: str, at: float) -> Dict[str, Any]:
    return {"port": port, "src_address": src_address, "at": at, "how": "accepted"}


def batch(
    role: str,
    host: str,
    results: List[Dict[str, Any]],
    listeners: List[Dict[str, Any]],
    peers: List[Dict[str, Any]],
    facts: List[Dict[str, Any]],
    sent_at: float,
) -> Dict[str, Any]:
    return {
        "role": role,
        "host": host,
        "results": results[:MAX_BATCH_RESULTS],
        "listeners": listeners,
        "peers": peers[:MAX_BATCH_PEERS],
        "facts": facts[:MAX_BATCH_FACTS],
        "sent_at": sent_at,
        "dropped": 0,
        "wire_version": WIRE_VERSION,
    }
