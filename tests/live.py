"""Helpers for the live (root, real kernel) capture tests.

* ``BACKEND``: the backend under test, from ``$USNIFF_BACKEND`` (default "auto"),
  so the same tests run in VMs for the fentry/kprobe backends.
* ``Workload``: a program from tests/progs/ speaking the ready/go/done protocol
  (see tests/progs/uxwork.py).
* ``Collected``: records gathered from a Capture until a condition holds (with a
  deadline, never a bare sleep), indexed per socket inode; ``stream(ino)``
  reassembles a socket's bytes by offset and insists they tile exactly.

Timeouts are deadlines for conditions: they only matter when a test fails, so
they are generous (under emulation everything is ~10x slower); scale them
with ``$USNIFF_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from usniff.capture.collector import Capture, CaptureOptions
from usniff.events import Record

BACKEND = os.environ.get("USNIFF_BACKEND", "auto")
SCALE = float(os.environ.get("USNIFF_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT = 60.0 * SCALE
PROGS = Path(__file__).resolve().parent / "progs"
UXWORK = PROGS / "uxwork.py"


def deadline(seconds: float = TIMEOUT) -> float:
    return time.monotonic() + seconds


class Workload:
    """One helper program: ``ready`` after start, ``go()``, ``done()``."""

    def __init__(self, argv: list[str], cwd: str | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            text=True,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready: dict[str, Any] = self.expect("ready")

    @classmethod
    def py(cls, scenario: str, outdir: str | os.PathLike[str], *args: object) -> Workload:
        return cls([sys.executable, str(UXWORK), scenario, str(outdir), *map(str, args)])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, key: str, timeout: float = TIMEOUT) -> Any:
        """Wait for the next JSON line, which must carry ``key``."""
        end = deadline(timeout)
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                self.kill()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(
                    f"{self.argv}: no {key!r} line within {timeout}s; stderr:\n{err}"
                ) from None
            if line is None:
                self.proc.wait()
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(
                    f"{self.argv} exited ({self.proc.returncode}) before {key!r}:\n{err}"
                )
            msg = json.loads(line)
            assert key in msg, f"expected {key!r}, got {msg}"
            return msg[key]

    def go(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def done(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        result: dict[str, Any] = self.expect("done", timeout)
        return result

    def finish(self, timeout: float = TIMEOUT) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        err = self.proc.stderr.read() if self.proc.stderr else ""
        assert rc == 0, f"{self.argv} exited with {rc}:\n{err}"
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @staticmethod
    def sent(done: dict[str, Any]) -> dict[int, bytes]:
        """inode -> every byte that socket sent (from the program's own account)."""
        return {int(i): Path(p).read_bytes() for i, p in done["sent"].items()}


class Collected:
    """Records from one capture, indexed by sending socket inode."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.by_ino: dict[int, list[Record]] = defaultdict(list)
        self.covered: dict[int, int] = defaultdict(int)  # data + lost bytes per inode

    def add(self, batch: Iterable[Record]) -> None:
        for r in batch:
            self.records.append(r)
            if r.kind == "close":
                continue
            self.by_ino[r.inode].append(r)
            self.covered[r.inode] += r.length

    def inodes(self) -> set[int]:
        return set(self.by_ino)

    def data(self, ino: int) -> list[Record]:
        """Data and loss records of a socket, by offset."""
        return sorted(self.by_ino.get(ino, []), key=lambda r: r.offset)

    def tiles(self, ino: int) -> list[Record]:
        """The socket's records, checked to tile [0, end) exactly: no gap, no overlap."""
        recs = self.data(ino)
        pos = 0
        for r in recs:
            assert r.offset == pos, (
                f"socket {ino}: record at offset {r.offset}, expected {pos} "
                f"({'overlap' if r.offset < pos else 'gap'}); records: "
                + ", ".join(f"{x.kind}@{x.offset}+{x.length}" for x in recs[:50])
            )
            assert r.length > 0, r
            if r.kind == "lost":
                assert r.lost == r.length and not r.data, r
            pos += r.length
        return recs

    def stream(self, ino: int) -> bytes:
        """The socket's bytes reassembled by offset; no losses or truncation allowed."""
        out = bytearray()
        for r in self.tiles(ino):
            assert r.kind == "data", f"socket {ino}: unexpected loss {r}"
            assert len(r.data) == r.length, f"socket {ino}: truncated record {r}"
            out += r.data
        return bytes(out)


def collect(
    cap: Capture,
    until: Callable[[Collected], bool],
    timeout: float = TIMEOUT,
    into: Collected | None = None,
) -> Collected:
    """Poll ``cap`` until ``until(collected)``; then drain it (finish())."""
    got = into if into is not None else Collected()
    end = deadline(timeout)
    while not until(got):
        if time.monotonic() > end:
            got.add(cap.finish())
            covered = {i: n for i, n in got.covered.items()}
            raise AssertionError(
                f"condition not met within {timeout}s; bytes per inode: {covered}, "
                f"stats {cap.stats}, kernel {cap.kernel_stats()}"
            )
        got.add(cap.poll(0.1))
    got.add(cap.finish())
    return got


def covers(expected: dict[int, int]) -> Callable[[Collected], bool]:
    """Condition: each inode has records covering at least its expected byte count."""
    return lambda c: all(c.covered.get(i, 0) >= n for i, n in expected.items())


def options(**kw: Any) -> CaptureOptions:
    return CaptureOptions(backend=BACKEND, **kw)
