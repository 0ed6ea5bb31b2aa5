"""Container identity (issue 21): the cgroup of every sender and peer, recorded in
the kernel, named as the container runtime names it, and filtered in the kernel.

Real cgroups are made under this host's cgroup v2 mount and real processes move
into them before they connect.  The container's id and name are a real podman
container's (``podman create`` from an image imported from an empty tarball):
its id names the cgroup as podman names its containers' cgroups on a cgroup v2
host (``machine.slice/libpod-<id>.scope``), and usniff finds the name in
podman's own store.  (This host mounts cgroup v2 beside v1 controllers, where
podman puts containers in v1 cgroups only: hence the cgroup made by the test.)
Ground truth: the bytes each process sent (its own record), the cgroups' inode
numbers, tshark's reading of the pcapng comments.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import start_redis
from tests.support.tshark import tshark
from tests.support.usniff import USNIFF, Usniff, run
from usniff.containers import cgroup2_root

pytestmark = pytest.mark.root

# a process that joins the cgroup argv[1], then runs argv[2] (argv[3:] its arguments)
JOIN = "import sys; open(sys.argv[1] + '/cgroup.procs', 'w').write('0'); exec(sys.argv[2])"
SERVER = """
import socket, sys
srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[3]); srv.listen(4)
open(sys.argv[3] + '.ready', 'w').close()
for _ in range(2):
    c, _ = srv.accept()
    want = int.from_bytes(c.recv(4), 'big')
    got = 0
    while got < want:
        got += len(c.recv(65536))
    c.sendall(b'R' * (want // 4))
    c.close()
"""
CLIENT = """
import socket, sys
n = int(sys.argv[4])
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[3])
c.sendall(n.to_bytes(4, 'big')); c.sendall(bytes(range(256)) * (n // 256))
got = 0
while got < n // 4:
    got += len(c.recv(65536))
"""
IN_CONTAINER, OUTSIDE = 3072, 2048  # the two clients' payloads (+ 4 length bytes each)


@dataclass
class Cgroups:
    root: str  # the cgroup2 mount
    server: str  # absolute directories
    container: str
    other: str
    container_id: str
    name: str

    def rel(self, path: str) -> str:
        return "/" + os.path.relpath(path, self.root)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    root = cgroup2_root()
    assert root, "no cgroup v2 mount (/proc/self/mountinfo): container identity needs one"
    assert shutil.which("podman"), "podman is missing: ./setup.sh installs it"
    tag = secrets.token_hex(4)
    image, name = f"localhost/usniff-empty:{tag}", f"usniff-test-{tag}"
    with tempfile.TemporaryDirectory() as empty:
        tar = subprocess.run(["tar", "-C", empty, "-c", "."], capture_output=True, check=True)
    subprocess.run(["podman", "import", "-", image], input=tar.stdout, check=True,
                   capture_output=True)  # fmt: skip
    cid = subprocess.run(["podman", "create", "--name", name, image, "/true"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    base = Path(root, f"usniff-test-{tag}")
    dirs = [base / "system.slice" / "echo.service", base / "machine.slice" / f"libpod-{cid}.scope",
            base / "user.slice" / "other.scope"]  # fmt: skip
    for d in dirs:
        d.mkdir(parents=True)
    try:
        yield Cgroups(root, *map(str, dirs), cid, name)
    finally:
        for d in [*dirs, *{d.parent for d in dirs}, base]:
            d.rmdir()
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, check=False)


def exchange(cg: Cgroups, sock: str) -> None:
    """A server in cg.server answers a client in the container, then one in cg.other."""
    server = subprocess.Popen([sys.executable, "-c", JOIN, cg.server, SERVER, sock])
    ready = Path(sock + ".ready")
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    for where, n in ((cg.container, IN_CONTAINER), (cg.other, OUTSIDE)):
        subprocess.run([sys.executable, "-c", JOIN, where, CLIENT, sock, str(n)],
                       timeout=30, check=True)  # fmt: skip
    assert server.wait(30) == 0


def sent_by(records: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Bytes per (sender's cgroup path, direction) in JSON records."""
    out: dict[tuple[str, str], int] = {}
    for r in records:
        key = (r.get("cgroup_path", ""), r["direction"])
        out[key] = out.get(key, 0) + len(base64.b64decode(r.get("data", "")))
    return out


def test_container_filter_selects_exactly_its_traffic_and_names_it(cgroups: Cgroups) -> None:
    cg = cgroups
    with tempfile.TemporaryDirectory() as d:
        sock = f"{d}/echo.sock"
        with Usniff("--container", cg.name, "--format", "json") as u:
            exchange(cg, sock)
            result = u.stop()
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.text.splitlines()]
    assert records, result.stderr
    # only the container's connection, both ways: the client's bytes and the reply
    assert sent_by(records) == {
        (cg.rel(cg.container), "client"): 4 + IN_CONTAINER,
        (cg.rel(cg.server), "server"): IN_CONTAINER // 4,
    }
    client = [r for r in records if r["direction"] == "client"]
    reply = [r for r in records if r["direction"] == "server"]
    for r in client:
        assert r["cgroup"] == os.stat(cg.container).st_ino
        assert (r["container"], r["container_id"]) == (cg.name, cg.container_id)
        assert r["peer_cgroup"] == os.stat(cg.server).st_ino
        assert r["peer_cgroup_path"] == cg.rel(cg.server) and "peer_container" not in r
    for r in reply:  # the server is in no container; its peer is
        assert r["cgroup"] == os.stat(cg.server).st_ino and "container" not in r
        assert (r["peer_container"], r["peer_cgroup_path"]) == (cg.name, cg.rel(cg.container))


def test_cgroup_filter_takes_descendants_and_pcapng_keeps_the_names(cgroups: Cgroups) -> None:
    cg = cgroups
    with tempfile.TemporaryDirectory() as d:
        sock, pcap = f"{d}/echo.sock", f"{d}/out.pcapng"
        # the parent of the server's cgroup: its descendants are selected too
        with Usniff("--cgroup", cg.rel(str(Path(cg.server).parent)), "-w", pcap) as u:
            exchange(cg, sock)
            result = u.stop()
        assert result.returncode == 0, result.stderr
        comments = tshark("-r", pcap, "-T", "fields", "-e", "frame.comment").split("\n")
        back = run([USNIFF, "read", pcap, "--format", "json"], cwd=d)
        text = run([USNIFF, "read", pcap, "--protocol", "raw"], cwd=d)
    assert back.returncode == 0, back.stderr
    assert text.returncode == 0, text.stderr
    # text: the sender's container after its pid, the peer's after the peer's
    lines = text.stdout.splitlines()
    assert sum(f"]@{cg.name} stream" in line for line in lines) >= 2, lines
    assert any(re.search(rf" to \S+\[\d+\]@{cg.name} ", line) for line in lines), lines
    records = [json.loads(line) for line in back.stdout.splitlines()]
    # every byte of both connections: the server is on one end of each
    assert sent_by(records) == {
        (cg.rel(cg.container), "client"): 4 + IN_CONTAINER,
        (cg.rel(cg.other), "client"): 4 + OUTSIDE,
        (cg.rel(cg.server), "server"): IN_CONTAINER // 4 + OUTSIDE // 4,
    }
    named = [r for r in records if r.get("container")]
    assert named and all(r["container"] == cg.name for r in named)
    assert any(f'container="{cg.name}"' in c and f"cgroup={os.stat(cg.container).st_ino}" in c
               for c in comments)  # fmt: skip


def test_unknown_container_is_refused_with_what_was_searched() -> None:
    r = run([USNIFF, "--container", "no-such-container-anywhere"])
    assert r.returncode == 2
    assert "no running container has that id or name" in r.stderr
    r = run([USNIFF, "--cgroup", "/no/such/cgroup"])
    assert r.returncode == 2 and "no such cgroup" in r.stderr


def test_list_names_the_container_of_each_process(cgroups: Cgroups) -> None:
    hold = "import socket, sys, time; a, b = socket.socketpair(); print(flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", JOIN, cgroups.container, hold],
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"\n"
        listed = run([USNIFF, "list"])
    finally:
        proc.kill()
        proc.wait()
    assert listed.returncode == 0, listed.stderr
    mine = [line for line in listed.stdout.splitlines() if f"[{proc.pid}]" in line]
    assert len(mine) == 2 and all(f"[{proc.pid}]@{cgroups.name}" in line for line in mine), mine


def test_decoded_lines_name_both_ends_containers(cgroups: Cgroups, tmp_path: Path) -> None:
    """A real redis-server in the server's cgroup, redis-cli in the container: the
    decoded lines (text and JSON) name the client's container."""
    cg = cgroups
    cli = "import subprocess, sys; subprocess.run(sys.argv[3:], check=True, capture_output=True)"
    with start_redis(tmp_path) as sock:
        info = run(["redis-cli", "-s", sock, "INFO", "server"]).stdout
        server_pid = int(re.search(r"process_id:(\d+)", info).group(1))  # type: ignore[union-attr]
        Path(cg.server, "cgroup.procs").write_text(str(server_pid))
        for fmt in ("text", "json"):
            with Usniff("--container", cg.name, "--protocol", "auto", "--format", fmt) as u:
                subprocess.run([sys.executable, "-c", JOIN, cg.container, cli,
                                "redis-cli", "-s", sock, "SET", "k", fmt], check=True)  # fmt: skip
                out = u.stop()
            assert out.returncode == 0, out.stderr
            lines = [line for line in out.text.splitlines() if '"k"' in line or " k " in line]
            assert len(lines) == 1, out.text
            if fmt == "text":
                assert re.search(rf"redis-cli\[\d+\]@{cg.name} -> redis-server\[{server_pid}\] ",
                                 lines[0]), lines  # fmt: skip
            else:
                tx = json.loads(lines[0])
                assert (tx["command"], tx["client_container"]) == ("SET", cg.name)
                assert tx["client_cgroup"] == os.stat(cg.container).st_ino
                assert tx["server_cgroup"] == os.stat(cg.server).st_ino
                assert "server_container" not in tx
        Path(cg.root, "cgroup.procs").write_text(str(server_pid))  # so that its cgroup can go
