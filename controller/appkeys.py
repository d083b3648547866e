"""The controller app's typed keys: what :func:`~netcheck.controller.app.make_app` puts in the
app and the handlers in :mod:`~netcheck.controller.routes` read.

Their own module, so the factory and the handlers both import it and not each other.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from netcheck.controller.authz import Scope
from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.expand import Expected, ExpectedCheck
from netcheck.controller.inventory import Inventory
from netcheck.controller.refusals import Refusals
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store
from netcheck.controller.trust import Trust
from netcheck.controller.writer import GroupWriter

# Set by make_app itself.
SPEC = web.AppKey("spec", Spec)
INVENTORY = web.AppKey("inventory", Inventory)
# The shared agent token of --insecure-http ("" with --pki: then TRUST identifies agents).
TOKEN = web.AppKey("token", str)
REFUSALS = web.AppKey("refusals", Refusals)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REFRESH = web.AppKey("refresh_seconds", int)
REGISTRY = web.AppKey("registry", CollectorRegistry)

# Set at start-up, one cleanup_ctx each (see make_app).
# The expected checks, expanded once (the inventory does not change at runtime), and
# indexed by source (role, host) for plans.
EXPECTED = web.AppKey("expected", Expected)
BY_SOURCE: web.AppKey[dict[tuple[str, str], tuple[ExpectedCheck, ...]]] = web.AppKey("by_source")
# What each agent host may report (authz.scopes), from the expected checks.
SCOPES: web.AppKey[dict[tuple[str, str], Scope]] = web.AppKey("scopes")
STORE = web.AppKey("store", Store)
# --pki only (absent with --insecure-http): the CA, the enrolment ledger, revocations.
TRUST = web.AppKey("trust", Trust)
# host -> the role it registered as: loaded from the store at start, updated on register,
# so authorising a batch needs no trip to the database.
AGENTS: web.AppKey[dict[str, str]] = web.AppKey("agents")
WRITER = web.AppKey("writer", GroupWriter)
EVALUATION = web.AppKey("evaluation", EvaluationCache)
