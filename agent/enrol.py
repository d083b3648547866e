"""Enrolment: trade a join token for this host's client certificate, renew it, use it for mTLS.

Standard library only. The ``ssl`` module can load a key but not make one, so the key is made
by the system's ``openssl`` command (``ecparam -genkey`` then ``req -new``: both exist since
OpenSSL 1.0, as on the oldest guests), in a file created with mode 0600 before openssl
writes it (and under umask 077). Where there is no ``openssl``, the agent asks the controller
to make the key (``"key": "controller"``) and receives it in the answer, over the same TLS
channel, which the agent verifies with the site's CA and which the join token (or, for a
renewal, the current client certificate) authenticates.

The protocol (see :mod:`netcheck.controller.enrolment`): ``POST /api/v1/enrol``
``{"token", "role", "host", "csr"}`` -> ``{"certificate", "ca"}`` and, with mutual TLS,
``POST /api/v1/renew`` ``{"csr"}`` -> ``{"certificate", "ca"}``; without openssl ``"csr"``
gives way to ``"key": "controller"`` and the answer carries ``"key"`` as well.

State, in one directory: ``agent.pem`` (mode 0600) holds the private key and the certificate
together, so one rename swaps both and no reader ever sees a key with the wrong certificate;
``ca.pem`` is the site's CA, which the controller's certificate must chain to.
``needs_renewal`` reads the certificate's validity from its DER bytes with the agent's own
reader (:mod:`netcheck.agent.probes.tlsinfo`), not with a subprocess. :func:`keep_renewed`
is the serving agent's background renewal: once 2/3 of the lifetime has passed, renew, hand
the new mutual-TLS context to the link; a failure is logged and retried with backoff while
the current certificate keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from netcheck.agent import httpc
from netcheck.agent.errors import EnrolError as EnrolError
from netcheck.agent.errors import InputError
from netcheck.agent.probes import tlsinfo

log = logging.getLogger(__name__)

IDENTITY = "agent.pem"
CA = "ca.pem"
ENROL_PATH = "/api/v1/enrol"
RENEW_PATH = "/api/v1/renew"
RENEW_FRACTION = 1 / 3  # renew once less than a third of the lifetime is left
RENEW_RETRY_S = 30.0  # the first retry after a failed renewal; doubled up to RENEW_RETRY_MAX_S
RENEW_RETRY_MAX_S = 3600.0
RECHECK_S = 3600.0  # the renewal loop looks at the clock at least this often (suspend, jumps)

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(
    rb"-----BEGIN (?:EC |RSA |)PRIVATE KEY-----\r?\n.+?-----END [A-Z ]*KEY-----", re.S
)


# -- files ------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(str(tmp), str(path))
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def _check_pair(key_and_cert: bytes, directory: Path) -> None:
    """Refuse a certificate that does not go with the key (ssl says so when loading both)."""
    fd, name = tempfile.mkstemp(dir=str(directory), prefix=".check-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key_and_cert)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(name)
    except ssl.SSLError as exc:
        raise EnrolError(f"the certificate received does not match the key: {exc}") from None
    finally:
        os.unlink(name)


def save_identity(directory: Path, key_pem: bytes, cert_pem: bytes, ca_pem: bytes | None) -> Path:
    """Store key and certificate as one 0600 file (and the CA), after checking they match."""
    if not _PEM_CERT.search(cert_pem):
        raise EnrolError("the controller's answer holds no PEM certificate")
    directory.mkdir(parents=True, exist_ok=True)
    both = key_pem.rstrip(b"\n") + b"\n" + cert_pem.rstrip(b"\n") + b"\n"
    _check_pair(both, directory)
    if ca_pem is not None:
        if not _PEM_CERT.search(ca_pem):
            raise EnrolError("the controller's answer holds no PEM CA certificate")
        _write_atomic(directory / CA, ca_pem, 0o644)
    path = directory / IDENTITY
    _write_atomic(path, both, 0o600)
    return path


# -- key and CSR ------------------------------------------------------------------------------


def make_key_and_csr(openssl: str, role: str, host: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM): a new P-256 key made by `openssl`, never written outside a 0600 file."""
    with tempfile.TemporaryDirectory(prefix="netcheck-enrol-") as tmp:  # mode 0700
        key = os.path.join(tmp, "key.pem")
        os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        for args in (
            [openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
            [openssl, "req", "-new", "-key", key, "-subj", f"/O=netcheck/OU={role}/CN={host}"],
        ):
            done = subprocess.run(
                args,
                capture_output=True,
                timeout=30,
                umask=0o077,
                check=False,
            )
            if done.returncode != 0:
                raise EnrolError(
                    "{} {} failed: {}".format(
                        openssl, args[1], done.stderr.decode(errors="replace").strip()[:300]
                    )
                )
        with open(key, "rb") as f:
            key_pem = f.read()
    if not _PEM_KEY.search(key_pem) or b"CERTIFICATE REQUEST" not in done.stdout:
        raise EnrolError("openssl made no key or CSR")
    return key_pem, done.stdout


# -- contexts ---------------------------------------------------------------------------------


def server_verifying_context(ca_file: str | Path) -> ssl.SSLContext:
    """TLS 1.2+, the controller's certificate checked against the site's CA and its name."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_context(directory: str | Path, ca_file: str | Path | None = None) -> ssl.SSLContext:
    """The context for mutual TLS with the controller: the site's CA (`ca_file`, else the one
    stored at enrolment), this host's key and certificate."""
    d = Path(directory)
    ctx = server_verifying_context(ca_file or d / CA)
    try:
        ctx.load_cert_chain(str(d / IDENTITY))
    except (OSError, ssl.SSLError) as exc:
        raise EnrolError(f"cannot load {d / IDENTITY}: {exc}") from None
    return ctx


