"""Two small readers of command-line input, shared by the agent, the controller and the lab
(the controller may import the agent, never the reverse): the bearer token and HOST:PORT."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from netcheck.agent.errors import InputError as InputError

TOKEN_ENV = "NETCHECK_TOKEN"


def read_token(token_file: str | Path | None, env: str = TOKEN_ENV) -> str:
    """The token from `token_file` (surrounding white space removed), else from the
    environment variable `env`; :class:`InputError` when unreadable or empty."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise InputError(f"cannot read the token file {token_file}: {why}") from None
    else:
        token = os.environ.get(env, "").strip()
    if not token:
        raise InputError(f"no token: give --token-file or set {env}")
    return token


def host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (then `default_host`) as (host, port);
    :class:`InputError` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or default_host, int(port)


def host_port_arg(text: str) -> tuple[str, int]:
    """:func:`host_port` as an argparse ``type=`` (its message in the usage error)."""
    try:
        return host_port(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
