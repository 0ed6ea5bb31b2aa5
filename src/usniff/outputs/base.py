"""The interface every output (text, JSON lines, pcapng) implements.

The capture loop hands each batch of records to :meth:`Output.write`, calls
:meth:`Output.flush` at least once a second and :meth:`Output.close` once at
the end.  An output must not block the loop for long: it writes with one
system call per batch at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from usniff.events import CaptureStats, Record


def clock_text(ts: float) -> str:
    """HH:MM:SS.ffffff local time; a time the calendar cannot hold (a damaged
    file's year 294247) as plain epoch seconds."""
    try:
        return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")
    except (ValueError, OverflowError, OSError):
        return f"{ts:.6f}"


class OutputError(Exception):
    """Writing failed for good (disk full, I/O error, closed pipe).

    The message is meant for humans: it names the file, the cause and how much
    of the file is still readable.  The capture must stop.
    """


class Output(Protocol):
    def write(self, batch: Sequence[Record]) -> None: ...

    def flush(self) -> None: ...

    def close(self, stats: CaptureStats) -> None: ...
