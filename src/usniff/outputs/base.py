"""The interface every output (text, JSON lines, pcapng) implements.

The capture loop hands each batch of records to :meth:`Output.write`, calls
:meth:`Output.flush` at least once a second and :meth:`Output.close` once at
the end.  An output must not block the loop for long: it writes with one
system call per batch at most.

``write`` reports how many items it emitted, so that ``-c N`` stops after N
of what the user sees: records for the byte views and pcapng, lines
(transactions, notices, undecoded records) for the decoded output.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

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


Item = TypeVar("Item", contravariant=True)


class Sink(Protocol[Item]):
    """What consumes batches of ``Item``: every output takes Records
    (:data:`Output`); the pcapng output also takes the capture's Packed records."""

    def write(self, batch: Sequence[Item], limit: int = 0) -> int:
        """Emit ``batch``: at most ``limit`` items when ``limit`` > 0 (and nothing more
        until the next ``write``, ``close`` included).  Returns the items emitted."""
        ...

    def flush(self) -> None: ...

    def close(self, stats: CaptureStats) -> int:
        """Finish (end of input): returns the items emitted while finishing, within
        the last ``write``'s limit (the decoded output's pending transactions)."""
        ...


Output = Sink[Record]
