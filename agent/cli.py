"""``netcheck-agent``: ``run`` a plan once offline, ``enrol`` with a controller, or ``serve``
a controller's plan (mutual TLS with an ``https`` controller, the bearer token with ``http``).

No token or key is ever printed or logged.

Errors end here, as one line on stderr and an exit code from :data:`agent.errors.EXIT_CODES`
(see :data:`EPILOG`); no traceback for an error of the agent's tree, nor for a closed pipe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from netcheck.agent import __version__
from netcheck.agent.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    InputError,
    NetcheckAgentError,
    exit_code,
)
from netcheck.agent.inputs import host_port_arg, read_token
from netcheck.agent.wire import Plan, ResultBatch, decode, encode

log = logging.getLogger("agent")

EPILOG = """exit codes:
  0  done (serve: stopped by a signal, or --once delivered its round)
  1  failed: could not register or deliver (the controller refused or is unreachable),
     or another agent error
  2  bad input, nothing tried: a flag, the token file, the plan file, no certificate
     in --state-dir and no --join-token-file to enrol with
A closed output pipe (netcheck-agent ... | head) changes none of these and prints no
traceback."""

__all__ = ["EPILOG", "main", "read_token", "run_offline"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netcheck-agent",
        description="run a plan once offline, or serve a controller's plan",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    enrol = sub.add_parser(
        "enrol",
        help="trade a one-time join token for this host's client certificate",
        description="make a key (openssl), send a CSR with the join token to the controller "
        "(verified with --ca before the token is sent), store key and certificate in "
        "STATE_DIR/agent.pem (mode 0600) and the CA in STATE_DIR/ca.pem",
    )
    enrol.add_argument("--controller", required=True, help="https://HOST:PORT")
    enrol.add_argument("--ca", required=True, type=Path, help="the site's CA certificate (PEM)")
    enrol.add_argument("--join-token-file", required=True, type=Path, help="the join token")
    enrol.add_argument("--state-dir", required=True, type=Path, help="where the key is kept")
    enrol.add_argument("--role", required=True)
    enrol.add_argument("--host", required=True, help="this host's name in the inventory")
    enrol.add_argument(
        "--force", action="store_true", help="replace a certificate already in --state-dir"
    )

    run = sub.add_parser("run", help="run a plan once, offline, and write a ResultBatch")
    run.add_argument("--plan", required=True, type=Path, help="Plan JSON file")
    run.add_argument("--out", required=True, type=Path, help="where to write the ResultBatch")
    run.add_argument("--bind", default=None, help="listen address (default: the plan's address)")
    run.add_argument("--mode", choices=("auto", "connect", "syn"), default="auto")
    run.add_argument("--no-listen", action="store_true", help="probe only, hold no listeners")

    serve = sub.add_parser("serve", help="register with a controller and follow its plan")
    serve.add_argument(
        "--controller",
        required=True,
        help="https://HOST:PORT (mutual TLS: --state-dir, --ca) or, for insecure labs and "
        "tests only, http://HOST:PORT (--token-file)",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="this host's key and certificate (from enrol); with https, required",
    )
    serve.add_argument(
        "--ca", type=Path, help="the site's CA certificate (default: STATE_DIR/ca.pem)"
    )
    serve.add_argument(
        "--join-token-file",
        type=Path,
        help="enrol with this join token first when --state-dir holds no certificate",
    )
    serve.add_argument(
        "--renew-retry",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="after a failed certificate renewal, retry in SECONDS, doubled up to an hour "
        "(default 30); renewal starts once 2/3 of the certificate's lifetime passed",
    )
    serve.add_argument(
        "--token-file",
        type=Path,
        help="with http:// only: the shared bearer token (or env NETCHECK_TOKEN)",
    )
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
    serve.add_argument(
        "--health-listen", type=host_port_arg, help="HOST:PORT for /healthz, /metrics"
    )
    serve.add_argument("--mode", choices=("auto", "connect", "syn"), default="auto")
    serve.add_argument(
        "--request-poll",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="ask the controller for requests (an exposure sweep, ...) this often (default 15)",
    )
    serve.add_argument("--buffer", type=int, default=50_000, help="results kept while away")
    serve.add_argument(
        "--spool-dir",
        type=Path,
        help="keep buffered results here, on disk, across restarts and crashes (default: "
        "STATE_DIR/spool with --state-dir, else in memory)",
    )
    serve.add_argument(
        "--splay",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the first round starts at a random time within this (default 60)",
    )
    return p


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
        until = time.time()
        return ResultBatch(
            role=plan.role,
            host=plan.host,
            results=tuple(results),
            listeners=listeners.statuses(),
            peers=listeners.take_peers(),
            sent_at=time.time(),
            peers_until=until,
        )
    finally:
        await listeners.close()
        if cert is not None:
            cert.cleanup()


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        plan = decode(Plan, json.loads(args.plan.read_text()))
    except (OSError, ValueError) as exc:  # WireError and JSONDecodeError are ValueErrors
        raise InputError(f"cannot read plan {args.plan}: {exc}") from None
    batch = asyncio.run(run_offline(plan, args.mode, args.bind, listen=not args.no_listen))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(encode(batch), indent=1) + "\n")
    tmp.replace(args.out)
    counts: dict[str, int] = {}
    for r in batch.results:
        counts[r.state] = counts.get(r.state, 0) + 1
    log.info("wrote %d results to %s: %s", len(batch.results), args.out, counts)
    return 0


def _join_token(path: Path) -> str:
    """The join token in `path` (never from the environment); InputError when unreadable or
    empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"cannot read the join token file {path}: {why}") from None
    if not token:
        raise InputError(f"no join token in {path} (the file is empty)")
    return token


