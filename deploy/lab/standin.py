"""Stand-in services for hosts that cannot hold an agent (vCenter, ESXi).

``python -m deploy.lab.standin --bind ADDR --api-type VirtualCenter --port 443:vsphere ...``
holds each documented port the way the real product answers a first contact:

* ``vsphere`` (443): TLS, then HTTP; ``POST /sdk`` answers a SOAP RetrieveServiceContent with
  ``about.apiType`` (``VirtualCenter`` or ``HostAgent``), other requests a small page.
* ``authd`` (902): the ``220 VMware Authentication Daemon Version 1.10: SSL Required ...`` line.
* ``tcp`` (32821, 32822): accepts and closes.

The TLS certificate is made with the ``openssl`` command into a private temporary directory
(subject ``O=nclab vSphere stand-in``, so a probe treats it as a real service and sends its
SOAP request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from netcheck.agent.certs import STANDIN_DAYS

log = logging.getLogger("standin")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

AUTHD_BANNER = (
    b"220 VMware Authentication Daemon Version 1.10: SSL Required, "
    b"ServerDaemonProtocol:SOAP, MKSDisplayProtocol:VNC , , NFCSSL supported/t\r\n"
)
SERVICES = ("vsphere", "https", "tls", "authd", "tcp")
IDLE_S = 5.0
MAX_HEADER = 16384
MAX_BODY = 65536


def service_content(api_type: str, host: str) -> bytes:
    """A RetrieveServiceContentResponse with the fields a client reads first."""
    product = "VMware vCenter Server" if api_type == "VirtualCenter" else "VMware ESXi"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        '<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval>'
        '<rootFolder type="Folder">group-d1</rootFolder>'
        '<propertyCollector type="PropertyCollector">propertyCollector</propertyCollector>'
        f"<about><name>{product}</name><fullName>{product} 7.0.3 build-0 (nclab stand-in on "
        f"{host})</fullName><vendor>VMware, Inc.</vendor><version>7.0.3</version>"
        f"<build>0</build><osType>linux-x64</osType><productLineId>nclab</productLineId>"
        f"<apiType>{api_type}</apiType><apiVersion>7.0.3.0</apiVersion></about>"
        '<sessionManager type="SessionManager">SessionManager</sessionManager>'
        "</returnval></RetrieveServiceContentResponse></soapenv:Body></soapenv:Envelope>"
    ).encode()


def http_response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = min(int(value.strip()), MAX_BODY)
    body = await reader.readexactly(length) if length else b""
    return parts[0], parts[1], body


def answer(method: str, path: str, body: bytes, api_type: str, host: str) -> bytes:
    if method == "POST" and path.startswith("/sdk") and b"RetrieveServiceContent" in body:
        return http_response("200 OK", service_content(api_type, host), "text/xml; charset=utf-8")
    if method in ("GET", "HEAD"):
        page = f"<html><body>nclab {api_type} stand-in on {host}</body></html>".encode()
        return http_response("200 OK", b"" if method == "HEAD" else page, "text/html")
    return http_response("400 Bad Request", b"", "text/plain")


class Standin:
    def __init__(self, bind: str, api_type: str, tls: ssl.SSLContext | None) -> None:
        self.bind = bind
        self.api_type = api_type
        self.tls = tls
        self.servers: list[asyncio.Server] = []

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request is not None:
            writer.write(answer(*request, self.api_type, self.bind))
            await writer.drain()

    async def _authd(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(AUTHD_BANNER)
        await writer.drain()
        await reader.read(512)  # a real authd now expects a TLS ClientHello

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(512)

    def _handler(self, service: str) -> Handler:
        work = {"authd": self._authd, "tcp": self._tcp}.get(service, self._http)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.wait_for(work(reader, writer), IDLE_S)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                    await asyncio.wait_for(writer.wait_closed(), 1.0)

        return handle

    async def start(self, ports: Sequence[tuple[int, str]]) -> None:
        for port, service in ports:
            tls = self.tls if service in ("vsphere", "https", "tls") else None
            try:
                server = await asyncio.start_server(
                    self._handler(service), self.bind, port, ssl=tls, limit=MAX_HEADER
                )
            except PermissionError:
                log.warning(
                    "%s:%d %s denied (a port below 1024 needs root)", self.bind, port, service
                )
                continue
            except OSError as exc:
                log.warning("%s:%d %s not held: %s", self.bind, port, service, exc)
                continue
            self.servers.append(server)
            log.info("%s:%d %s listening", self.bind, port, service)

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            await s.wait_closed()


def make_tls(directory: Path, common_name: str) -> ssl.SSLContext:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", str(STANDIN_DAYS),
            "-subj", f"/O=nclab vSphere stand-in/CN={common_name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def _port(text: str) -> tuple[int, str]:
    port, _, service = text.partition(":")
    if not port.isdigit() or service not in SERVICES:
        raise argparse.ArgumentTypeError(f"{text!r}: PORT:SERVICE, service in {SERVICES}")
    return int(port), service


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nclab-standin-") as tmp:
        needs_tls = any(s in ("vsphere", "https", "tls") for _, s in args.port)
        tls = make_tls(Path(tmp), args.name or args.bind) if needs_tls else None
        standin = Standin(args.bind, args.api_type, tls)
        await standin.start(args.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await standin.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.lab.standin", description=__doc__)
    p.add_argument("--bind", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--api-type", default="VirtualCenter", choices=("VirtualCenter", "HostAgent"))
    p.add_argument("--port", action="append", type=_port, required=True, help="PORT:SERVICE")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
