"""One exit-code map for every subcommand: 0 go / done, 1 the gate's no-go, 2 cannot decide.

Each error path runs on real files (a small site in ``tmp_path``, real SQLite files) and
must exit with its mapped code and say one clear line on stderr (``file:line`` when a file
is at fault), never a traceback. ``serve`` and the closed-pipe cases run as real processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from netcheck.agent.wire import ProbeResult, ProbeState, ResultBatch, encode
from netcheck.controller.cli import EPILOG, main

REPO = Path(__file__).resolve().parent.parent

TOPOLOGY = """\
version: 1
matrix: matrix.yaml
roles:
  a: {name: A, site: on_prem, agent: true}
  b: {name: B, site: cloud, agent: true}
  c: {name: C, site: cloud, agent: true}
interactions:
  - id: 1
    title: A to B
    source: a
    destination: b
    flows:
      - ports: "443"
        service: https
  - id: 2
    title: A to C
    source: a
    destination: c
    flows:
      - ports: "22"
        service: ssh
modes:
  deploy:
    title: Deploy
    interactions: [1]
  later:
    title: Later
    interactions: [2]
"""

MATRIX = """\
version: 1
rows:
  - {family: RHEL, os: "RHEL 7.4", boot: UEFI, vcd_warm: "Qualified", vcs_warm: "Qualified",
     any_cold: "Qualified", static_ip_vcd_cold: "Qualified", static_ip_vcd_warm: "Qualified"}
"""

INVENTORY = """\
version: 1
site: exit-codes
hosts:
  a:
    - {name: a-1, address: 127.0.0.1}
  b:
    - {name: b-1, address: 127.0.0.2}
