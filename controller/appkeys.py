"""The controller app's typed keys: what :func:`~netcheck.controller.app.make_app` puts in the
app and the handlers in :mod:`~netcheck.controller.routes` read.

Their own module, so the factory and the handlers both import it and not each other.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from netcheck.controller.evalcache import EvaluationCache
from netcheck.controller.inventory import Inventory
from netcheck.controller.refusals import Refusals
from netcheck.controller.reload import LiveConfig
from netcheck.controller.spec import Spec
from netcheck.controller.store import Store
from netcheck.controller.trust import Trust
from netcheck.controller.writer import GroupWriter

# Set by make_app itself: the configuration the app starts with. Handlers read the
# running one, app[LIVE].current (a reload swaps it; these two stay as they started).
SPEC = web.AppKey("spec", Spec)
INVENTORY = web.AppKey("inventory", Inventory)
# The shared agent token of --insecure-http ("" with --pki: then TRUST identifies agents).
TOKEN = web.AppKey("token", str)
REFUSALS = web.AppKey("refusals", Refusals)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REFRESH = web.AppKey("refresh_seconds", int)
REGISTRY = web.AppKey("registry", CollectorRegistry)

# Set at start-up, one cleanup_ctx each (see make_app).
# The running configuration (controller.reload): spec, inventory, the expected checks
# expanded once, indexed by source (role, host) for plans, each agent host's scope
# (authz.scopes), the plans' digests; swapped whole on SIGHUP or when the files change.
LIVE = web.AppKey("live", LiveConfig)
STORE = web.AppKey("store", Store)
# --pki only (absent with --insecure-http): the CA, the enrolment ledger, revocations.
TRUST = web.AppKey("trust", Trust)
# host -> the role it registered as: loaded from the store at start, updated on register,
# so authorising a batch needs no trip to the database.
AGENTS: web.AppKey[dict[str, str]] = web.AppKey("agents")
WRITER = web.AppKey("writer", GroupWriter)
EVALUATION = web.AppKey("evaluation", EvaluationCache)
