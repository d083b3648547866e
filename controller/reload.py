"""The site's configuration while the controller runs: reloaded on SIGHUP and when its files
change, refused whole when an edit is wrong.

:class:`SiteConfig` is one loaded configuration (topology.yaml, the guest OS matrix it names,
the inventory), expanded once: the expected checks, indexed by source for plans, and each
agent's scope. It is frozen; a reload builds a new one and swaps it in whole
(:meth:`LiveConfig.reload`), so a request reads one configuration from start to end
(``app[LIVE].current``).

A reload is refused when loading fails: the loaders' ``file:line`` error
(:class:`ReloadError`, the first problem; the log has them all) is kept in
:attr:`LiveConfig.error` until a reload works, the configuration running so far keeps
running, and the error is shown in the log, in the metrics (:class:`ConfigCollector`) and in
the JSON report's ``config`` block (:meth:`ConfigStatus.to_dict`).

Change detection (:func:`watch`): every ``every_s`` seconds the files are stat'ed; a file
whose size or modification time moved is hashed (sha256; inputs are at most
:data:`~netcheck.controller.sourced.MAX_FILE_BYTES`), and the configuration is reloaded when
a hash differs from the loaded one (a ``touch`` reloads nothing). A change is acted on once
the file has stayed the same for :data:`SETTLE_SECONDS` (an editor still writing). A failed
edit is not retried until the files change again (or SIGHUP).

Plans: each agent's plan carries ``plan_digest`` (:func:`~netcheck.agent.wire.plan_digest`),
computed once per configuration and agent (:meth:`SiteConfig.digest_of`); every answer to an
agent carries the digest of its current plan, so an agent with a stale plan fetches the new
one. A reload that leaves an agent's plan as it was leaves its digest as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from netcheck.agent.wire import Plan, plan_digest
from netcheck.controller.authz import Scope, scopes
from netcheck.controller.errors import NetcheckError
from netcheck.controller.expand import (
    Expected,
    ExpectedCheck,
    by_source,
    expected,
    plan_from_checks,
)
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.sourced import InputError, load_yaml
from netcheck.controller.spec import Spec, load_spec

log = logging.getLogger("netcheck.controller")

POLL_SECONDS = 3.0
SETTLE_SECONDS = 0.5
# Check ids of earlier configurations kept as "retired" (their stored results are left out
# of the evaluation instead of turning unexpected): at most this many, the newest kept.
MAX_RETIRED = 200_000
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileStamp:
    """One input file as it was read: its path, size, modification time and sha256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        from netcheck.controller.render.common import iso

        return {
            "path": self.path,
            "sha256": self.sha256,
            "size": self.size,
            "modified_at": iso(self.mtime_ns / 1e9),
        }


def _stat(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of `path`, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def stamp(path: str | Path) -> FileStamp | None:
    """The file's stamp (reads and hashes it), or None when it cannot be read."""
    p = str(path)
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            h = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError:
        return None
    return FileStamp(p, st.st_size, st.st_mtime_ns, h.hexdigest())


def config_digest(files: Sequence[FileStamp]) -> str:
    """sha256 over the files' paths and contents' hashes: one value per configuration."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.path}\0{f.sha256}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class SiteConfig:
    """One loaded configuration, expanded once (immutable: a reload makes a new one)."""

    spec: Spec
    inventory: Inventory
    expected: Expected
    by_source: dict[tuple[str, str], tuple[ExpectedCheck, ...]]
    scopes: dict[tuple[str, str], Scope]
    files: tuple[FileStamp, ...]
    digest: str
    loaded_at: float
    generation: int = 0
    _digests: dict[tuple[str, str], str] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @classmethod
    def build(
        cls,
        spec: Spec,
        inventory: Inventory,
        files: Sequence[FileStamp] = (),
        loaded_at: float = 0.0,
        generation: int = 0,
    ) -> SiteConfig:
        """Expand `spec` x `inventory`, with every agent's plan digest (blocking: a big site
        takes a while, 1.6 s for 1,000 PIOs)."""
        exp = expected(spec, inventory)
        index = by_source(exp.checks)
        site = cls(
            spec,
            inventory,
            exp,
            index,
            scopes(spec, inventory, index),
            tuple(files),
            config_digest(files),
            loaded_at,
            generation,
        )
        for role, host in site.scopes:  # every agent's digest now, off the event loop
            site.digest_of(role, host)
        return site

    @functools.cached_property
    def check_ids(self) -> frozenset[str]:
        return frozenset(c.spec.check_id for c in self.expected.checks)

    @functools.cached_property
    def qualifying(self) -> tuple[tuple[str, str], ...]:
        """The agents (role, host) whose plans have interconnect paths to qualify: computed
        once per configuration (the qualification schedule asks every 30 s)."""
        return tuple(
            (role, host)
            for role, host in self.by_source
            if (plan := self.plan(role, host)) is not None and plan.paths
        )

    def address_of(self, role: str, host: str) -> str | None:
        """The inventory's address of `host` as a `role` host, or None when there is none."""
        for h in self.inventory.of_role(role):
            if h.name == host:
                return h.address
        return None

    def plan(self, role: str, host: str) -> Plan | None:
        """The agent's plan with its digest, or None when the inventory has no such host."""
        address = self.address_of(role, host)
        if address is None:
            return None
        plan = plan_from_checks(
            self.spec, role, host, address, self.by_source.get((role, host), ())
        )
        digest = self._digests.get((role, host))
        if digest is None:
            digest = self._digests[(role, host)] = plan_digest(plan)
        return dataclasses.replace(plan, plan_digest=digest)

    def digest_of(self, role: str, host: str) -> str:
        """The digest of the agent's current plan ("" when the inventory has no such host);
        computed once per configuration and agent."""
        digest = self._digests.get((role, host))
        if digest is not None:
            return digest
        plan = self.plan(role, host)
        return plan.plan_digest if plan is not None else ""


