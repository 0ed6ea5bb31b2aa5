"""Shared helpers for the usniff benchmarks: usniff/tracer runners, medians, tables."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import signal
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.usniff import Usniff as Runner

ROOT = Path(__file__).resolve().parent.parent

SUMMARY = re.compile(
    r"usniff: (\d+) records, (\d+) bytes captured \((\d+) kept\), (\d+) bytes lost "
    r"\((\d+) loss records\), backend (\S+)"
)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, str]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


@dataclass
class UsniffResult:
    records: int = 0
    bytes: int = 0
    lost_bytes: int = 0
    lost_records: int = 0
    backend: str = ""
    stderr: str = ""


class Usniff:
    """``with Usniff(args, workdir) as u:`` runs usniff (tests.support.usniff) until the
    block ends (SIGTERM); ``u.result`` then holds its summary line's figures.  stdout
    goes to the file ``stdout`` (default: discarded); ``workdir`` keeps its stderr."""

    def __init__(self, args: list[str], workdir: Path, stdout: str | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.args, self.workdir, self.stdout, self.env = args, workdir, stdout, env
        self.result = UsniffResult()

    def __enter__(self) -> Usniff:
        self._out = open(self.stdout or os.devnull, "wb")  # noqa: SIM115 (closed at exit)
        try:
            self._run = Runner(*self.args, stdout=self._out, env=self.env)
        except BaseException:
            self._out.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let the collector drain what the kernel still holds
        try:
            text = self._run.stop(signal.SIGTERM, timeout=120).stderr
        finally:
            self._out.close()
        (self.workdir / "usniff.err").write_text(text)
        self.result.stderr = text
        m = SUMMARY.search(text)
        if m:
            r = self.result
            r.records, r.bytes = int(m[1]), int(m[2])
            r.lost_bytes, r.lost_records, r.backend = int(m[4]), int(m[5]), m[6]


@contextlib.contextmanager
def background(args: list[str], stderr_to: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process (strace, socat) stopped with SIGTERM at the end."""
    err = stderr_to.open("wb") if stderr_to else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if stderr_to:
            err.close()  # type: ignore[union-attr]


def wait_for_path(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)


def pcapng_payload_by_port(path: Path, server_port: int) -> tuple[int, int]:
    """(bytes sent to the server, bytes sent by it) in a usniff pcapng file."""
    to_server = from_server = 0
    data = path.read_bytes()
    pos, n = 0, len(data)
    u32 = struct.Struct("<II").unpack_from
    while pos + 12 <= n:
        btype, blen = u32(data, pos)
        if btype == 6:  # EPB: 28 bytes of header fields, then the IPv4 packet
            ip = pos + 28
            ihl = (data[ip] & 0x0F) * 4
            total = (data[ip + 2] << 8) | data[ip + 3]
            if data[ip + 9] == 6:
                tcp = ip + ihl
                sport = (data[tcp] << 8) | data[tcp + 1]
                payload = total - ihl - (data[tcp + 12] >> 4) * 4
                if sport == server_port:
                    from_server += payload
                else:
                    to_server += payload
        pos += blen
    return to_server, from_server


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for i, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c: object) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        if abs(c) >= 100:
            return f"{c:,.0f}"
        return f"{c:.1f}" if abs(c) >= 10 else f"{c:.3f}"
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)
