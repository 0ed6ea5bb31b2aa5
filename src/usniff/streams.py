"""Per-connection reassembly of :class:`~usniff.events.Record` objects.

A connection is the pair of its sockets' ids (``events.conn_key``).  Each direction is an
independent byte stream numbered by the sender's stream offset.  Records of one
socket may arrive slightly out of order (they are produced on different CPUs),
so every direction keeps a small reorder buffer (a heap keyed by offset).  The
buffer is bounded: when it holds too many records or bytes, or its head has
waited too long (in capture time), the hole in front of it is declared a gap.

Rules:

* offset 0 starts a stream at once; a direction whose first record has a
  higher offset (seen mid-stream) waits in the reorder buffer like any hole,
  and when the buffer gives up, its lowest offset is where the stream starts
  for us (no gap before it); records that end before that point are dropped
  and counted in ``stats.late``,
* loss records become ``Gap(reason="lost")``, snap-length truncation becomes
  ``Gap(reason="truncated")`` after the kept bytes, holes still open at
  ``flush()``/close become ``Gap(reason="missing")``,
* overlapping/duplicate bytes are delivered once,
* the server side is ``events.server_id``: the socket that owns the bound
  address; without one (socketpair) the lower id is the ``CLIENT`` ("A")
  side.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import IntEnum

from .events import ConnKey, Record, conn_key, server_id

__all__ = ["ConnKey", "conn_key"]  # re-exported: decoders and tests key connections alike


class Direction(IntEnum):
    CLIENT = 0  # sent by the client (requests); the "A" side of a socketpair
    SERVER = 1  # sent by the server (replies)


@dataclass(frozen=True, slots=True)
class Open:
    conn: ConnKey
    ts: float
    sock_type: str
    path: str
    client_id: int
    server_id: int  # 0: an unconnected datagram's receiver
    roles_known: bool  # False when no side owns a bound address (socketpair)


@dataclass(frozen=True, slots=True)
class Data:
    conn: ConnKey
    direction: Direction
    offset: int
    data: bytes
    ts: float
    pid: int
    comm: str
    peer_pid: int = 0
    peer_comm: str = ""
    inode: int = 0  # the sending socket's inode
    cgroup: int = 0  # the sender's cgroup v2 id (Record.cgroup)
    peer_cgroup: int = 0


@dataclass(frozen=True, slots=True)
class Gap:
    conn: ConnKey
    direction: Direction
    offset: int
    length: int
    ts: float
    reason: str  # "lost" | "truncated" | "missing"


@dataclass(frozen=True, slots=True)
class Close:
    conn: ConnKey
    direction: Direction
    ts: float
    final: bool = True  # the connection is over and forgotten: no event follows for it


StreamEvent = Open | Data | Gap | Close


@dataclass(slots=True)
class AssemblerStats:
    records: int = 0
    duplicates: int = 0  # records whose bytes had all been delivered already
    late: int = 0  # records that ended before the point where the stream started for us
    gaps: int = 0
    gap_bytes: int = 0
    reorder_gaps: int = 0  # holes given up on because the reorder buffer was full or stale
    evicted: int = 0  # connections forgotten while open (more than max_connections open)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a connection's streams stand (StreamAssembler.hand_over)."""

    server_id: int
    next: tuple[int, int]  # per direction (client, server): the offset delivered up to
    started: tuple[bool, bool]  # per direction: its start is known
    last_ts: float  # capture time of the connection's newest record


@dataclass(slots=True)
class _Side:
    start: int | None = None
    next: int = 0
    heap: list[tuple[int, int, Record]] = field(default_factory=list)
    pending_bytes: int = 0
    closed: bool = False


@dataclass(slots=True)
class _Conn:
    key: ConnKey
    server_id: int
    sides: tuple[_Side, _Side] = field(default_factory=lambda: (_Side(), _Side()))
    last_ts: float = 0.0  # capture time of its newest record


