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

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from usniff._events import Packed
from usniff.events import CaptureStats, Record


def clock_text(ts: float) -> str:
    """HH:MM:SS.ffffff local time; a time the calendar cannot hold (a damaged
    file's year 294247) as plain epoch seconds."""
    global _last_second
    frac, whole = math.modf(ts)
    micros = round(frac * 1e6)  # as datetime.fromtimestamp rounds (half to even)
    if 0 <= micros < 1_000_000 and whole == _last_second[0]:  # one strftime per second
        return f"{_last_second[1]}.{micros:06d}"
    try:
        text = datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")
    except (ValueError, OverflowError, OSError):
        return f"{ts:.6f}"
    if ts >= 0 and 0 <= micros < 1_000_000:
        _last_second = (whole, text[:-7])
    return text


_last_second = (-1.0, "")  # clock_text's last whole second and its HH:MM:SS


def who(comm: str, pid: int, container: str = "") -> str:
    """How a line names a process: ``comm[pid]``, ``comm[pid]@container``."""
    name = f"{comm or '?'}[{pid}]" if pid else comm or "?"
    return f"{name}@{container}" if container else name


class OutputError(Exception):
    """Writing failed for good (disk full, I/O error, closed pipe).

    The message is meant for humans: it names the file, the cause and how much
    of the file is still readable.  The capture must stop.
    """


Item = TypeVar("Item", contravariant=True)


class Sink(Protocol[Item]):
    """What consumes batches of ``Item``: every output takes Records
    (:data:`Output`); some also take the capture's Packed records (:class:`PackedSink`)."""

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


@runtime_checkable
class PackedSink(Sink[Record | Packed], Protocol):
    """An output that can take the capture's Packed records as well as Records, and
    says whether it does as it is set up (``takes_packed``): pcapng, and the natively
    counted --stats table and --metrics, and text lines alone."""

    @property
    def takes_packed(self) -> bool: ...

    @property
    def frames_packed(self) -> bool:
        """Whether it frames their payloads into pcapng (which sums them: the capture
        then sums each as it copies it out of the ring, while it is in the CPU cache)."""
        ...


def packed_sinks(outputs: Sequence[object]) -> list[PackedSink] | None:
    """``outputs`` when every one takes Packed records (the capture then hands them
    over: ``RecordAssembler(packed=True)``), else None."""
    takers = [out for out in outputs if isinstance(out, PackedSink) and out.takes_packed]
    return takers if outputs and len(takers) == len(outputs) else None


def unpacked(batch: Sequence[Record | Packed]) -> list[Record]:
    """The Records of a batch that may hold the capture's Packed records (an output
    whose ``takes_packed`` is true gets them; its Python parts need Records)."""
    return [r.record() if isinstance(r, Packed) else r for r in batch]
