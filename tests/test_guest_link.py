"""The guest agent's loop against a controller that misbehaves (an HTTP server on 127.0.0.1
standing in only for what the real one will not do on demand: 503, 409, 400, 401): results
not taken wait for the next report, a 409 registers again and resends, a 400 drops that batch,
a 401 stops the agent with exit status 1. The real controller is tests/test_guest_e2e.py's."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from netcheck.agent.guest.https import Client
from netcheck.agent.guest.serve import Guest

PLAN = {"role": "cloud_vm", "host": "cloud-vm-1", "address": "127.0.0.1", "listen": [],
        "checks": [], "timeout_s": 0.5, "retries": 0, "period_s": 1.0}  # fmt: skip


class Fake(http.server.ThreadingHTTPServer):
    answers: list[int]
    seen: list[tuple[str, Any]]


class Handler(http.server.BaseHTTPRequestHandler):
    server: Fake

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, body))
        if self.path.endswith("/register"):
            status, answer = 200, PLAN
        else:
            status = self.server.answers.pop(0) if self.server.answers else 200
            answer = {"accepted": len(body["results"])} if status == 200 else {"error": "no"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake() -> Iterator[Fake]:
    server = Fake(("127.0.0.1", 0), Handler)
    server.answers, server.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def guest(fake: Fake) -> Guest:
    url = f"http://127.0.0.1:{fake.server_address[1]}"
    facts = [{"name": "os.name", "value": "RHEL 8.3", "source": "file:/etc/os-release",
              "detail": ""}]  # fmt: skip
    g = Guest(Client(url, token="t0ken"), "cloud_vm", "cloud-vm-1", "127.0.0.1", "127.0.0.1",
              lambda: facts)  # fmt: skip
    g.register()
    return g


def result(i: int) -> dict[str, Any]:
    return {"check_id": f"12:cloud-vm-1>cloud-cache:{9000 + i}", "state": "refused"}


def batches(fake: Fake) -> list[Any]:
    return [b for p, b in fake.seen if p.endswith("/results")]


def test_results_not_taken_wait_for_the_next_report(fake: Fake) -> None:
    g = guest(fake)
    try:
        fake.answers = [503, 200]
        assert g.report([result(1)]) is False and len(g.pending) == 1
        assert g.report([result(2)]) is True and g.pending == []
        sent = batches(fake)
        assert [len(b["results"]) for b in sent] == [1, 2]
        assert all(b["facts"][0]["name"] == "os.name" for b in sent)
    finally:
        g.standins.close()


def test_409_registers_again_400_drops(fake: Fake) -> None:
    g = guest(fake)
    try:
        fake.answers = [409, 200]
        assert g.report([result(1)]) is True
        assert [p.rsplit("/", 1)[1] for p, _ in fake.seen] == [
            "register", "results", "register", "results"
        ]  # fmt: skip
        fake.answers = [400]
        assert g.report([result(3)]) is True and g.pending == []
    finally:
        g.standins.close()


def test_401_stops_the_agent(fake: Fake) -> None:
    g = guest(fake)
    fake.answers = [401]
    assert g.run(once=True) == 1
