"""``python -m deploy.lab up|down|status|demo``: the lab, and the audit in one command."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from deploy.lab import lab as labmod
from deploy.lab import netns, procs, scenario
from deploy.lab.layout import ROUTERS
from netcheck.agent.caps import can_bind_low_ports
from netcheck.controller.sourced import InputError
from netcheck.controller.spec import Spec, load_spec

ROUND_MAX_S = 6.0
WIDTH = 120  # the console output fits this many columns


def _fit(line: str) -> list[str]:
    """A line of prose in lines of at most WIDTH columns; an indented one is continued one
    step further in (a line starting with two spaces after a heading is a command)."""
    if len(line) <= WIDTH:
        return [line]
    lead = line[: len(line) - len(line.lstrip())]
    return textwrap.wrap(
        line.strip(),
        WIDTH,
        initial_indent=lead,
        subsequent_indent=lead + "  " if lead else "",  # indented lines are commands
        break_on_hyphens=False,
        break_long_words=False,
    )


def _say(text: str) -> None:
    print("\n".join(x for line in text.split("\n") for x in _fit(line)), flush=True)


def command_lines(command: str, indent: str = "  ") -> list[str]:
    """A shell command in lines of at most WIDTH columns, continued with a backslash; an
    option stays on the line of its value (one word longer than the line stays whole)."""
    words = shlex.split(command)
    groups: list[list[str]] = []
    for w in words:
        if groups and groups[-1][-1].startswith("--") and not w.startswith("--"):
            groups[-1].append(w)
        else:
            groups.append([w])
    lines: list[str] = []
    cur = indent
    for g in groups:
        part = shlex.join(g)
        if cur.strip() and len(cur) + 1 + len(part) + 2 > WIDTH:
            lines.append(cur + " \\")
            cur = indent + "    " + part
        else:
            cur = f"{cur} {part}" if cur.strip() else cur + part
    lines.append(cur)
    return lines


def _say_command(command: str) -> None:
    print("\n".join(command_lines(command)), flush=True)


def reader_flags(lab: labmod.Lab) -> list[str]:
    """How a reading command verifies the controller and presents the read token: by file,
    so the secret never appears on a command line or in the demo's output."""
    return ["--ca", str(lab.ca_file), "--read-token-file", str(lab.read_token_file)]


