"""netcheck-controller: the command line. Each subcommand parses, calls, prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netcheck.agent.wire import Registration, encode
from netcheck.controller.evalcache import evaluate_store
from netcheck.controller.expand import expand, plan_for
from netcheck.controller.gate import GateError, decision_to_dict, gate
from netcheck.controller.ingest import Refused, check_batch, parse_batch
from netcheck.controller.inventory import Inventory, load_inventory
from netcheck.controller.model import Evaluation
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import Spec, load_spec
from netcheck.controller.store import Store


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


def cmd_check(args: argparse.Namespace) -> int:
    spec = load_spec(args.topology)
    out = _summary(spec)
    if args.inventory:
        inv = load_inventory(args.inventory, spec)
        checks = expand(spec, inv)
        hosts = sum(len(h) for h in inv.hosts.values())
        out.append(f"{inv.file}: ok ({hosts} hosts in {len(inv.hosts)} roles)")
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
    spec = load_spec(args.topology)
    if not args.inventory:
        raise CliError("--inventory is required here")
    return spec, load_inventory(args.inventory, spec)


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(
                f"cannot read the token file {args.token_file}: {exc.strerror}"
            ) from None
    else:
        token = os.environ.get("NETCHECK_TOKEN", "").strip()
    if not token:
        raise CliError("no token: give --token-file or set NETCHECK_TOKEN")
    return token


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from netcheck.controller.app import make_app

    spec, inv = _load(args)
    token = _token(args)
    host, port = args.listen
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(spec, inv, args.db, token, refresh_seconds=args.refresh)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
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
        n = store.ingest(batch, now)
    finally:
        store.close()
    print(f"imported {n} results from {batch.role} {batch.host} into {args.db}")
    return 0


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Undecided(f"controller unreachable at {url}: {exc}") from None


def _local(args: argparse.Namespace) -> tuple[Spec, Inventory, Evaluation]:
    if not args.db:
        raise Undecided("give --controller URL, or --db PATH with --inventory")
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
        status, body = _fetch(f"{args.controller.rstrip('/')}/api/v1/report?{q}")
        if status != 200:
            raise Undecided(f"controller answered {status}: {body.decode(errors='replace')}")
        text = body.decode()
    else:
        from netcheck.controller.render import render_report

        spec, inv, ev = _local(args)
        gates = [gate(spec, inv, ev, m) for m in spec.modes]
        text = render_report(spec, ev, gates, args.format)
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
        status, body = _fetch(url)
        try:
            data: dict[str, Any] = json.loads(body)
        except ValueError:
            raise Undecided(f"controller answered {status} with no JSON") from None
        if status != 200:
            raise Undecided(str(data.get("error", f"controller answered {status}")))
    else:
        spec, inv, ev = _local(args)
        try:
            data = decision_to_dict(gate(spec, inv, ev, args.mode, args.vm))
        except GateError as exc:
            raise Undecided(str(exc)) from None
    _print_gate(data, args.limit)
    return {"go": 0, "no-go": 1}.get(data["decision"], 2)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controller", help="a running controller's base URL, e.g. http://127.0.0.1:8080"
    )
    p.add_argument("--db", help="read this SQLite file directly instead")
    _spec_args(p, inventory_required=False)


def _spec_args(p: argparse.ArgumentParser, inventory_required: bool) -> None:
    p.add_argument("--topology", default="topology.yaml", help="default: ./topology.yaml")
    p.add_argument("--inventory", required=inventory_required, help="the site inventory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netcheck-controller",
        description="Evaluate HDM network checks against the interaction spec.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate topology.yaml (and an inventory), print a summary")
    p.add_argument("topology", help="path to topology.yaml")
    p.add_argument("--inventory", help="path to a site inventory")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("serve", help="run the controller (HTTP API, page, metrics)")
    _spec_args(p, inventory_required=True)
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8080), help="HOST:PORT")
    p.add_argument("--db", required=True, help="SQLite file (created if missing)")
    p.add_argument("--token-file", help="file holding the agents' token (else $NETCHECK_TOKEN)")
    p.add_argument("--refresh", type=int, default=30, help="page refresh seconds (0: none)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("plan", help="write the plan of each agent of a role")
    _spec_args(p, inventory_required=True)
    p.add_argument("--role", required=True)
    p.add_argument("--host", help="only this host (then --out is a file)")
    p.add_argument("--out", help="a file with --host, else a directory of <host>.plan.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("import", help="store a ResultBatch file from 'netcheck-agent run --out'")
    p.add_argument("results", help="the ResultBatch JSON file")
    p.add_argument("--db", required=True)
    _spec_args(p, inventory_required=True)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("report", help="print or write a report")
    p.add_argument(
        "--format", default="table", choices=["table", "json", "markdown", "junit", "html"]
    )
    _source_args(p)
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("gate", help="go / no-go: exit 0 go, 1 no-go, 2 could not decide")
    p.add_argument("--mode", required=True)
    p.add_argument("--vm", help="a prem_vm or cloud_vm host name of the inventory")
    p.add_argument("--limit", type=int, default=20, help="blocking checks to list")
    _source_args(p)
    p.set_defaults(func=cmd_gate)
    return parser


class CliError(Exception):
    """A problem with the command's input: exit 1 with the message."""


class Undecided(Exception):
    """The question could not be answered (controller away, unknown mode): exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except Undecided as exc:
        print(f"could not decide: {exc}", file=sys.stderr)
        return 2
    except (InputError, CliError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
