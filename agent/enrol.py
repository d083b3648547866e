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
reader (:mod:`netcheck.agent.probes.tlsinfo`), not with a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from netcheck.agent import httpc
from netcheck.agent.errors import InputError, NetcheckAgentError
from netcheck.agent.probes import tlsinfo

IDENTITY = "agent.pem"
CA = "ca.pem"
ENROL_PATH = "/api/v1/enrol"
RENEW_PATH = "/api/v1/renew"
RENEW_FRACTION = 1 / 3  # renew once less than a third of the lifetime is left

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(
    rb"-----BEGIN (?:EC |RSA |)PRIVATE KEY-----\r?\n.+?-----END [A-Z ]*KEY-----", re.S
)


class EnrolError(NetcheckAgentError):
    """Enrolment or renewal failed; the text says why (the controller's reason when it gave one)."""


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


def client_context(directory: str | Path) -> ssl.SSLContext:
    """The context for mutual TLS with the controller: its CA, this host's key and certificate."""
    d = Path(directory)
    ctx = server_verifying_context(d / CA)
    ctx.load_cert_chain(str(d / IDENTITY))
    return ctx


# -- renewal ----------------------------------------------------------------------------------


def _certificate_der(pem: bytes) -> bytes:
    found = _PEM_CERT.search(pem)
    if found is None:
        raise ValueError("no PEM certificate")
    return ssl.PEM_cert_to_DER_cert(found.group(0).decode("ascii"))


def validity(cert_path: str | Path) -> tuple[float, float] | None:
    """(notBefore, notAfter) in epoch seconds of the (first) certificate of a PEM file."""
    try:
        with open(str(cert_path), "rb") as f:
            der = _certificate_der(f.read())
        _, after = tlsinfo.describe_certificate(der)
        # notBefore: the same walk as describe_certificate, one field earlier.
        _, start, _ = tlsinfo._tlv(der, 0)
        _, tstart, tend = tlsinfo._tlv(der, start)
        fields = tlsinfo._children(der, tstart, tend)
        if fields and fields[0][0] == 0xA0:
            fields = fields[1:]
        _, vstart, vend, _ = fields[3]
        btag, bstart, bend, _ = tlsinfo._children(der, vstart, vend)[0]
        before = tlsinfo._time(btag, der[bstart:bend])
    except (OSError, ValueError, IndexError):
        return None
    if after is None:
        return None
    return before, after


def needs_renewal(cert_path: str | Path, now: float, fraction: float = RENEW_FRACTION) -> bool:
    """Whether less than `fraction` of the certificate's lifetime is left (or none can be read)."""
    span = validity(cert_path)
    if span is None:
        return True
    before, after = span
    return after - now < fraction * (after - before)


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
        raise EnrolError(f"{url}: {exc or type(exc).__name__}") from None
    try:
        data = json.loads(resp.body)
    except ValueError:
        data = None
    if resp.status != 200:
        why = data.get("detail") or data.get("error") if isinstance(data, dict) else None
        text = why or resp.body[:200].decode("utf-8", "replace")
        raise EnrolError(f"{url}: {resp.status} {text}")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise EnrolError(f"{url}: not an enrolment answer")
    return data


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
    openssl: str | None = "openssl",
    timeout_s: float = 30.0,
) -> Path:
    """A new key and certificate for this host, asked for with the current one (mutual TLS)."""
    d = Path(directory)
    exe = shutil.which(openssl) if openssl else None
    payload: dict[str, object]
    key_pem = None
    if exe:
        key_pem, csr = await asyncio.to_thread(make_key_and_csr, exe, role, host)
        payload = {"csr": csr.decode("ascii")}
    else:
        payload = {"key": "controller"}
    answer = await _post(_base(controller) + RENEW_PATH, payload, client_context(d), timeout_s)
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
