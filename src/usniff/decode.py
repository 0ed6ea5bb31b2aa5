"""Glue for the CLI: Records -> streams -> protocol decoders -> lines / JSON / statistics.

* :class:`Decoding` is the engine: feed it Records, get decoder events with
  the connection, socket path and client/server pid+comm filled in.
* :func:`decode_records` decodes a finite list/iterator offline (``usniff read``).
* :class:`DecodedOutput` is an Output (``write(batch)``, ``flush()``,
  ``close(stats)``) printing one line per transaction, or JSON lines, with an
  optional live statistics table.
"""

from __future__ import annotations

import bisect
import heapq
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from .decoders.base import Decoder, DecoderEvent, Notice, Transaction
from .decoders.detect import ENOUGH, detect
from .decoders.mysql import MysqlDecoder
from .decoders.resp import RespDecoder
from .events import CaptureStats, Record
from .outputs.base import clock_text
from .streams import Close, ConnKey, Data, Direction, Gap, Open, StreamAssembler, StreamEvent

PROTOCOLS = ("auto", "resp", "mysql")
DECODERS: dict[str, type[RespDecoder] | type[MysqlDecoder]] = {
    "resp": RespDecoder,
    "mysql": MysqlDecoder,
}
MAX_UNDECIDED = 64 * 1024  # bytes buffered per connection while detecting


@dataclass(slots=True)
class _Conn:
    open: Open
    protocol: str | None = None
    decoder: Decoder | None = None
    pending: list[StreamEvent] = field(default_factory=list)
    pending_bytes: int = 0
    heads: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    pids: list[int] = field(default_factory=lambda: [0, 0])
    comms: list[str] = field(default_factory=lambda: ["", ""])
    inodes: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def name(self) -> str:
        """client-server socket inodes, as `ss -x` shows them ("?" while not known)."""
        return "-".join(str(i or "?") for i in self.inodes)

    def learn(self, ev: Data) -> None:
        """Both ends' process and inode, from one end's data (which names its peer)."""
        d = ev.direction
        self.pids[d], self.comms[d], self.inodes[d] = ev.pid, ev.comm, ev.inode
        if not self.pids[1 - d] and ev.peer_pid:
            self.pids[1 - d], self.comms[1 - d] = ev.peer_pid, ev.peer_comm


class Decoding:
    """Records in, decoder events (with endpoints filled in) out."""

    def __init__(self, protocol: str = "auto", redact: bool = False) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.protocol = protocol
        self.redact = redact
        self.assembler = StreamAssembler()
        self.protocols_seen: dict[str, int] = {}
        self._conns: dict[ConnKey, _Conn] = {}

    def feed(self, records: Iterable[Record]) -> list[DecoderEvent]:
        out: list[DecoderEvent] = []
        for rec in records:
            for ev in self.assembler.feed(rec):
                self._stream_event(ev, out)
        return out

    def finish(self) -> list[DecoderEvent]:
        """End of input: flush reassembly, close every decoder."""
        out: list[DecoderEvent] = []
        for ev in self.assembler.flush():
            self._stream_event(ev, out)
        for conn in list(self._conns.values()):
            self._close(conn, out)
        self._conns.clear()
        return out

    def _stream_event(self, ev: StreamEvent, out: list[DecoderEvent]) -> None:
        if isinstance(ev, Open):
            conn = self._conns[ev.conn] = _Conn(ev)
            if self.protocol != "auto":
                self._decide(conn, self.protocol, out)
            return
        conn_or_none = self._conns.get(ev.conn)
        if conn_or_none is None:
            return
        conn = conn_or_none
        if isinstance(ev, Close):
            if ev.direction is Direction.CLIENT or not conn.open.roles_known:
                self._close(conn, out)
                del self._conns[ev.conn]
            return
        if isinstance(ev, Data):
            conn.learn(ev)
        if conn.protocol is None:
            self._detect(conn, ev, out)
        elif conn.decoder is not None:
            self._decode(conn, ev, out)

    def _detect(self, conn: _Conn, ev: Data | Gap, out: list[DecoderEvent]) -> None:
        conn.pending.append(ev)
        if isinstance(ev, Data):
            head = conn.heads[ev.direction]
            head += ev.data[: max(0, ENOUGH - len(head))]
            conn.pending_bytes += len(ev.data)
        found = detect(bytes(conn.heads[0]), bytes(conn.heads[1]))
        if found is None and conn.pending_bytes > MAX_UNDECIDED:
            found = "unknown"
        if found is not None:
            self._decide(conn, found, out)

    def _decide(self, conn: _Conn, protocol: str, out: list[DecoderEvent]) -> None:
        conn.protocol = protocol
        self.protocols_seen[protocol] = self.protocols_seen.get(protocol, 0) + 1
        factory = DECODERS.get(protocol)
        pending, conn.pending, conn.heads = conn.pending, [], (bytearray(), bytearray())
        if factory is None:
            ts = pending[0].ts if pending else conn.open.ts
            label = Notice(protocol, Direction.CLIENT, "label", f"{protocol} (not decoded)", ts)
            self._emit(conn, [label], out)
            return
        conn.decoder = factory(redact=self.redact)
        for ev in pending:
            self._decode(conn, ev, out)

    def _decode(self, conn: _Conn, ev: StreamEvent, out: list[DecoderEvent]) -> None:
        decoder = conn.decoder
        assert decoder is not None
        if isinstance(ev, Data):
            self._emit(conn, decoder.feed(ev.direction, ev.data, ev.ts), out)
        elif isinstance(ev, Gap):
            self._emit(conn, decoder.gap(ev.direction, ev.length), out)

    def _close(self, conn: _Conn, out: list[DecoderEvent]) -> None:
        if conn.decoder is not None:
            self._emit(conn, conn.decoder.close(), out)

    def _emit(self, conn: _Conn, events: list[DecoderEvent], out: list[DecoderEvent]) -> None:
        for ev in events:
            ev.conn = conn.name
            if isinstance(ev, Transaction):
                ev.path = conn.open.path
                ev.client_pid, ev.client_comm = conn.pids[0], conn.comms[0]
                ev.server_pid, ev.server_comm = conn.pids[1], conn.comms[1]
            out.append(ev)


