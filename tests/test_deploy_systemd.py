"""systemd units in deploy/systemd: hardening, capabilities, and `systemd-analyze verify`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "deploy" / "systemd"
CONTROLLER = UNITS / "netcheck-controller.service"
AGENT = UNITS / "netcheck-agent@.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def directives(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file (continuation lines joined), values in order."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: Path, key: str) -> str:
    (value,) = directives(unit)[key]
    return value


def env_keys(example: Path) -> set[str]:
    lines = example.read_text().splitlines()
    return {ln.split("=", 1)[0] for ln in lines if ln.strip() and not ln.startswith("#")}


@pytest.mark.parametrize("unit", [CONTROLLER, AGENT], ids=lambda p: p.name)
def test_hardening(unit: Path) -> None:
    d = directives(unit)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "DynamicUser": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert d.get(key) == [value], f"{unit.name}: {key}"
    assert "AF_INET" in one(unit, "RestrictAddressFamilies").split()
    assert d["SystemCallFilter"][0] == "@system-service"
    assert "--token-file" not in one(unit, "ExecStart")  # the shared token is for labs only
    assert all(c.split(":", 1)[1].startswith("/etc/netcheck/") for c in d["LoadCredential"])


def credentials(unit: Path) -> dict[str, str]:
    return dict(c.split(":", 1) for c in directives(unit)["LoadCredential"])


def test_controller_gets_its_pki_and_read_token_as_credentials() -> None:
    """`ca init`'s four files and the read token, as credentials named like the files, so
    the credentials directory is the --pki directory; nothing secret in the environment."""
    creds = credentials(CONTROLLER)
    assert creds == {
        "ca.pem": "/etc/netcheck/pki/ca.pem",
        "ca-key.pem": "/etc/netcheck/pki/ca-key.pem",
        "server.pem": "/etc/netcheck/pki/server.pem",
        "server-key.pem": "/etc/netcheck/pki/server-key.pem",
        "read-token": "/etc/netcheck/read-token",
    }
    from netcheck.controller import pki

    assert {pki.CA_CERT, pki.CA_KEY, pki.SERVER_CERT, pki.SERVER_KEY} <= set(creds)
    start = one(CONTROLLER, "ExecStart")
    assert "--pki %d " in start and start.endswith("--read-token-file %d/read-token")
    assert "--insecure-http" not in start and "--open-reads" not in start


def test_agent_gets_the_ca_and_its_join_token_as_credentials_and_keeps_its_key() -> None:
    assert credentials(AGENT) == {
        "ca.pem": "/etc/netcheck/ca.pem",
        "join-token": "/etc/netcheck/agent-%i.join-token",
    }
    start = one(AGENT, "ExecStart")
    for flag in (
        "--ca %d/ca.pem",
        "--state-dir %S/netcheck-agent/%i",
        "--join-token-file %d/join-token",
    ):
        assert flag in start
    assert one(AGENT, "StateDirectory") == "netcheck-agent/%i"
    assert one(AGENT, "StateDirectoryMode") == "0700"
    env = (UNITS / "agent.env.example").read_text()
    assert "NETCHECK_CONTROLLER=https://" in env and "TOKEN" not in env


def test_controller_has_no_capability_and_a_state_directory() -> None:
    d = directives(CONTROLLER)
    assert d["CapabilityBoundingSet"] == [""]
    assert d["AmbientCapabilities"] == [""]
    assert d["StateDirectory"] == ["netcheck"]
    assert "--db %S/netcheck/netcheck.db" in one(CONTROLLER, "ExecStart")
    assert one(CONTROLLER, "RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_agent_has_only_bind_and_raw_capabilities() -> None:
    caps = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}
    assert set(one(AGENT, "AmbientCapabilities").split()) == caps
    assert set(one(AGENT, "CapabilityBoundingSet").split()) == caps
    assert one(AGENT, "EnvironmentFile") == "/etc/netcheck/agent-%i.env"
    # Raw IPv4 sockets for SYN probes, AF_PACKET for the SYN watcher: nothing else.
    families = one(AGENT, "RestrictAddressFamilies").split()
    assert families == ["AF_INET", "AF_INET6", "AF_UNIX", "AF_PACKET"]
    assert one(AGENT, "MemoryDenyWriteExecute") == "yes"


@pytest.mark.parametrize(
    ("unit", "example"),
    [(CONTROLLER, "controller.env.example"), (AGENT, "agent.env.example")],
    ids=["controller", "agent"],
)
def test_every_variable_comes_from_the_environment_file(unit: Path, example: str) -> None:
    used = set(re.findall(r"\$\{(\w+)\}", one(unit, "ExecStart")))
    assert used
    assert used == env_keys(UNITS / example)


def _installable_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at a real executable (verify checks it exists)."""
    exe = tmp_path / "netcheck-bin"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    out = []
    for unit, name in ((CONTROLLER, CONTROLLER.name), (AGENT, "netcheck-agent@pio.service")):
        text = re.sub(r"/usr/local/bin/netcheck-\w+", str(exe), unit.read_text())
        copy = tmp_path / name
        copy.write_text(text)
        out.append(copy)
    return out


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=120, check=False
    )


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    units = _installable_copies(tmp_path)
    out = analyze("verify", "--man=no", *map(str, units))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@needs_analyze
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    (controller, _) = _installable_copies(tmp_path)
    controller.write_text(controller.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    out = analyze("verify", "--man=no", str(controller))
    assert "Unknown key" in out.stderr


@needs_analyze
@pytest.mark.parametrize(("index", "threshold"), [(0, 20), (1, 25)], ids=["controller", "agent"])
def test_security_exposure_is_low(tmp_path: Path, index: int, threshold: int) -> None:
    """`systemd-analyze security` rates exposure 0-10; ours stays at most 2.0 / 2.5."""
    unit = _installable_copies(tmp_path)[index]
    out = analyze("security", "--offline=yes", f"--threshold={threshold}", str(unit))
    assert out.returncode == 0, out.stdout[-2000:]


def test_controller_reloads_its_site_on_systemctl_reload() -> None:
    """`systemctl reload` sends SIGHUP: the controller reads topology and inventory again."""
    assert one(CONTROLLER, "ExecReload") == "/bin/kill -HUP $MAINPID"
