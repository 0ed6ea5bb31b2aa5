"""Decoded output: one line per transaction, notice or undecoded record, or
JSON lines, with an optional live statistics table.

:class:`DecodedOutput` is an Output (``write(batch, limit)``, ``flush()``,
``close(stats)``) around the decoding engine (:class:`usniff.decoders.engine.Decoding`).
Every line printed for a person goes through :func:`usniff.printable.printable`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import TextIO, cast

from rich.console import Console
from rich.live import Live

from .._events import Packed
from ..containers import Containers
from ..decoders.base import Notice, Transaction
from ..decoders.engine import DecoderOptions, Decoding, Event, Undecoded
from ..events import CaptureStats, Record
from ..printable import printable
from . import raw
from .base import clock_text, unpacked, who
from .fast import Native, NativeStats, NativeText
from .stats import Stats

WIDE = 1000  # columns for the statistics table when stderr is not a terminal (never cut)


def format_text(ev: Event, containers: Containers | None = None) -> str:
    """One line; every character that came from the capture is terminal-safe.
    ``containers`` names the processes' containers (``comm[pid]@container``)."""
    label = containers.label if containers is not None else None
    if isinstance(ev, Undecoded):
        rec = ev.record
        line = f"{raw.header(rec, label)} [not decoded: {ev.reason}]"
        return printable(line + (" " + raw.escaped(rec.data) if rec.data else ""))
    if isinstance(ev, Notice):
        return printable(f"{clock_text(ev.ts)} {ev.conn} [{ev.kind}] {ev.summary}")
    client = who(ev.client_comm, ev.client_pid, label(ev.client_cgroup) if label else "")
    server = who(ev.server_comm, ev.server_pid, label(ev.server_cgroup) if label else "")
    parts = [f"{clock_text(ev.ts_request)} {client} -> {server}"]
    if ev.protocol == "mysql" and ev.details.get("conn_id"):
        db = ev.details.get("db")
        parts.append(f"conn {ev.details['conn_id']}" + (f" db={db}" if db else ""))
    parts.append(ev.request)
    if ev.reply:
        parts.append(("-> " if ev.protocol in ("mysql", "postgres") else "") + ev.reply)
    if ev.cut:
        total = ev.bytes_in + ev.bytes_out
        parts.append(f"[cut: {total - ev.cut} of {total} bytes]")
    latency = ev.latency
    if latency is not None:
        parts.append(f"{latency * 1000:.3f} ms")
    else:
        parts.append("unanswered" if ev.unanswered else "-")
    return printable("  ".join(parts))


def to_json(ev: Event, containers: Containers | None = None) -> str:
    if isinstance(ev, Undecoded):
        row = raw.record_json(ev.record, containers)
        row["sock_type"] = row.pop("type")
        row.update(type="record", conn=ev.conn, not_decoded=ev.reason)
    else:
        row = asdict(ev)
        if isinstance(ev, Transaction):
            row["type"] = "transaction"
            row["latency"] = ev.latency
            for end, cgroup in (("client", ev.client_cgroup), ("server", ev.server_cgroup)):
                if containers is not None and (name := containers.label(cgroup)):
                    row[f"{end}_container"] = name
        else:
            row["type"] = "notice"
            row["direction"] = ev.direction.name.lower()
    return json.dumps(row, default=str, separators=(",", ":"))


