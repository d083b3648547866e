"""Who may say what: the authorization rules for what an agent sends. Pure.

An agent is identified by its verified client certificate (:class:`Sender` with its role and
host), or, with ``--insecure-http`` only, by the shared token (a sender with no host: it is
trusted as before, for labs and tests). A certificate's holder may only:

- register as its own role and host, with the address the inventory gives that host
  (anything else is refused, and an address mismatch is kept and shown: NAT and
  misconfiguration are visible, never stored silently);
- send a batch as its own role and host, whose every result is a check of that host's own
  plan (``check_id`` in the plan, ``src_host`` the host itself), and whose listener states and
  peers are for the inbound ports its role holds (the plan's ``listen``);
- ask for its own plan.

Every refusal is a :class:`~netcheck.controller.refusals.Denied` (403) with the reason for
``netcheck_refusals_total`` and the words for the agent; nothing of the request is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from netcheck.agent.wire import Registration, ResultBatch
from netcheck.controller.expand import ExpectedCheck, listen_specs
from netcheck.controller.inventory import Inventory
from netcheck.controller.refusals import Denied
from netcheck.controller.spec import Spec

TOKEN = "token"


@dataclass(frozen=True)
class Sender:
    """Who sent a request: ``label`` is what each stored result records (``sent_by``)."""

    label: str  # "cert:<serial hex>" or "token"
    role: str | None = None  # None: the shared token of --insecure-http
    host: str | None = None

    @classmethod
    def of_certificate(cls, role: str, host: str, serial: int) -> Sender:
        return cls(f"cert:{serial:x}", role, host)


SHARED_TOKEN = Sender(TOKEN)


@dataclass(frozen=True)
class Scope:
    """What one host of the inventory may report."""

    role: str
    host: str
    address: str
    check_ids: frozenset[str]
    ports: frozenset[int]


def scopes(
    spec: Spec,
    inventory: Inventory,
    by_source: Mapping[tuple[str, str], Iterable[ExpectedCheck]],
) -> dict[tuple[str, str], Scope]:
    """The scope of every host of a role that runs an agent."""
    out: dict[tuple[str, str], Scope] = {}
    for role, r in spec.roles.items():
        if not r.agent:
            continue
        ports = frozenset(ls.port for ls in listen_specs(spec, role))
        for h in inventory.of_role(role):
            ids = frozenset(c.spec.check_id for c in by_source.get((role, h.name), ()))
            out[(role, h.name)] = Scope(role, h.name, h.address, ids, ports)
    return out


def _forbidden(reason: str, message: str) -> Denied:
    return Denied(403, reason, message)


def _same(sender: Sender, role: str, host: str, what: str) -> None:
    if (role, host) != (sender.role, sender.host):
        raise _forbidden(
            "identity",
            f"{what} as {role} {host!r}, but the client certificate is {sender.role} "
            f"{sender.host!r}",
        )


def authorize_registration(reg: Registration, sender: Sender, scope: Scope | None) -> None:
    """A certificate registers only as itself, with the inventory's address."""
    if sender.host is None:
        return
    _same(sender, reg.role, reg.host, "registering")
    if scope is None:
        raise _forbidden("unknown-host", f"{reg.host!r} is not an agent host of the inventory")
    if reg.address != scope.address:
        raise _forbidden(
            "address",
            f"address {reg.address} is not the inventory's address {scope.address} "
            f"for host {reg.host}",
        )


def authorize_plan(role: str, host: str, sender: Sender) -> None:
    if sender.host is not None:
        _same(sender, role, host, "asking for the plan of")


def authorize_batch(batch: ResultBatch, sender: Sender, scope: Scope | None) -> None:
    """A certificate sends only its own host's planned results and listener states."""
    if sender.host is None:
        return
    _same(sender, batch.role, batch.host, "sending results")
    if scope is None:
        raise _forbidden("unknown-host", f"{batch.host!r} is not an agent host of the inventory")
    for i, r in enumerate(batch.results):
        if r.src_host != scope.host:
            raise _forbidden(
                "identity",
                f"results[{i}] ({r.check_id}): src_host {r.src_host!r} is not {scope.host!r}",
            )
        if r.check_id not in scope.check_ids:
            raise _forbidden(
                "plan", f"results[{i}] ({r.check_id}): not a check of {scope.host}'s plan"
            )
    for what, ports in (
        ("listeners", [s.port for s in batch.listeners]),
        ("peers", [p.port for p in batch.peers]),
    ):
        foreign = sorted(set(ports) - scope.ports)
        if foreign:
            raise _forbidden(
                "listener",
                f"{what} for ports {', '.join(map(str, foreign))}: not ports "
                f"{scope.host} ({scope.role}) holds",
            )
