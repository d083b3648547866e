"""The lab's processes: started inside a namespace, recorded in pid files, ended by pid.

Every process gets ``NETCHECK_LAB=<state dir>`` in its environment; :func:`stop_recorded`
ends a pid from a pid file only when that marker is still in ``/proc/PID/environ`` (pid reuse
can never make it kill someone else's process). The argument vectors come from
:mod:`deploy.lab.argv`; :func:`stop` ends one process this one started.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

MARKER = "NETCHECK_LAB"
REPO = Path(__file__).resolve().parents[2]
# The children this process started, kept so they are reaped (no zombies, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_PIDFILES: dict[int, Path] = {}


def state_dir() -> Path:
    """``$NETCHECK_LAB_STATE``; else /tmp/netcheck-lab (root), $XDG_RUNTIME_DIR/netcheck-lab or
    /tmp/netcheck-lab-UID."""
    env = os.environ.get("NETCHECK_LAB_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/tmp/netcheck-lab")
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "netcheck-lab"
    return Path(f"/tmp/netcheck-lab-{os.geteuid()}")


def start(
    name: str,
    argv: Sequence[str],
    netns: str | None,
    state: Path,
    nofile: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``netns`` (None: here); output to ``logs/NAME.log``, pid to
    ``pids/NAME.pid``. ``nofile``: the open-file limit, as a unit's ``LimitNOFILE=`` sets it."""
    (state / "pids").mkdir(parents=True, exist_ok=True)
    (state / "logs").mkdir(parents=True, exist_ok=True)
    cmd = list(argv)
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    env = dict(os.environ, **{MARKER: str(state)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("NETCHECK_TOKEN", None)  # every lab process reads its token from a file

    def limits() -> None:
        if nofile is not None:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(state / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limits if nofile is not None else None,
        )
    pidfile = state / "pids" / f"{name}.pid"
    pidfile.write_text(f"{proc.pid}\n")
    _CHILDREN[proc.pid] = proc
    _PIDFILES[proc.pid] = pidfile
    return proc


def stop(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """End one process :func:`start` made (SIGTERM, then SIGKILL), reap it, drop its pid file."""
    terminate([proc.pid], grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    pidfile = _PIDFILES.pop(proc.pid, None)
    if pidfile is not None and pidfile.exists() and pidfile.read_text().strip() == str(proc.pid):
        pidfile.unlink(missing_ok=True)


def alive_recorded(state: Path) -> dict[str, int]:
    """name -> pid of the pid files whose process still lives and is this lab's."""
    return {n: p for n, p in recorded_pids(state).items() if _alive(p) and is_ours(p, state)}


def is_ours(pid: int, state: Path) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER}={state}".encode() in environ.split(b"\0")


def recorded_pids(state: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in sorted((state / "pids").glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            out[f.stem] = int(f.read_text().strip())
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def terminate(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM each pid, SIGKILL what is still there after ``grace_s``."""
    alive = [p for p in pids if _alive(p)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for _ in range(int(grace_s / 0.05) + 1):
        alive = [p for p in alive if _alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid, child in list(_CHILDREN.items()):
        with contextlib.suppress(subprocess.TimeoutExpired):
            if child.poll() is None and pid in alive:
                child.wait(2.0)
        if child.returncode is not None:
            del _CHILDREN[pid]


def stop_recorded(state: Path) -> list[int]:
    """End the processes of the pid files that are still ours; remove the pid files."""
    pids = [p for p in recorded_pids(state).values() if is_ours(p, state)]
    terminate(pids)
    for f in (state / "pids").glob("*.pid"):
        f.unlink(missing_ok=True)
    return pids
