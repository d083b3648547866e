"""The guest's loop: register (the answer is its plan), hold the plan's inbound ports,
probe its outbound checks, report results, listeners, peers and facts; every ``period_s``.

Nothing acknowledged is lost and nothing unacknowledged is dropped silently: results the
controller did not take (no answer, 5xx) wait for the next round, at most
:data:`MAX_PENDING` (the oldest dropped first, counted in the batch's ``dropped``); a 400
means the controller will never take that batch (logged, dropped); 409 means it does not know
this guest any more (register again, send again); 401/403 stop the agent.
"""

import contextlib
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from netcheck.agent.guest import enrol, payloads, probes
from netcheck.agent.guest.https import Client, HttpError, error_text
from netcheck.agent.guest.listeners import StandIns
from netcheck.agent.guest.plan import Plan, PlanError

log = logging.getLogger("netcheck.guest")
REGISTER_PATH, RESULTS_PATH = "/api/v1/register", "/api/v1/results"
MAX_PENDING = 10000


class Refused(Exception):
    """The controller refused this guest (401/403): a configuration problem, not transient."""


class Guest:
    def __init__(
        self,
        client: Client,
        role: str,
        host: str,
        address: str,
        bind: str,
        facts: Callable[[], List[Dict[str, Any]]],
        renew: Optional[Callable[[], Optional[Client]]] = None,
    ) -> None:
        self.client = client
        self.registration = payloads.registration(role, host, address)
        self.standins = StandIns(bind)
        self.facts = facts
        self.renew = renew
        self.plan: Optional[Plan] = None
        self.pending: List[Dict[str, Any]] = []
        self.dropped = 0
        self.stop = threading.Event()
        self.reports = 0

    def register(self) -> Plan:
        status, answer = self.client.post(REGISTER_PATH, self.registration)
        if status in (401, 403):
            raise Refused("registration refused: HTTP %d %s" % (status, error_text(answer)))
        if status != 200:
            raise HttpError("registration refused: HTTP %d %s" % (status, error_text(answer)))
        plan = Plan(answer)
        if plan != self.plan:
            log.info("plan: %d listeners, %d checks", len(plan.listen), len(plan.checks))
        self.plan = plan
        self.standins.hold(plan.listen)
        return plan

    def report(self, results: List[Dict[str, Any]]) -> bool:
        """Send `results` (and what waits) with the listeners, peers and facts; True when the
        controller took them (or refused them for good)."""
        self.pending.extend(results)
        if len(self.pending) > MAX_PENDING:
            self.dropped += len(self.pending) - MAX_PENDING
            self.pending = self.pending[-MAX_PENDING:]
        reg = self.registration
        body = payloads.batch(
            reg["role"], reg["host"], self.pending[: payloads.MAX_BATCH_RESULTS],
            self.standins.statuses(), self.standins.take_peers(), self.facts(), time.time(),
        )  # fmt: skip
        body["dropped"] = self.dropped
        status, answer = self.client.post(RESULTS_PATH, body)
        if status == 409:
            self.register()
            status, answer = self.client.post(RESULTS_PATH, body)
        if status in (401, 403):
            raise Refused("results refused: HTTP %d %s" % (status, error_text(answer)))
        sent = len(body["results"])
        if status == 200:
            self.pending, self.dropped = self.pending[sent:], 0
            self.reports += 1
            return True
        if status == 400:
            log.error("the controller rejected a batch of %d results: %s", sent, error_text(answer))
            self.pending = self.pending[sent:]
            return True
        log.warning(
            "results not taken (HTTP %d %s): kept for the next round", status, error_text(answer)
        )
        return False

    def round(self) -> bool:
        plan = self.register()
        return self.report(probes.run_round(plan))

    def run(self, once: bool = False, linger_s: float = 0.0) -> int:
        """Rounds until stopped (or one, with `once`); the exit status."""
        try:
            while not self.stop.is_set():
                try:
                    ok = self.round()
                except (HttpError, PlanError) as exc:
                    log.warning("%s", exc)
                    ok = False
                if once:
                    if ok and linger_s > 0:  # keep the listeners up for late peers, report them
                        self.stop.wait(linger_s)
                        ok = self.report([])
                    return 0 if ok else 1
                if self.renew is not None and not self.stop.is_set():
                    try:
                        renewed = self.renew()
                    except enrol.EnrolError as exc:
                        log.warning("certificate renewal failed (the current one is kept): %s", exc)
                        renewed = None
                    if renewed is not None:
                        self.client = renewed
                period = self.plan.period_s if self.plan is not None else 30.0
                self.stop.wait(period)
            return 0
        except Refused as exc:
            log.error("%s", exc)
            return 1
        finally:
            self.standins.hold([])
            if self.plan is not None and not once:
                with contextlib.suppress(HttpError, Refused):
                    self.report([])  # the listeners' closed states
            self.standins.close()
