"""Glue for the CLI: Records -> streams -> protocol decoders -> lines / JSON / statistics.

* :class:`Decoding` is the engine: feed it Records, get decoder events with
  the connection, socket path and client/server pid+comm filled in, and
  :class:`Undecoded` records for connections whose protocol it does not decode.
* :func:`decode_records` decodes a finite list/iterator offline (``usniff read``).
* :class:`DecodedOutput` is an Output (``write(batch, limit)``, ``flush()``,
  ``close(stats)``) printing one line per transaction, notice or undecoded
  record, or JSON lines, with an optional live statistics table.

Every line printed for a person goes through :func:`usniff.printable.printable`.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..decoders.base import Decoder, DecoderEvent, Notice, Transaction
from ..decoders.detect import ENOUGH
from ..decoders.registry import BY_NAME, DECODABLE, detect
from ..events import CaptureStats, Record
from ..printable import printable
from ..streams import (
    Close,
    ConnKey,
    Data,
    Gap,
    Open,
    StreamAssembler,
    StreamEvent,
    conn_key,
)
from . import raw
from .base import clock_text
from .histogram import Histogram

PROTOCOLS = ("auto", *DECODABLE)
MAX_UNDECIDED = 64 * 1024  # bytes buffered per connection while detecting
WIDE = 1000  # columns for the statistics table when stderr is not a terminal (never cut)


@dataclass(slots=True)
class Undecoded:
    """A record of a connection usniff does not decode, shown as the raw views show it."""

    record: Record
    reason: str  # why: "protocol not recognised", "http, no decoder", "datagram", ...
    conn: str = ""


Event = DecoderEvent | Undecoded


@dataclass(slots=True)
class _Conn:
    open: Open
    protocol: str | None = None
    decoder: Decoder | None = None
    reason: str = ""  # why the connection's records are shown raw (protocol without decoder)
    pending: list[StreamEvent] = field(default_factory=list)
    pending_bytes: int = 0
    held: list[Record] = field(default_factory=list)  # records kept while undecided
    heads: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    pids: list[int] = field(default_factory=lambda: [0, 0])
    comms: list[str] = field(default_factory=lambda: ["", ""])
    inodes: list[int] = field(default_factory=lambda: [0, 0])
    name: str = "?-?"  # client-server socket inodes, as `ss -x` shows them ("?": not known)

    def learn(self, ev: Data) -> None:
        """Both ends' process and inode, from one end's data (which names its peer)."""
        d = ev.direction
        self.pids[d], self.comms[d] = ev.pid, ev.comm
        if self.inodes[d] != ev.inode:
            self.inodes[d] = ev.inode
            self.name = "-".join(str(i or "?") for i in self.inodes)
        if not self.pids[1 - d] and ev.peer_pid:
            self.pids[1 - d], self.comms[1 - d] = ev.peer_pid, ev.peer_comm


class Decoding:
    """Records in, events out: decoder events (endpoints filled in) for connections
    whose protocol was recognised, :class:`Undecoded` records for the others.

    A connection's records are held while its protocol is undecided; they come
    out raw when it is decided without a decoder, when it closes undecided, or
    when it stays undecided for ``UNDECIDED_WAIT`` seconds of capture time."""

    UNDECIDED_WAIT = 1.0

    def __init__(self, protocol: str = "auto", redact: bool = False) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.protocol = protocol
        self.redact = redact
        self.assembler = StreamAssembler()
        self.protocols_seen: dict[str, int] = {}
        self._conns: dict[ConnKey, _Conn] = {}
        self._decoded = 0  # connections in _conns with a decoder (all of them: nothing to route)
        self._undecided: dict[ConnKey, _Conn] = {}  # holding records, oldest first

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def feed(self, records: Iterable[Record]) -> list[Event]:
        out: list[Event] = []
        ts = 0.0
        for rec in records:
            for ev in self.assembler.feed(rec):
                self._stream_event(ev, out)
            if self._decoded < len(self._conns):
                self._route(rec, out)
            ts = rec.ts
        if ts:
            self.expire(ts, out)
        return out

    def expire(self, now: float, out: list[Event]) -> None:
        """Show the records of connections undecided since before ``now - UNDECIDED_WAIT``."""
        while self._undecided:
            conn = next(iter(self._undecided.values()))
            if now - conn.held[0].ts < self.UNDECIDED_WAIT:
                return
            self._decide(conn, "unknown", out)

    def finish(self) -> list[Event]:
        """End of input: flush reassembly, close every decoder."""
        out: list[Event] = []
        for ev in self.assembler.flush():
            self._stream_event(ev, out)
        for conn in list(self._conns.values()):
            self._close(conn, out)
        self._conns.clear()
        self._decoded = 0
        return out

    def _route(self, rec: Record, out: list[Event]) -> None:
        """Hold or show ``rec`` when its connection is not decoded."""
        conn = self._conns.get(conn_key(rec))
        if conn is None or conn.decoder is not None:
            return
        if conn.protocol is None:
            if not conn.held:
                self._undecided[conn.open.conn] = conn
            conn.held.append(rec)
        else:
            out.append(Undecoded(rec, conn.reason, conn.name))

    def _stream_event(self, ev: StreamEvent, out: list[Event]) -> None:
        if type(ev) is Data:  # the common case, in the fewest steps
            conn_or_none = self._conns.get(ev.conn)
            if conn_or_none is not None:
                conn_or_none.learn(ev)
                if conn_or_none.decoder is not None:
                    events = conn_or_none.decoder.feed(ev.direction, ev.data, ev.ts)
                    self._emit(conn_or_none, events, out)
                elif conn_or_none.protocol is None:
                    self._detect(conn_or_none, ev, out)
            return
        if isinstance(ev, Open):
            conn = self._conns[ev.conn] = _Conn(ev)
            if self.protocol != "auto":
                self._decide(conn, self.protocol, out)
            elif ev.sock_type == "dgram":  # RESP and MySQL are stream protocols
                self._decide(conn, "datagram", out)
            return
        conn_or_none = self._conns.get(ev.conn)
        if conn_or_none is None:
            return
        conn = conn_or_none
        if isinstance(ev, Close):
            if ev.final:
                self._close(conn, out)
                del self._conns[ev.conn]
                self._decoded -= conn.decoder is not None
            return
        if isinstance(ev, Data):
            conn.learn(ev)
        if conn.protocol is None:
            self._detect(conn, ev, out)
        elif conn.decoder is not None:
            self._decode(conn, ev, out)

    def _detect(self, conn: _Conn, ev: Data | Gap, out: list[Event]) -> None:
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

    def _decide(self, conn: _Conn, protocol: str, out: list[Event]) -> None:
        conn.protocol = protocol
        self.protocols_seen[protocol] = self.protocols_seen.get(protocol, 0) + 1
        factory = BY_NAME[protocol].decoder if protocol in BY_NAME else None
        pending, conn.pending = conn.pending, []
        held, conn.held = conn.held, []
        self._undecided.pop(conn.open.conn, None)
        if factory is None:
            conn.reason = self._reason(conn, protocol)
            out.extend(Undecoded(rec, conn.reason, conn.name) for rec in held)
        else:
            conn.decoder = factory(redact=self.redact)
            self._decoded += 1
            for ev in pending:
                self._decode(conn, ev, out)
        conn.heads = (bytearray(), bytearray())

    @staticmethod
    def _reason(conn: _Conn, protocol: str) -> str:
        if protocol == "datagram":
            return "datagram"
        if protocol != "unknown":
            return f"{protocol}, no decoder"
        client, server = conn.heads
        if client and not server:
            return "protocol not recognised; only the client's side seen"
        if server and not client:
            return "protocol not recognised; only the server's side seen"
        return "protocol not recognised"

    def _decode(self, conn: _Conn, ev: StreamEvent, out: list[Event]) -> None:
        decoder = conn.decoder
        assert decoder is not None
        if isinstance(ev, Data):
            self._emit(conn, decoder.feed(ev.direction, ev.data, ev.ts), out)
        elif isinstance(ev, Gap):
            events = decoder.gap(ev.direction, ev.length, ev.ts, ev.reason == "truncated")
            self._emit(conn, events, out)

    def _close(self, conn: _Conn, out: list[Event]) -> None:
        if conn.decoder is not None:
            self._emit(conn, conn.decoder.close(), out)
        elif conn.protocol is None and conn.held:
            self._decide(conn, "unknown", out)

    def _emit(self, conn: _Conn, events: list[DecoderEvent], out: list[Event]) -> None:
        for ev in events:
            ev.conn = conn.name
            if isinstance(ev, Transaction):
                ev.path = conn.open.path
                ev.client_pid, ev.client_comm = conn.pids[0], conn.comms[0]
                ev.server_pid, ev.server_comm = conn.pids[1], conn.comms[1]
            out.append(ev)


def decode_records(
    records: Iterable[Record], protocol: str = "auto", redact: bool = False
) -> Iterator[Event]:
    """Decode a finite sequence of Records (e.g. read back from a file)."""
    decoding = Decoding(protocol, redact)
    for rec in records:
        yield from decoding.feed((rec,))
    yield from decoding.finish()


# --------------------------------------------------------------------------- formatting


def _who(comm: str, pid: int) -> str:
    return f"{comm or '?'}[{pid}]" if pid else comm or "?"


def format_text(ev: Event) -> str:
    """One line; every character that came from the capture is terminal-safe."""
    if isinstance(ev, Undecoded):
        rec = ev.record
        line = f"{raw.header(rec)} [not decoded: {ev.reason}]"
        return printable(line + (" " + raw.escaped(rec.data) if rec.data else ""))
    if isinstance(ev, Notice):
        return printable(f"{clock_text(ev.ts)} {ev.conn} [{ev.kind}] {ev.summary}")
    client = _who(ev.client_comm, ev.client_pid)
    server = _who(ev.server_comm, ev.server_pid)
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


def to_json(ev: Event) -> str:
    if isinstance(ev, Undecoded):
        row = raw.record_json(ev.record)
        row["sock_type"] = row.pop("type")
        row.update(type="record", conn=ev.conn, not_decoded=ev.reason)
    else:
        row = asdict(ev)
        if isinstance(ev, Transaction):
            row["type"] = "transaction"
            row["latency"] = ev.latency
        else:
            row["type"] = "notice"
            row["direction"] = ev.direction.name.lower()
    return json.dumps(row, default=str, separators=(",", ":"))


# --------------------------------------------------------------------------- statistics

TITLE = "usniff: per command; latency = server time, request's last byte to reply's first byte"


PERCENTILES = (50, 95, 99, 100)


@dataclass(slots=True)
class _Row:
    count: int = 0
    errors: int = 0
    unanswered: int = 0
    latencies: Histogram = field(default_factory=Histogram)  # of the answered requests
    bytes_in: int = 0
    bytes_out: int = 0


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
        row.count += 1
        row.errors += tx.error
        row.unanswered += tx.unanswered
        row.bytes_in += tx.bytes_in
        row.bytes_out += tx.bytes_out
        latency = tx.latency
        if latency is None:
            return
        row.latencies.add(latency)
        if len(self.slowest) < self.top:
            self._seq += 1
            heapq.heappush(self.slowest, (latency, self._seq, f"{tx.client_comm} {tx.request}"))
        elif latency > self.slowest[0][0]:
            self._seq += 1
            heapq.heapreplace(self.slowest, (latency, self._seq, f"{tx.client_comm} {tx.request}"))

    def render(self) -> Group:
        table = Table(title=TITLE, expand=False)
        for col in ("protocol", "command", "count", "errors", "unanswered", "p50 ms", "p95 ms",
                    "p99 ms", "max ms", "bytes in", "bytes out"):  # fmt: skip
            table.add_column(col, justify="left" if col in ("protocol", "command") else "right")
        ordered = sorted(self.rows.items(), key=lambda kv: -kv[1].count)
        for (protocol, command), row in ordered:
            lat = row.latencies
            ms = [
                f"{lat.percentile(p) * 1000:.3f}" if lat.total else "-" for p in (50, 95, 99, 100)
            ]
            counts = (row.count, row.errors, row.unanswered)
            table.add_row(_cell(protocol), _cell(command), *map(str, counts), *ms,
                          str(row.bytes_in), str(row.bytes_out))  # fmt: skip
        slow = Table(title="slowest requests")
        slow.add_column("ms", justify="right")
        slow.add_column("request")
        for latency, _, text in sorted(self.slowest, reverse=True):
            slow.add_row(f"{latency * 1000:.3f}", _cell(text))
        return Group(table, slow)


class DecodedOutput:
    """Output printing decoded transactions (text or JSON lines), the raw records
    of connections it does not decode, and optional statistics."""

    REFRESH = 0.5  # seconds between live statistics redraws

    def __init__(
        self,
        stream: TextIO,
        protocol: str = "auto",
        fmt: str = "text",
        stats: bool = False,
        redact: bool = False,
        stats_stream: TextIO | None = None,
        live: bool = False,
    ) -> None:
        """``live``: records arrive as they are sent (not read from a file), so a
        connection undecided for ``Decoding.UNDECIDED_WAIT`` seconds of wall-clock
        time is shown raw at the next ``write``, even when no record follows."""
        if fmt not in ("text", "json"):
            raise ValueError(f"format must be text or json, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.decoding = Decoding(protocol, redact)
        self.live = live
        self.stats = Stats() if stats else None
        self._console = Console(file=stats_stream, stderr=stats_stream is None)
        if not self._console.is_terminal:  # a file or pipe: print the table whole
            self._console.width = WIDE
        self._live: Live | None = None
        self._last_refresh = 0.0
        self._left: int | None = None  # lines still allowed (write's limit), None: no limit
        if self.stats is not None and self._console.is_terminal:
            self._live = Live(console=self._console, auto_refresh=False, transient=True)
            self._live.start()

    def write(self, batch: Sequence[Record], limit: int = 0) -> int:
        self._left = limit or None
        events = self.decoding.feed(batch)
        if self.live:
            self.decoding.expire(time.time(), events)
        printed = self._print(events)
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
        self.stream.flush()

    def close(self, stats: CaptureStats) -> int:
        printed = self._print(self.decoding.finish())
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
        return printed

    def _print(self, events: list[Event]) -> int:
        """Print ``events`` (within the limit); returns the lines printed."""
        if self._left is not None:
            events = events[: self._left]
            self._left -= len(events)
        if not events:
            return 0
        fmt = to_json if self.fmt == "json" else format_text
        lines = []
        for ev in events:
            if self.stats is not None and isinstance(ev, Transaction):
                self.stats.add(ev)
            lines.append(fmt(ev))
        self.stream.write("\n".join(lines) + "\n")
        return len(lines)
