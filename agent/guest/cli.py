"""``netcheck-guest``: the guest agent's commands.

    netcheck-guest facts [--json] [--root DIR] [--user NAME] [--powershell-json FILE]
    netcheck-guest enrol --controller URL --ca FILE --join-token-file FILE --state-dir DIR
                         --role ROLE --host NAME
    netcheck-guest serve --controller URL --role ROLE --host NAME --address IP
                         [--state-dir DIR | --token-file FILE] [--bind IP] [--once [--linger S]]

Exit status: 0 done, 1 failed (the reason on stderr), 2 bad input.
"""

import argparse
import json
import logging
import os
import pkgutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from netcheck.agent.guest import commands, enrol, facts
from netcheck.agent.guest.facts import windows
from netcheck.agent.guest.facts.base import Root, fact
from netcheck.agent.guest.https import Client, client_context
from netcheck.agent.guest.serve import Guest

log = logging.getLogger("netcheck.guest")
MAX_TOKEN = 4096


def _read_secret(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read(MAX_TOKEN + 1).strip()
    except OSError as exc:
        raise SystemExit("netcheck-guest: cannot read %s: %s" % (path, exc.strerror)) from None
    if not text or len(text) > MAX_TOKEN:
        raise SystemExit("netcheck-guest: no token in %s" % path)
    return text


def windows_facts() -> List[Dict[str, Any]]:
    """Run the packaged facts.ps1 with Windows PowerShell 5.1 and parse its JSON."""
    script = pkgutil.get_data("netcheck.agent.guest", "facts.ps1")
    exe = commands.which("powershell.exe") or commands.which("powershell")
    if script is None or exe is None:
        return [fact("os.family", "Windows", "powershell", "powershell or facts.ps1 missing")]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "facts.ps1")
        with open(path, "wb") as f:
            f.write(script)
        argv = [exe, "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File", path]
        code, out, err = commands.run(argv, 120)
    if code != 0:
        why = err.decode("utf-8", "replace")[:300]
        return [fact("os.family", "Windows", "powershell", "facts.ps1 failed: " + why)]
    return windows.parse(out.decode("utf-8", "replace"))


def gather(args: argparse.Namespace) -> List[Dict[str, Any]]:
    if getattr(args, "powershell_json", None):
        with open(args.powershell_json, encoding="utf-8-sig") as f:
            return windows.parse(f.read(windows.MAX_JSON + 1))
    if os.name == "nt":
        return windows_facts()
    return facts.collect(Root(args.root), getattr(args, "user", None))


def cmd_facts(args: argparse.Namespace) -> int:
    found = gather(args)
    if args.json:
        json.dump({"facts": found}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for f in found:
        value = "unknown" if f["value"] is None else f["value"]
        detail = " (%s)" % f["detail"] if f["detail"] else ""
        print("%-32s %-24s %s%s" % (f["name"], value, f["source"], detail))
    return 0


def cmd_enrol(args: argparse.Namespace) -> int:
    token = _read_secret(args.join_token_file)
    path = enrol.enrol(args.controller, token, args.ca, args.state_dir, args.role, args.host)
    print("enrolled %s/%s: %s" % (args.role, args.host, path))
    return 0


def _client(args: argparse.Namespace) -> Client:
    if args.state_dir:
        ca, identity = enrol.paths(args.state_dir)
        if not os.path.isfile(identity):
            raise SystemExit("netcheck-guest: no identity in %s: run enrol first" % args.state_dir)
        return Client(args.controller, client_context(args.ca or ca, identity))
    if not args.token_file:
        raise SystemExit("netcheck-guest: give --state-dir (mutual TLS) or --token-file")
    return Client(args.controller, None, _read_secret(args.token_file))


def cmd_serve(args: argparse.Namespace) -> int:
    client = _client(args)

    def renew() -> Optional[Client]:
        if not args.state_dir or not enrol.renewal_due(args.state_dir, time.time()):
            return None
        enrol.renew(args.controller, args.state_dir, args.role, args.host)
        return _client(args)

    def gathered() -> List[Dict[str, Any]]:
        try:
            return gather(args)
        except (OSError, ValueError) as exc:
            return [fact("guest.facts_error", None, "collector", str(exc))]

    guest = Guest(
        client, args.role, args.host, args.address, args.bind or args.address, gathered, renew
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: guest.stop.set())
    return guest.run(once=args.once, linger_s=args.linger)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netcheck-guest", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command")
    f = sub.add_parser("facts", help="the guest's facts, each with how it was found")
    f.add_argument("--json", action="store_true", help="as JSON")
    f.add_argument("--root", default="/", help="read this tree instead of / (a mounted disk)")
    f.add_argument("--user", help="the preparing user (default: $SUDO_USER or you)")
    f.add_argument("--powershell-json", help="parse a saved output of facts.ps1 instead")
    e = sub.add_parser("enrol", help="trade a join token for this guest's certificate")
    for name in ("--controller", "--ca", "--join-token-file", "--state-dir", "--role", "--host"):
        e.add_argument(name, required=True)
    s = sub.add_parser("serve", help="follow a controller: listen, probe, report facts")
    for name in ("--controller", "--role", "--host", "--address"):
        s.add_argument(name, required=True)
    s.add_argument("--state-dir", help="enrolment state (mutual TLS)")
    s.add_argument("--ca", help="the site's CA (default: the one stored at enrolment)")
    s.add_argument("--token-file", help="a shared token (a controller with --insecure-http)")
    s.add_argument("--bind", help="listen address (default: --address)")
    s.add_argument("--once", action="store_true", help="one round, then exit")
    s.add_argument(
        "--linger", type=float, default=0.0, help="with --once: seconds to keep listening"
    )
    s.add_argument("--root", default="/", help=argparse.SUPPRESS)
    s.add_argument("--user", help="the preparing user for the free-space fact")
    s.add_argument("--powershell-json", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    handlers = {"facts": cmd_facts, "enrol": cmd_enrol, "serve": cmd_serve}
    if args.command not in handlers:
        parser().print_usage(sys.stderr)
        return 2
    try:
        return handlers[args.command](args)
    except enrol.EnrolError as exc:
        print("netcheck-guest: %s" % exc, file=sys.stderr)
        return 1
    except (ValueError, OSError, subprocess.SubprocessError) as exc:
        print("netcheck-guest: %s" % exc, file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
