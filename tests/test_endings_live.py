"""Every way a live capture can end (issue 17 item 5), with a real redis-server.

SIGHUP (the operator's terminal went away) and SIGPIPE stop like SIGTERM:
summary on stderr, statistics block at the end of the file.  With -U every
batch is written out at once, so SIGKILL loses at most the last poll.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.live_helpers import Usniff, resp_command, wait_until
from tests.support.pcap_helpers import TSHARK, tmpfs, tshark
from tests.support.servers import start_redis

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed"),
]

BT_ISB = 5


@pytest.fixture(scope="module")
def redis_sock() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-end-") as tmp, start_redis(tmp) as sock:
        yield sock


def redis_set(conn: socket.socket, key: str, value: str) -> None:
    conn.sendall(resp_command("SET", key, value))
    assert conn.recv(100) == b"+OK\r\n"


def in_file(path: Path, data: bytes) -> Callable[[], bool]:
    return lambda: data in path.read_bytes()


def last_block_type(path: Path) -> int:
    data = path.read_bytes()
    length = int.from_bytes(data[-4:], "little")
    return int.from_bytes(data[-length : -length + 4], "little")


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGPIPE], ids=["SIGHUP", "SIGPIPE"])
def test_hup_and_pipe_stop_cleanly_like_term(
    redis_sock: str, tmp_path: Path, sig: signal.Signals
) -> None:
    path = tmp_path / "stopped.pcapng"
    with (
        socket.socket(socket.AF_UNIX) as conn,
        Usniff("--path", redis_sock, "-w", str(path)) as usniff,
    ):
        conn.connect(redis_sock)
        for n in range(20):
            redis_set(conn, f"key{n}", f"before-{sig.name}")
        wait_until(lambda: path.stat().st_size > 2000, 5, "the first flush")
        result = usniff.stop(sig, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "usniff: " in result.stderr and " records, " in result.stderr, result.stderr
    assert last_block_type(path) == BT_ISB
    values = tshark("-r", str(path), "-Y", "resp", "-T", "fields", "-e", "resp.bulk_string.value")
    assert values.count(f"before-{sig.name}".encode().hex()) == 20


def test_packet_buffered_writes_each_batch_and_survives_sigkill(
    redis_sock: str, tmp_path: Path
) -> None:
    """-U: a command is in the file within one poll (0.2 s) + the reorder hold
    (0.1 s), not within the next once-a-second flush; SIGKILL right after
    loses none of them."""
    path = tmp_path / "killed.pcapng"
    delays = []
    with (
        socket.socket(socket.AF_UNIX) as conn,
        Usniff("--path", redis_sock, "-w", str(path), "-U") as usniff,
    ):
        conn.connect(redis_sock)
        redis_set(conn, "warm-up", "first")
        wait_until(lambda: b"first" in path.read_bytes(), 5, "the connection's first record")
        for n in range(6):
            value = f"sent-at-{n}-" + "x" * 20
            start = time.monotonic()
            redis_set(conn, f"k{n}", value)
            wait_until(in_file(path, value.encode()), 5, "the write-out")
            delays.append(time.monotonic() - start)
            time.sleep(0.15 * n)  # land at different points of the flush cycle
        usniff.proc.send_signal(signal.SIGKILL)
        assert usniff.proc.wait(10) == -signal.SIGKILL
    assert max(delays) < 0.8, delays
    values = tshark("-r", str(path), "-Y", "resp", "-T", "fields", "-e", "resp.bulk_string.value")
    for n in range(6):
        assert f"sent-at-{n}-".encode().hex() in values


SUMMARY = re.compile(r"usniff: (\d+) records, (\d+) bytes captured .*?, (\d+) bytes lost")
UNWRITTEN = re.compile(r"usniff:   (\d+) of the bytes lost were captured but could not be written")


def test_full_disk_counts_every_byte_that_did_not_reach_the_file(
    redis_sock: str, tmp_path: Path
) -> None:
    """On a 2 MiB tmpfs: the file takes what fits, and the summary's bytes
    captured = the payload tshark finds in the file + the bytes it calls
    lost because they could not be written."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with tmpfs(mnt, "2m"):
        path = mnt / "full.pcapng"
        with Usniff("--path", redis_sock, "-w", str(path)) as usniff:
            subprocess.run(
                ["redis-benchmark", "-s", redis_sock, "-n", "200000", "-P", "16", "-d", "100",
                 "-t", "set", "-q"],
                capture_output=True, timeout=120, check=True,
            )  # fmt: skip
            result = usniff.stop(signal.SIGTERM)
        size = path.stat().st_size
        payload = tshark("-r", str(path), "-T", "fields", "-e", "tcp.len").split()
        data = path.read_bytes()
    assert result.returncode == 1 and "disk full writing" in result.stderr, result.stderr
    summary, unwritten = SUMMARY.search(result.stderr), UNWRITTEN.search(result.stderr)
    assert summary and unwritten, result.stderr
    captured, lost, not_written = int(summary[2]), int(summary[3]), int(unwritten[1])
    assert size > 2 * 1024 * 1024 - 8192  # filled up to its last page or so
    assert captured == sum(map(int, payload)) + not_written
    assert lost >= not_written > captured // 2
    # the statistics block at the end of the file says the same
    isb = data[-int.from_bytes(data[-4:], "little") :]
    assert int.from_bytes(isb[:4], "little") == 5
    assert f"unwritten_bytes={not_written}".encode() in isb