"""


@dataclass(frozen=True)
class Site:
    dir: Path
    topology: str
    inventory: str

    @property
    def args(self) -> list[str]:
        return ["--topology", self.topology, "--inventory", self.inventory]

    def write(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)

    def results(self, state: ProbeState, name: str = "results.json") -> str:
        """A ResultBatch of a-1 with every check of its plan in ``state``."""
        plan_file = self.dir / "a-1.plan.json"
        argv = ["plan", *self.args, "--role", "a", "--host", "a-1", "--out", str(plan_file)]
        assert main(argv) == 0
        plan = json.loads(plan_file.read_text())
        results = tuple(
            ProbeResult(
                check_id=c["check_id"],
                interaction=c["interaction"],
                src_host=plan["host"],
                src_address=plan["address"],
                dst_host=c["dst_host"],
                dst_address=c["dst_address"],
                port=c["port"],
                state=state,
                mode="connect",
                attempts=1,
                started_at=time.time() - 5,
                latency_s=0.001 if state == "open" else None,
            )
            for c in plan["checks"]
        )
        return self.write(name, json.dumps(encode(ResultBatch("a", "a-1", results=results))))

    def db(self, state: ProbeState) -> str:
        db = str(self.dir / f"{state}.db")
        assert main(["import", self.results(state, f"{state}.json"), "--db", db, *self.args]) == 0
        return db


@pytest.fixture
def site(tmp_path: Path) -> Site:
    (tmp_path / "matrix.yaml").write_text(MATRIX)
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    (tmp_path / "site.yaml").write_text(INVENTORY)
    return Site(tmp_path, str(tmp_path / "topology.yaml"), str(tmp_path / "site.yaml"))


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# (name, argv built from the site, exit code, what stderr says)
Case = tuple[str, Callable[[Site], list[str]], int, Callable[[Site], str] | None]

BAD_INVENTORY = INVENTORY.replace("  b:\n", "  nobody:\n")
CASES: list[Case] = [
    # check
    ("check ok", lambda s: ["check", s.topology, "--inventory", s.inventory], 0, lambda s: ""),
    (
        "check: missing topology",
        lambda s: ["check", str(s.dir / "nope.yaml")],
        2,
        lambda s: f"{s.dir}/nope.yaml: cannot read: No such file or directory",
    ),
    (
        "check: topology syntax error",
        lambda s: [
            "check",
            s.write("t.yaml", TOPOLOGY.replace("cloud, agent: true}", "cloud]", 1)),
        ],
        2,
        lambda s: f"{s.dir}/t.yaml:{_line_of(TOPOLOGY, '  b: {')}: YAML syntax error",
    ),
    (
        "check: inventory names an unknown role",
        lambda s: ["check", s.topology, "--inventory", s.write("i.yaml", BAD_INVENTORY)],
        2,
        lambda s: f"{s.dir}/i.yaml:{_line_of(BAD_INVENTORY, 'nobody')}: unknown role 'nobody'",
    ),
    (
        "check: the inventory is a directory",
        lambda s: ["check", s.topology, "--inventory", str(s.dir)],
        2,
        lambda s: f"{s.dir}: cannot read: Is a directory",
    ),
    # plan
    (
        "plan ok",
        lambda s: ["plan", *s.args, "--role", "a", "--out", str(s.dir / "plans")],
        0,
        lambda s: "",
    ),
    (
        "plan: unknown host",
        lambda s: ["plan", *s.args, "--role", "a", "--host", "nope"],
        2,
        lambda s: f"no host 'nope' of role 'a' in {s.inventory}",
    ),
    (
        "plan: no hosts of the role",
        lambda s: ["plan", *s.args, "--role", "c"],
        2,
        lambda s: f"no hosts of role 'c' in {s.inventory}",
    ),
    (
        "plan: --out in a missing directory",
        lambda s: [
            *("plan", *s.args, "--role", "a", "--host", "a-1"),
            *("--out", str(s.dir / "no" / "p.json")),
        ],
        2,
        lambda s: f"{s.dir}/no/p.json: No such file or directory",
    ),
    (
        "plan: no --inventory",
        lambda s: ["plan", "--topology", s.topology, "--role", "a"],
        2,
        lambda s: "the following arguments are required: --inventory",
    ),
    # import
    (
        "import ok",
        lambda s: ["import", s.results("open"), "--db", str(s.dir / "i.db"), *s.args],
        0,
        lambda s: "",
    ),
    (
        "import: missing results file",
        lambda s: ["import", str(s.dir / "none.json"), "--db", str(s.dir / "i.db"), *s.args],
        2,
        lambda s: f"cannot read {s.dir}/none.json: No such file or directory",
    ),
    (
        "import: results file is not JSON",
        lambda s: ["import", s.write("r.json", "{\n  oops"), "--db", str(s.dir / "i.db"), *s.args],
        2,
        lambda s: f"{s.dir}/r.json: ",
    ),
    (
        "import: results of a host that is not of the batch's role",
        lambda s: [
            *("import", s.write("r.json", _other_host(s))),
            *("--db", str(s.dir / "i.db"), *s.args),
        ],
        2,
        lambda s: f"{s.dir}/r.json: host 'b-1' is not a a host in the inventory; nothing imported",
    ),
    (
        "import: the database cannot be created",
        lambda s: ["import", s.results("open"), "--db", str(s.dir / "no" / "i.db"), *s.args],
        2,
        lambda s: f"{s.dir}/no/i.db: unable to open database file",
    ),
    # report
    ("report ok", lambda s: ["report", "--db", s.db("open"), *s.args], 0, lambda s: ""),
    (
        "report: no source",
        lambda s: ["report", *s.args],
        2,
        lambda s: "give --controller URL, or --db PATH with --inventory FILE",
    ),
    (
        "report: --db without --inventory",
        lambda s: ["report", "--db", s.db("open"), "--topology", s.topology],
        2,
        lambda s: "--inventory FILE is required with --db",
    ),
    (
        "report: no database",
        lambda s: ["report", "--db", str(s.dir / "none.db"), *s.args],
        2,
        lambda s: f"could not decide: no database at {s.dir}/none.db",
    ),
    (
        "report: not a database",
        lambda s: ["report", "--db", s.topology, *s.args],
        2,
        lambda s: f"{s.topology}: file is not a database",
    ),
    (
        "report: --db and --controller",
        lambda s: ["report", "--db", s.db("open"), "--controller", "http://127.0.0.1:1", *s.args],
        2,
        lambda s: "not allowed with argument",
    ),
    (
        "report: --controller is no URL",
        lambda s: ["report", "--controller", "controller:8080"],
        2,
        lambda s: "'controller:8080' is not an http:// or https:// URL",
    ),
    # gate
    ("gate: go", lambda s: ["gate", "--mode", "deploy", "--db", s.db("open"), *s.args], 0, None),
    (
        "gate: no-go",
        lambda s: ["gate", "--mode", "deploy", "--db", s.db("filtered"), *s.args],
        1,
        lambda s: "",
    ),
    (
        "gate: unreadable inventory",
        lambda s: [
            *("gate", "--mode", "deploy", "--db", s.db("open")),
            *("--topology", s.topology, "--inventory", str(s.dir / "gone.yaml")),
        ],
        2,
        lambda s: f"{s.dir}/gone.yaml: cannot read: No such file or directory",
    ),
    (
        "gate: inventory with an error",
        lambda s: [
            *("gate", "--mode", "deploy", "--db", s.db("open")),
            *("--topology", s.topology, "--inventory", s.write("i.yaml", BAD_INVENTORY)),
        ],
        2,
        lambda s: f"{s.dir}/i.yaml:{_line_of(BAD_INVENTORY, 'nobody')}: unknown role 'nobody'",
    ),
    (
        "gate: unknown mode",
        lambda s: ["gate", "--mode", "hot", "--db", s.db("open"), *s.args],
        2,
        lambda s: "could not decide: unknown mode 'hot' (modes are: deploy, later)",
    ),
    (
        "gate: unknown VM",
        lambda s: ["gate", "--mode", "deploy", "--vm", "web", "--db", s.db("open"), *s.args],
        2,
        lambda s: f"could not decide: unknown VM 'web': no host of that name in {s.inventory}",
    ),
    (
        "gate: nothing known for the mode",  # says so on stdout: no checks of mode 'later'
        lambda s: ["gate", "--mode", "later", "--db", s.db("open"), *s.args],
        2,
        None,
    ),
    (
        "gate: nothing tested yet for the mode",  # 'later': a-1 -> c-1 never probed
        lambda s: [
            *("gate", "--mode", "later", "--db", s.db("open"), "--topology", s.topology),
            *(
                "--inventory",
                s.write("i.yaml", INVENTORY + "  c:\n    - {name: c-1, address: 127.0.0.3}\n"),
            ),
        ],
        2,
        None,
    ),
    (
        "gate: a host that is no VM",
        lambda s: ["gate", "--mode", "deploy", "--vm", "a-1", "--db", s.db("open"), *s.args],
        2,
        lambda s: "could not decide: 'a-1' is a a host, not a guest VM (the spec has no VM roles",
    ),
    (
        "gate: not a database",
        lambda s: ["gate", "--mode", "deploy", "--db", s.inventory, *s.args],
        2,
        lambda s: f"{s.inventory}: file is not a database",
    ),
    (
        "gate: controller unreachable",
        lambda s: ["gate", "--mode", "deploy", "--controller", f"http://127.0.0.1:{_free_port()}"],
        2,
        lambda s: "could not decide: controller unreachable at http://127.0.0.1:",
    ),
    (
        "gate: no --mode",
        lambda s: ["gate", "--db", s.db("open"), *s.args],
        2,
        lambda s: "the following arguments are required: --mode",
    ),
]


def _other_host(s: Site) -> str:
    batch = json.loads(Path(s.results("open")).read_text())
    batch["host"] = "b-1"
    return json.dumps(batch)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("argv", "code", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_exit_code(
    site: Site,
    capsys: pytest.CaptureFixture[str],
    argv: Callable[[Site], list[str]],
    code: int,
    says: Callable[[Site], str] | None,
) -> None:
    args = argv(site)
    capsys.readouterr()  # what building the case printed
    try:
        got = main(args)
    except SystemExit as exc:  # argparse's usage errors
        got = int(str(exc.code))
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    if code in (0, 1):
        assert err == ""
    elif says is not None and says(site):
        assert says(site) in err
        assert err.count("\n") == 1 or "usage:" in err  # one line (argparse adds its usage)


def test_the_map_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["gate", "--help"], ["import", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert EPILOG in capsys.readouterr().out


def _run(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netcheck.controller", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "NETCHECK_TOKEN": "exit-code-token"},
    )


def test_serve_startup_errors(site: Site) -> None:
    db = ["--db", str(site.dir / "s.db")]
    bad = site.write("i.yaml", BAD_INVENTORY)
    line = _line_of(BAD_INVENTORY, "nobody")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        cases = [
            (["--topology", site.topology, "--inventory", bad, *db], f"{bad}:{line}: unknown role"),
            ([*site.args, "--db", str(site.dir / "no" / "s.db")], "unable to open database file"),
            (
                [*site.args, *db, "--listen", f"127.0.0.1:{busy}"],
                f"cannot serve on 127.0.0.1:{busy}",
            ),
            ([*site.args, *db, "--listen", "nowhere"], "'nowhere' is not HOST:PORT"),
            ([*site.args, *db, "--token-file", str(site.dir / "no-token")], "no-token"),
        ]
        insecure = ["--insecure-http", "--open-reads"]
        for argv, says in [(insecure + a, says) for a, says in cases] + [
            ([*site.args, *db, "--open-reads"], "give --pki DIR"),
            ([*site.args, *db, "--pki", str(site.dir), "--open-reads"], "ca.pem"),
            ([*site.args, *db, "--insecure-http"], "--read-token-file"),
        ]:
            done = _run("serve", *argv)
            assert done.returncode == 2, (argv, done.stderr)
            assert says in done.stderr, (argv, done.stderr)
            assert "Traceback" not in done.stderr


def test_a_closed_pipe_is_quiet(site: Site) -> None:
    """``gate ... | head -0`` and ``report ... | head -1``: no traceback, the answer's code.

    4,000 ports make outputs larger than a pipe's buffer, so the writes themselves fail
    after the reader has gone (as well as the final flush).
    """
    site.write("topology.yaml", TOPOLOGY.replace('ports: "443"', 'ports: "1000-4999"'))
    nogo = ["--db", site.db("filtered"), *site.args]
    argv = [sys.executable, "-m", "netcheck.controller"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for sub, head_lines, code in (
        (["gate", "--mode", "deploy", "--limit", "5000", *nogo], 0, 1),
        (["gate", "--mode", "deploy", "--limit", "5000", *nogo], 1, 1),
        (["report", "--format", "junit", *nogo], 0, 0),
        (["report", "--format", "junit", *nogo], 1, 0),
    ):
        whole = subprocess.run([*argv, *sub], capture_output=True, env=env, check=False)
        assert len(whole.stdout) > 256 * 1024 and whole.stdout.count(b"\n") > 1000
        with subprocess.Popen(
            [*argv, *sub], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            for _ in range(head_lines):
                assert proc.stdout.readline()
            proc.stdout.close()  # the reader goes away, as head does
            err = proc.stderr.read().decode()
            assert proc.wait(timeout=60) == code, (sub, err)
        assert err == "", (sub, err)


def test_a_controller_that_does_not_speak_http_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_junk() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

        junk = threading.Thread(target=answer_junk, daemon=True)
        junk.start()
        url = f"http://127.0.0.1:{port}"
        assert main(["gate", "--mode", "deploy", "--controller", url]) == 2
        junk.join(timeout=10)
    err = capsys.readouterr().err
    assert err.startswith(f"could not decide: controller unreachable at {url}/api/v1/gate")
    assert err.count("\n") == 1


VM_SITE = """\
version: 1
site: vms
hosts:
  pio: [{name: pio-1, address: 127.0.0.1}]
  prem_vm:
    - {name: vm-ok, address: 127.0.0.2, os: "rhel 7.4", boot: uefi}
    - {name: vm-2022, address: 127.0.0.3, os: "Windows Server 2022", boot: MBR}