def _matrix_path(topology: str | Path) -> Path | None:
    """The matrix file topology.yaml names (None when it names none readable)."""
    try:
        name = load_yaml(topology).data.get("matrix")
    except (InputError, AttributeError):
        return None
    return Path(topology).parent / name if isinstance(name, str) else None


def input_files(topology: str | Path, inventory: str | Path) -> tuple[str, ...]:
    """The files a configuration is read from: topology.yaml, its matrix, the inventory."""
    matrix = _matrix_path(topology)
    files = [str(topology), *([str(matrix)] if matrix is not None else []), str(inventory)]
    return tuple(dict.fromkeys(files))


def load_config(
    topology: str | Path, inventory: str | Path, now: float, generation: int = 0
) -> SiteConfig:
    """Read, validate and expand the configuration (blocking); :class:`InputError` with
    ``file:line`` problems when it is wrong. The files are stamped before they are loaded,
    so an edit landing meanwhile shows as a change at the next poll."""
    paths = input_files(topology, inventory)
    stamps = tuple(s for s in (stamp(p) for p in paths) if s is not None)
    spec = load_spec(topology)
    inv = load_inventory(inventory, spec)
    return SiteConfig.build(spec, inv, stamps, now, generation)


@dataclass(frozen=True)
class ReloadError:
    """Why the last reload was refused: the first problem's file and line, the whole message
    (one ``file:line: ...`` per problem), and when."""

    file: str
    line: int
    message: str
    at: float

    @classmethod
    def of(cls, exc: Exception, at: float, default_file: str) -> ReloadError:
        if isinstance(exc, InputError) and exc.problems:
            first = exc.problems[0]
            return cls(first.file, first.line, str(exc), at)
        return cls(default_file, 0, str(exc) or type(exc).__name__, at)

    def to_dict(self) -> dict[str, Any]:
        from netcheck.controller.render.common import iso

        return {"file": self.file, "line": self.line, "message": self.message, "at": iso(self.at)}


@dataclass(frozen=True)
class ConfigStatus:
    """What the report's ``config`` block says: the running configuration and the last
    refused edit (None once a reload worked). Hashable: a cache slot key."""

    digest: str
    loaded_at: float
    files: tuple[FileStamp, ...]
    error: ReloadError | None

    def to_dict(self) -> dict[str, Any]:
        from netcheck.controller.render.common import iso

        return {
            "digest": self.digest,
            "loaded_at": iso(self.loaded_at),
            "files": [f.to_dict() for f in self.files],
            "error": self.error.to_dict() if self.error is not None else None,
        }


Apply = Callable[[SiteConfig, frozenset[str]], Awaitable[None]]