def has_identity(directory: str | Path) -> bool:
    """Whether `directory` holds this host's key and certificate (from an enrolment)."""
    return (Path(directory) / IDENTITY).is_file()


# -- renewal ----------------------------------------------------------------------------------


def _certificate_der(pem: bytes) -> bytes:
    found = _PEM_CERT.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    return ssl.PEM_cert_to_DER_cert(found.group(0).decode("ascii"))


class CertInfo:
    """What the agent reads of its own certificate (for the log, ``enrol``'s output, renewal)."""

    def __init__(self, subject: str, serial: int, not_before: float, not_after: float) -> None:
        self.subject = subject
        self.serial = serial
        self.not_before = not_before
        self.not_after = not_after

    def renew_at(self, fraction: float = RENEW_FRACTION) -> float:
        """When less than `fraction` of the lifetime is left (epoch seconds)."""
        return self.not_after - fraction * (self.not_after - self.not_before)


def certificate_info(cert_path: str | Path) -> CertInfo | None:
    """Subject, serial and validity of the (first) certificate of a PEM file, or None."""
    try:
        with open(str(cert_path), "rb") as f:
            der = _certificate_der(f.read())
        subject, after = tlsinfo.describe_certificate(der)
        # serial and notBefore: the same walk as describe_certificate.
        _, start, _ = tlsinfo._tlv(der, 0)
        _, tstart, tend = tlsinfo._tlv(der, start)
        fields = tlsinfo._children(der, tstart, tend)
        if fields and fields[0][0] == 0xA0:
            fields = fields[1:]
        _, sstart, send, _ = fields[0]
        serial = int.from_bytes(der[sstart:send], "big", signed=True)
        _, vstart, vend, _ = fields[3]
        btag, bstart, bend, _ = tlsinfo._children(der, vstart, vend)[0]
        before = tlsinfo._time(btag, der[bstart:bend])
    except (OSError, ValueError, IndexError):
        return None
    if after is None:
        return None
    return CertInfo(subject or "", serial, before, after)


def validity(cert_path: str | Path) -> tuple[float, float] | None:
    """(notBefore, notAfter) in epoch seconds of the (first) certificate of a PEM file."""
    info = certificate_info(cert_path)
    return None if info is None else (info.not_before, info.not_after)


def needs_renewal(cert_path: str | Path, now: float, fraction: float = RENEW_FRACTION) -> bool:
    """Whether less than `fraction` of the certificate's lifetime is left (or none can be read)."""
    info = certificate_info(cert_path)
    return info is None or now > info.renew_at(fraction)


# -- the exchanges ----------------------------------------------------------------------------


async def _post(
    url: str, payload: dict[str, object], ctx: ssl.SSLContext, timeout_s: float
) -> dict[str, str]:
    if urlsplit(url).scheme != "https":
        raise InputError(f"enrolment needs an https:// controller URL, not {url!r}")
    try:
        resp = await httpc.request(
            "POST",
            url,
            headers={"Content-Type": "application/json"},
            body=json.dumps(payload).encode(),
            ssl_context=ctx,
            timeout_s=timeout_s,
            max_body=256 * 1024,
        )
    except (OSError, TimeoutError, EOFError, httpc.HttpError) as exc:  # ssl.SSLError: OSError
        # A certificate that does not verify is final; no connection or a timeout is not.
        transient = not isinstance(exc, ssl.SSLError)
        raise EnrolError(f"{url}: {exc or type(exc).__name__}", transient=transient) from None
    try:
        data = json.loads(resp.body)
    except ValueError:
        data = None
    if resp.status != 200:
        why = data.get("detail") or data.get("error") if isinstance(data, dict) else None
        text = why or resp.body[:200].decode("utf-8", "replace")
        raise EnrolError(f"{url}: {resp.status} {text}", transient=resp.status >= 500)
    if not isinstance(data, dict):
        raise EnrolError(f"{url}: not an enrolment answer")
    # The PEM fields; "not_after" is a number (the certificate itself is read for it).
    return {k: v for k, v in data.items() if isinstance(v, str)}


def _base(controller: str) -> str:
    return controller.rstrip("/")


