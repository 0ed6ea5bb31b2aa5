"""The native paths of the statistics table (Records -> :class:`~usniff.outputs.stats.Stats`),
of the metrics alone (-> :class:`~usniff.outputs.metrics.Metrics`) and of text lines alone
(-> the lines ``outputs/decoded.py format_text`` makes), with the per-transaction work of
plain RESP connections, and for the table and the metrics of plain MySQL (COM_QUERY)
and PostgreSQL (simple query) connections, in C (``_fast.c``).

The Python engine (:class:`~usniff.decoders.engine.Decoding`) stays the owner of every
connection and the reference: it detects protocols, reorders, resyncs, pairs the
stateful commands, and decodes everything else. When a RESP, MySQL or PostgreSQL
connection is plain (``Decoding.hand_over``: in sync, nothing buffered, FIFO pairing;
SQL: past the login, only queries in flight whose reply has not begun), the C core takes
it over and handles its records for as long as each is the next in order and holds whole
messages it frames exactly; at the first record that is not, it hands the connection
back (``Decoding.take_back``) and the engine decodes that record. The counts, bytes,
latency buckets and slowest requests are those the engine's transactions would have
given (tests/test_native_stats.py, tests/test_native_metrics.py and
tests/test_native_sql.py compare the two), and so are the lines and their order
(tests/test_native_text.py): for text lines the core renders each line only when it
renders it exactly, and otherwise hands the connection back before the record.
The table and the metrics, which show no raw records, also hand the core the
connections the engine decides to show raw (no decoder: a protocol not recognised,
datagrams): it only delivers their records in order and counts them.
:class:`Native` drives the core; :class:`NativeStats` and :class:`NativeMetrics` merge
what it counted, :class:`NativeText` writes the lines it rendered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TextIO, TypeVar

from .._events import Packed
from ..containers import Containers
from ..decoders import mysql, postgres
from ..decoders.base import Request
from ..decoders.engine import OPAQUE, Decoding, Ends, Event, Handover
from ..decoders.mysql import MysqlDecoder
from ..decoders.postgres import PostgresDecoder
from ..decoders.resp import CONTAINERS, MASKED, STATEFUL, RespDecoder
from ..events import ConnKey, Record, conn_key
from ..printable import printable
from ..streams import Position
from ._fast import Core
from .base import clock_text, unpacked, who
from .stats import Stats

if TYPE_CHECKING:
    from ._fast import Handback, Row, Slow  # types of _fast.pyi only
    from .metrics import Metrics  # which drives NativeMetrics


RUN = 64  # most records the engine decodes before the connections they touched may be adopted
SQL_KEYS = {"mysql": mysql.stats_key, "postgres": postgres.stats_key}  # of an SQL text


K = TypeVar("K")


class Labels(Generic[K]):
    """Keys numbered in the order they are first seen: the labels the core counts
    connections under, ``keys[label]`` the key of each."""

    def __init__(self) -> None:
        self.keys: list[K] = []
        self._index: dict[K, int] = {}

    def of(self, key: K) -> int:
        label = self._index.get(key)
        if label is None:
            label = self._index[key] = len(self.keys)
            self.keys.append(key)
        return label


def stats_key(protocol: str, sql: bytes) -> bytes | None:
    """Core's ``shape``: the key the protocol's decoder counts the SQL text ``sql`` under."""
    return SQL_KEYS[protocol](sql)


class Native:
    """Feed Records, get what the core counted merged (:meth:`_merge`); the engine's own
    events (of the connections it decodes) go to ``on_events``, which returns how many
    it counted."""

    # the core takes their connections (OPAQUE: those decoded without a decoder, whose
    # records only the raw views show, it only delivers and counts)
    protocols: tuple[str, ...] = ("resp", "mysql", "postgres", OPAQUE)

    def __init__(
        self, decoding: Decoding, core: Core, on_events: Callable[[list[Event]], int]
    ) -> None:
        self.decoding = decoding
        self.core = core
        self.on_events = on_events
        self._opaque: Labels[tuple[str, str]] = Labels()  # an OPAQUE connection's label

    def feed(self, batch: list[Record | Packed], now: float | None = None) -> int:
        """Decode ``batch`` as ``Decoding.feed`` (then ``expire(now)`` when given);
        returns the transactions counted.  The core reads Packed records from their C
        fields; the engine is given their Records."""
        counted, i, n = 0, 0, len(batch)
        asm = self.decoding.assembler
        while i < n:
            self._seed()
            j, k, back = self.core.feed(batch, i, RUN)
            if j > i:
                counted += self._take()
            if j == n:
                break
            if back is not None:
                self._take_back(back)
            if self.core.owned and asm.open_connections + k - j >= asm.max_connections:
                self.release()  # the assembler may evict: it must see every connection as is
            run = unpacked(batch[j:k])
            counted += self.on_events(self.decoding.feed(run, expire=False))
            seen = self.decoding.protocols_seen
            if any(seen.get(p) for p in self.protocols) and (
                asm.open_connections < asm.max_connections // 2
            ):
                for key in {conn_key(rec) for rec in run}:
                    self._adopt(key)
            i = k
        out: list[Event] = []
        if n and batch[-1].ts:
            self.decoding.expire(batch[-1].ts, out)
        if now is not None:
            self.decoding.expire(now, out)
        counted += self.on_events(out)
        return counted

    def release(self) -> int:
        """Hand every connection back to the engine (before it finishes, or decodes
        with a limit); returns the transactions counted until then."""
        counted = self._take()
        for back in self.core.release_all():
            self._take_back(back)
        return counted

    def _adopt(self, key: ConnKey) -> None:
        if len(key) != 2:  # an unconnected datagram's
            return
        over = self.decoding.hand_over(key, self.protocols)
        if over is None:
            return
        pos, ends = over.position, over.ends
        if not self._adoptable(over):
            pending: list[tuple[object, float, int]] = [(w, w.ts, w.nbytes) for w in over.pending]
            self.decoding.take_back(key, pos, ends, pending, over.state)
            return
        adopted: list[tuple[object, bytes, float, int, bytes | None]] = [
            (r, r.command.encode(), r.ts, r.nbytes, self._text(r)) for r in over.pending
        ]
        if over.protocol == OPAQUE:
            label = self._opaque.of((over.path, over.reason))
        else:
            label = self._label(over.path)
        self.core.adopt(key, pos.server_id, pos.next, pos.started, pos.last_ts, ends.pids,
                        ends.comms, ends.inodes, ends.cgroups, adopted, label,
                        self._names(ends), over.protocol, over.state)  # fmt: skip

    def _take_back(self, back: Handback) -> None:
        key, server, next_, started, last_ts, pids, comms, inodes, cgroups, pending, state = back
        position = Position(server, next_, started, last_ts)
        self.decoding.take_back(key, position, Ends(pids, comms, inodes, cgroups), pending, state)

    def _take(self) -> int:
        """Merge what the core counted since the last take; the transactions."""
        rows, slow, transactions, records = self.core.take()
        decoded = []
        for row in rows:
            if row[1] != OPAQUE:
                decoded.append(row)
            else:  # (label, protocol, command, count, ...)
                self._undecoded(*self._opaque.keys[row[0]], row[3])
        self._merge(decoded, slow)
        self.decoding.assembler.stats.records += records
        return transactions

    def _label(self, path: str) -> int:
        """The label the core counts a connection of socket ``path`` under."""
        return 0

    def _adoptable(self, over: Handover) -> bool:
        """Whether the core may take over the connection handed over as ``over``."""
        return True

    def _text(self, request: Request) -> bytes | None:
        """A request adopted, as the core's lines show it (None: no lines)."""
        return None

    def _names(self, ends: Ends) -> bytes | None:
        """A connection's ends, as the core's lines name them (None: no lines)."""
        return None

    def _seed(self) -> None:
        """Before the core feeds: what it must know of the consumer's state."""

    def _merge(self, rows: list[Row], slow: list[Slow]) -> None:
        raise NotImplementedError

    def _undecoded(self, path: str, reason: str, records: int) -> None:
        """Records of OPAQUE connections the core delivered, counted as the engine's
        Undecoded records would be."""
        raise NotImplementedError


