"""The statistics table (``--stats``): per command counts, errors and latency
percentiles of decoded transactions, rendered with rich."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..decoders.base import Transaction
from ..printable import printable
from .histogram import Histogram

if TYPE_CHECKING:
    from ._fast import Row  # a type of _fast.pyi only

TITLE = "usniff: per command; latency = server time, request's last byte to reply's first byte"


PERCENTILES = (50, 95, 99, 100)


@dataclass(slots=True)
class Tally:
    """Counts of one operation's transactions (the --stats table, --metrics)."""

    count: int = 0
    errors: int = 0
    unanswered: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def add(self, tx: Transaction) -> None:
        self.count += 1
        self.errors += tx.error
        self.unanswered += tx.unanswered
        self.bytes_in += tx.bytes_in
        self.bytes_out += tx.bytes_out


@dataclass(slots=True)
class _Row(Tally):
    latencies: Histogram = field(default_factory=Histogram)  # of the answered requests


def _cell(text: str) -> Text:
    """A table cell from captured text: escaped, and never read as rich markup."""
    return Text(printable(text))


class Stats:
    """Per (protocol, command / query shape) counts, errors, unanswered requests,
    latency percentiles of the answered ones, bytes."""

    def __init__(self, top: int = 10) -> None:
        self.rows: dict[tuple[str, str], _Row] = {}
        self.top = top
        self.slowest: list[tuple[float, int, str]] = []  # min-heap of the slowest requests
        self._seq = 0

    def add(self, tx: Transaction) -> None:
        row = self.rows.setdefault((tx.protocol, tx.command), _Row())
        row.add(tx)
        latency = tx.latency
        if latency is None:
            return
        row.latencies.add(latency)
        if self.takes(latency):
            self.push(latency, f"{tx.client_comm} {tx.request}")

    def merge(self, rows: Sequence[Row]) -> None:
        """Add the counts of answered transactions counted elsewhere (outputs/fast.py):
        per protocol and command, count, errors, bytes in and out, latency buckets and the
        largest."""
        for _, protocol, command, count, errors, bytes_in, bytes_out, buckets, largest, _ in rows:
            row = self.rows.setdefault((protocol, command), _Row())
            row.count += count
            row.errors += errors
            row.bytes_in += bytes_in
            row.bytes_out += bytes_out
            row.latencies.merge(buckets, largest)

    def takes(self, latency: float) -> bool:
        """Would the slowest list take a request of this latency now?"""
        return len(self.slowest) < self.top or latency > self.slowest[0][0]

    def push(self, latency: float, text: str) -> None:
        """Into the slowest list (after :meth:`takes`)."""
        self._seq += 1
        if len(self.slowest) < self.top:
            heapq.heappush(self.slowest, (latency, self._seq, text))
        else:
            heapq.heapreplace(self.slowest, (latency, self._seq, text))

    def render(self) -> Group:
        table = Table(title=TITLE, expand=False)
        for col in ("protocol", "command", "count", "errors", "unanswered", "p50 ms", "p95 ms",
                    "p99 ms", "max ms", "bytes in", "bytes out"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("protocol", "command") else "right")
        # ties by name: the same table whichever path counted first (outputs/fast.py)
        ordered = sorted(self.rows.items(), key=lambda kv: (-kv[1].count, kv[0]))
        for (protocol, command), row in ordered:
            lat = row.latencies
            ms = [f"{lat.percentile(p) * 1000:.3f}" if lat.total else "-" for p in PERCENTILES]
            counts = (row.count, row.errors, row.unanswered)
            table.add_row(_cell(protocol), _cell(command), *map(str, counts), *ms,
                          str(row.bytes_in), str(row.bytes_out))  # fmt: skip
        slow = Table(title="slowest requests")
        slow.add_column("ms", justify="right")
        slow.add_column("request")
        for latency, _, text in sorted(self.slowest, reverse=True):
            slow.add_row(f"{latency * 1000:.3f}", _cell(text))
        return Group(table, slow)