async def enrol(
    controller: str,
    token: str,
    ca_file: str | Path,
    directory: str | Path,
    role: str,
    host: str,
    *,
    openssl: str | None = "openssl",
    timeout_s: float = 30.0,
) -> Path:
    """Enrol this host with a join token; the path of the stored key and certificate.

    `ca_file`: the site's CA, given by the operator (``--ca``): the controller is verified
    with it before the token is sent. `openssl`: the command, looked up on PATH; when it is
    None or not found, the controller makes the key.
    """
    exe = shutil.which(openssl) if openssl else None
    payload: dict[str, object] = {"token": token, "role": role, "host": host}
    key_pem = None
    if exe:
        key_pem, csr = await asyncio.to_thread(make_key_and_csr, exe, role, host)
        payload["csr"] = csr.decode("ascii")
    else:
        payload["csr"] = None
        payload["key"] = "controller"
    answer = await _post(
        _base(controller) + ENROL_PATH, payload, server_verifying_context(ca_file), timeout_s
    )
    if not answer.get("ca"):
        answer["ca"] = await asyncio.to_thread(Path(ca_file).read_text, "ascii")
    return await asyncio.to_thread(_store, answer, key_pem, Path(directory))


async def renew(
    controller: str,
    directory: str | Path,
    role: str,
    host: str,
    *,
    ca_file: str | Path | None = None,
    openssl: str | None = "openssl",
    timeout_s: float = 30.0,
) -> Path:
    """A new key and certificate for this host, asked for with the current one (mutual TLS).

    `ca_file`: the site's CA to verify the controller with (default: the stored one)."""
    d = Path(directory)
    exe = shutil.which(openssl) if openssl else None
    payload: dict[str, object]
    key_pem = None
    if exe:
        key_pem, csr = await asyncio.to_thread(make_key_and_csr, exe, role, host)
        payload = {"csr": csr.decode("ascii")}
    else:
        payload = {"key": "controller"}
    ctx = client_context(d, ca_file)
    answer = await _post(_base(controller) + RENEW_PATH, payload, ctx, timeout_s)
    return await asyncio.to_thread(_store, answer, key_pem, d)


def _store(answer: dict[str, str], key_pem: bytes | None, directory: Path) -> Path:
    if "certificate" not in answer:
        raise EnrolError("the controller's answer holds no certificate")
    if key_pem is None:
        if "key" not in answer:
            raise EnrolError("the controller's answer holds no key")
        key_pem = answer["key"].encode("ascii")
    ca = answer.get("ca")
    return save_identity(
        directory,
        key_pem,
        answer["certificate"].encode("ascii"),
        ca.encode("ascii") if ca else None,
    )


# -- background renewal -----------------------------------------------------------------------


async def _wait(stop: asyncio.Event, delay: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, delay))
    return stop.is_set()


async def keep_renewed(
    controller: str,
    directory: str | Path,
    role: str,
    host: str,
    on_renewed: Callable[[ssl.SSLContext], None],
    stop: asyncio.Event,
    *,
    ca_file: str | Path | None = None,
    fraction: float = RENEW_FRACTION,
    retry_s: float = RENEW_RETRY_S,
    retry_max_s: float = RENEW_RETRY_MAX_S,
    openssl: str | None = "openssl",
    clock: Callable[[], float] = time.time,
) -> None:
    """Renew the certificate in `directory` whenever less than `fraction` of its lifetime is
    left, until `stop`; hand each new mutual-TLS context to `on_renewed`.

    A failed renewal is logged and retried after `retry_s`, doubled (with jitter) up to
    `retry_max_s`; the current certificate keeps working meanwhile, until it expires.
    """
    path = Path(directory) / IDENTITY
    delay, rng = retry_s, random.Random()
    while not stop.is_set():
        info = certificate_info(path)
        due = info.renew_at(fraction) if info is not None else clock()
        if await _wait(stop, min(due - clock(), RECHECK_S)):
            return
        if clock() < due:
            continue
        try:
            await renew(controller, directory, role, host, ca_file=ca_file, openssl=openssl)
            on_renewed(client_context(directory, ca_file))
        except (EnrolError, InputError, OSError, ssl.SSLError) as exc:
            wait = rng.uniform(delay / 2, delay)
            delay = min(retry_max_s, delay * 2)
            left = (
                ""
                if info is None
                else f", the current one is valid for {info.not_after - clock():.0f} s"
            )
            log.warning("certificate renewal failed (%s)%s; retrying in %.1f s", exc, left, wait)
            if await _wait(stop, wait):
                return
            continue
        new = certificate_info(path)
        if new is None or clock() >= new.renew_at(fraction):
            # A controller that hands out certificates already due: no tight loop.
            log.warning("the renewed certificate is already due for renewal; next in %.1f s", delay)
            if await _wait(stop, delay):
                return
            continue
        delay = retry_s
        log.info(
            "certificate renewed: serial %x, valid until %s",
            new.serial,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(new.not_after)),
        )