class DecodedOutput:
    """Output printing decoded transactions (text or JSON lines), the raw records
    of connections it does not decode, and optional statistics."""

    REFRESH = 0.5  # seconds between live statistics redraws

    def __init__(
        self,
        stream: TextIO | None,
        protocol: str = "auto",
        fmt: str = "text",
        stats: bool = False,
        redact: bool = False,
        stats_stream: TextIO | None = None,
        live: bool = False,
        listeners: Sequence[Callable[[Transaction | Undecoded], None]] = (),
        options: DecoderOptions | None = None,
        containers: Containers | None = None,
    ) -> None:
        """``live``: records arrive as they are sent (not read from a file), so a
        connection undecided for ``Decoding.UNDECIDED_WAIT`` seconds of wall-clock
        time is shown raw at the next ``write``, even when no record follows.
        ``listeners`` are given every transaction printed and every record not decoded
        (--metrics, --otlp).

        ``stream`` None: no lines, the table only (``stats`` must be True); the items
        (``write``'s count, -c) are then the transactions counted, and what was not
        decoded is counted in a line at the end.  Without listeners, the plain RESP, MySQL
        and PostgreSQL connections are then counted in C
        (:class:`~usniff.outputs.fast.NativeStats`); with text lines alone, their lines
        are rendered in C (:class:`~usniff.outputs.fast.NativeText`)."""
        if fmt not in ("text", "json"):
            raise ValueError(f"format must be text or json, not {fmt!r}")
        if stream is None and not stats:
            raise ValueError("without a stream for the lines, the output is the table")
        self.stream = stream
        self.fmt = fmt
        self.containers = containers or Containers()
        self.decoding = Decoding(protocol, redact, options)
        self.live = live
        self.stats = Stats() if stats else None
        self.listeners = listeners
        self.not_decoded: Counter[str] = Counter()  # without lines: records, by reason
        self.lost_sync = 0  # without lines: notices of a decoder that lost sync
        self._native: Native | None = None
        if stream is None and self.stats is not None and not listeners:
            self._native = NativeStats(self.decoding, self.stats, self._print, self.not_decoded)
        elif stream is not None and fmt == "text" and self.stats is None and not listeners:
            self._native = NativeText(self.decoding, stream, self.containers, self._print)
        self._console = Console(file=stats_stream, stderr=stats_stream is None)
        if not self._console.is_terminal:  # a file or pipe: print the table whole
            self._console.width = WIDE
        self._live: Live | None = None
        self._last_refresh = 0.0
        self._left: int | None = None  # lines still allowed (write's limit), None: no limit
        if self.stats is not None and self._console.is_terminal:
            self._live = Live(console=self._console, auto_refresh=False, transient=True)
            self._live.start()

    @property
    def takes_packed(self) -> bool:
        """Whether ``write`` takes the capture's Packed records: only when the table
        alone or text lines alone are made, which the native core reads from their C
        fields."""
        return self._native is not None

    frames_packed = False

    def write(self, batch: Sequence[Record | Packed], limit: int = 0) -> int:
        self._left = limit or None
        if self._native is not None and not limit:
            now = time.time() if self.live else None
            printed = self._native.feed(batch if isinstance(batch, list) else list(batch), now)
        else:
            if self._native is not None:
                printed = self._native.release()  # -c counts each transaction: in Python
                self._left = max(0, limit - printed)
            else:
                printed = 0
            # Packed records come only when takes_packed (cast: no copy)
            records = (
                unpacked(batch) if self._native is not None else cast("Sequence[Record]", batch)
            )
            events = self.decoding.feed(records)
            if self.live:
                self.decoding.expire(time.time(), events)
            printed += self._print(events)
        now = time.monotonic()
        if (
            self._live is not None
            and self.stats is not None
            and now - self._last_refresh > (self.REFRESH)
        ):
            self._last_refresh = now
            self._live.update(self.stats.render(), refresh=True)
        return printed

    def flush(self) -> None:
        if self.stream is not None:
            self.stream.flush()

    def close(self, stats: CaptureStats) -> int:
        printed = self._native.release() if self._native is not None else 0
        printed += self._print(self.decoding.finish())
        self.flush()
        if self._live is not None:
            self._live.stop()
        if self.stats is not None:
            self._console.print(self.stats.render())
        if self.not_decoded or self.lost_sync:
            self._console.print(self._not_decoded())
        asm = self.decoding.assembler.stats
        if stats.lost_bytes or asm.gap_bytes:
            self._console.print(
                f"usniff: {stats.lost_bytes} bytes lost in capture, "
                f"{asm.gap_bytes} bytes in {asm.gaps} stream gaps"
            )
        return printed

    def _not_decoded(self) -> str:
        """What the table leaves out (no lines were printed to show it)."""
        parts = [f"{n} records ({reason})" for reason, n in self.not_decoded.most_common()]
        if self.lost_sync:
            parts.append(f"{self.lost_sync} times a decoder lost sync (the requests in "
                         "flight counted without a latency)")  # fmt: skip
        return printable("usniff: not in the table: " + "; ".join(parts))

    def _count(self, events: list[Event]) -> int:
        """The transactions among ``events`` into the table (within the limit), the rest
        counted; returns the transactions counted."""
        assert self.stats is not None
        counted = 0
        for ev in events:
            if isinstance(ev, Transaction):
                if self._left is not None and counted >= self._left:
                    break
                self.stats.add(ev)
                for listener in self.listeners:
                    listener(ev)
                counted += 1
            elif isinstance(ev, Undecoded):
                self.not_decoded[ev.reason] += 1
                for listener in self.listeners:
                    listener(ev)
            elif ev.kind == "undecodable":
                self.lost_sync += 1
        if self._left is not None:
            self._left -= counted
        return counted

    def _print(self, events: list[Event]) -> int:
        """Print ``events`` (within the limit); returns the lines printed (without a
        stream: the transactions counted)."""
        if self.stream is None:
            return self._count(events)
        if self._left is not None:
            events = events[: self._left]
            self._left -= len(events)
        if not events:
            return 0
        fmt = to_json if self.fmt == "json" else format_text
        names = self.containers
        lines = []
        for ev in events:
            if isinstance(ev, Transaction) and self.stats is not None:
                self.stats.add(ev)
            if isinstance(ev, (Transaction, Undecoded)):
                for listener in self.listeners:
                    listener(ev)
            lines.append(fmt(ev, names))
        self.stream.write("\n".join(lines) + "\n")
        return len(lines)
