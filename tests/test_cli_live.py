"""The CLI as a user runs it (root, real kernel): refusals and warnings that
need the capture or the machine's sockets to be judged."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from live_helpers import USNIFF, run

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
