"""netcheck-controller: the command line. Each subcommand parses, calls, prints.

This is the boundary where errors become exit codes: every :class:`NetcheckError` (and the
library exceptions translated into one here: ``sqlite3``, ``OSError``, ``yaml``) is printed
as one clear line per problem, with no traceback, and exits with its code in
:data:`ERROR_EXIT`; a gate's decision exits with its code in :data:`DECISION_EXIT`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from netcheck.agent import inputs
from netcheck.agent.wire import Registration, encode
from netcheck.controller.errors import (
    CliError,
    NetcheckError,
    StoreError,
    Undecided,
    Unreachable,
)
from netcheck.controller.evalcache import evaluate_store
from netcheck.controller.expand import expand, plan_for
from netcheck.controller.gate import decision_to_dict, gate
from netcheck.controller.ingest import Refused, check_batch, parse_batch
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import Evaluation
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import Spec, load_spec
from netcheck.controller.store import Store, sent

DEFAULT_TOPOLOGY = "topology.yaml"
EXIT_GO = 0  # go, or the command did what it was asked
EXIT_NO_GO = 1  # the gate's no-go, and nothing else
EXIT_UNDECIDED = 2  # cannot decide: bad input, unreadable files, nothing known, controller away

# The one map from a gate decision, and from each kind of error, to the exit code.
DECISION_EXIT: dict[str, int] = {"go": EXIT_GO, "no-go": EXIT_NO_GO, "undecided": EXIT_UNDECIDED}
ERROR_EXIT: dict[type[NetcheckError], int] = {
    InputError: EXIT_UNDECIDED,  # a topology, matrix or inventory file is wrong (file:line)
    CliError: EXIT_UNDECIDED,  # a flag, or a file it names, cannot be used
    StoreError: EXIT_UNDECIDED,  # the database cannot be opened or read
    Undecided: EXIT_UNDECIDED,  # unknown mode or VM, the controller unreachable
    Refused: EXIT_UNDECIDED,  # a results file the controller would refuse
}

EPILOG = """\
exit codes (every subcommand):
  0  go (gate), or the command did what it was asked
  1  no-go: the gate's answer, with the blocking checks (nothing else exits 1)
  2  cannot decide: bad input (file:line), an unreadable topology, inventory or
     database, nothing known for the mode, the controller unreachable, bad flags