class StreamAssembler:
    """Turn Records (any order within the reorder window) into ordered stream events."""

    def __init__(
        self,
        max_pending_records: int = 256,
        max_pending_bytes: int = 8 << 20,
        max_delay: float = 1.0,
        max_connections: int = 65536,
        close_grace: float = 1.0,
    ) -> None:
        self.max_pending_records = max_pending_records
        self.max_pending_bytes = max_pending_bytes
        self.max_delay = max_delay
        self.close_grace = close_grace
        self.max_connections = max_connections
        self.stats = AssemblerStats()
        self._conns: dict[ConnKey, _Conn] = {}
        self._seq = 0
        # (deadline, seq, key, direction): connections one end closed while the other had
        # not sent (close_grace in capture time after that close, they are over)
        self._closing: list[tuple[float, int, ConnKey, Direction]] = []

    def feed(self, rec: Record) -> list[StreamEvent]:
        self.stats.records += 1
        key = conn_key(rec)
        events: list[StreamEvent] = []
        if self._closing and self._closing[0][0] <= rec.ts:
            self._expire(rec.ts, events)
        conn = self._conns.get(key)
        if conn is None:
            if rec.kind == "close":
                return events
            if len(self._conns) >= self.max_connections:
                self._evict(events)
            conn = self._open(key, rec, events)
        conn.last_ts = rec.ts
        direction = Direction.SERVER if rec.sock_id == conn.server_id else Direction.CLIENT
        side = conn.sides[direction]
        if rec.kind == "close":  # deliver everything buffered for the connection first
            events += self._drain_all(conn, rec.ts)
            side.closed = True
            # over when both ends closed; or close_grace after this close when the other
            # has not sent: a socket closed, its peer's sends fail, but the peer's last
            # send may still be on its way (a send is recorded when it ends, and the
            # reader may take the bytes and close before that: kprobe and fentry
            # backends, a sender's CPU stalled past REORDER)
            other = conn.sides[1 - direction]
            final = other.closed or not rec.peer_id
            if not final and other.start is None and not other.heap:
                self._seq += 1
                deadline = rec.ts + self.close_grace
                heapq.heappush(self._closing, (deadline, self._seq, key, direction))
            events.append(Close(key, direction, rec.ts, final))
            if final:
                del self._conns[key]
            return events
        end = rec.offset + rec.length
        if side.start is None:
            if rec.offset == 0:
                side.start = 0
        elif end <= side.next:
            if end <= side.start:
                self.stats.late += 1
            else:
                self.stats.duplicates += 1
            return events
        if rec.offset == side.next and side.start is not None and not side.heap:
            self._deliver(conn, direction, side, rec, events)  # in order: no reordering
            return events
        self._seq += 1
        heapq.heappush(side.heap, (rec.offset, self._seq, rec))
        side.pending_bytes += rec.length
        if side.start is None:  # seen mid-stream: both directions start together
            if self._stale(side, rec.ts):
                events += self._drain_all(conn, rec.ts)
        else:
            self._drain(conn, direction, rec.ts, force=False, out=events)
        return events

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def expire(self, now: float) -> list[StreamEvent]:
        """The final Close of connections one end closed ``close_grace`` before ``now``
        (capture time) while the other had not sent and still has not."""
        events: list[StreamEvent] = []
        self._expire(now, events)
        return events

    def _expire(self, now: float, events: list[StreamEvent]) -> None:
        while self._closing and self._closing[0][0] <= now:
            deadline, _, key, direction = heapq.heappop(self._closing)
            conn = self._conns.get(key)
            if conn is None:
                continue  # over already
            other = conn.sides[1 - direction]
            if other.closed or other.start is not None or other.heap:
                continue  # the other end has sent since: its close ends it
            events += self._drain_all(conn, deadline)
            events.append(Close(key, direction, deadline, True))
            del self._conns[key]

    def hand_over(self, key: ConnKey) -> Position | None:
        """Where connection ``key`` stands, when nothing of it is buffered and neither end
        has closed (None otherwise): another reader (outputs/fast.py) may then deliver its
        in-order records itself, until it hands the connection back (:meth:`take_back`).
        A closed end's connection stays here: its close_grace ending is this reader's."""
        conn = self._conns.get(key)
        if conn is None or any(side.heap or side.closed for side in conn.sides):
            return None
        client, server = conn.sides
        return Position(
            conn.server_id,
            (client.next, server.next),
            (client.start is not None, server.start is not None),
            conn.last_ts,
        )

    def take_back(self, key: ConnKey, position: Position) -> None:
        """Connection ``key`` handed back at ``position`` (the other reader counts the
        records it delivered in ``stats.records``)."""
        conn = self._conns[key]
        for side, next_, started in zip(conn.sides, position.next, position.started, strict=True):
            side.next = next_
            if started and side.start is None:
                side.start = 0  # it started at offset 0, with the other reader
        conn.last_ts = position.last_ts

    def _evict(self, events: list[StreamEvent]) -> None:
        """Forget the least recently active eighth of the connections (their
        buffered bytes delivered, holes as gaps): a bound for connections
        that never close."""
        by_age = sorted(self._conns.values(), key=lambda c: c.last_ts)
        for conn in by_age[: max(1, len(by_age) // 8)]:
            events += self._drain_all(conn, conn.last_ts)
            events.append(Close(conn.key, Direction.CLIENT, conn.last_ts, True))
            del self._conns[conn.key]
            self.stats.evicted += 1

    def flush(self) -> list[StreamEvent]:
        """End of input: deliver everything still buffered, holes become gaps."""
        events: list[StreamEvent] = []
        for conn in self._conns.values():
            events += self._drain_all(conn, float("inf"))
        return events

    def _drain_all(self, conn: _Conn, now: float) -> list[StreamEvent]:
        """Force out both directions, interleaved by capture time (requests before replies)."""
        per_direction: tuple[list[StreamEvent], list[StreamEvent]] = ([], [])
        for direction in Direction:
            self._drain(conn, direction, now, force=True, out=per_direction[direction])
        return list(heapq.merge(*per_direction, key=lambda ev: ev.ts))

    def _open(self, key: ConnKey, rec: Record, events: list[StreamEvent]) -> _Conn:
        server = server_id(rec)
        client = rec.peer_id if server == rec.sock_id else rec.sock_id
        known = bool(rec.path)
        conn = _Conn(key, server)
        self._conns[key] = conn
        events.append(Open(key, rec.ts, rec.sock_type, rec.path, client, server, known))
        return conn

    def _drain(
        self, conn: _Conn, direction: Direction, now: float, force: bool, out: list[StreamEvent]
    ) -> None:
        side = conn.sides[direction]
        heap = side.heap
        while heap:
            off, _, rec = heap[0]
            if side.start is None or off > side.next:
                if not force and not self._stale(side, now):
                    return
                if side.start is None:
                    side.start = side.next = off
                else:
                    self.stats.reorder_gaps += not force
                    self._gap(conn, direction, side.next, off - side.next, rec.ts, "missing", out)
                    side.next = off
            heapq.heappop(heap)
            side.pending_bytes -= rec.length
            self._deliver(conn, direction, side, rec, out)

    def _stale(self, side: _Side, now: float) -> bool:
        """Stop waiting for the bytes in front of the reorder buffer?"""
        return (
            len(side.heap) > self.max_pending_records
            or side.pending_bytes > self.max_pending_bytes
            or now - side.heap[0][2].ts > self.max_delay
        )

    def _deliver(
        self, conn: _Conn, direction: Direction, side: _Side, rec: Record, out: list[StreamEvent]
    ) -> None:
        start, end = side.next, rec.offset + rec.length
        if end <= start:
            self.stats.duplicates += 1
            return
        side.next = end
        if rec.kind == "lost":
            self._gap(conn, direction, start, end - start, rec.ts, "lost", out)
            return
        data_end = rec.offset + len(rec.data)
        if data_end > start:
            chunk = rec.data[start - rec.offset :]
            out.append(
                Data(
                    conn.key,
                    direction,
                    start,
                    chunk,
                    rec.ts,
                    rec.pid,
                    rec.comm,
                    rec.peer_pid,
                    rec.peer_comm,
                    rec.inode,
                    rec.cgroup,
                    rec.peer_cgroup,
                )  # fmt: skip
            )
            start = data_end
        if end > start:
            self._gap(conn, direction, start, end - start, rec.ts, "truncated", out)

    def _gap(
        self,
        conn: _Conn,
        direction: Direction,
        offset: int,
        length: int,
        ts: float,
        reason: str,
        out: list[StreamEvent],
    ) -> None:
        self.stats.gaps += 1
        self.stats.gap_bytes += length
        out.append(Gap(conn.key, direction, offset, length, ts, reason))