def decode_records(
    records: Iterable[Record], protocol: str = "auto", redact: bool = False
) -> Iterator[DecoderEvent]:
    """Decode a finite sequence of Records (e.g. read back from a file)."""
    decoding = Decoding(protocol, redact)
    for rec in records:
        yield from decoding.feed((rec,))
    yield from decoding.finish()


# --------------------------------------------------------------------------- formatting


def _who(comm: str, pid: int) -> str:
    return f"{comm or '?'}[{pid}]" if pid else comm or "?"


def format_text(ev: DecoderEvent) -> str:
    if isinstance(ev, Notice):
        return f"{clock_text(ev.ts)} {ev.conn} [{ev.kind}] {ev.summary}"
    client = _who(ev.client_comm, ev.client_pid)
    server = _who(ev.server_comm, ev.server_pid)
    parts = [f"{clock_text(ev.ts_request)} {client} -> {server}"]
    if ev.protocol == "mysql" and ev.details.get("conn_id"):
        db = ev.details.get("db")
        parts.append(f"conn {ev.details['conn_id']}" + (f" db={db}" if db else ""))
    parts.append(ev.request)
    if ev.reply:
        parts.append(("-> " if ev.protocol == "mysql" else "") + ev.reply)
    latency = ev.latency
    parts.append(f"{latency * 1000:.3f} ms" if latency is not None else "-")
    return "  ".join(parts)


def to_json(ev: DecoderEvent) -> str:
    row = asdict(ev)
    if isinstance(ev, Transaction):
        row["type"] = "transaction"
        row["latency"] = ev.latency
    else:
        row["type"] = "notice"
        row["direction"] = ev.direction.name.lower()
    return json.dumps(row, default=str, separators=(",", ":"))


# --------------------------------------------------------------------------- statistics


@dataclass(slots=True)
class _Row:
    count: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # sorted
    bytes_in: int = 0
    bytes_out: int = 0


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return 0.0
    rank = max(1, -(-len(values) * p // 100))
    return values[int(rank) - 1]


class Stats:
    """Per (protocol, command / query shape) counts, errors, latency percentiles, bytes."""

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
        table = Table(title="usniff: per command", expand=False)
        for col in ("protocol", "command", "count", "errors", "p50 ms", "p95 ms", "p99 ms",
                    "max ms", "bytes in", "bytes out"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("protocol", "command") else "right")
        ordered = sorted(self.rows.items(), key=lambda kv: -kv[1].count)
        for (protocol, command), row in ordered:
            lat = row.latencies
            ms = [f"{percentile(lat, p) * 1000:.3f}" for p in (50, 95, 99)]
            top = f"{lat[-1] * 1000:.3f}" if lat else "-"
            table.add_row(protocol, command, str(row.count), str(row.errors), *ms, top,
                          str(row.bytes_in), str(row.bytes_out))  # fmt: skip
        slow = Table(title="slowest requests")
        slow.add_column("ms", justify="right")
        slow.add_column("request")
        for latency, _, text in sorted(self.slowest, reverse=True):
            slow.add_row(f"{latency * 1000:.3f}", text)
        return Group(table, slow)


class DecodedOutput:
    """Output printing decoded transactions (text or JSON lines) and optional statistics."""

    REFRESH = 0.5  # seconds between live statistics redraws

    def __init__(
        self,
        stream: TextIO,
        protocol: str = "auto",
        fmt: str = "text",
        stats: bool = False,
        redact: bool = False,
        stats_stream: TextIO | None = None,
    ) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"format must be text or json, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.decoding = Decoding(protocol, redact)
        self.stats = Stats() if stats else None
        self._console = Console(file=stats_stream, stderr=stats_stream is None)
        self._live: Live | None = None
        self._last_refresh = 0.0
        if self.stats is not None and self._console.is_terminal:
            self._live = Live(console=self._console, auto_refresh=False, transient=True)
            self._live.start()

    def write(self, batch: Sequence[Record]) -> None:
        self._print(self.decoding.feed(batch))
        now = time.monotonic()
        if (
            self._live is not None
            and self.stats is not None
            and now - self._last_refresh > (self.REFRESH)
        ):
            self._last_refresh = now
            self._live.update(self.stats.render(), refresh=True)

    def flush(self) -> None:
        self.stream.flush()

    def close(self, stats: CaptureStats) -> None:
        self._print(self.decoding.finish())
        self.stream.flush()
        if self._live is not None:
            self._live.stop()
        if self.stats is not None:
            self._console.print(self.stats.render())
        asm = self.decoding.assembler.stats
        if stats.lost_bytes or asm.gap_bytes:
            self._console.print(
                f"usniff: {stats.lost_bytes} bytes lost in capture, "
                f"{asm.gap_bytes} bytes in {asm.gaps} stream gaps"
            )

    def _print(self, events: list[DecoderEvent]) -> None:
        if not events:
            return
        fmt = to_json if self.fmt == "json" else format_text
        lines = []
        for ev in events:
            if self.stats is not None and isinstance(ev, Transaction):
                self.stats.add(ev)
            lines.append(fmt(ev))
        self.stream.write("\n".join(lines) + "\n")
