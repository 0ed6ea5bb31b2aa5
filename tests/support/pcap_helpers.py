"""Shared by the pcapng writer and reader tests: real protocol bytes, record
builders and thin wrappers around the real tshark binary (never mocked)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from usniff.events import FLAG_MSG_END, FLAG_MSG_START, FLAG_TRUNCATED, Record

# (sent by the server?, bytes).  What redis-cli 7 sends for `SET key value`, `GET key`,
# `LPUSH list a b c`, `GET missing` and what redis-server answers.
REDIS_EXCHANGE: list[tuple[bool, bytes]] = [
    (False, b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"),
    (True, b"+OK\r\n"),
    (False, b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"),
    (True, b"$5\r\nvalue\r\n"),
    (False, b"*5\r\n$5\r\nLPUSH\r\n$4\r\nlist\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"),
    (True, b":3\r\n"),
    (False, b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n"),
    (True, b"$-1\r\n"),
]

# A real MariaDB 10.11 conversation with PyMySQL 1.2 (captured on TCP with tshark):
# greeting, login, SET NAMES, SET AUTOCOMMIT, SELECT 1 AS one, 'usniff' AS name, quit.
MYSQL_EXCHANGE: list[tuple[bool, bytes]] = [
    (s, bytes.fromhex(h))
    for s, h in [
        (
            True,
            "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100030000"
            "006e66336c4657616400fef7080200ff81150000000000001d00000053522355626c793d6358715000"
            "6d7973716c5f6e61746976655f70617373776f726400",
        ),
        (
            False,
            "7200000105a23a00ffffff002d00000000000000000000000000000000000000000000007"
            "26f6f7400006d7973716c5f6e61746976655f70617373776f726400350c5f636c69656e745f6e61"
            "6d650770796d7973716c0f5f636c69656e745f76657273696f6e05312e322e34045f706964043835"
            "3036",
        ),
        (True, "0700000200000002000000"),
        (False, "1200000003534554204e414d455320757466386d6234"),
        (True, "0700000100000002000000"),
        (False, "1300000003534554204155544f434f4d4d4954203d2030"),
        (True, "0700000100000000000000"),
        (False, "220000000353454c4543542031204153206f6e652c202775736e69666627204153206e616d65"),
        (
            True,
            "01000001021900000203646566000000036f6e65000c3f00010000000381000000001a000003036465"
            "66000000046e616d65000c2d0018000000fd010027000005000004fe000000000900000501310675"
            "736e69666605000006fe00000000",
        ),
        (False, "0100000001"),
    ]
]

TSHARK = shutil.which("tshark")


@dataclass
class Conn:
    """One synthetic Unix stream connection that hands out records."""

    path: str = "/run/redis/redis.sock"
    client_inode: int = 70001
    server_inode: int = 70000
    client_pid: int = 4242
    server_pid: int = 880
    client_comm: str = "redis-cli"
    server_comm: str = "redis-server"
    sock_type: str = "stream"
    ts: float = 1_700_000_000.0

    def __post_init__(self) -> None:
        self.offsets = {self.client_inode: 0, self.server_inode: 0}

    def _base(self, from_server: bool) -> dict[str, object]:
        self.ts += 0.000125
        inode, peer = (
            (self.server_inode, self.client_inode)
            if from_server
            else (self.client_inode, self.server_inode)
        )
        pid = self.server_pid if from_server else self.client_pid
        return dict(
            ts=self.ts,
            pid=pid,
            tid=pid + (1 if from_server else 0),
            uid=1000,
            comm=self.server_comm if from_server else self.client_comm,
            inode=inode,
            peer_inode=peer,
            sock_id=inode,
            peer_id=peer,
            sock_type=self.sock_type,
            path=self.path,
            path_is_own=from_server,
        )

    def send(self, from_server: bool, data: bytes, *, keep: int | None = None) -> Record:
        """A record of ``data`` (only the first ``keep`` bytes captured if given)."""
        base = self._base(from_server)
        inode = base["inode"]
        assert isinstance(inode, int)
        offset = self.offsets[inode]
        self.offsets[inode] += len(data)
        kept = data if keep is None else data[:keep]
        return Record(
            **base,  # type: ignore[arg-type]
            offset=offset,
            length=len(data),
            data=kept,
            flags=FLAG_MSG_START | FLAG_MSG_END | (FLAG_TRUNCATED if keep is not None else 0),
        )

    def lose(self, from_server: bool, n: int) -> Record:
        base = self._base(from_server)
        inode = base["inode"]
        assert isinstance(inode, int)
        offset = self.offsets[inode]
        self.offsets[inode] += n
        return Record(**base, offset=offset, length=n, lost=n, kind="lost")  # type: ignore[arg-type]

    def close(self, from_server: bool) -> Record:
        base = self._base(from_server)
        inode = base["inode"]
        assert isinstance(inode, int)
        return Record(**base, offset=self.offsets[inode], length=0, kind="close")  # type: ignore[arg-type]

    def exchange(self, pairs: Sequence[tuple[bool, bytes]], close: bool = True) -> list[Record]:
        recs = [self.send(s, data) for s, data in pairs]
        if close:
            recs += [self.close(False), self.close(True)]
        return recs


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: 64k, 2m) on ``mnt``, a disk that
    fills up; skips the test where mounting is not allowed."""
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def tshark(*args: str) -> str:
    """Run the real tshark; fail the test on a non-zero exit or error output."""
    assert TSHARK, "tshark not installed"
    proc = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=120, check=False)
    errors = [
        line for line in proc.stderr.splitlines() if line and not line.startswith("Running as")
    ]
    assert proc.returncode == 0 and not errors, (proc.returncode, proc.stderr)
    return proc.stdout


def follow_raw(path: str, stream: int = 0, proto: str = "tcp") -> tuple[bytes, bytes]:
    """Bytes Wireshark's "Follow stream" reassembles: (node 0 -> 1, node 1 -> 0)."""
    out = tshark("-r", path, "-q", "-z", f"follow,{proto},raw,{stream}")
    body = out.split("Node 1:", 1)[1].split("\n", 1)[1]
    sent = [b"", b""]
    for line in body.splitlines():
        if line.startswith("====="):
            break
        side = 1 if line.startswith("\t") else 0
        sent[side] += bytes.fromhex(line.strip())
    return sent[0], sent[1]


def expert_problems(path: str) -> str:
    """Expert-info entries of severity warning or error (empty when clean)."""
    out = tshark("-r", path, "-q", "-z", "expert,warn")
    return "\n".join(
        line
        for line in out.splitlines()
        if line.startswith(("Errors", "Warns")) or "Malformed" in line
    )


def sides(pairs: Sequence[tuple[bool, bytes]]) -> tuple[bytes, bytes]:
    """All client bytes, all server bytes."""
    return (
        b"".join(d for s, d in pairs if not s),
        b"".join(d for s, d in pairs if s),
    )
