"""The controller's exceptions: one tree, so a caller can catch all of them, or one kind.

Every error the controller raises on purpose derives from :class:`NetcheckError`, and its
``str()`` is a message for a person (one line per problem, ``file:line: ...`` when a file is
at fault). Library exceptions (``sqlite3``, ``OSError``, ``yaml``, ``urllib``) are translated
into this tree where they cross a boundary: the YAML loader (:mod:`.sourced`), the HTTP
handlers, and the command line (:mod:`.cli`, which also maps each kind to an exit code).
Anything else that escapes is a bug and keeps its traceback.

::

    NetcheckError
    ├── InputError      (sourced.py) an input file is wrong: one ``file:line: ...`` per problem
    ├── CliError        a flag, or a file named by one, cannot be used (no --inventory,
    │                   an unreadable results file, no host of that role, no token)
    ├── StoreError      the SQLite database cannot be opened, read or written
    ├── Undecided       the question cannot be answered
    │   ├── GateError   (gate.py) unknown mode, unknown VM, a host that is no VM
    │   └── Unreachable the controller at --controller URL did not answer, or not with 200
    └── Refused         (ingest.py) a request refused: HTTP status, metric reason, message

A gate's *no-go* is an answer, not an error: it is data (:class:`.gate.GateDecision`).
"""

from __future__ import annotations


class NetcheckError(Exception):
    """Base of every error the controller raises on purpose; ``str()`` is for a person."""


class CliError(NetcheckError):
    """A flag, or a file named on the command line, cannot be used."""


class StoreError(NetcheckError):
    """The SQLite database cannot be opened, read or written (the message names the file)."""


class Undecided(NetcheckError):
    """The question could not be answered (unknown mode or VM, controller away)."""


class Unreachable(Undecided):
    """The controller at a URL did not answer, or answered with an error."""