class NativeStats(Native):
    """The statistics table: per command, whatever the socket path, and the slowest
    requests."""

    def __init__(
        self,
        decoding: Decoding,
        stats: Stats,
        on_events: Callable[[list[Event]], int],
        not_decoded: Counter[str] | None = None,
    ) -> None:
        """``not_decoded``: where the records of connections with no decoder are counted,
        by reason; None: nowhere (an output that shows no such count)."""
        core = Core(containers=CONTAINERS, stateful=STATEFUL, top=stats.top, shape=stats_key)
        super().__init__(decoding, core, on_events)
        self.stats = stats
        self.not_decoded = not_decoded
        # the slowest requests' text, as each protocol's decoder gives it
        decoders = (RespDecoder, MysqlDecoder, PostgresDecoder)
        self._texts = {d.protocol: d(decoding.redact) for d in decoders}

    def _seed(self) -> None:
        self.core.seed([latency for latency, _, _ in self.stats.slowest])

    def _undecoded(self, path: str, reason: str, records: int) -> None:
        if self.not_decoded is not None:
            self.not_decoded[reason] += records

    def _merge(self, rows: list[Row], slow: list[Slow]) -> None:
        self.stats.merge(rows)
        for latency, protocol, comm, request in slow:
            if self.stats.takes(latency):
                text = self._texts[protocol].request(request, 0.0, 0).text
                self.stats.push(latency, f"{comm} {text}")


