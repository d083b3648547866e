"""netcheck-controller: the command line. Each subcommand parses, calls, prints."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from controller.expand import expand
from controller.inventory import load_inventory
from controller.sourced import InputError
from controller.spec import Spec, load_spec


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