class LiveConfig:
    """The running configuration and its reloads (one at a time, on the event loop).

    ``apply`` callbacks (:meth:`on_reload`) run, in order, after a new configuration loaded
    and before it is served: the store's expected ids, the evaluation cache. One that fails
    refuses the reload like a bad file would (those that ran get the old one back).
    """

    def __init__(self, config: SiteConfig, clock: Callable[[], float]) -> None:
        self.current = config
        self.error: ReloadError | None = None
        self.clock = clock
        self.reloads = 0  # configurations applied after the first
        self.failures = 0  # reloads refused
        self.last_ok = True
        self.retired: frozenset[str] = frozenset()
        # host -> when its agent last fetched its plan (registered), by the controller's clock:
        # its results that started earlier are an older plan's (evalcache.current_only).
        self.plan_fetched: dict[str, float] = {}
        self._generation = config.generation
        self._apply: list[Apply] = []
        self._lock: asyncio.Lock | None = None
        # The files' (size, mtime) at the last attempt (loaded or refused): what the watcher
        # compares with; a refused edit is not tried again until they change.
        self._tried: dict[str, tuple[int, int] | None] = {
            f.path: (f.size, f.mtime_ns) for f in config.files
        }

    @property
    def paths(self) -> tuple[str, str]:
        """topology.yaml and the inventory, as the running configuration was loaded from."""
        return self.current.spec.file, self.current.inventory.file

    @property
    def status(self) -> ConfigStatus:
        c = self.current
        return ConfigStatus(c.digest, c.loaded_at, c.files, self.error)

    def on_reload(self, apply: Apply) -> None:
        self._apply.append(apply)

    async def reload(self, why: str) -> bool:
        """Load the files again and swap the new configuration in; False (the error kept and
        logged, the old configuration running) when it is refused."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await self._reload(why)

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    async def _reload(self, why: str) -> bool:
        old = self.current
        topology, inventory = self.paths
        now = self.clock()
        self._tried = await asyncio.to_thread(_stats, input_files(topology, inventory))
        try:
            new = await asyncio.to_thread(
                load_config, topology, inventory, now, self._next_generation()
            )
        except NetcheckError as exc:
            return self._refused(exc, why, now)
        except Exception as exc:  # a bug: the old configuration keeps running
            log.exception("configuration reload (%s) failed", why)
            return self._refused(exc, why, now)
        if new.digest == old.digest:
            if self.error is not None:
                log.info("configuration reload (%s): the files are back as loaded", why)
            self.error, self.last_ok = None, True
            return True
        retired = _retire(self.retired, old.check_ids, new.check_ids)
        new = dataclasses.replace(new, scopes=widened(new.scopes, old.scopes))
        done: list[Apply] = []
        try:
            for apply in self._apply:
                await apply(new, retired)
                done.append(apply)
        except Exception as exc:
            log.exception("configuration reload (%s): applying it failed", why)
            back = dataclasses.replace(old, generation=self._next_generation())
            for apply in done:
                with contextlib.suppress(Exception):
                    await apply(back, self.retired)
            self.current = back
            return self._refused(exc, why, now)
        added, removed = new.check_ids - old.check_ids, old.check_ids - new.check_ids
        self.current, self.retired, self.error = new, retired, None
        self.reloads += 1
        self.last_ok = True
        log.info(
            "configuration reloaded (%s): digest %s, %d checks (%d new, %d removed) from %s",
            why,
            new.digest[:12],
            len(new.check_ids),
            len(added),
            len(removed),
            ", ".join(f.path for f in new.files),
        )
        return True

    def _refused(self, exc: Exception, why: str, now: float) -> bool:
        self.error = ReloadError.of(exc, now, self.paths[1])
        self.failures += 1
        self.last_ok = False
        log.error(
            "configuration reload (%s) refused; the running configuration (digest %s) stays: %s",
            why,
            self.current.digest[:12],
            self.error.message,
        )
        return False

    def changed(self) -> bool:
        """Worth a reload: a file's size or modification time moved since the last attempt
        and its content differs from the running configuration's, or a refused edit was put
        back as it was loaded (blocking: it may hash a file)."""
        now_stats = _stats(tuple(self._tried))
        if now_stats == self._tried:
            return False
        loaded = {f.path: f.sha256 for f in self.current.files}
        for path, st in now_stats.items():
            if st == self._tried.get(path):
                continue
            s = stamp(path)
            if s is None or loaded.get(path) != s.sha256:
                return True
        self._tried = now_stats  # only times moved (a touch): nothing to load
        return self.error is not None


def widened(
    new: dict[tuple[str, str], Scope], old: dict[tuple[str, str], Scope]
) -> dict[tuple[str, str], Scope]:
    """Each host's new scope, also taking what its earlier plans had it probe and hold (a
    host still in the inventory): results buffered before it fetched its new plan, and the
    ``closed`` state of a port it no longer holds, are its own, not refused (bounded:
    :data:`MAX_RETIRED` earlier check ids per host at most)."""
    out = dict(new)
    for key, scope in new.items():
        before = old.get(key)
        if before is None or before.address != scope.address:
            continue
        ids = scope.check_ids | before.check_ids
        if len(ids) - len(scope.check_ids) > MAX_RETIRED:
            ids = scope.check_ids
        out[key] = dataclasses.replace(scope, check_ids=ids, ports=scope.ports | before.ports)
    return out


def _stats(paths: Sequence[str]) -> dict[str, tuple[int, int] | None]:
    return {p: _stat(p) for p in paths}


def _retire(
    retired: frozenset[str], old_ids: frozenset[str], new_ids: frozenset[str]
) -> frozenset[str]:
    """The ids expected before and no longer, with those retired earlier (bounded: the ones
    just retired first)."""
    just = old_ids - new_ids
    out = (retired - new_ids) | just
    if len(out) <= MAX_RETIRED:
        return out
    earlier = sorted(out - just)[: max(0, MAX_RETIRED - len(just))]
    return frozenset(sorted(just)[:MAX_RETIRED]) | frozenset(earlier)


async def watch(
    live: LiveConfig, every_s: float = POLL_SECONDS, settle_s: float = SETTLE_SECONDS
) -> None:
    """Reload when the files change (until cancelled); a change is acted on once the files
    stayed as they are for `settle_s`."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if not await asyncio.to_thread(live.changed):
                continue
            paths = tuple(live._tried)
            before = await asyncio.to_thread(_stats, paths)
            await asyncio.sleep(settle_s)
            if await asyncio.to_thread(_stats, paths) != before:
                continue  # still being written: the next poll sees it again
            await live.reload("the files changed")
        except Exception:  # the watcher outlives a bad moment of the file system
            log.exception("watching the configuration files failed")


