"""``serve``: register, hold listeners, probe once or periodically, report, stop cleanly.

With a state directory (an ``https`` controller), the agent first enrols if the directory
holds no certificate and a join token was given, then speaks mutual TLS for every request,
and renews its certificate in the background (:func:`agent.enrol.keep_renewed`), swapping
the link's TLS context in place: the buffered results stay where they are. A refused
credential at registration (401/403, or a controller certificate our CA does not vouch for)
ends ``--once`` with exit 1 and the reason; a serving agent retries it slowly.

Plans follow the site without a restart: before each round the agent asks the controller
(a batch, empty when nothing waits) and every answer carries the digest of this agent's
current plan; a stale plan is fetched again (:meth:`Link.refresh`) and reconciled by
difference (:class:`_Applied`): listeners for ports no longer planned are closed (reported
``closed`` once), new ones opened, the others keep their sockets; the round runs the new
checks. Between rounds, a new plan learnt from an answer reconciles the listeners at once.
Buffered results stay where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import signal
import socket
import ssl
import time
from pathlib import Path

from netcheck.agent import __version__, enrol
from netcheck.agent.certs import StandinCert
from netcheck.agent.errors import AuthError, EnrolError, InputError
from netcheck.agent.health import AgentState, start_health_server
from netcheck.agent.link import Backoff, HttpTransport, Link, LinkError, Transport
from netcheck.agent.listeners import ListenerSet
from netcheck.agent.runner import choose_mode, diff_checks, run_plan, schedule
from netcheck.agent.spool import Spool
from netcheck.agent.watch import SynWatcher
from netcheck.agent.wire import Plan, ProbeMode, Registration

log = logging.getLogger(__name__)
# Before each round, the plan is checked with the controller for at most this long.
PLAN_CHECK_S = 10.0


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    controller: str
    # The shared bearer token of an insecure (http://) controller; None with mutual TLS.
    token: str | None = dataclasses.field(repr=False)
    role: str
    host: str
    address: str
    bind: str
    # Mutual TLS: the directory of this host's key and certificate (agent.enrol), the site's
    # CA (default: the one stored there at enrolment), and a join token to enrol with when
    # the directory holds no certificate yet.
    state_dir: str | None = None
    ca_file: str | None = None
    join_token: str | None = dataclasses.field(default=None, repr=False)
    renew_fraction: float = enrol.RENEW_FRACTION
    renew_retry_s: float = enrol.RENEW_RETRY_S
    once: bool = False
    # With `once`: hold the listeners and report their states, then wait this long before
    # probing, so that peers started up to this much later are listening when probed.
    settle_s: float = 0.0
    # With `once`: keep the listeners up this long after the round, so that peers probing
    # later still reach them, then report (listeners "closed") and exit.
    linger_s: float = 0.0
    health_listen: str | None = None
    mode_request: str = "auto"
    buffer_size: int = 50_000
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # A refused credential (401/403) at registration: retried this slowly (serve, not --once).
    refused_backoff_s: float = 60.0
    refused_backoff_max_s: float = 900.0
    first_run_cap_s: float = 60.0
    # How long the last flush may take with --once (the whole delivery).
    final_flush_s: float = 30.0
    # How long the last flush may take when a signal stops a serving agent: what is not
    # delivered by then stays in the spool for the next start.
    stop_flush_s: float = 3.0
    # Where buffered results are kept across restarts (agent.spool); None: in memory.
    spool_dir: str | None = None
    # Serving (not --once): ask the controller for requests (agent.requests) this often.
    request_poll_s: float = 15.0


async def _wait(stop: asyncio.Event, delay: float) -> bool:
    """Sleep `delay` seconds unless `stop` is set first; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, delay))
    return stop.is_set()


async def _register(link: Link, stop: asyncio.Event, cfg: DaemonConfig) -> bool:
    """Register, retrying until it works or `stop`; True once registered.

    A refused credential (:class:`AuthError`) is fatal with ``--once`` (raised: the command
    ends with its reason) and retried slowly otherwise (someone must fix it first)."""
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    refused = Backoff(cfg.refused_backoff_s, cfg.refused_backoff_max_s)
    while not stop.is_set():
        try:
            await link.register()
            return True
        except AuthError as exc:
            if cfg.once:
                raise
            delay = refused.next_delay()
            log.error("cannot register, credential refused (%s); retrying in %.0f s", exc, delay)
        except LinkError as exc:
            delay = backoff.next_delay()
            log.warning("cannot register (%s); retrying in %.1f s", exc, delay)
        if await _wait(stop, delay):
            break
    return False