"""


def exit_code(exc: NetcheckError) -> int:
    """The exit code of an error: its nearest class in :data:`ERROR_EXIT`."""
    for kind in type(exc).__mro__:
        if kind in ERROR_EXIT:
            return ERROR_EXIT[kind]
    return EXIT_UNDECIDED


def _summary(spec: Spec) -> list[str]:
    ports = sum(len(ref.flow.port_range) for ref in spec.flows())
    agents = sum(r.agent for r in spec.roles.values())
    lines = [
        f"{spec.file}: ok",
        f"  roles: {len(spec.roles)} ({agents} can hold an agent)",
        f"  interactions: {len(spec.interactions)}, flows: {sum(1 for _ in spec.flows())}, "
        f"ports: {ports}",
        f"  guest OS matrix: {len(spec.matrix)} rows",
        "  port checks per mode (per host pair):",
    ]
    for name, mode in spec.modes.items():
        n = sum(
            len(ref.flow.port_range)
            for ref in spec.flows()
            if ref.interaction.id in mode.interactions
        )
        lines.append(f"    {name:<12} {n:>4} ports in {len(mode.interactions)} interactions")
    return lines


def _spec(args: argparse.Namespace) -> Spec:
    if args.topology == DEFAULT_TOPOLOGY and not Path(DEFAULT_TOPOLOGY).exists():
        raise CliError(f"no {DEFAULT_TOPOLOGY} in {Path.cwd()}: give --topology FILE")
    return load_spec(args.topology)


def cmd_check(args: argparse.Namespace) -> int:
    spec = _spec(args)
    out = _summary(spec)
    if args.inventory:
        inv = load_inventory(args.inventory, spec)
        checks = expand(spec, inv)
        hosts = sum(len(h) for h in inv.hosts.values())
        out.append(f"{inv.file}: ok ({hosts} hosts in {len(inv.hosts)} roles)")
        for w in inv.warnings:  # one VM's problem, not the site's: the check still passes
            print(f"warning: {w}", file=sys.stderr)
        out.append(f"  expected checks: {len(checks)}")
        per_mode = Counter(m for c in checks for m in c.modes)
        for name in spec.modes:
            out.append(f"    {name:<12} {per_mode[name]:>5} checks")
        missing = [r for r in spec.roles if not inv.of_role(r)]
        if missing:
            out.append(f"  roles without hosts (their checks cannot run): {', '.join(missing)}")
    print("\n".join(out))
    return 0


def _load(args: argparse.Namespace) -> tuple[Spec, Inventory]:
    spec = _spec(args)
    if not args.inventory:
        raise CliError(
            "--inventory FILE is required with --db (the database holds results, not the site)"
            if getattr(args, "db", None)
            else "--inventory FILE is required"
        )
    return spec, load_inventory(args.inventory, spec)


def _token(args: argparse.Namespace) -> str:
    """The agents' token: the agent's own reader (one for both), its error as a CliError."""
    try:
        return inputs.read_token(args.token_file)
    except inputs.InputError as exc:
        raise CliError(str(exc)) from None


def _read_token(args: argparse.Namespace) -> str | None:
    """The read credential (None: --open-reads); exactly one of the two is required."""
    from netcheck.agent import inputs

    if args.open_reads and args.read_token_file:
        raise CliError("give --read-token-file FILE or --open-reads, not both")
    if args.open_reads:
        return None
    if not args.read_token_file:
        raise CliError(
            "reads (page, reports, gate, metrics) need --read-token-file FILE, "
            "or --open-reads to leave them open"
        )
    try:
        return inputs.read_token(args.read_token_file, env="NETCHECK_READ_TOKEN")
    except inputs.InputError as exc:
        raise CliError(str(exc)) from None


INSECURE_WARNING = (
    "WARNING: --insecure-http: plain HTTP, agents share one bearer token and any holder of it "
    "can report for every host; for labs and tests only (use --pki DIR on a real site)"
)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from netcheck.controller import pki
    from netcheck.controller.app import make_app
    from netcheck.controller.gctune import tune_gc, tune_switching

    if bool(args.pki) == bool(args.insecure_http):
        raise CliError(
            "give --pki DIR (HTTPS, agents with client certificates: see 'ca init' and "
            "'enrol') or --insecure-http (plain HTTP, one shared --token-file: labs only)"
        )
    if args.pki and args.token_file:
        raise CliError("--token-file is for --insecure-http (with --pki agents enrol)")
    # Until the app's own handler is installed (after the files are loaded and expanded), a
    # reload (SIGHUP's default: end the process) must not stop a controller that is starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    read_token = _read_token(args)
    spec, inv = _load(args)
    token, ssl_context = None, None
    if args.pki:
        try:
            pki.load_ca(args.pki)
            ssl_context = pki.server_context_for(pki.CaFiles.in_dir(args.pki))
        except (pki.PkiError, OSError, ValueError) as exc:
            raise CliError(f"--pki {args.pki}: {exc}") from None
    else:
        token = _token(args)
    host, port = args.listen
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.insecure_http:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        logging.getLogger("netcheck.controller").warning(INSECURE_WARNING)
    app = make_app(
        spec,
        inv,
        args.db,
        token,
        pki=args.pki,
        read_token=read_token,
        open_reads=args.open_reads,
        refresh_seconds=args.refresh,
        reload_signal=True,
        watch_seconds=args.watch_interval,
    )
    # Process-wide interpreter settings: serving only, not make_app.
    app.on_startup.extend((tune_gc, tune_switching))
    try:
        web.run_app(app, host=host, port=port, ssl_context=ssl_context, print=None, access_log=None)
    except OSError as exc:
        raise CliError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    spec, inv = _load(args)
    hosts = [h for h in inv.of_role(args.role) if args.host in (None, h.name)]
    if not hosts:
        what = f"host {args.host!r} of role" if args.host else "hosts of role"
        raise CliError(f"no {what} {args.role!r} in {inv.file}")
    plans = {h.name: encode(plan_for(spec, inv, args.role, h.name, h.address)) for h in hosts}
    if args.host:
        text = json.dumps(plans[args.host], indent=1) + "\n"
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)
    elif args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, plan in plans.items():
            (out / f"{name}.plan.json").write_text(json.dumps(plan, indent=1) + "\n")
        print(f"wrote {len(plans)} plans to {out}/")
    else:
        sys.stdout.write(json.dumps(plans, indent=1) + "\n")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    spec, inv = _load(args)
    try:
        body = Path(args.results).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.results}: {exc.strerror}") from None
    try:
        batch = parse_batch(body)
        check_batch(batch, spec, inv)
    except Refused as exc:
        raise CliError(f"{args.results}: {exc.message}; nothing imported") from None
    store = Store.open(args.db)
    try:
        now = time.time()
        if store.agent(batch.host) is None:
            address = next(h.address for h in inv.of_role(batch.role) if h.name == batch.host)
            mode = batch.results[0].mode if batch.results else "connect"
            store.register(Registration(batch.role, batch.host, address, "import", mode), now)
        n = store.ingest(sent(batch, "import"), now)
    finally:
        store.close()
    print(f"imported {n} results from {batch.role} {batch.host} into {args.db}")
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    from netcheck.controller import pki

    names = args.name or ([] if args.address else ["localhost"])
    addresses = args.address or ([] if args.name else ["127.0.0.1"])
    try:
        files = pki.init_ca(args.pki, names, addresses, args.days, force=args.force)
        ca = pki.load_ca(args.pki)
    except pki.PkiError as exc:
        raise CliError(str(exc)) from None
    from cryptography.hazmat.primitives import serialization

    der = ca.cert.public_bytes(serialization.Encoding.DER)
    print(f"CA certificate:     {files.ca_cert}  (give it to agents: --ca)")
    print(f"CA key:             {files.ca_key}  (0600; keep it on the controller)")
    print(f"server certificate: {files.server_cert}  ({', '.join([*names, *addresses])})")
    print(f"server key:         {files.server_key}  (0600)")
    print(f"CA SHA-256 fingerprint: {pki.fingerprint(der)}")
    return 0


def _ttl(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (600, 30m, 1h, 2d)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return value


def cmd_enrol(args: argparse.Namespace) -> int:
    from netcheck.controller.joins import JoinError, JoinTokens
    from netcheck.controller.trust import ledger

    spec, inv = _load(args)
    if args.role not in spec.roles or not spec.roles[args.role].agent:
        raise CliError(f"role {args.role!r} does not run an agent in {spec.file}")
    hosts = [h.name for h in inv.of_role(args.role) if args.all or h.name == args.host]
    if not hosts:
        raise CliError(f"no host {args.host!r} of role {args.role!r} in {inv.file}")
    lines = []
    with ledger(args.db) as conn:
        joins = JoinTokens(conn)
        now = time.time()
        try:
            for name in hosts:
                token = joins.issue(args.role, [name], args.ttl, known=inv.has, now=now)
                lines.append(f"{name} {token}")
        except JoinError as exc:
            raise CliError(str(exc)) from None
    print("\n".join(lines))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from netcheck.controller.joins import IssuedCerts
    from netcheck.controller.trust import ledger

    if not Path(args.db).is_file():
        raise CliError(f"no database at {args.db}")
    with ledger(args.db) as conn:
        issued = IssuedCerts(conn)
        now = time.time()
        if args.serial:
            try:
                serial = int(args.serial.removeprefix("cert:"), 16)
            except ValueError:
                raise CliError(f"--serial {args.serial!r} is not a hexadecimal serial") from None
            mine = {
                c.serial for r in issued.roles_of(args.host) for c in issued.of_host(r, args.host)
            }
            if serial not in mine:
                raise CliError(f"certificate {serial:x} was not issued to {args.host}")
            revoked = [serial] if issued.revoke_serial(serial, now) else []
        else:
            roles = issued.roles_of(args.host)
            if not roles:
                raise CliError(f"no certificate was issued to {args.host} in {args.db}")
            revoked = sorted(s for r in roles for s in issued.revoke_host(r, args.host, now))
    for serial in revoked:
        print(f"revoked {args.host} cert:{serial:x}")
    if not revoked:
        print(f"nothing to revoke: every certificate of {args.host} was revoked already")
    return 0


def _watch_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (value == 0 or 0.1 <= value <= 3600):
        raise argparse.ArgumentTypeError("between 0.1 and 3600 seconds, or 0 (SIGHUP only)")
    return value


def _url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _fetch(url: str, args: argparse.Namespace) -> tuple[int, bytes]:
    """GET ``url``: HTTPS verified with ``--ca`` (else the system's CAs), the read token of
    ``--read-token-file`` (else $NETCHECK_READ_TOKEN, else none) as a bearer token."""
    import ssl

    from netcheck.agent import inputs

    headers: dict[str, str] = {}
    if args.read_token_file or os.environ.get("NETCHECK_READ_TOKEN"):
        try:
            secret = inputs.read_token(args.read_token_file, env="NETCHECK_READ_TOKEN")
        except inputs.InputError as exc:
            raise CliError(str(exc)) from None
        headers["Authorization"] = f"Bearer {secret}"
    context = None
    if args.ca:
        try:
            context = ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use the CA file {args.ca}: {exc}") from None
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        raise Unreachable(f"controller unreachable at {url}: {exc.reason}") from None
    except OSError as exc:
        raise Unreachable(f"controller unreachable at {url}: {exc.strerror or exc}") from None
    except http.client.HTTPException as exc:
        what = f"{type(exc).__name__} {exc}".strip()
        raise Unreachable(f"controller unreachable at {url}: no HTTP answer ({what})") from None


def _local(args: argparse.Namespace) -> tuple[Spec, Inventory, Evaluation]:
    if not args.db:
        raise CliError("give --controller URL, or --db PATH with --inventory FILE")
    if not Path(args.db).is_file():
        raise Undecided(f"no database at {args.db}")
    spec, inv = _load(args)
    store = Store.open(args.db)
    try:
        ev = evaluate_store(spec, inv, store, time.time())
    finally:
        store.close()
    return spec, inv, ev


def cmd_report(args: argparse.Namespace) -> int:
    if args.controller:
        q = urllib.parse.urlencode({"format": args.format})
        status, body = _fetch(f"{args.controller.rstrip('/')}/api/v1/report?{q}", args)
        if status != 200:
            raise Unreachable(f"controller answered {status}: {body.decode(errors='replace')}")
        text = body.decode(errors="replace")
    else:
        from netcheck.controller.render import render_report

        spec, inv, ev = _local(args)
        gates = [gate(spec, inv, ev, m) for m in spec.modes]
        from netcheck.controller.request_cli import with_exposure

        text = with_exposure(
            render_report(spec, ev, gates, args.format, inv), args, spec, inv, ev, gates
        )
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _print_gate(d: dict[str, Any], limit: int) -> None:
    vm = f" for {d['vm']}" if d.get("vm") else ""
    print(f"{d['mode']}{vm}: {d['decision'].upper()}")
    for r in d["reasons"]:
        print(f"  reason: {r}")
    for w in d["warnings"]:
        print(f"  warning: {w}")
    blocking = d["blocking"]
    for b in blocking[:limit]:
        print(f"  blocking: {b['check_id']} {b['verdict']} ({b['cause']}): {b['diagnosis']}")
    if len(blocking) > limit:
        print(f"  ... and {len(blocking) - limit} more blocking checks (--limit)")


def cmd_gate(args: argparse.Namespace) -> int:
    if args.controller:
        q = {"mode": args.mode, **({"vm": args.vm} if args.vm else {})}
        url = f"{args.controller.rstrip('/')}/api/v1/gate?{urllib.parse.urlencode(q)}"
        status, body = _fetch(url, args)
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            data = {}
        if not isinstance(data, dict) or status != 200 or "decision" not in data:
            error = data.get("error") if isinstance(data, dict) else None
            raise Unreachable(str(error or f"controller answered {status} with no decision"))
    else:
        spec, inv, ev = _local(args)
        data = decision_to_dict(gate(spec, inv, ev, args.mode, args.vm))
    code = DECISION_EXIT.get(str(data["decision"]), EXIT_UNDECIDED)
    try:  # the decision stands even when nobody reads it (gate ... | head -0)
        _print_gate(data, args.limit)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
    return code


def _source_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--controller",
        type=_url,
        help="a running controller's base URL, e.g. http://127.0.0.1:8080",
    )
    source.add_argument("--db", help="read this SQLite file directly instead (with --inventory)")
    p.add_argument("--ca", help="with an https --controller: the site's CA certificate (PEM)")
    p.add_argument(
        "--read-token-file",
        help="with --controller: the file holding the read token (else $NETCHECK_READ_TOKEN)",
    )
    _spec_args(p, inventory_required=False)


def _spec_args(p: argparse.ArgumentParser, inventory_required: bool) -> None:
    p.add_argument("--topology", default=DEFAULT_TOPOLOGY, help="default: ./topology.yaml")
    p.add_argument(
        "--inventory",
        required=inventory_required,
        help="the site inventory" + ("" if inventory_required else " (needed with --db)"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netcheck-controller",
        description="Evaluate HDM network checks against the interaction spec.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = add("check", "validate topology.yaml (and an inventory), print a summary")
    p.add_argument("topology", nargs="?", default=DEFAULT_TOPOLOGY, help="default: ./topology.yaml")
    p.add_argument("--inventory", help="path to a site inventory")
    p.set_defaults(func=cmd_check)

    p = add("serve", "run the controller (HTTP API, page, metrics)")
    _spec_args(p, inventory_required=True)
    p.add_argument(
        "--listen", type=inputs.host_port_arg, default=("127.0.0.1", 8080), help="HOST:PORT"
    )
    p.add_argument("--db", required=True, help="SQLite file (created if missing)")
    p.add_argument(
        "--pki", metavar="DIR", help="HTTPS with this CA directory ('ca init'); agents enrol"
    )
    p.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain HTTP with one shared agent token (--token-file): labs and tests only",
    )
    p.add_argument(
        "--token-file",
        help="with --insecure-http: the agents' shared token (else $NETCHECK_TOKEN)",
    )
    p.add_argument(
        "--read-token-file",
        help="reads (page, reports, gate, metrics) need this token: Bearer, or basic auth "
        "with it as the password",
    )
    p.add_argument("--open-reads", action="store_true", help="reads need no credential")
    p.add_argument("--refresh", type=int, default=30, help="page refresh seconds (0: none)")
    p.add_argument(
        "--watch-interval",
        type=_watch_interval,
        default=3.0,
        metavar="SECONDS",
        help="reload topology and inventory when they change, polled this often (0: only on "
        "SIGHUP; default 3)",
    )
    p.set_defaults(func=cmd_serve)

    p = add("ca", "the site's private CA for HTTPS and agents' client certificates")
    ca_sub = p.add_subparsers(dest="ca_command", required=True)
    p = ca_sub.add_parser(
        "init",
        help="create the CA and the controller's server certificate",
        description="create DIR/ca.pem, DIR/ca-key.pem (0600), DIR/server.pem, "
        "DIR/server-key.pem (0600); without --name/--address: localhost and 127.0.0.1",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pki", required=True, metavar="DIR")
    p.add_argument("--name", action="append", default=[], help="a DNS name of the controller")
    p.add_argument("--address", action="append", default=[], help="an IP of the controller")
    p.add_argument("--days", type=int, default=397, help="server certificate lifetime")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(func=cmd_ca_init)

    p = add("enrol", "print one-time join tokens (HOST TOKEN lines) for hosts of a role")
    p.add_argument("--db", required=True, help="the controller's SQLite file")
    _spec_args(p, inventory_required=True)
    p.add_argument("--role", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--host")
    which.add_argument("--all", action="store_true", help="every host of the role")
    p.add_argument("--ttl", type=_ttl, default=3600.0, help="lifetime: 600, 30m, 1h (default)")
    p.set_defaults(func=cmd_enrol)

    from netcheck.controller.request_cli import add_parsers as request_parsers

    request_parsers(add, _source_args)

    p = add("revoke", "revoke a host's client certificates (a running controller sees it)")
    p.add_argument("--db", required=True, help="the controller's SQLite file")
    p.add_argument("--host", required=True)
    p.add_argument("--serial", help="only this certificate (hex, as the report's sent_by)")
    p.set_defaults(func=cmd_revoke)

    p = add("plan", "write the plan of each agent of a role")
    _spec_args(p, inventory_required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--host", help="only this host (then --out is a file)")
    p.add_argument("--out", help="a file with --host, else a directory of <host>.plan.json")
    p.set_defaults(func=cmd_plan)

    p = add("import", "store a ResultBatch file from 'netcheck-agent run --out'")
    p.add_argument("results", help="the ResultBatch JSON file")
    p.add_argument("--db", required=True)
    _spec_args(p, inventory_required=True)
    p.set_defaults(func=cmd_import)

    p = add("report", "print or write a report")
    p.add_argument(
        "--format", default="table", choices=["table", "json", "markdown", "junit", "html"]
    )
    _source_args(p)
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_report)

    p = add("gate", "go / no-go: exit 0 go, 1 no-go, 2 could not decide")
    p.add_argument("--mode", required=True)
    p.add_argument("--vm", help="a prem_vm or cloud_vm host name of the inventory")
    p.add_argument("--limit", type=int, default=20, help="blocking checks to list")
    _source_args(p)
    p.set_defaults(func=cmd_gate)
    return parser


def _stdout_to_devnull() -> None:
    """After a closed pipe: point stdout at /dev/null so the exit's flush cannot fail.

    (The Python documentation's recipe for SIGPIPE, ``signal`` module notes.)
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _translate(exc: Exception, args: argparse.Namespace) -> NetcheckError:
    """A library exception that reached the command line, as one of the tree's errors."""
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"{getattr(args, 'db', None) or 'the database'}: {exc}")
    if isinstance(exc, OSError):
        what = f"{exc.filename}: " if exc.filename else ""
        return CliError(f"{what}{exc.strerror or exc}")
    return CliError(f"YAML error: {exc}")


def _complain(exc: NetcheckError) -> None:
    text = f"could not decide: {exc}" if isinstance(exc, Undecided) else str(exc)
    with contextlib.suppress(OSError):  # nowhere to say it: the exit code still does
        print(text, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit code (see :data:`EPILOG`)."""
    args = build_parser().parse_args(argv)
    try:
        try:
            code: int = args.func(args)
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped reading (report ... | head -1)
            _stdout_to_devnull()
            return EXIT_GO
        except (sqlite3.Error, OSError, yaml.YAMLError) as exc:
            raise _translate(exc, args) from None
    except NetcheckError as exc:
        _complain(exc)
        return exit_code(exc)
    return code


if __name__ == "__main__":
    sys.exit(main())
