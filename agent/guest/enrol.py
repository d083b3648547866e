"""Enrolment, as the appliance agent does it (:mod:`netcheck.agent.enrol`; the protocol of
:mod:`netcheck.controller.enrolment`): a P-256 key and CSR made by the system's ``openssl``
(in a 0600 file, under umask 077), ``POST /api/v1/enrol`` with the join token over TLS
verified with the site's CA; with no openssl, the controller makes the key. Renewal is
``POST /api/v1/renew`` over mutual TLS once two thirds of the lifetime have passed.

State directory: ``agent.pem`` (0600: key and certificate, swapped by one rename),
``ca.pem``, and ``identity.json`` (when the certificate was received and its not-after, for
renewal without parsing X.509).
"""

import json
import os
import re
import ssl
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

from netcheck.agent.guest import commands
from netcheck.agent.guest.https import Client, HttpError, client_context, error_text, server_context

IDENTITY, CA, META = "agent.pem", "ca.pem", "identity.json"
ENROL_PATH, RENEW_PATH = "/api/v1/enrol", "/api/v1/renew"
RENEW_AFTER = 2 / 3
_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.S)
_KEY = re.compile(r"-----BEGIN (?:EC |RSA |)PRIVATE KEY-----\r?\n.+?-----END [A-Z ]*KEY-----", re.S)


class EnrolError(Exception):
    """Enrolment or renewal failed; the message says why."""


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_key_and_csr(openssl: str, role: str, host: str) -> Tuple[str, str]:
    """(key PEM, CSR PEM) from openssl; the key never outside a 0600 file."""
    old = os.umask(0o077)
    try:
        with tempfile.TemporaryDirectory(prefix="netcheck-guest-enrol-") as tmp:
            key = os.path.join(tmp, "key.pem")
            os.close(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            subj = "/O=netcheck/OU=%s/CN=%s" % (role, host)
            for argv in (
                [openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
                [openssl, "req", "-new", "-key", key, "-subj", subj],
            ):
                code, out, err = commands.run(argv, 30)
                if code != 0:
                    raise EnrolError(
                        "openssl %s failed: %s" % (argv[1], err.decode("utf-8", "replace")[:300])
                    )
            with open(key) as f:
                key_pem = f.read()
    finally:
        os.umask(old)
    csr = out.decode("ascii", "replace")
    if not _KEY.search(key_pem) or "CERTIFICATE REQUEST" not in csr:
        raise EnrolError("openssl made no key or CSR")
    return key_pem, csr


def _fresh_key(
    role: str, host: str, openssl: Optional[str]
) -> Tuple[Optional[str], Dict[str, Any]]:
    exe = commands.which(openssl) if openssl else None
    if exe is None:
        return None, {"key": "controller"}
    key, csr = make_key_and_csr(exe, role, host)
    return key, {"csr": csr}


def _exchange(client: Client, path: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    try:
        status, answer = client.post(path, payload)
    except HttpError as exc:
        raise EnrolError(str(exc)) from None
    if status != 200 or not isinstance(answer, dict):
        raise EnrolError("%s%s: %d %s" % (client.url, path, status, error_text(answer)))
    return answer


def save(state_dir: str, key_pem: str, answer: Dict[str, Any], ca_pem: Optional[str]) -> str:
    """Store key and certificate as one 0600 file (after checking they match), and the CA."""
    cert = answer.get("certificate")
    if not isinstance(cert, str) or not _CERT.search(cert):
        raise EnrolError("the controller's answer holds no PEM certificate")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    both = (key_pem.rstrip("\n") + "\n" + cert.rstrip("\n") + "\n").encode("ascii")
    fd, check = tempfile.mkstemp(dir=state_dir, prefix=".check-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(both)
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(check)
    except ssl.SSLError as exc:
        raise EnrolError("the certificate received does not match the key: %s" % exc) from None
    finally:
        os.unlink(check)
    if ca_pem:
        if not _CERT.search(ca_pem):
            raise EnrolError("the controller's answer holds no PEM CA certificate")
        _write(os.path.join(state_dir, CA), ca_pem.encode("ascii"), 0o644)
    path = os.path.join(state_dir, IDENTITY)
    _write(path, both, 0o600)
    now = time.time()
    not_after = answer.get("not_after")
    meta = {
        "received_at": now,
        "not_after": not_after if isinstance(not_after, (int, float)) else None,
    }
    _write(os.path.join(state_dir, META), json.dumps(meta).encode(), 0o644)
    return path


def enrol(
    controller: str,
    token: str,
    ca_file: str,
    state_dir: str,
    role: str,
    host: str,
    openssl: Optional[str] = "openssl",
) -> str:
    """Trade a join token for this guest's certificate; the path of the stored identity."""
    if not controller.startswith("https://"):
        raise EnrolError("enrolment needs an https:// controller URL, not %r" % controller)
    key, payload = _fresh_key(role, host, openssl)
    payload.update({"token": token, "role": role, "host": host})
    payload.setdefault("csr", None)
    answer = _exchange(Client(controller, server_context(ca_file)), ENROL_PATH, payload)
    if key is None:
        key = answer.get("key")
        if not isinstance(key, str):
            raise EnrolError("the controller's answer holds no key")
    ca = answer.get("ca")
    if not isinstance(ca, str) or not ca:
        with open(ca_file) as f:
            ca = f.read(1024 * 1024)
    return save(state_dir, key, answer, ca)


def paths(state_dir: str) -> Tuple[str, str]:
    return os.path.join(state_dir, CA), os.path.join(state_dir, IDENTITY)


def renewal_due(state_dir: str, now: float) -> bool:
    try:
        with open(os.path.join(state_dir, META)) as f:
            meta = json.loads(f.read(4096))
        start, end = float(meta["received_at"]), float(meta["not_after"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unknown lifetime: keep the certificate until the controller refuses it
    return now >= start + (end - start) * RENEW_AFTER


def renew(
    controller: str, state_dir: str, role: str, host: str, openssl: Optional[str] = "openssl"
) -> str:
    ca, identity = paths(state_dir)
    key, payload = _fresh_key(role, host, openssl)
    answer = _exchange(Client(controller, client_context(ca, identity)), RENEW_PATH, payload)
    if key is None:
        key = answer.get("key")
        if not isinstance(key, str):
            raise EnrolError("the controller's answer holds no key")
    ca_pem = answer.get("ca")
    return save(state_dir, key, answer, ca_pem if isinstance(ca_pem, str) else None)