def _expiry(info: enrol.CertInfo) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.not_after))


def identity_problem(state_dir: str, join_token: str | None, now: float) -> str | None:
    """Why serving cannot start from `state_dir` (no certificate or an expired one, and no
    join token to enrol with), or None."""
    if join_token is not None:
        return None
    if not enrol.has_identity(state_dir):
        return (
            f"no certificate in {state_dir}: give --join-token-file to enrol "
            "(or run netcheck-agent enrol first)"
        )
    info = enrol.certificate_info(Path(state_dir) / enrol.IDENTITY)
    if info is not None and info.not_after <= now:
        return (
            f"the certificate in {state_dir} expired at {_expiry(info)}: "
            "enrol again with a new join token (--join-token-file)"
        )
    return None


ENROL_TRIES = 6  # waits of 1, 2, 4, 8 and 16 s between them: about half a minute in all


async def _enrol_retrying(cfg: DaemonConfig) -> None:
    """Enrol; a controller that is away or failed (5xx) is tried again, a refusal is final."""
    assert cfg.ca_file is not None and cfg.join_token is not None and cfg.state_dir is not None
    for attempt in range(ENROL_TRIES):
        try:
            await enrol.enrol(
                cfg.controller, cfg.join_token, cfg.ca_file, cfg.state_dir, cfg.role, cfg.host
            )
            return
        except EnrolError as exc:
            if not exc.transient or attempt == ENROL_TRIES - 1:
                raise
            log.warning("enrolment failed (%s); trying again in %d s", exc, 2**attempt)
            await asyncio.sleep(2**attempt)


async def _mutual_tls(cfg: DaemonConfig) -> ssl.SSLContext:
    """This host's mutual-TLS context, after enrolling first when there is no (valid)
    certificate and a join token was given."""
    assert cfg.state_dir is not None
    problem = identity_problem(cfg.state_dir, cfg.join_token, time.time())
    if problem is not None:
        raise InputError(problem)
    path = Path(cfg.state_dir) / enrol.IDENTITY
    info = enrol.certificate_info(path) if enrol.has_identity(cfg.state_dir) else None
    if info is None or info.not_after <= time.time():
        if cfg.ca_file is None:
            raise InputError("enrolment needs the site's CA: give --ca")
        assert cfg.join_token is not None
        log.info(
            "no valid certificate in %s: enrolling as %s/%s", cfg.state_dir, cfg.role, cfg.host
        )
        await _enrol_retrying(cfg)
        info = enrol.certificate_info(path)
    if info is not None:
        log.info(
            "mutual TLS as %s: serial %x, valid until %s", info.subject, info.serial, _expiry(info)
        )
    return enrol.client_context(cfg.state_dir, cfg.ca_file)


async def _flush_loop(
    link: Link, stop: asyncio.Event, wake: asyncio.Event, cfg: DaemonConfig
) -> None:
    backoff = Backoff(cfg.backoff_initial_s, cfg.backoff_max_s)
    while not stop.is_set():
        if not link.pending:
            wake.clear()
            stop_task = asyncio.ensure_future(stop.wait())
            wake_task = asyncio.ensure_future(wake.wait())
            await asyncio.wait({stop_task, wake_task}, return_when="FIRST_COMPLETED")
            stop_task.cancel()
            wake_task.cancel()
            continue
        try:
            await link.flush()
            await link.refresh()  # an answer said the plan is stale: fetch the new one
            backoff.reset()
        except LinkError as exc:
            delay = backoff.next_delay()
            log.warning(
                "controller unavailable (%s): %d results buffered, retrying in %.1f s",
                exc,
                link.buffered,
                delay,
            )
            await _wait(stop, delay)


async def _final_flush(link: Link, cfg: DaemonConfig, budget_s: float | None = None) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (cfg.final_flush_s if budget_s is None else budget_s)
    backoff = Backoff(cfg.backoff_initial_s, min(cfg.backoff_max_s, 5.0))
    while True:
        try:
            await asyncio.wait_for(link.flush(), max(0.1, deadline - loop.time()))
            return True
        except (LinkError, TimeoutError) as exc:
            delay = backoff.next_delay()
            if loop.time() + delay >= deadline:
                log.error("could not deliver %d buffered results: %s", link.buffered, exc)
                return False
            await asyncio.sleep(delay)