class NativeMetrics(Native):
    """The metrics: per socket path and command, the latencies counted against the
    histogram's upper bounds ``edges`` (metrics.BUCKETS)."""

    def __init__(
        self,
        decoding: Decoding,
        metrics: Metrics,
        on_events: Callable[[list[Event]], int],
        edges: Sequence[float],
    ) -> None:
        core = Core(containers=CONTAINERS, stateful=STATEFUL, top=0, edges=edges, shape=stats_key)
        super().__init__(decoding, core, on_events)
        self.metrics = metrics
        self._paths: Labels[str] = Labels()

    def _label(self, path: str) -> int:
        return self._paths.of(path)

    def _merge(self, rows: list[Row], slow: list[Slow]) -> None:
        self.metrics.merge(rows, self._paths.keys)

    def _undecoded(self, path: str, reason: str, records: int) -> None:
        self.metrics.add_undecoded(path, reason, records)


class NativeText(Native):
    """Text lines alone (outputs/decoded.py ``format_text``): the lines of the plain
    connections' transactions are rendered in C and written to ``stream`` in one write
    per take, in their place among the engine's lines (printed by ``on_events``)."""

    protocols = ("resp",)

    def __init__(
        self,
        decoding: Decoding,
        stream: TextIO,
        containers: Containers,
        on_events: Callable[[list[Event]], int],
    ) -> None:
        # with --redact, the commands whose text or reply may be masked go to Python
        stateful = STATEFUL | MASKED if decoding.redact else STATEFUL
        core = Core(containers=CONTAINERS, stateful=stateful, top=0, clock=clock_text)
        super().__init__(decoding, core, on_events)
        self.stream = stream
        self.containers = containers

    def _adoptable(self, over: Handover) -> bool:
        """Not with requests cut (the core's lines have no ``[cut: ...]``), nor while an
        end's container may still be named (the core names the ends once, here)."""
        settled = self.containers.settled
        return not any(w.cut for w in over.pending) and all(map(settled, over.ends.cgroups))

    def _text(self, request: Request) -> bytes:
        return printable(request.text).encode()

    def _names(self, ends: Ends) -> bytes:
        label = self.containers.label
        client, server = (who(ends.comms[d], ends.pids[d], label(ends.cgroups[d])) for d in (0, 1))
        return printable(f" {client} -> {server}  ").encode()

    def _take(self) -> int:
        transactions = super()._take()
        lines = self.core.lines()
        if lines:
            self.stream.write(lines)
        return transactions

    def _merge(self, rows: list[Row], slow: list[Slow]) -> None:
        """None: with lines, the core counts transactions only."""
