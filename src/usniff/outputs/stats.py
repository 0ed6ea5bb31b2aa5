"""The statistics table (``--stats``): per command counts, errors and latency
percentiles of decoded transactions, rendered with rich."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..decoders.base import Transaction
from ..printable import printable

TITLE = "usniff: per command; latency = server time, request's last byte to reply's first byte"


@dataclass(slots=True)
class _Row:
    count: int = 0
    errors: int = 0
    unanswered: int = 0
    latencies: list[float] = field(default_factory=list)  # sorted
    bytes_in: int = 0
    bytes_out: int = 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted, non-empty ``values``."""
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


def _cell(text: str) -> Text:
    """A table cell from captured text: escaped, and never read as rich markup."""
    return Text(printable(text))


class Stats:
    """Per (protocol, command / query shape) counts, errors, unanswered requests,
    latency percentiles of the answered ones, bytes."""

    MAX_SAMPLES = 100_000  # latencies kept per row (beyond: every other sample dropped)

    def __init__(self, top: int = 10) -> None:
        self.rows: dict[tuple[str, str], _Row] = {}
        self.top = top
        self.slowest: list[tuple[float, int, str]] = []  # min-heap of the slowest requests
        self._seq = 0

    def add(self, tx: Transaction) -> None:
        row = self.rows.setdefault((tx.protocol, tx.command), _Row())
        row.count += 1
        row.errors += tx.error
        row.unanswered += tx.unanswered
        row.bytes_in += tx.bytes_in
        row.bytes_out += tx.bytes_out
        latency = tx.latency
        if latency is None:
            return
        bisect.insort(row.latencies, latency)
        if len(row.latencies) > self.MAX_SAMPLES:
            del row.latencies[::2]
        self._seq += 1
        item = (latency, self._seq, f"{tx.client_comm} {tx.request}")
        if len(self.slowest) < self.top:
            heapq.heappush(self.slowest, item)
        elif latency > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, item)

    def render(self) -> Group:
        table = Table(title=TITLE, expand=False)
        for col in ("protocol", "command", "count", "errors", "unanswered", "p50 ms", "p95 ms",
                    "p99 ms", "max ms", "bytes in", "bytes out"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("protocol", "command") else "right")
        ordered = sorted(self.rows.items(), key=lambda kv: -kv[1].count)
        for (protocol, command), row in ordered:
            lat = row.latencies
            ms = [f"{percentile(lat, p) * 1000:.3f}" if lat else "-" for p in (50, 95, 99, 100)]
            counts = (row.count, row.errors, row.unanswered)
            table.add_row(_cell(protocol), _cell(command), *map(str, counts), *ms,
                          str(row.bytes_in), str(row.bytes_out))  # fmt: skip
        slow = Table(title="slowest requests")
        slow.add_column("ms", justify="right")
        slow.add_column("request")
        for latency, _, text in sorted(self.slowest, reverse=True):
            slow.add_row(f"{latency * 1000:.3f}", _cell(text))
        return Group(table, slow)
