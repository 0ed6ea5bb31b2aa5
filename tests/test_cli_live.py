"""The CLI as a user runs it (root, real kernel): refusals and warnings that
need the capture or the machine's sockets to be judged."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from tests.support.live_helpers import USNIFF, Usniff, run
from tests.support.servers import start_redis

pytestmark = pytest.mark.root

QUIET = ["--comm", "usniff-nobody", "--duration", "0.5"]  # loads, captures nothing


def test_the_largest_ring_loads() -> None:
    # 2G is what --buffer-size says is the kernel's maximum: it must load
    out = run([USNIFF, "--buffer-size", "2G", *QUIET])
    assert out.returncode == 0, out.stderr
    assert "usniff: capturing with the" in out.stderr


def test_time_rotation_without_a_time_in_the_name_is_refused(tmp_path: Path) -> None:
    out = run([USNIFF, "-w", str(tmp_path / "q.pcapng"), "-G", "1", *QUIET])
    assert out.returncode == 2, out.stderr
    assert "-G 1 needs a time in the -w name" in out.stderr
    assert os.listdir(tmp_path) == []


def test_filters_that_match_nothing_alive_are_warned_about(tmp_path: Path) -> None:
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # closed without unlink: the file stays, nobody is bound to it
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is no process now
    name = f"@usniff-nobody-{uuid.uuid4().hex}"
    out = run([USNIFF, "--path", stale, "--path", name, "--pid", str(gone.pid), *QUIET])
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"usniff: warning: --path {stale}: no socket is bound to this file "
        "(stale socket file?); capturing anyway",
        f"usniff: warning: --path {name}: no socket has this abstract name; capturing anyway",
        f"usniff: warning: --pid {gone.pid}: no such process; capturing anyway",
    ]


def test_filters_that_match_live_sockets_are_not_warned_about(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    name = f"usniff-live-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(path)
        a.listen()
        b.bind("\0" + name)
        out = run([USNIFF, "--path", path, "--path", "@" + name, "--pid", str(os.getpid()),
                   *QUIET])  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr


ACL_ADD, ACL_REMOVE, ACL_HASHED = "pw-acl-add-1", "pw-acl-rm-2", "pw-acl-hash-3"
MIGRATE_PW, MIGRATE2_PW = "pw-migrate-4", "pw-migrate2-5"
MASTER_PW, REQUIRE_PW = "pw-master-6", "pw-require-7"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secret_commands(sock: str) -> None:
    """Every command that carries a password, from redis-py on one
    connection (a PING first: the server has accepted it)."""
    r = redis.Redis(unix_socket_path=sock, single_connection_client=True)
    try:
        assert r.ping()
        run_ = r.execute_command
        assert run_("ACL", "SETUSER", "bob", "on", f">{ACL_ADD}", f">{ACL_REMOVE}", "~*", "+@all")
        assert run_("ACL", "SETUSER", "bob", f"<{ACL_REMOVE}", f"#{sha256(ACL_HASHED)}")
        assert run_("ACL", "SETUSER", "bob", f"!{sha256(ACL_HASHED)}")
        migrate = ["MIGRATE", "127.0.0.1", "1", "", "0", "100"]
        assert run_(*migrate, "AUTH", MIGRATE_PW, "KEYS", "nokey") == b"NOKEY"
        assert run_(*migrate, "AUTH2", "bob", MIGRATE2_PW, "KEYS", "nokey") == b"NOKEY"
        assert run_("HELLO", "2", "AUTH", "bob", ACL_ADD)
        assert run_("AUTH", "bob", ACL_ADD)
        assert run_("CONFIG", "SET", "masterauth", MASTER_PW, "requirepass", REQUIRE_PW)
        assert run_("AUTH", REQUIRE_PW)
        assert run_("CONFIG", "GET", "*pass*", "masterauth") and run_("ACL", "LIST")
        assert run_("ACL", "GETUSER", "bob")
        assert run_("CONFIG", "SET", "requirepass", "")
    finally:
        r.close()


# hashes by their start: a long argument is shown clipped
SECRETS = [ACL_ADD, ACL_REMOVE, sha256(ACL_ADD)[:16], sha256(ACL_HASHED)[:16], MIGRATE_PW,
           MIGRATE2_PW, MASTER_PW, REQUIRE_PW]  # fmt: skip


def test_redact_masks_every_redis_password(tmp_path: Path) -> None:
    pcapng = str(tmp_path / "secrets.pcapng")
    decode = ["--protocol", "resp", "--format", "json", "--redact"]
    with (
        start_redis(tmp_path) as sock,
        Usniff("--path", sock, "-w", pcapng) as writer,
        Usniff("--path", sock, *decode) as live,
    ):
        secret_commands(sock)
        written, decoded = writer.stop(), live.stop()
    assert written.returncode == 0 and decoded.returncode == 0, (written, decoded)
    plain = run([USNIFF, "read", pcapng, "--protocol", "resp"]).stdout
    assert [s for s in SECRETS if s not in plain] == []  # the capture holds them all
    masked = run([USNIFF, "read", pcapng, "--protocol", "resp", "--redact"]).stdout
    for text in (masked, decoded.text, decoded.stderr):
        assert [s for s in SECRETS if s in text] == [], text
    for shown in (
        "ACL SETUSER bob on >*** >*** ~* +@all",
        "ACL SETUSER bob <*** #***",
        'MIGRATE 127.0.0.1 1 "" 0 100 AUTH *** KEYS nokey',
        'MIGRATE 127.0.0.1 1 "" 0 100 AUTH2 bob *** KEYS nokey',
        "HELLO 2 AUTH bob ***",
        "CONFIG SET masterauth *** requirepass ***",
        "masterauth, ***",  # CONFIG GET's reply
        "requirepass, ***",
        "#***",  # ACL LIST's reply
    ):
        assert shown in masked and json.dumps(shown)[1:-1] in decoded.text, (shown, masked)