async def _settle(link: Link, listeners: ListenerSet, stop: asyncio.Event, settle_s: float) -> bool:
    """``--once --settle``: report the listeners' states, then wait out `settle_s` (counted
    from now, the report included) before the round; True when stopping.

    The early report lets the controller judge a peer's probe of these ports against their
    ``listening`` since; when the controller cannot be reached within `settle_s`, the states
    stay buffered and go with the round's batch.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_s
    link.add(listeners=listeners.statuses())
    try:
        await asyncio.wait_for(link.flush(), settle_s)
    except (LinkError, TimeoutError) as exc:
        log.warning("--settle: listener states not reported yet (%s)", exc or "timed out")
    log.info("--once: listeners up, probing in %.1f s (--settle)", deadline - loop.time())
    return await _wait(stop, deadline - loop.time())


class _Applied:
    """The plan the listeners (and the SYN watcher) hold now; :meth:`follow` reconciles them
    with the link's newest plan by difference, and reports what changed at once."""

    def __init__(
        self, link: Link, listeners: ListenerSet, watcher: SynWatcher | None, wake: asyncio.Event
    ) -> None:
        self.link, self.listeners, self.watcher, self.wake = link, listeners, watcher, wake
        self.plan: Plan | None = None
        self.version = -1

    async def follow(self) -> Plan:
        link = self.link
        assert link.plan is not None
        link.plan_changed.clear()
        if link.plan_version == self.version and self.plan is not None:
            return self.plan
        new, old = link.plan, self.plan
        await self.listeners.reconcile(new.listen)
        if self.watcher is not None:
            self.watcher.watch(s.port for s in new.listen)
        self.plan, self.version = new, link.plan_version
        if old is not None:
            diff = self.listeners.last_diff
            added, removed, _ = diff_checks(old.checks, new.checks)
            log.info(
                "new plan %s: listeners %d opened, %d closed, %d kept; checks %d new, "
                "%d removed, %d in all (from the next round)",
                new.plan_digest[:12] or "without a digest",
                len(diff.start),
                len(diff.close),
                len(diff.keep) + len(diff.update),
                len(added),
                len(removed),
                len(new.checks),
            )
            # The new picture now (the released ports "closed", once), not at the round.
            link.add(listeners=self.listeners.statuses())
            self.listeners.forget_released()
            self.wake.set()
        return new


