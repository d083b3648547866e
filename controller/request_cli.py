"""``netcheck-controller request KIND ...`` and ``request list``: the operator's requests.

With ``--db`` the requests are written into the controller's SQLite file directly (on the
controller's host, like ``enrol``; a running controller hands them over within
:data:`~netcheck.controller.requests.REFRESH_SECONDS`); with ``--controller URL`` they are
sent to ``POST /api/v1/requests`` with the read token (``--read-token-file``, else
``$NETCHECK_READ_TOKEN``). One request per agent host matching ``--role``/``--host``.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from netcheck.controller.errors import CliError, Unreachable
from netcheck.controller.inventory import Inventory
from netcheck.controller.model import Evaluation, GateDecision
from netcheck.controller.requests import (
    DEFAULT_DEADLINE_S,
    PARAMS,
    RequestBook,
    RequestError,
    make_requests,
    num,
)
from netcheck.controller.spec import Spec

# --flag -> parameter name (exposure), as the issue names them.
EXPOSURE_FLAGS = {
    "rate": "rate",
    "concurrency": "concurrency",
    "timeout": "timeout",
    "retries": "retries",
    "first_port": "first_port",
    "last_port": "last_port",
}


def _http(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    from netcheck.agent import inputs

    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    try:
        secret = inputs.read_token(args.read_token_file, env="NETCHECK_READ_TOKEN")
    except inputs.InputError as exc:
        raise CliError(f"requests need the read token: {exc}") from None
    headers["Authorization"] = f"Bearer {secret}"
    context = None
    if args.ca:
        try:
            context = ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot use the CA file {args.ca}: {exc}") from None
    data = json.dumps(body).encode() if body is not None else None
    url = args.controller.rstrip("/") + path
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            why = json.loads(exc.read()).get("error", "")
        except ValueError:
            why = ""
        raise CliError(f"the controller refused: HTTP {exc.code} {why}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"controller unreachable at {url}: {exc}") from None


def cmd_request(args: argparse.Namespace) -> int:
    from netcheck.controller.cli import _load

    kind = args.kind
    params = {
        name: getattr(args, flag)
        for flag, name in EXPOSURE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if kind == "interconnect":
        params = {"throughput": 1 if args.throughput else 0}
    if args.controller:
        body = {"kind": kind, "params": params, "deadline_s": args.deadline}
        body.update({k: getattr(args, k) for k in ("role", "host") if getattr(args, k)})
        made = _http(args, "POST", "/api/v1/requests", body)["requests"]
        ids = [(r["id"], r["role"], r["host"]) for r in made]
    else:
        if not args.db:
            raise CliError("give --db PATH (with --inventory) or --controller URL")
        spec, inv = _load(args)
        try:
            reqs = make_requests(
                spec,
                inv,
                kind,
                params,
                time.time(),
                role=args.role,
                host=args.host,
                deadline_s=args.deadline,
            )
        except RequestError as exc:
            raise CliError(exc.message) from None
        book = RequestBook.open(args.db)
        try:
            book.add(reqs, "cli")
        finally:
            book.close()
        ids = [(r.id, r.role, r.host) for r in reqs]
    for rid, role, host in ids:
        print(f"{rid} {kind} {role} {host}")
    return 0


def cmd_request_list(args: argparse.Namespace) -> int:
    if args.controller:
        rows = _http(args, "GET", "/api/v1/requests")["requests"]
    else:
        if not args.db or not Path(args.db).is_file():
            raise CliError("give --db PATH (an existing controller database) or --controller URL")
        book = RequestBook.open(args.db)
        try:
            rows = [r.to_dict() for r in book.all()]
        finally:
            book.close()
    for r in rows:
        opened = len((r.get("report") or {}).get("open_ports", []))
        detail = f" {r['detail']}" if r["detail"] else ""
        print(f"{r['id']} {r['kind']} {r['role']} {r['host']} {r['state']} open={opened}{detail}")
    return 0


def add_parsers(add: Any, source_args: Any) -> None:
    """The ``request`` subcommand (``add``: cli.build_parser's, ``source_args``: its
    --controller/--db/--ca/--read-token-file/--topology/--inventory)."""
    p = add("request", "ask agents for work: an exposure sweep of every port of their peers")
    sub = p.add_subparsers(dest="request_kind", required=True)
    e = sub.add_parser(
        "exposure",
        help="sweep all TCP ports of each host an agent probes; report what is open",
        description="One exposure request per agent host matching --role/--host: the agent "
        "sweeps every TCP port (1-65535 by default) of each destination of its own plan "
        "(raw SYN with CAP_NET_RAW, connect otherwise) and reports the open ports; the "
        "report, the ticket and the metrics list those the spec does not need.",
    )
    source_args(e)
    e.add_argument("--role", help="only agents of this role")
    e.add_argument("--host", help="only this agent host")
    rules = PARAMS["exposure"]
    for flag, name in EXPOSURE_FLAGS.items():
        rule = rules[name]
        e.add_argument(
            "--" + flag.replace("_", "-"),
            dest=flag,
            type=int if rule.integer else float,
            help=f"{rule.help} ({num(rule.lo)}-{num(rule.hi)}, default {num(rule.default)})",
        )
    e.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help=f"seconds the agents have to finish (default {DEFAULT_DEADLINE_S:g})",
    )
    e.set_defaults(func=cmd_request, kind="exposure")
    q = sub.add_parser(
        "interconnect",
        help="qualify the data paths: path MTU, round trip and loss (and throughput)",
        description="One interconnect request per agent host matching --role/--host: the "
        "agent measures each data path of its plan (topology.yaml qualification:) on the "
        "interaction's own port, against the destination's stand-in: path MTU with DF set "
        "(ICMP fragmentation-needed or a black hole), round trip, jitter and loss; with "
        "--throughput also Mbit/s both ways over the interaction's port range (it loads the "
        "link). The report, the gate and the metrics judge them against the thresholds.",
    )
    source_args(q)
    q.add_argument("--role", help="only agents of this role")
    q.add_argument("--host", help="only this agent host")
    q.add_argument("--throughput", action="store_true", help="also measure throughput both ways")
    q.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help=f"seconds the agents have to finish (default {DEFAULT_DEADLINE_S:g})",
    )
    q.set_defaults(func=cmd_request, kind="interconnect")
    ls = sub.add_parser("list", help="the requests, newest first, with state and open ports")
    source_args(ls)
    ls.set_defaults(func=cmd_request_list)


def with_exposure(
    text: str,
    args: argparse.Namespace,
    spec: Spec,
    inv: Inventory,
    ev: Evaluation,
    gates: Sequence[GateDecision],
) -> str:
    """A report made from ``--db`` with the exposure audit of that database's requests (JSON:
    its ``exposure`` block; Markdown: its section; other formats as they are)."""
    from netcheck.controller import exposure
    from netcheck.controller.expand import by_source, expected
    from netcheck.controller.render import json_report

    if args.format not in ("json", "markdown"):
        return text
    book = RequestBook.open(args.db)
    try:
        audit = exposure.audit(book.ended(), by_source(expected(spec, inv).checks), book.done())
    finally:
        book.close()
    if args.format == "markdown":
        return exposure.with_markdown(text, audit)
    return json_report.render(spec, ev, gates, exposure=exposure.to_dict(audit))
