"""The usniff CLI under test, run as a subprocess: the one runner of the tests,
bench/ and captures/.

Readiness is usniff's ``usniff: capturing with the`` line on stderr, never a
fixed sleep.  The CLI is ``$USNIFF_CLI``, else the one beside this Python.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .live import TIMEOUT  # scaled by $USNIFF_TEST_TIMEOUT_SCALE

USNIFF = os.environ.get("USNIFF_CLI") or str(Path(sys.executable).with_name("usniff"))
READY = "usniff: capturing with the"


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()


class Usniff:
    """``usniff ARGS`` as a subprocess, ready (capturing) when the constructor returns
    (``ready=False``: call :meth:`started`, or :meth:`wait` for a run that must fail).

    stdout goes to ``stdout`` (a file object or fd) when given, else it is
    collected by a thread (:attr:`stdout`, :meth:`stdout_lines`); stderr is
    always collected (:attr:`stderr`).  ``command``: how to start usniff
    (default ``[USNIFF]``; e.g. with a privilege-dropping prefix).
    """

    def __init__(
        self,
        *args: str,
        stdout: IO[bytes] | int | None = None,
        ready_timeout: float = TIMEOUT,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        ready: bool = True,
        **popen: Any,
    ) -> None:
        self.args = [*(command or [USNIFF]), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            **popen,
        )
        self._out = bytearray()
        self._taken = 0  # stdout bytes handed out by stdout_lines
        self._more = threading.Condition()
        self._err: list[str] = []
        self._ready_line = ""
        self._ready = threading.Event()
        self._threads = [threading.Thread(target=self._read_err, daemon=True)]
        if stdout is None:
            self._threads.append(threading.Thread(target=self._read_out, daemon=True))
        for t in self._threads:
            t.start()
        if ready:
            self.started(ready_timeout)

    def started(self, timeout: float = TIMEOUT) -> str:
        """Wait until usniff captures; its announcement line.  A usniff that exits
        first, or stays silent for ``timeout`` seconds, fails with its stderr."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.kill()
                for t in self._threads:
                    t.join(5)
                raise RuntimeError(
                    f"usniff did not become ready (exit {self.proc.returncode}): "
                    f"{self.args} {self.stderr!r}"
                )
        return self._ready_line

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            text = line.decode(errors="replace")
            self._err.append(text)
            if READY in text and not self._ready.is_set():
                self._ready_line = text
                self._ready.set()

    def _read_out(self) -> None:
        out = self.proc.stdout
        assert out is not None
        for chunk in iter(lambda: os.read(out.fileno(), 65536), b""):
            with self._more:
                self._out += chunk
                self._more.notify_all()
        with self._more:
            self._more.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    @property
    def stdout(self) -> bytes:
        return bytes(self._out)

    def stdout_lines(self, n: int, timeout: float = TIMEOUT) -> list[bytes]:
        """Wait for ``n`` more lines on stdout (each with its newline)."""
        deadline = time.monotonic() + timeout
        with self._more:
            while True:
                lines = bytes(self._out[self._taken :]).splitlines(keepends=True)
                whole = [line for line in lines if line.endswith(b"\n")]
                if len(whole) >= n:
                    got = whole[:n]
                    self._taken += sum(map(len, got))
                    return got
                left = deadline - time.monotonic()
                ended = not self._threads[-1].is_alive()  # the stdout reader: stdout closed
                assert left > 0 and not ended, (
                    f"usniff stdout: {len(whole)} of {n} lines; stderr {self.stderr!r}"
                )
                self._more.wait(max(0.0, min(left, 0.1)))

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the exit (killed, and a failure, after ``timeout`` seconds); its
        status.  stdout and stderr are complete afterwards."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"usniff still running after {timeout}s: {self.stderr!r}"
            ) from None
        for t in self._threads:
            t.join(10)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> Result:
        """Send ``sig`` and wait for the exit; stdout/stderr are complete afterwards."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait(timeout)
        return Result(rc, self.stdout, self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Usniff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", TIMEOUT)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)
