"""Child processes of the benchmark: run (optionally inside a namespace), time, kill by pid."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOFILE = 65536


class BenchError(RuntimeError):
    """A step of the benchmark could not run; the message says which and why."""


def _raise_nofile() -> None:
    # What a systemd unit's LimitNOFILE= does for the agent; the benchmark runs as root.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env.pop("NETCHECK_TOKEN", None)
    return env


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


@dataclasses.dataclass(frozen=True)
class Done:
    rc: int
    wall_s: float
    stdout: str
    stderr: str
    timed_out: bool


def run(argv: Sequence[str], timeout_s: float, netns: str | None = None) -> Done:
    """Run to completion (or kill at `timeout_s`); wall time from spawn to exit."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        in_netns(netns, argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO,
        preexec_fn=_raise_nofile,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill(proc)
        out, err = proc.communicate()
    return Done(proc.returncode, time.monotonic() - t0, out, err, timed_out)


def spawn(argv: Sequence[str], netns: str | None = None, **kw: Any) -> subprocess.Popen[str]:
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        in_netns(netns, argv),
        text=True,
        env=child_env(),
        cwd=REPO,
        preexec_fn=_raise_nofile,
        start_new_session=True,
        **kw,
    )


def kill(proc: subprocess.Popen[str], grace_s: float = 3.0) -> None:
    """Stop a child we started (by its pid only): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(grace_s)


def worker(
    kind: str, args: dict[str, Any], netns: str | None, timeout_s: float
) -> tuple[dict[str, Any], float]:
    """Run ``python -m bench.worker KIND @ARGS_FILE``; its JSON answer and wall."""
    with tempfile.NamedTemporaryFile("w", prefix="ncbench-", suffix=".json") as f:
        json.dump(args, f)
        f.flush()
        done = run([sys.executable, "-m", "bench.worker", kind, "@" + f.name], timeout_s, netns)
    if done.rc != 0 or done.timed_out:
        tail = done.stderr.strip().splitlines()[-5:]
        raise BenchError(
            f"worker {kind} in {netns}: rc={done.rc} timed_out={done.timed_out}: "
            + " | ".join(tail)
        )
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer, done.wall_s
