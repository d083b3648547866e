"""``python -m deploy.lab up|down|status|demo``: the lab, and the audit in one command."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.lab import lab as labmod
from deploy.lab import netns, procs, scenario
from netcheck.agent.caps import can_bind_low_ports
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import load_spec

ROUND_MAX_S = 6.0


def _say(text: str) -> None:
    print(text, flush=True)


def controller_cli(lab: labmod.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """``netcheck-controller ARGS --controller URL``, run where the controller is reachable."""
    cmd = [sys.executable, "-m", "netcheck.controller", *args, "--controller", lab.controller_url]
    if lab.ctl_netns is not None:
        cmd = ["ip", "netns", "exec", lab.ctl_netns, *cmd]
    return subprocess.run(
        cmd, cwd=procs.REPO, capture_output=True, text=True, timeout=60, check=False
    )


def audit(lab: labmod.Lab, out_dir: Path) -> int:
    """Wait for a full probe round, print the table and the gates, write the HTML report."""
    spec = load_spec(labmod.TOPOLOGY)
    t0 = time.monotonic()
    missing = labmod.wait_listening(lab, spec, 20.0)
    if missing:
        _say(f"warning: still not listening on every port after 20 s: {', '.join(missing)}")
    since = time.time()
    late = labmod.wait_round(lab, since, ROUND_MAX_S, 3 * labmod.LAB_PERIOD_S + 20)
    if late:
        _say(f"warning: no complete probe round yet from: {', '.join(late)}")
    _say(f"probe round complete ({time.monotonic() - t0:.1f} s after start)\n")
    table = controller_cli(lab, "report", "--format", "table")
    _say(table.stdout.rstrip() or table.stderr.rstrip())
    _say("\nGate per migration mode:")
    worst = 0
    for mode in spec.modes:
        gate = controller_cli(lab, "gate", "--mode", mode)
        first = (gate.stdout.strip().splitlines() or [gate.stderr.strip()])[0]
        _say(f"  {mode:<11} exit {gate.returncode}  {first}")
        worst = max(worst, gate.returncode)
    status, html = labmod.http_get(lab, "/api/v1/report?format=html", 15.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "netcheck-report.html"
    if status == 200:
        report.write_bytes(html)
        _say(f"\nHTML report: {report.resolve()}")
    else:
        _say(f"\nHTML report not written: the controller answered HTTP {status}")
    return worst


def _describe(lab: labmod.Lab) -> str:
    if lab.kind == "netns":
        return (
            f"network namespaces (nclab-*), scenario {lab.scenario!r} applied with nftables on "
            f"the prem and cloud routers; controller {lab.controller_url} inside "
            f"{lab.ctl_netns}, page forwarded to {lab.page_url}"
        )
    low = (
        "ports below 1024 can be bound here"
        if can_bind_low_ports()
        else "ports below 1024 (22, 443, 902) cannot be bound without root or "
        "CAP_NET_BIND_SERVICE: the listeners report them 'denied' and their checks fail"
    )
    return (
        "LOOPBACK lab (not root, or --loopback): no network namespaces, every host on its own "
        f"127.0.1.N address, and NO FIREWALL: scenario {lab.scenario!r} is NOT applied, so "
        f"only what is not listening can fail; {low}. Controller and page: {lab.page_url}"
    )


def cmd_up(args: argparse.Namespace) -> int:
    kind: labmod.Kind | None = "loopback" if args.loopback else None
    lab = labmod.up(args.scenario, kind, probe_mode=args.probe_mode)
    _say(_describe(lab))
    _say(f"state, logs, inventory and token: {lab.state}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    gone = labmod.down()
    _say(f"lab down: {gone['processes']} processes ended, {gone['namespaces']} namespaces removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab = labmod.load_lab()
    prefix = lab.layout.prefix if lab else labmod.lab_prefix()
    root = labmod.is_root() and labmod.have_netns_tools()
    left = netns.leftover_namespaces(prefix) if root else ()
    pids = procs.recorded_pids(procs.state_dir())
    alive = {n: p for n, p in pids.items() if procs.is_ours(p, procs.state_dir())}
    _say(_describe(lab) if lab else "no lab described in the state dir")
    _say(f"namespaces: {len(left)}; processes alive: {len(alive)} of {len(pids)} recorded")
    return 0 if lab else 1


def _wait_for_ctrl_c() -> None:
    stop = False

    def handler(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)  # also when started in the background (SIG_IGN)
    while not stop:
        time.sleep(0.5)


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    kind: labmod.Kind | None = "loopback" if args.loopback or not labmod.is_root() else None
    if kind is None and not labmod.have_netns_tools():
        _say("`ip` or `nft` is missing: running the loopback lab instead")
        kind = "loopback"
    lab = labmod.up(args.scenario, kind, probe_mode=args.probe_mode)
    try:
        _say(_describe(lab))
        worst = audit(lab, Path(args.out))
        _say(f"\ndemo took {time.monotonic() - started:.1f} s")
        keep = sys.stdin.isatty() if args.keep is None else args.keep
        if keep:
            _say(f"serving the topology page at {lab.page_url} — Ctrl-C to stop and tear down")
            _wait_for_ctrl_c()
        # The audit ran: that is success, whatever the gates say, unless --strict asks for
        # the gate's own answer (1 when a mode is no-go) as the exit code.
        return worst if args.strict else 0
    finally:
        gone = labmod.down(lab.state, lab.layout.prefix)
        _say(f"lab down ({gone['processes']} processes, {gone['namespaces']} namespaces)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    names = ", ".join(scenario.shipped())
    for name, fn, text in (
        ("up", cmd_up, "build the lab and start everything, then return"),
        ("demo", cmd_demo, "build the lab, run one audit round, print table and gates"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("--scenario", default="audit", help=f"a shipped name ({names}) or a file")
        s.add_argument("--loopback", action="store_true", help="127.0.1.N hosts, no namespaces")
        s.add_argument(
            "--probe-mode",
            choices=("auto", "connect", "syn"),
            default="auto",
            help="the agents' --mode (auto: raw SYN probes + TCP traceroute where root)",
        )
        s.set_defaults(func=fn)
        if name == "demo":
            s.add_argument(
                "--keep",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="keep serving the page until Ctrl-C (default: when run from a terminal)",
            )
            s.add_argument("--strict", action="store_true", help="exit 1 when any mode is no-go")
            s.add_argument("--out", default="out", help="where the HTML report goes")
    sub.add_parser("down", help="remove every namespace and process of the lab").set_defaults(
        func=cmd_down
    )
    sub.add_parser("status", help="what runs now").set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except netns.LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 3
    return code