def controller_cli(lab: labmod.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    """``netcheck-controller ARGS --controller URL``, run where the controller is reachable."""
    cmd = [
        sys.executable, "-m", "netcheck.controller", *args, "--controller", lab.controller_url,
        *reader_flags(lab),
    ]  # fmt: skip
    if lab.ctl_netns is not None:
        cmd = ["ip", "netns", "exec", lab.ctl_netns, *cmd]
    return subprocess.run(
        cmd, cwd=procs.REPO, capture_output=True, text=True, timeout=60, check=False
    )


def audit(lab: labmod.Lab, out_dir: Path) -> tuple[int, Path | None]:
    """Wait for a full probe round, print the table and the gates, write the HTML report.

    Returns the worst gate exit code and the report's path (None when not written)."""
    spec = load_spec(labmod.TOPOLOGY)
    t0 = time.monotonic()
    missing = lab.wait_listening(spec, 20.0)
    if missing:
        _say(f"warning: still not listening on every port after 20 s: {', '.join(missing)}")
    since = time.time()
    late = lab.wait_round(since, ROUND_MAX_S, 3 * labmod.LAB_PERIOD_S + 20)
    if late:
        _say(f"warning: no complete probe round yet from: {', '.join(late)}")
    _say(f"probe round complete ({time.monotonic() - t0:.1f} s after start)\n")
    table = controller_cli(lab, "report", "--format", "table")
    # The table without its own gates: they follow once, with each gate command's exit code.
    _say((table.stdout.split("\nGates\n", 1)[0]).rstrip() or table.stderr.rstrip())
    _say("\nGate per migration mode (netcheck-controller gate --mode MODE):")
    worst = 0
    for mode in spec.modes:
        gate = controller_cli(lab, "gate", "--mode", mode)
        first = (gate.stdout.strip().splitlines() or [gate.stderr.strip()])[0]
        _say(f"  {first} (exit {gate.returncode})")
        worst = max(worst, gate.returncode)
    status, html = lab.get("/api/v1/report?format=html", 15.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = (out_dir / "netcheck-report.html").resolve()
    if status == 200:
        report.write_bytes(html)
        return worst, report
    _say(f"\nHTML report not written: the controller answered HTTP {status}")
    return worst, None


def agent_modes(lab: labmod.Lab) -> dict[str, list[str]]:
    """How each agent probes ("SYN probes", "connect probes", ...), from the line its log
    starts with: probe kind -> the hosts that use it (an agent that logged nothing: "?")."""
    out: dict[str, list[str]] = {}
    for h in lab.layout.hosts:
        if not h.agent:
            continue
        log = lab.state / "logs" / f"{h.name}.log"
        marker = f" for {h.role}/{h.name}: "
        text = log.read_text(errors="replace") if log.exists() else ""
        line = next((ln for ln in text.splitlines() if marker in ln), "")
        kind = line.rpartition(": ")[2].strip() if line else "?"
        out.setdefault(kind, []).append(h.name)
    return out


def _shown(path: Path) -> str:
    """``path`` as a user types it here: relative when under the working directory."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def controller_command() -> list[str]:
    """How to run ``netcheck-controller`` with this interpreter's installation."""
    script = Path(sys.executable).with_name("netcheck-controller")
    if script.exists():
        return [_shown(script)]
    return [_shown(Path(sys.executable)), "-m", "netcheck.controller"]


def base_url(lab: labmod.Lab) -> str:
    """The controller as reachable from the host: the forwarded page, or the controller."""
    return lab.page_url.rstrip("/")


def offline_commands(lab: labmod.Lab, spec: Spec) -> list[str]:
    """Report and gate against the lab's database: these work after the lab is down too."""
    cmd = controller_command()
    files = [
        "--db",
        str(lab.db),
        "--topology",
        str(lab.topology),
        "--inventory",
        str(lab.inventory),
    ]
    mode = next(iter(spec.modes))
    return [
        shlex.join([*cmd, "report", *files, "--format", "table"]),
        shlex.join([*cmd, "gate", "--mode", mode, *files]),
    ]


def live_commands(lab: labmod.Lab, spec: Spec) -> list[str]:
    """Report and gate against the running controller (only while the lab serves)."""
    cmd, url = controller_command(), base_url(lab)
    mode = next(iter(spec.modes))
    reads = reader_flags(lab)
    return [
        shlex.join([*cmd, "report", "--controller", url, *reads, "--format", "table"]),
        shlex.join([*cmd, "gate", "--mode", mode, "--controller", url, *reads]),
    ]


def _say_next(lab: labmod.Lab, spec: Spec, report: Path | None) -> None:
    _say(f"\nDatabase: {lab.db}")
    if report is not None:
        _say(f"HTML report: {report}")
    fresh = spec.policy.freshness_seconds
    _say(
        "These keep working after the lab is down, until the results are "
        f"{fresh:g} s old and count as stale; the next `up` starts afresh"
        + ("; the state dir is root's" if labmod.is_root() else "")
        + "."
    )
    _say("Report and gate from the database:")
    for line in offline_commands(lab, spec):
        _say_command(line)


def _trust_line(lab: labmod.Lab) -> str:
    return (
        f"HTTPS with the lab's own CA ({lab.ca_file}), every agent enrolled with a one-time "
        "join token and reporting over mutual TLS; the page, reports, gate and metrics need "
        f"the read token in {lab.read_token_file} (a browser asks: any user name, the token "
        "as password).\n"
    )


def _describe(lab: labmod.Lab) -> str:
    if lab.kind == "netns":
        return _trust_line(lab) + (
            f"network namespaces ({lab.layout.prefix}*), scenario {lab.scenario!r} applied with "
            f"nftables on the prem and cloud routers{lab.firewall_extras}; controller "
            f"{lab.controller_url} inside "
            f"{lab.ctl_netns}, page forwarded to {lab.page_url}"
        )
    low = (
        "ports below 1024 can be bound here"
        if can_bind_low_ports()
        else "ports below 1024 (22, 443, 902) cannot be bound without root or "
        "CAP_NET_BIND_SERVICE: the listeners report them 'denied' and their checks fail"
    )
    return _trust_line(lab) + (
        "LOOPBACK lab (not root, or --loopback): no network namespaces, every host on its own "
        f"127.0.1.N address, and NO FIREWALL: scenario {lab.scenario!r} is NOT applied, so "
        f"only what is not listening can fail; {low}. Controller and page: {lab.page_url}"
    )


def cmd_up(args: argparse.Namespace) -> int:
    kind: labmod.Kind | None = "loopback" if args.loopback else None
    lab = labmod.up(args.scenario, kind, probe_mode=args.probe_mode)
    spec = load_spec(labmod.TOPOLOGY)
    _say(_describe(lab))
    _say(f"state, logs, inventory, CA and tokens: {lab.state}")
    _say("While it runs (`python -m deploy.lab down` ends it):")
    for line in live_commands(lab, spec):
        _say_command(line)
    _say_next(lab, spec, None)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    gone = labmod.down()
    _say(f"lab down: {gone['processes']} processes ended, {gone['namespaces']} namespaces removed")
    return 0


def status_lines(lab: labmod.Lab | None, seen: labmod.Observed, prefix: str) -> list[str]:
    """What runs, from what exists (``seen``); the state dir's description (``lab``) only
    names the parts. Pure."""
    expected_ns = (len(lab.layout.hosts) + 1 + len(ROUTERS)) if lab else 0
    controller = seen.alive.get("controller")
    forward = seen.alive.get("forward")
    netns_ok = lab is not None and (lab.kind == "loopback" or len(seen.namespaces) == expected_ns)
    running = lab is not None and controller is not None and netns_ok
    out: list[str] = []
    if running and lab is not None:
        out.append(f"lab up ({lab.kind}), state dir {lab.state}")
        if lab.kind == "netns":
            applied = ", ".join(seen.firewalls) or "none"
            out.append(
                f"scenario {lab.scenario!r}: nftables table present on routers: {applied}"
                f" (of {', '.join(ROUTERS)})"
            )
            if seen.host_firewalls:
                names = {h.netns: h.name for h in lab.layout.hosts}
                own = ", ".join(names.get(ns, ns) for ns in seen.host_firewalls)
                out.append(f"host firewalls (nftables in the host's own namespace): {own}")
            out.append(
                f"page: forwarded to {lab.page_url} (pid {forward})"
                if forward
                else "page: NOT forwarded (the forwarder is not running)"
            )
        else:
            out.append(f"scenario {lab.scenario!r} is NOT applied (loopback: no firewall)")
            out.append(f"page: {lab.page_url}")
        out.append(f"controller: {lab.controller_url} (pid {controller})")
    elif seen.namespaces or seen.alive:
        out.append(
            "lab partly up (a crash, or still starting): `python -m deploy.lab down` "
            "removes what is left"
        )
    else:
        out.append("lab down: no namespaces, no processes")
    out.append(f"namespaces ({prefix}*): {len(seen.namespaces)}")
    out.append(f"processes alive: {len(seen.alive)} of {seen.recorded} recorded")
    return out


def cmd_status(args: argparse.Namespace) -> int:
    lab = labmod.load_lab()
    prefix = lab.layout.prefix if lab else labmod.lab_prefix()
    seen = labmod.observe(procs.state_dir(), prefix)
    lines = status_lines(lab, seen, prefix)
    for line in lines:
        _say(line)
    return 0 if lines[0].startswith("lab up") else 1


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
    spec = load_spec(labmod.TOPOLOGY)
    try:
        _say(_describe(lab))
        worst, report = audit(lab, Path(args.out))
        _say("\nProbe mode per agent:")
        for probes, hosts in agent_modes(lab).items():
            _say(f"  {probes}: {', '.join(hosts)}")
        _say(f"\ndemo took {time.monotonic() - started:.1f} s")
        _say_next(lab, spec, report)
        keep = sys.stdin.isatty() if args.keep is None else args.keep
        if keep:
            _say(f"\nserving the topology page at {lab.page_url}; meanwhile also:")
            for line in live_commands(lab, spec):
                _say_command(line)
            _say("Ctrl-C stops and tears down")
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
    except scenario.UnknownScenario as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except netns.LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 3
    return code