async def _idle(stop: asyncio.Event, delay: float, applied: _Applied) -> bool:
    """Wait `delay` seconds between rounds, reconciling the listeners as soon as the link
    brings a new plan (learnt from an answer); True when stopping."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, delay)
    while not stop.is_set():
        left = deadline - loop.time()
        if left <= 0:
            return False
        stopping = asyncio.ensure_future(stop.wait())
        changed = asyncio.ensure_future(applied.link.plan_changed.wait())
        await asyncio.wait({stopping, changed}, timeout=left, return_when="FIRST_COMPLETED")
        stopping.cancel()
        changed.cancel()
        if applied.link.plan_changed.is_set() and not stop.is_set():
            await applied.follow()
    return True


async def _check_plan(link: Link, budget_s: float) -> None:
    """Before a round: ask the controller whether the plan is still current (and fetch it
    when not), within `budget_s`; an unreachable controller leaves the plan as it is."""
    try:
        await asyncio.wait_for(link.check_plan(), budget_s)
    except (LinkError, TimeoutError) as exc:
        log.info("plan not checked before the round (%s): probing the plan held", exc or "timeout")


async def _probe_loop(
    cfg: DaemonConfig,
    mode: ProbeMode,
    link: Link,
    listeners: ListenerSet,
    state: AgentState,
    stop: asyncio.Event,
    wake: asyncio.Event,
    watcher: SynWatcher | None = None,
) -> None:
    assert link.plan is not None
    applied = _Applied(link, listeners, watcher, wake)
    await applied.follow()
    rng = random.Random()
    period = link.plan.period_s
    delays = schedule(period, rng, cfg.first_run_cap_s)
    if cfg.once and cfg.settle_s > 0 and await _settle(link, listeners, stop, cfg.settle_s):
        return
    if not cfg.once and await _idle(stop, next(delays), applied):
        return
    rounds = 0
    while not stop.is_set():
        if rounds and not cfg.once:  # the first round's plan was fetched at registration
            await _check_plan(link, min(PLAN_CHECK_S, max(1.0, link.plan.period_s / 2)))
        rounds += 1
        plan = await applied.follow()
        if plan.period_s != period:  # a new plan's period: from this round on
            period, delays = plan.period_s, schedule(plan.period_s, rng, 0.0)
            next(delays)  # its first offset (0): the rounds go on at the new period
        try:
            results = await run_plan(plan, mode)
        except Exception:  # a bug or the host's trouble: logged, and the next round runs
            state.round_failures += 1
            log.exception("probe round %d failed", state.rounds + state.round_failures)
            results = []
        else:
            state.count(results)
        link.add(results, listeners.statuses(), listeners.take_peers())
        wake.set()
        if cfg.once or await _idle(stop, next(delays), applied):
            return


async def _serve_requests(
    link: Link, mode: ProbeMode, stop: asyncio.Event, cfg: DaemonConfig
) -> None:
    """The request channel (agent.requests): what the controller hands over, run here."""
    from netcheck.agent import requests

    queue = requests.Requests(link.report)
    link.on_requests = queue.offer

    def context() -> requests.Context | None:
        return requests.Context(link.plan, mode) if link.plan is not None else None

    await requests.serve(link, queue, context, stop, cfg.request_poll_s)


async def serve(cfg: DaemonConfig, transport: Transport | None = None) -> int:
    mode, why = choose_mode(cfg.mode_request)
    log.info("netcheck-agent %s for %s/%s: %s", __version__, cfg.role, cfg.host, why)
    registration = Registration(
        role=cfg.role, host=cfg.host, address=cfg.address, version=__version__, mode=mode
    )
    http: HttpTransport | None = None
    if transport is None:
        ctx = await _mutual_tls(cfg) if cfg.state_dir else None
        transport = http = HttpTransport(cfg.controller, cfg.token, ssl_context=ctx)
    spool = Spool(cfg.spool_dir, cfg.buffer_size)
    if cfg.spool_dir is None:
        log.info("no --spool-dir: results wait in memory while the controller is away")
    link = Link(transport, registration, cfg.buffer_size, spool=spool)
    state = AgentState(mode=mode, link=link)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = await start_health_server(state, cfg.health_listen) if cfg.health_listen else None
    cert: StandinCert | None = None
    listeners: ListenerSet | None = None
    watcher: SynWatcher | None = None
    flusher: asyncio.Task[None] | None = None
    renewer: asyncio.Task[None] | None = None
    requester: asyncio.Task[None] | None = None
    if cfg.state_dir and http is not None:
        renewer = asyncio.create_task(
            enrol.keep_renewed(
                cfg.controller,
                cfg.state_dir,
                cfg.role,
                cfg.host,
                http.use_ssl_context,
                stop,
                ca_file=cfg.ca_file,
                fraction=cfg.renew_fraction,
                retry_s=cfg.renew_retry_s,
            )
        )
    delivered = True
    registered = False
    try:
        registered = await _register(link, stop, cfg)
        if registered:
            cert = StandinCert(cfg.host or socket.gethostname())
            listeners = ListenerSet(cfg.bind, cert.server_context())
            state.listeners = listeners
            # Every batch carries the peers seen up to the moment it is built (peers_until).
            link.peer_source = listeners.take_peers
            # The SYNs that reach this host for its planned ports go to the same peer log.
            watcher = SynWatcher(listeners.saw_syn)
            wake = asyncio.Event()
            if not cfg.once:
                flusher = asyncio.create_task(_flush_loop(link, stop, wake, cfg))
                requester = asyncio.create_task(_serve_requests(link, mode, stop, cfg))
            await _probe_loop(cfg, mode, link, listeners, state, stop, wake, watcher)
            if cfg.once and cfg.linger_s > 0 and not stop.is_set():
                # Deliver the round now; the listeners stay up for peers that probe later.
                await _final_flush(link, cfg)
                log.info("--once: holding the listeners %g s more (--linger)", cfg.linger_s)
                await _wait(stop, cfg.linger_s)
    finally:
        stop.set()
        if renewer is not None:
            renewer.cancel()  # a renewal in flight is not worth waiting for at exit
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if requester is not None:
            requester.cancel()  # a request in flight is not reported: it expires
            with contextlib.suppress(asyncio.CancelledError):
                await requester
        if flusher is not None:
            flusher.cancel()  # a delivery in flight keeps its records in the spool
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        if watcher is not None:
            watcher.close()
        if listeners is not None:
            # Closed first: the final batch says since when the ports are no longer held.
            await listeners.close()
            link.add(listeners=listeners.statuses(), peers=listeners.take_peers())
        if link.plan is not None:
            delivered = await _final_flush(link, cfg, None if cfg.once else cfg.stop_flush_s)
            if not delivered and cfg.spool_dir is not None:
                log.info("%d results stay in the spool for the next start", link.buffered)
        if cfg.once and not delivered:
            log.error("--once: results were not delivered")
        await link.transport.close()
        spool.close()
        if cert is not None:
            cert.cleanup()
        if health is not None:
            await health.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if not registered:
        return 1
    return 0 if delivered or not cfg.once else 1
