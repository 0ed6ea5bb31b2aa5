"""The capture loop: Capture -> outputs, with -c, --duration and clean stops."""

from __future__ import annotations

import contextlib
import gc
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from ..capture.collector import Capture, CaptureOptions
from ..capture.records import R, RecordAssembler
from ..events import CaptureStats
from ..outputs.base import Output, OutputError, Sink, packed_sinks
from .extcap import CaptureOptions as ExtcapOptions

FLUSH_EVERY = 1.0  # seconds between write-outs of the outputs (-U: after every batch)
POLL_WAIT = 0.2  # longest wait for records in one cap.poll (the collector wakes every capture.POLL)
GC_YOUNG = 100_000  # net allocations between young collections while capturing


class _Stop:
    """SIGINT, SIGTERM, SIGHUP (the terminal went away) and SIGPIPE set a flag;
    the loop notices within one poll timeout and ends like at -c or --duration:
    outputs closed (pcapng statistics block), summary printed.  tcpdump does
    the same on these signals.  A write to a pipe whose reader left still
    fails with EPIPE (the outputs report that), the signal only stops the loop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        for sig in self.SIGNALS:
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Outcome:
    stats: CaptureStats
    emitted: int  # items the first output emitted (what -c counts)


def run(
    cap: Capture,
    outputs: Sequence[Output],
    count: int = 0,
    duration: float = 0.0,
    on_ready: Callable[[], None] | None = None,
    flush_every: float = FLUSH_EVERY,
) -> Outcome:
    """Poll until the first output emitted -c items, --duration seconds or a
    signal; close outputs.  Items are what the user sees: records for the byte
    views and pcapng, lines for the decoded output (Output.write's count).

    ``on_ready`` runs once the signals of :class:`_Stop` stop the loop cleanly (the
    CLI announces itself there, so a signal right after the announcement still gives
    a summary).  Outputs are flushed every ``flush_every`` seconds (0, for -U: after
    every batch), so SIGKILL loses at most what was captured since: ``flush_every``
    + one poll (POLL_WAIT), and never more than pcapng's FLUSH_BYTES of framed packets,
    which the writer writes out whenever it has that much.
    """
    # Everything allocated so far (modules, the loaded BPF object) lives as long
    # as the capture: leave it out of the cyclic GC's full collections, which
    # otherwise re-traverse it every few hundred thousand records.
    gc.freeze()
    # A Record counts towards the young generation's threshold when allocated,
    # although usniff._events untracks it, and a poll's batch (up to ~50k records)
    # stays alive until written: at the default threshold (700) a collection
    # ran every few hundred records. Records form no cycles; cycles elsewhere
    # are still collected, after GC_YOUNG net allocations (what that saves:
    # docs/performance.md, "Collector").
    thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, 50, 50)
    # Only outputs that read Packed records from their C fields (-w, the extcap,
    # --stats or --metrics counted natively): the capture hands them over
    # ("packed records" in _events.c).
    packers = packed_sinks(outputs)
    emitted = 0
    try:
        if packers is not None:
            sums = any(out.frames_packed for out in packers)
            packed = RecordAssembler(cap.stats, packed=True, sums=sums)
            emitted = _pump(cap, packed, packers, count, duration, on_ready, flush_every)
        else:
            emitted = _pump(cap, cap.records, outputs, count, duration, on_ready, flush_every)
    finally:
        closed = [out.close(cap.stats) for out in outputs]
        cap.close()
        gc.set_threshold(*thresholds)
    return Outcome(cap.stats, emitted + (closed[0] if closed else 0))


def _pump(
    cap: Capture,
    records: RecordAssembler[R],
    outputs: Sequence[Sink[R]],
    count: int,
    duration: float,
    on_ready: Callable[[], None] | None,
    flush_every: float,
) -> int:
    """The loop of :func:`run`: batches from ``records`` to ``outputs``; the items emitted."""
    emitted = 0

    def write(batch: list[R]) -> int:
        """Hand ``batch`` to every output, each emitting at most what -c still allows."""
        return write_batch(outputs, batch, count - emitted if count else 0)

    finishing = False
    deadline = time.monotonic() + duration if duration else float("inf")
    next_flush = time.monotonic() + flush_every
    try:
        with _Stop() as stop:
            if on_ready is not None:
                on_ready()
            while not stop.requested:
                now = time.monotonic()
                if now >= deadline:
                    break
                batch = cap.poll(min(POLL_WAIT, max(0.0, deadline - now)), records)
                emitted += write(batch)
                if count and emitted >= count:
                    break
                if time.monotonic() >= next_flush:
                    for out in outputs:
                        out.flush()
                    next_flush = time.monotonic() + flush_every
            if not count or emitted < count:
                finishing = True
                emitted += write(cap.finish(records))
    except OutputError:
        if not finishing:  # what the capture still holds was captured: the output counts it
            with contextlib.suppress(OutputError):
                write(cap.finish(records))
        raise
    return emitted


def write_batch(outputs: Sequence[Sink[R]], batch: Sequence[R], limit: int = 0) -> int:
    """Write ``batch`` to every output (at most ``limit`` items each, when > 0);
    the items the first output emitted.  Empty batches are written too: every poll
    lets an output emit what it held back (DecodedOutput's undecided connections)."""
    emitted = [out.write(batch, limit) for out in outputs]
    return emitted[0] if emitted else len(batch)


def run_capture(options: ExtcapOptions, output: Output) -> None:
    """Entry point for the Wireshark extcap: what the user chose in its dialog."""
    paths = [options.path] if options.path else []
    opts = CaptureOptions(paths=paths, pids=[options.pid] if options.pid else [])
    cap = Capture(opts)
    try:
        run(cap, [output])
    finally:
        cap.close()  # run() skips it when closing the output fails (Wireshark closed the fifo)
