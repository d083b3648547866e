"""``netcheck-agent``: ``run`` a plan once offline, or ``serve`` a controller's plan."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from netcheck.agent import __version__
from netcheck.agent.wire import Plan, ResultBatch, WireError, decode, encode

log = logging.getLogger("agent")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netcheck-agent", description=__doc__)
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a plan once, offline, and write a ResultBatch")
    run.add_argument("--plan", required=True, type=Path, help="Plan JSON file")
    run.add_argument("--out", required=True, type=Path, help="where to write the ResultBatch")
    run.add_argument("--bind", default=None, help="listen address (default: the plan's address)")
    run.add_argument("--mode", choices=("auto", "connect", "syn"), default="auto")
    run.add_argument("--no-listen", action="store_true", help="probe only, hold no listeners")

    serve = sub.add_parser("serve", help="register with a controller and follow its plan")
    serve.add_argument("--controller", required=True, help="http://HOST:PORT")
    serve.add_argument("--token-file", type=Path, help="enrolment token (or env NETCHECK_TOKEN)")
    serve.add_argument("--role", required=True)
    serve.add_argument("--host", required=True, help="this host's name in the inventory")
    serve.add_argument("--address", required=True, help="this host's address")
    serve.add_argument("--bind", default=None, help="listen address (default: --address)")
    serve.add_argument(
        "--once",
        action="store_true",
        help="hold the listeners, run one probe round at once (no --splay), report, exit. "
        "Agents launched together race: a peer probed before its listeners are up, or after "
        "it exited, answers with a reset (the controller then reports the check 'not tested', "
        "unknown); use --settle and --linger so that they all see each other",
    )
    serve.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --once: once the listeners are up, report their states, wait SECONDS, "
        "then probe (default 0). Agents started within SECONDS of each other, each with "
        "--settle SECONDS and --linger of at least SECONDS plus a round (the plan's probe "
        "timeout and the protocol checks: SECONDS + 5 is ample with the shipped 2 s "
        "timeout), all find each other's listeners up",
    )
    serve.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --once: report the round, then keep the listeners up this long before "
        "closing them, reporting the peers seen and exiting (default 0)",
    )
    serve.add_argument("--health-listen", default=None, help="HOST:PORT for /healthz, /metrics")
    serve.add_argument("--mode", choices=("auto", "connect", "syn"), default="auto")
    serve.add_argument("--buffer", type=int, default=50_000, help="results kept while away")
    serve.add_argument(
        "--splay",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the first round starts at a random time within this (default 60)",
    )
    return p


def read_token(token_file: Path | None) -> str:
    if token_file is not None:
        return token_file.read_text().strip()
    return os.environ.get("NETCHECK_TOKEN", "").strip()


async def run_offline(
    plan: Plan, mode_request: str, bind: str | None, listen: bool = True
) -> ResultBatch:
    """Hold the listeners while the plan's probes run once; the batch of everything seen."""
    from netcheck.agent.certs import StandinCert
    from netcheck.agent.listeners import ListenerSet
    from netcheck.agent.runner import choose_mode, run_plan

    mode, why = choose_mode(mode_request)
    log.info("%s", why)
    cert = StandinCert() if listen and plan.listen else None
    listeners = ListenerSet(bind or plan.address, cert.server_context() if cert else None)
    try:
        if listen:
            await listeners.reconcile(plan.listen)
        results = await run_plan(plan, mode)
        return ResultBatch(
            role=plan.role,
            host=plan.host,
            results=tuple(results),
            listeners=listeners.statuses(),
            peers=listeners.take_peers(),
            sent_at=time.time(),
        )
    finally:
        await listeners.close()
        if cert is not None:
            cert.cleanup()


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        plan = decode(Plan, json.loads(args.plan.read_text()))
    except (OSError, ValueError, WireError) as exc:
        print(f"netcheck-agent: cannot read plan {args.plan}: {exc}", file=sys.stderr)
        return 2
    batch = asyncio.run(run_offline(plan, args.mode, args.bind, listen=not args.no_listen))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(encode(batch), indent=1) + "\n")
    tmp.replace(args.out)
    counts: dict[str, int] = {}
    for r in batch.results:
        counts[r.state] = counts.get(r.state, 0) + 1
    log.info("wrote %d results to %s: %s", len(batch.results), args.out, counts)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from netcheck.agent.daemon import DaemonConfig, serve

    if not args.once and (args.settle > 0 or args.linger > 0):
        print("netcheck-agent: --settle and --linger need --once", file=sys.stderr)
        return 2
    try:
        token = read_token(args.token_file)
    except OSError as exc:
        print(f"netcheck-agent: cannot read token file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print("netcheck-agent: no token (--token-file or NETCHECK_TOKEN)", file=sys.stderr)
        return 2
    cfg = DaemonConfig(
        controller=args.controller.rstrip("/"),
        token=token,
        role=args.role,
        host=args.host,
        address=args.address,
        bind=args.bind or args.address,
        once=args.once,
        settle_s=max(0.0, args.settle),
        linger_s=max(0.0, args.linger),
        health_listen=args.health_listen,
        mode_request=args.mode,
        buffer_size=args.buffer,
        first_run_cap_s=max(0.0, args.splay),
    )
    return asyncio.run(serve(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    from netcheck.agent.tlsbuffers import shrink_tls_read_buffer

    args = _parser().parse_args(argv)
    shrink_tls_read_buffer()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _cmd_run(args)
    return _cmd_serve(args)
