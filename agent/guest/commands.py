"""Running a command of the guest, bounded in time and output (Python 3.6: no
``capture_output``, no ``text``)."""

import os
import shutil
import subprocess
from typing import List, Optional, Tuple

COMMAND_TIMEOUT_S = 20.0
MAX_OUTPUT = 4 * 1024 * 1024  # bytes of stdout kept
SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def which(name: str) -> Optional[str]:
    """The command on PATH, or in the usual system directories (a service's PATH can be short)."""
    found = shutil.which(name)
    if found:
        return found
    for d in SEARCH_PATH:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run(
    argv: List[str], timeout_s: float = COMMAND_TIMEOUT_S, stdin: Optional[bytes] = None
) -> Tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr), each at most MAX_OUTPUT bytes; -1 and the reason in
    stderr when it could not run or ran out of time."""
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, b"", ("timed out after %g s" % timeout_s).encode()
    except OSError as exc:
        return -1, b"", str(exc).encode()
    return done.returncode, done.stdout[:MAX_OUTPUT], done.stderr[:MAX_OUTPUT]
