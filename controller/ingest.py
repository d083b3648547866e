"""Validation of what agents send: schema (pydantic) plus meaning.

The schema is the wire dataclasses themselves, strict (no coercion, finite floats, the
bounds of ``agent.wire``'s Limits section): the same rules as the agent's own decoder
(``agent.wire.decode``), checked by tests/test_wire_contract.py. What this module adds is
what a schema cannot say: the sender's role and host, its own results, consistent ids.

Shared by the HTTP API and ``netcheck-controller import``: a body either passes every
check and is written whole, or is refused with a reason and nothing is written.
:class:`Refused` carries the HTTP status and the ``netcheck_batches_rejected_total``
reason (auth | schema | role | size | skew). The bounds themselves are in
:mod:`controller.limits` (and the wire format's Limits): a batch over a count limit is 413
naming the field and its limit, a time outside the clock window is 400 ``skew``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from netcheck.agent.wire import WIRE_VERSION, ProbeResult, Registration, ResultBatch, check_id
from netcheck.controller.errors import NetcheckError
from netcheck.controller.inventory import Inventory
from netcheck.controller.limits import skew_message, skew_problem
from netcheck.controller.spec import Spec

Reason = Literal["auth", "schema", "role", "size", "skew"]
# The roles whose agents may send facts (a guest agent's, controller/facts.py).
GUEST_ROLES: tuple[str, ...] = ("prem_vm", "cloud_vm")
T = TypeVar("T")

_REGISTRATION = TypeAdapter(Registration)
_BATCH = TypeAdapter(ResultBatch)


@dataclass(frozen=True)
class Refused(NetcheckError):
    """A request refused: the HTTP status, the metric reason, and plain words."""

    status: int
    reason: Reason
    message: str

    def __str__(self) -> str:
        return self.message


def _schema(adapter: TypeAdapter[T], body: bytes | str, what: str) -> T:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        first = errs[0]
        loc = ".".join(str(p) for p in first["loc"]) or what
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        message = f"{what}: {loc}: {first['msg']}{more}"
        if first["type"] == "too_long" and len(first["loc"]) == 1:  # a count limit
            raise Refused(413, "size", message) from None
        raise Refused(400, "schema", message) from None


def _role_host(spec: Spec, inventory: Inventory, role: str, host: str) -> None:
    if role not in spec.roles:
        raise Refused(403, "role", f"unknown role {role!r}")
    if not spec.roles[role].agent:
        raise Refused(403, "role", f"role {role!r} does not run an agent")
    if not inventory.has(role, host):
        raise Refused(403, "role", f"host {host!r} is not a {role} host in the inventory")


def parse_registration(body: bytes | str, spec: Spec, inventory: Inventory) -> Registration:
    reg = _schema(_REGISTRATION, body, "registration")
    if reg.wire_version != WIRE_VERSION:
        raise Refused(400, "schema", f"wire_version {reg.wire_version} is not {WIRE_VERSION}")
    _role_host(spec, inventory, reg.role, reg.host)
    return reg


def _result_problem(r: ProbeResult, host: str) -> str | None:
    if r.src_host != host:
        return f"src_host {r.src_host!r} is not the batch host {host!r}"
    if r.check_id != check_id(r.interaction, r.src_host, r.dst_host, r.port):
        return f"check_id {r.check_id!r} does not match its interaction, hosts and port"
    return None


def parse_batch(body: bytes | str) -> ResultBatch:
    """The body as a ResultBatch (schema only), or :class:`Refused` (400)."""
    batch = _schema(_BATCH, body, "batch")
    if batch.wire_version != WIRE_VERSION:
        raise Refused(400, "schema", f"wire_version {batch.wire_version} is not {WIRE_VERSION}")
    return batch


def check_batch(batch: ResultBatch, spec: Spec, inventory: Inventory) -> None:
    """What the schema cannot say: a host of the inventory, its own results, their ids."""
    try:
        _role_host(spec, inventory, batch.role, batch.host)
    except Refused as exc:
        raise Refused(400, "schema", exc.message) from None
    for i, r in enumerate(batch.results):
        problem = _result_problem(r, batch.host)
        if problem:
            raise Refused(400, "schema", f"results[{i}] ({r.check_id}): {problem}")
    if batch.facts and batch.role not in GUEST_ROLES:
        roles = ", ".join(GUEST_ROLES)
        raise Refused(400, "schema", f"facts: a guest VM's ({roles}), not a {batch.role}'s")


def check_clock(batch: ResultBatch, now: float) -> None:
    """Every time of the batch within the window around ``now`` (400 ``skew`` otherwise)."""
    found = skew_problem(batch, now)
    if found is not None:
        where, skew = found
        raise Refused(400, "skew", f"{batch.host}: {skew_message(where, skew)}")


def authorize_batch(batch: ResultBatch, registered_role: str | None) -> None:
    """The sender must have registered as this host and role (409 / 403 otherwise).

    ``registered_role``: the role the batch's host registered as, None if it never did.
    """
    if registered_role is None:
        raise Refused(409, "role", f"unknown agent {batch.host!r}: register first")
    if registered_role != batch.role:
        raise Refused(
            403,
            "role",
            f"{batch.host!r} registered as {registered_role}, not {batch.role}",
        )
