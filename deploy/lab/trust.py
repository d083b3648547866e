"""The lab's credentials, made with the product's own commands, as an operator makes them.

:func:`init_ca` runs ``netcheck-controller ca init`` (the controller's lab address,
127.0.0.1 and ``localhost`` as SANs: the page forwarded to the host's loopback presents the
same certificate); :func:`join_tokens` runs ``netcheck-controller enrol --all`` once per
agent role and returns one join token per host; :func:`write_secret` writes a secret with
mode 0600 from the start. Secrets are never printed or logged: ``enrol``'s output goes to
the caller only, and errors carry ``stderr``, which holds no token.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path

from deploy.lab import argv, procs
from deploy.lab.layout import LabHost
from deploy.lab.netns import LabError


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_secret(path: Path, secret: str) -> None:
    """``secret`` in ``path``, created 0600 (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")


def _run(cmd: list[str], what: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(procs.REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        cmd, cwd=procs.REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise LabError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def init_ca(pki: Path, controller_address: str, state: Path) -> None:
    """The site's CA and the controller's certificate in ``pki``; the command's output (paths
    and the CA's fingerprint, no key) in ``logs/ca-init.log``."""
    addresses = list(dict.fromkeys([controller_address, "127.0.0.1"]))
    out = _run(argv.ca_init_argv(pki, ["localhost"], addresses), "netcheck-controller ca init")
    (state / "logs").mkdir(parents=True, exist_ok=True)
    (state / "logs" / "ca-init.log").write_text(out)


def join_tokens(
    topology: Path, inventory: Path, db: Path, agents: Iterable[LabHost]
) -> dict[str, str]:
    """host name -> a one-time join token, for every host of ``agents`` (stored hashed in
    ``db``, which the controller then opens)."""
    wanted = list(agents)
    tokens: dict[str, str] = {}
    for role in dict.fromkeys(h.role for h in wanted):
        out = _run(argv.enrol_argv(topology, inventory, db, role), "netcheck-controller enrol")
        for line in out.splitlines():
            host, _, token = line.strip().partition(" ")
            if host and token:
                tokens[host] = token.strip()
    missing = [h.name for h in wanted if h.name not in tokens]
    if missing:
        raise LabError(f"netcheck-controller enrol gave no join token for: {', '.join(missing)}")
    return tokens
