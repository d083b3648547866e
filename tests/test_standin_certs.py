"""Stand-in certificates (the agent's and the lab's vSphere stand-ins) outlive the TLS expiry
alerts' 14 days, read back over a real TLS handshake, so a stand-in never pages."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from pathlib import Path

import pytest

from deploy.lab.standin import make_tls
from netcheck.agent.certs import STANDIN_DAYS, StandinCert
from netcheck.agent.probes.tlsinfo import describe_certificate

WARN_S = 14 * 86400  # NetcheckTLSCertExpiringSoon


async def served_not_after(server_ctx: ssl.SSLContext) -> tuple[str | None, float | None]:
    """Subject and notAfter of the certificate a real TLS listener on loopback serves."""

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return describe_certificate(der)


@pytest.mark.parametrize("maker", ["openssl", "cryptography"])
async def test_agent_standin_certificate_outlives_the_expiry_alerts(
    maker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if maker == "openssl" and shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    if maker == "cryptography":
        pytest.importorskip("cryptography")
        monkeypatch.setattr(shutil, "which", lambda _name: None)  # no openssl: the fallback
    cert = StandinCert("standin-test")
    try:
        subject, not_after = await served_not_after(cert.server_context())
    finally:
        cert.cleanup()
    assert subject is not None and "O=netcheck stand-in" in subject
    assert not_after is not None
    assert not_after - time.time() > STANDIN_DAYS * 86400 - 86400 > WARN_S


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
async def test_lab_vsphere_standin_certificate_outlives_the_expiry_alerts(tmp_path: Path) -> None:
    subject, not_after = await served_not_after(make_tls(tmp_path, "prem-vc"))
    assert subject is not None and "CN=prem-vc" in subject
    assert not_after is not None and not_after - time.time() > STANDIN_DAYS * 86400 - 86400