# The refused reload's message in a label is cut to this many characters.
ERROR_LABEL_CHARS = 200


class ConfigCollector(Collector):
    """``netcheck_config_reload_ok`` (1: the last reload worked, or none was tried),
    ``netcheck_config_last_reload_timestamp_seconds`` (when the running configuration was
    loaded), ``netcheck_config_reloads_total`` and ``netcheck_config_reloads_failed_total``
    (since the controller started), and ``netcheck_config_reload_error{file,line,message}``
    while a reload is refused."""

    def __init__(self, live: LiveConfig) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live
        ok = GaugeMetricFamily(
            "netcheck_config_reload_ok",
            "1 when the last configuration reload worked (or none was tried), 0 when it was "
            "refused (the previous configuration keeps running).",
        )
        ok.add_metric([], 1.0 if live.last_ok else 0.0)
        at = GaugeMetricFamily(
            "netcheck_config_last_reload_timestamp_seconds",
            "Unix time the running configuration (topology, matrix, inventory) was loaded.",
        )
        at.add_metric([], live.current.loaded_at)
        reloads = CounterMetricFamily(
            "netcheck_config_reloads",
            "Configuration reloads that were applied, since the controller started.",
        )
        reloads.add_metric([], live.reloads)
        failed = CounterMetricFamily(
            "netcheck_config_reloads_failed",
            "Configuration reloads refused (a bad edit), since the controller started.",
        )
        failed.add_metric([], live.failures)
        refused = GaugeMetricFamily(
            "netcheck_config_reload_error",
            "1 while the last reload is refused: the first problem's file and line, and its "
            f"message (at most {ERROR_LABEL_CHARS} characters; the log and the report's "
            "config.error have them all). No series while the configuration is good.",
            labels=["file", "line", "message"],
        )
        err = live.error
        if err is not None and not live.last_ok:
            first = err.message.splitlines()[0] if err.message else ""
            refused.add_metric([err.file, str(err.line), first[:ERROR_LABEL_CHARS]], 1.0)
        yield from (ok, at, reloads, failed, refused)
