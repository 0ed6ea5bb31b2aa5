"""The decoding engine: Records -> streams -> protocol decoders -> decoder events.

* :class:`Decoding`: feed it Records, get decoder events with the connection,
  socket path and client/server pid+comm filled in, and :class:`Undecoded`
  records for connections whose protocol it does not decode.
* :func:`decode_records` decodes a finite list/iterator offline (``usniff read``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ..events import Record
from ..streams import (
    Close,
    ConnKey,
    Data,
    Gap,
    Open,
    Position,
    StreamAssembler,
    StreamEvent,
    conn_key,
)
from .base import Decoder, DecoderEvent, Request, Transaction
from .detect import ENOUGH
from .mysql import MysqlDecoder, MysqlState
from .postgres import PostgresDecoder, PostgresState
from .registry import BY_NAME, CHOICES, detect
from .resp import RespDecoder

MAX_UNDECIDED = 64 * 1024  # bytes buffered per connection while detecting
OPAQUE = "opaque"  # Decoding.hand_over of a connection decided without a decoder


@dataclass(slots=True)
class Undecoded:
    """A record of a connection usniff does not decode, shown as the raw views show it."""

    record: Record
    reason: str  # why: "protocol not recognised", "http, no decoder", "datagram", ...
    conn: str = ""


Event = DecoderEvent | Undecoded
DecoderOptions = Mapping[str, Mapping[str, object]]  # protocol -> decoder keyword arguments


@dataclass(frozen=True, slots=True)
class Ends:
    """The two ends of a connection (client, server), as learnt from its records."""

    pids: tuple[int, int]
    comms: tuple[str, str]
    inodes: tuple[int, int]
    cgroups: tuple[int, int]


# What a decoder hands a native reader besides its pending requests, and takes back
# (RESP: nothing).
HandoverState = MysqlState | PostgresState | None


@dataclass(frozen=True, slots=True)
class Handover:
    """A connection handed to another reader (Decoding.hand_over)."""

    position: Position
    ends: Ends
    pending: Sequence[Request]  # its requests waiting for a reply, oldest first
    path: str  # its socket path (the transactions' path)
    protocol: str  # its decoder's: "resp", "mysql" or "postgres"; or OPAQUE
    state: HandoverState  # what else the reader must know of the decoder (its hand_over)
    reason: str = ""  # OPAQUE: why its records are shown raw (Undecoded.reason)


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
    cgroups: list[int] = field(default_factory=lambda: [0, 0])
    name: str = "?-?"  # client-server socket inodes, as `ss -x` shows them ("?": not known)

    def learn(self, ev: Data) -> None:
        """Both ends' process and inode, from one end's data (which names its peer)."""
        d = ev.direction
        self.pids[d], self.comms[d], self.cgroups[d] = ev.pid, ev.comm, ev.cgroup
        if self.inodes[d] != ev.inode:
            self.inodes[d] = ev.inode
            self.name = "-".join(str(i or "?") for i in self.inodes)
        if not self.pids[1 - d] and ev.peer_pid:
            self.pids[1 - d], self.comms[1 - d] = ev.peer_pid, ev.peer_comm
            self.cgroups[1 - d] = ev.peer_cgroup


class Decoding:
    """Records in, events out: decoder events (endpoints filled in) for connections
    whose protocol was recognised, :class:`Undecoded` records for the others.

    A connection's records are held while its protocol is undecided; they come
    out raw when it is decided without a decoder, when it closes undecided, or
    when it stays undecided for ``UNDECIDED_WAIT`` seconds of capture time."""

    UNDECIDED_WAIT = 1.0

    def __init__(
        self, protocol: str = "auto", redact: bool = False, options: DecoderOptions | None = None
    ) -> None:
        """``options``: per protocol name, more keyword arguments for its decoder (e.g.
        ``{"http2": {"schema": Schema(...)}}``)."""
        if protocol not in CHOICES:
            raise ValueError(f"protocol must be one of {CHOICES}, not {protocol!r}")
        self.protocol = protocol
        self.redact = redact
        self.options = options or {}
        self.assembler = StreamAssembler()
        self.protocols_seen: dict[str, int] = {}  # connections decided; OPAQUE: no decoder
        self._conns: dict[ConnKey, _Conn] = {}
        self._decoded = 0  # connections in _conns with a decoder (all of them: nothing to route)
        self._undecided: dict[ConnKey, _Conn] = {}  # holding records, oldest first

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def feed(self, records: Iterable[Record], expire: bool = True) -> list[Event]:
        """Decode ``records``; then, unless not ``expire``, show the records of connections
        undecided for ``UNDECIDED_WAIT`` before the last one (:meth:`expire`)."""
        out: list[Event] = []
        ts = 0.0
        for rec in records:
            for ev in self.assembler.feed(rec):
                self._stream_event(ev, out)
            if self._decoded < len(self._conns):
                self._route(rec, out)
            ts = rec.ts
        if ts and expire:
            self.expire(ts, out)
        return out

    def hand_over(self, key: ConnKey, protocols: Collection[str]) -> Handover | None:
        """Connection ``key`` for another reader (outputs/fast.py), when it is of one of
        ``protocols`` (RESP, MySQL, PostgreSQL) in a plain state (the decoder's ``plain``), or
        decided without a decoder and ``OPAQUE`` is among them, and nothing of it is buffered:
        its position, ends, requests waiting for a reply (taken out) and decoder state. None
        otherwise. The reader delivers (and decodes) its records until it hands it back
        (:meth:`take_back`)."""
        conn = self._conns.get(key)
        if conn is None:
            return None
        decoder = conn.decoder
        if decoder is None and conn.protocol is not None and OPAQUE in protocols:
            protocol = OPAQUE  # decided, no decoder: its records are shown raw
        elif (
            not isinstance(decoder, (RespDecoder, MysqlDecoder, PostgresDecoder))
            or decoder.protocol not in protocols
            or not decoder.plain()
        ):
            return None
        else:
            protocol = decoder.protocol
        position = self.assembler.hand_over(key)
        if position is None:
            return None
        pids, comms, inodes, cgroups = conn.pids, conn.comms, conn.inodes, conn.cgroups
        ends = Ends((pids[0], pids[1]), (comms[0], comms[1]), (inodes[0], inodes[1]),
                    (cgroups[0], cgroups[1]))  # fmt: skip
        pending, state = decoder.hand_over() if decoder is not None else ([], None)
        return Handover(position, ends, pending, conn.open.path, protocol, state, conn.reason)

    def take_back(
        self,
        key: ConnKey,
        position: Position,
        ends: Ends,
        pending: list[tuple[object, float, int]],
        state: HandoverState,
    ) -> None:
        """Connection ``key`` handed back, as the other reader leaves it: its position,
        its ends, its requests waiting for a reply (each handed over, or the request's
        bytes) and the decoder's state (the decoder's ``take_back``)."""
        self.assembler.take_back(key, position)
        conn = self._conns[key]
        conn.pids, conn.comms, conn.inodes = list(ends.pids), list(ends.comms), list(ends.inodes)
        conn.cgroups = list(ends.cgroups)
        conn.name = "-".join(str(i or "?") for i in conn.inodes)
        decoder = conn.decoder
        if decoder is None and not pending and state is None:
            pass  # opaque: only its records were delivered
        elif isinstance(decoder, RespDecoder) and state is None:
            decoder.take_back(pending)
        # each branch narrows the state to its decoder's (so not one `or`)
        elif isinstance(decoder, MysqlDecoder) and state and len(state) == 4:  # noqa: SIM114
            decoder.take_back(pending, state)
        elif isinstance(decoder, PostgresDecoder) and state and len(state) == 1:
            decoder.take_back(pending, state)
        else:
            raise TypeError(f"{type(decoder).__name__} handed back with state {state!r}")

    def expire(self, now: float, out: list[Event]) -> None:
        """Show the records of connections undecided since before ``now - UNDECIDED_WAIT``;
        end connections whose close the assembler held (``StreamAssembler.expire``)."""
        for ev in self.assembler.expire(now):
            self._stream_event(ev, out)
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
            self.protocols_seen[OPAQUE] = self.protocols_seen.get(OPAQUE, 0) + 1
            conn.reason = self._reason(conn, protocol)
            out.extend(Undecoded(rec, conn.reason, conn.name) for rec in held)
        else:
            conn.decoder = factory(redact=self.redact, **self.options.get(protocol, {}))
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
                ev.client_cgroup, ev.server_cgroup = conn.cgroups[0], conn.cgroups[1]
            out.append(ev)


def decode_records(
    records: Iterable[Record],
    protocol: str = "auto",
    redact: bool = False,
    options: DecoderOptions | None = None,
) -> Iterator[Event]:
    """Decode a finite sequence of Records (e.g. read back from a file)."""
    decoding = Decoding(protocol, redact, options)
    for rec in records:
        yield from decoding.feed((rec,))
    yield from decoding.finish()