def _https(controller: str) -> bool:
    from netcheck.agent.httpc import parse_url

    return parse_url(controller).scheme == "https"  # a bad URL: InputError, exit 2


def _cmd_enrol(args: argparse.Namespace) -> int:
    from netcheck.agent import enrol

    if not _https(args.controller):
        raise InputError(f"enrolment needs an https:// controller URL, not {args.controller!r}")
    state = args.state_dir
    if enrol.has_identity(state) and not args.force:
        raise InputError(f"{state / enrol.IDENTITY} exists: --force to replace it")
    if not args.ca.is_file():
        raise InputError(f"no CA file {args.ca}")
    token = _join_token(args.join_token_file)
    path = asyncio.run(
        enrol.enrol(args.controller.rstrip("/"), token, args.ca, state, args.role, args.host)
    )
    info = enrol.certificate_info(path)
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.not_after)) if info else "?"
    print(f"enrolled {args.role}/{args.host}: {path} (key and certificate, mode 0600)")
    if info is not None:
        print(f"subject {info.subject}, serial {info.serial:x}, valid until {until}")
    return 0


def _trust_args(args: argparse.Namespace) -> tuple[str | None, str | None, str | None]:
    """(bearer token, state dir, join token) for serve, or InputError (exit 2)."""
    from netcheck.agent.daemon import identity_problem

    if not _https(args.controller):
        if args.state_dir or args.join_token_file or args.ca:
            raise InputError("--state-dir, --ca and --join-token-file need an https:// controller")
        token = read_token(args.token_file)
        log.warning(
            "plain HTTP to %s: the bearer token and results travel in clear "
            "(insecure labs and tests only)",
            args.controller,
        )
        return token, None, None
    if args.state_dir is None:
        raise InputError(
            "an https:// controller identifies agents by certificate: give --state-dir "
            "(and --join-token-file to enrol); --token-file is for http:// only"
        )
    if args.token_file:
        raise InputError("--token-file is for http:// only; with https the certificate is used")
    join = _join_token(args.join_token_file) if args.join_token_file else None
    state = str(args.state_dir)
    problem = identity_problem(state, join, time.time())
    if problem is not None:
        raise InputError(problem)
    if args.ca is None and not (args.state_dir / "ca.pem").is_file():
        raise InputError(f"no --ca and no CA stored in {state}: give --ca")
    return None, state, join


def _spool_dir(args: argparse.Namespace) -> str | None:
    if args.spool_dir is not None:
        return str(args.spool_dir)
    return str(args.state_dir / "spool") if args.state_dir is not None else None


def _cmd_serve(args: argparse.Namespace) -> int:
    from netcheck.agent.daemon import DaemonConfig, serve

    if not args.once and (args.settle > 0 or args.linger > 0):
        raise InputError("--settle and --linger need --once")
    token, state_dir, join = _trust_args(args)
    health = args.health_listen
    cfg = DaemonConfig(
        controller=args.controller.rstrip("/"),
        token=token,
        state_dir=state_dir,
        ca_file=str(args.ca) if args.ca else None,
        join_token=join,
        renew_retry_s=max(0.1, args.renew_retry),
        role=args.role,
        host=args.host,
        address=args.address,
        bind=args.bind or args.address,
        once=args.once,
        settle_s=max(0.0, args.settle),
        linger_s=max(0.0, args.linger),
        health_listen=f"[{health[0]}]:{health[1]}" if health else None,
        mode_request=args.mode,
        buffer_size=args.buffer,
        spool_dir=_spool_dir(args),
        first_run_cap_s=max(0.0, args.splay),
        request_poll_s=max(0.1, args.request_poll),
    )
    return asyncio.run(serve(cfg))


def _quiet_pipe() -> None:
    """After a closed stdout: point it at /dev/null, so that the interpreter's final flush
    does not fail again (Python's documentation, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())


def _say(text: str) -> None:
    """One line on stderr, unless stderr is a closed pipe."""
    try:
        print(text, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _quiet_pipe()


def _run(args: argparse.Namespace) -> int:
    from netcheck.agent.tlsbuffers import shrink_tls_read_buffer

    shrink_tls_read_buffer()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "enrol":
        return _cmd_enrol(args)
    return _cmd_serve(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run one subcommand, and turn what ended it into an exit code (see EPILOG)."""
    try:
        try:
            args = _parser().parse_args(argv)
        except SystemExit as exc:  # --help, --version (0) or a usage error (2); argparse
            sys.stdout.flush()  # ignores a closed pipe itself
            return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
        return _run(args)
    except BrokenPipeError:  # stdout closed under us (| head): nothing more to say
        _quiet_pipe()
        return EXIT_FAILED
    except NetcheckAgentError as exc:
        _say(f"netcheck-agent: {exc}")
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