"""


def test_unknown_guest_os_warns_in_check_and_leaves_the_gate_undecided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topology = str(REPO / "topology.yaml")
    inventory = tmp_path / "site.yaml"
    inventory.write_text(VM_SITE)
    site = ["--topology", topology, "--inventory", str(inventory)]
    assert main(["check", topology, "--inventory", str(inventory)]) == 0
    err = capsys.readouterr().err
    line = _line_of(VM_SITE, "vm-2022")
    assert err.startswith(f"warning: {inventory}:{line}: host 'vm-2022': Windows Server 2022 MBR")
    assert "closest rows: Windows Server" in err and err.count("\n") == 1
    batch = tmp_path / "none.json"
    batch.write_text(json.dumps(encode(ResultBatch("pio", "pio-1", results=()))))
    db = str(tmp_path / "vms.db")
    assert main(["import", str(batch), "--db", db, *site]) == 0
    capsys.readouterr()
    assert main(["gate", "--mode", "warm_vcs", "--vm", "vm-2022", "--db", db, *site]) == 2
    out = capsys.readouterr().out
    assert out.startswith("warm_vcs for vm-2022: UNDECIDED")
    assert "Windows Server 2022 MBR is not in the guest OS matrix (closest rows:" in out
    assert main(["gate", "--mode", "warm_vcs", "--vm", "pio-1", "--db", db, *site]) == 2
    assert capsys.readouterr().err == (
        "could not decide: 'pio-1' is a pio host, not a guest VM "
        "(VMs are the hosts of roles prem_vm, cloud_vm)\n"
    )
