"""ICMP errors and socket errnos, mapped to probe states.

Linux turns an ICMP destination-unreachable during connect() into an errno that loses the
code (administratively prohibited, code 13, and host unreachable, code 1, both give
EHOSTUNREACH). With IP_RECVERR the exact type/code and the router that sent it are read from
the socket's error queue, without any privilege; raw mode reads the ICMP packet itself.
"""

from __future__ import annotations

import errno

from netcheck.agent.wire import ProbeState

DEST_UNREACH = 3
TIME_EXCEEDED = 11

_UNREACH_NAMES = {
    0: "net unreachable",
    1: "host unreachable",
    2: "protocol unreachable",
    3: "port unreachable",
    4: "fragmentation needed",
    5: "source route failed",
    6: "destination net unknown",
    7: "destination host unknown",
    9: "net administratively prohibited",
    10: "host administratively prohibited",
    11: "net unreachable for TOS",
    12: "host unreachable for TOS",
    13: "communication administratively prohibited",
    14: "host precedence violation",
    15: "precedence cutoff in effect",
}
_PROHIBITED = frozenset({9, 10, 13, 14, 15})
_REFUSED = frozenset({2, 3})


def describe(icmp_type: int, code: int) -> str:
    if icmp_type == DEST_UNREACH:
        return f"ICMP destination unreachable: {_UNREACH_NAMES.get(code, f'code {code}')}"
    if icmp_type == TIME_EXCEEDED:
        return "ICMP time exceeded"
    return f"ICMP type {icmp_type} code {code}"


def state_for_icmp(icmp_type: int, code: int) -> ProbeState:
    if icmp_type != DEST_UNREACH:
        return "error"
    if code in _PROHIBITED:
        return "prohibited"
    if code in _REFUSED:
        return "refused"
    return "unreachable"


def state_for_errno(err: int | None) -> ProbeState:
    if err == errno.ECONNREFUSED:
        return "refused"
    if err == errno.EACCES or err == errno.EPERM:
        return "prohibited"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENONET):
        return "unreachable"
    if err == errno.ETIMEDOUT:
        return "filtered"
    return "error"
