"""The agent's exceptions: one tree, one base, and the exit code each kind means.

::

    NetcheckAgentError            anything the agent refuses or cannot do (exit 1)
    ├── InputError                bad configuration or input: a flag, a file (exit 2)
    │   └── WireError             data that does not fit the wire format (agent.wire)
    ├── LinkError                 the controller refused us, or sent nonsense (agent.link)
    │   ├── TransportError        no HTTP answer at all: refused, reset, timeout, TLS
    │   ├── AuthError             a credential refused: 401/403 (retrying changes nothing)
    │   └── TlsRefused            (both) the TLS handshake failed on a certificate: the
    │                             controller's fails our CA, or it refused ours
    ├── EnrolError                enrolment or renewal failed (agent.enrol)
    └── CertError                 no way to make the stand-in certificate (agent.certs)

Library exceptions (``OSError``, ``http.client.HTTPException``, ``ssl.SSLError``) are
translated at the boundary that meets them, with the original chained. Probe failures are
not exceptions: a probe reports them as data (a result's ``state`` and ``error``).

:data:`EXIT_CODES` is the one map from these to the command line's exit codes
(:func:`exit_code`); ``netcheck-agent --help`` prints it.
"""

from __future__ import annotations


class NetcheckAgentError(Exception):
    """Base of every error the agent raises on purpose; the message is for a person."""


class InputError(NetcheckAgentError, ValueError):
    """Bad configuration or input: a flag, a token or plan file, an address."""


class WireError(InputError):
    """Data that does not fit the wire format; the message names the field."""


class LinkError(NetcheckAgentError):
    """The controller could not be reached or refused us; the message says which."""


class TransportError(LinkError):
    """No HTTP answer at all (connection refused, reset, timeout, TLS failure)."""


class AuthError(LinkError):
    """A credential was refused: the controller answered 401 or 403 (``status``), or its
    certificate does not chain to our CA (``status`` 0). Retrying soon changes nothing:
    someone must fix the token, certificate, CA file or inventory first."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TlsRefused(TransportError, AuthError):
    """The TLS handshake failed on a certificate: the controller's does not chain to our CA,
    or the controller refused ours (unknown CA, expired, revoked). No HTTP answer, and a
    credential problem all the same."""


class EnrolError(NetcheckAgentError):
    """Enrolment or renewal failed; the text says why (the controller's reason when it gave one).

    ``transient``: the controller was away or failed (a 5xx, no connection): trying again
    later may work. Anything else (a refused token, a certificate that does not verify) is
    final.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class CertError(NetcheckAgentError, RuntimeError):
    """No way to make a certificate here (neither cryptography nor openssl)."""


# Exit codes of ``netcheck-agent``. 0: done; 1: it ran but failed (could not register or
# deliver, or another agent error); 2: nothing was tried because the input is bad (flags,
# token file, plan file). A closed output pipe (``| head``) changes none of them.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (InputError, EXIT_BAD_INPUT),
    (NetcheckAgentError, EXIT_FAILED),
)


def exit_code(exc: BaseException) -> int:
    """The exit code for an error that ended a command (the first match in EXIT_CODES)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_FAILED
