"""`usniff list` against sockets a C program bound, with `ss -x` as ground truth."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.usniff import USNIFF

NAME = b"usniff-list-\x1b[31mred"  # an abstract name with a terminal escape in it
COMM = b"bq\x01x"
QUEUED = 1000  # bytes sent to the accepted connection and never read

pytestmark = pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is missing")


@pytest.fixture
def bound(c_prog: Any) -> Iterator[tuple[str, int]]:
    """bindq's sockets: (socket path, pid)."""
    d = tempfile.mkdtemp(prefix="usl")  # short: the table must not wrap
    path = f"{d}/r.sock"
    proc = subprocess.Popen(
        [c_prog("bindq"), path, NAME, COMM, str(QUEUED)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield path, proc.pid
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(d)


def ss_queues(pid: int) -> dict[int, tuple[int, int]]:
    """inode -> (Recv-Q, Send-Q) of the process's Unix sockets, from `ss -xanp`."""
    out = subprocess.run(["ss", "-xanp"], capture_output=True, check=True).stdout
    queues = {}
    for line in out.splitlines():
        m = re.match(rb"\S+\s+\S+\s+(\d+)\s+(\d+)\s+.*?\s(\d+)\s+\S+\s+\d+\s+users:", line)
        if m and f"pid={pid},".encode() in line:
            queues[int(m[3])] = (int(m[1]), int(m[2]))
    return queues


def test_list_prints_names_and_queues_as_ss_does(bound: tuple[str, int]) -> None:
    path, pid = bound
    out = subprocess.run([USNIFF, "list"], capture_output=True, check=True, timeout=60).stdout
    # nothing unprintable reaches the terminal: the NUL the program counted in
    # its addrlen, the escape in the abstract name, the ^A in the process name
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", out), out
    text = out.decode()
    rows = {}
    for line in text.splitlines():  # path type state inode peer recv-q send-q processes
        m = re.match(r"\s*(\S+)\s+\S+\s+\S+\s+(\d+)\s+(?:\d+|-)\s+(\d+|-)\s+(\d+|-)\s+(\S*)", line)
        if m and f"[{pid}]" in m[5]:
            rows[int(m[2])] = m
    expected = ss_queues(pid)
    assert len(expected) == 6, expected  # listener, 3 stream ends, 2 datagram sockets
    assert {i: (int(m[3]), int(m[4])) for i, m in rows.items()} == expected
    assert QUEUED in (rq for rq, _ in expected.values())  # the unread bytes are counted
    paths = sorted(m[1] for m in rows.values() if m[1] != "-")
    assert paths == sorted(["@usniff-list-\\x1b[31mred", path, path])
    assert all(m[5] == f"bq\\x01x[{pid}]" for m in rows.values())
