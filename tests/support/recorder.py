"""Recording Unix-socket relay: client -> relay socket -> real server.

Every chunk read from either side is logged as a :class:`usniff.events.Record`
(the same currency capture produces) with a wall-clock timestamp, the sending
process's pid/comm (SO_PEERCRED for the client, the server's pid for replies),
stream offsets, and close records when a side shuts down.  ``save_records`` /
``load_records`` write and read JSON lines (``data`` base64), gzip-compressed
when the file name ends in ``.gz``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from usniff.events import FLAG_MSG_END, FLAG_MSG_START, Record


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _peer_pid(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", cred)[0])


class Relay:
    """Listen on ``listen``; forward each connection to ``upstream``; record both directions."""

    def __init__(self, listen: str, upstream: str) -> None:
        self.listen, self.upstream = listen, upstream
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(listen)
        self._sock.listen(64)
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._accept.join()
        for t in self._threads:
            t.join(timeout=30)
        self.records.sort(key=lambda r: r.ts)

    def wait_idle(self, seconds: float = 0.05) -> None:
        """Wait until no record arrived for ``seconds`` (lets pumps catch up)."""
        while True:
            n = len(self.records)
            time.sleep(seconds)
            if len(self.records) == n:
                return

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            pid, server_pid = _peer_pid(client), _peer_pid(server)
            client_ino, server_ino = (
                os.fstat(server.fileno()).st_ino,
                os.fstat(client.fileno()).st_ino,
            )
            c2s = (client, server, pid, _comm(pid), client_ino, server_ino, False)
            s2c = (server, client, server_pid, _comm(server_pid), server_ino, client_ino, True)
            for args in (c2s, s2c):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(
        self, src: socket.socket, dst: socket.socket, pid: int, comm: str,
        inode: int, peer: int, own: bool,
    ) -> None:  # fmt: skip
        offset = 0
        while True:
            try:
                data = src.recv(256 * 1024)
            except OSError:
                data = b""
            ts = time.time()
            base = Record(
                ts, pid, pid, 0, comm, inode, peer, "stream", self.upstream, own, offset, 0,
                sock_id=inode, peer_id=peer,
            )  # fmt: skip
            if not data:
                with self._lock:
                    self.records.append(dataclasses.replace(base, kind="close"))
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                self.records.append(
                    dataclasses.replace(
                        base, length=len(data), data=data, flags=FLAG_MSG_START | FLAG_MSG_END
                    )
                )
            offset += len(data)
            with contextlib.suppress(OSError):
                dst.sendall(data)


def _open(path: Path, mode: str) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")  # type: ignore[return-value]
    return path.open(mode, encoding="utf-8")


def save_records(path: str | os.PathLike[str], records: Iterable[Record]) -> None:
    with _open(Path(path), "w") as f:
        for rec in records:
            row = dataclasses.asdict(rec)
            row["data"] = base64.b64encode(rec.data).decode()
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def load_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    with _open(Path(path), "r") as f:
        for line in f:
            row = json.loads(line)
            row["data"] = base64.b64decode(row["data"])
            yield Record(**row)
