"""Events and helpers shared by the sans-IO protocol decoders.

A decoder sees one connection: ``feed(direction, data, ts)`` with the bytes of
one direction in stream order, ``gap(direction, n, ts, cut)`` when ``n`` bytes of
that direction are unknown, ``close()`` at the end.  It never does I/O, never reads
a clock and keeps no global state; it returns :class:`Transaction` (a request
paired with its reply) and :class:`Notice` (everything else: greetings, push
messages, protocol labels, loss of sync) events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..streams import Direction

Details = dict[str, object]


@dataclass(slots=True)
class Transaction:
    protocol: str
    command: str  # statistics key: command name or query shape
    request: str  # display summary of the request
    reply: str  # display summary of the reply ("" when there was none)
    error: bool
    ts_request: float  # when the request's last byte was sent
    ts_reply: float | None  # when the reply's first byte was sent; None: no reply seen
    bytes_in: int  # request bytes, client -> server
    bytes_out: int  # reply bytes, server -> client
    details: Details = field(default_factory=dict)
    unanswered: bool = False  # a reply was expected and none was seen
    cut: int = 0  # bytes of request and reply not captured (snap length, -s)
    # filled in by the decoding engine (decoders.engine), decoders know nothing about processes
    conn: str = ""
    path: str = ""
    client_pid: int = 0
    client_comm: str = ""
    server_pid: int = 0
    server_comm: str = ""
    client_cgroup: int = 0  # cgroup v2 ids (usniff.containers names them); 0 unknown
    server_cgroup: int = 0

    @property
    def latency(self) -> float | None:
        """Server-side time: from the request's last byte to the reply's first byte, as
        the two ends sent them (the client's reading of the reply is not included)."""
        return None if self.ts_reply is None else self.ts_reply - self.ts_request


@dataclass(slots=True)
class Pending:
    """A request waiting for its reply: what its Transaction will say."""

    name: bytes
    command: str
    text: str
    ts: float  # the request's last byte
    nbytes: int
    reply_bytes: int = 0
    ts_reply: float | None = None  # the reply's first byte
    error: bool = False
    cut: int = 0
    details: Details = field(default_factory=dict)

    def transaction(self, protocol: str, reply: str, unanswered: bool) -> Transaction:
        return Transaction(
            protocol,
            self.command,
            self.text,
            reply,
            self.error,
            self.ts,
            self.ts_reply,
            self.nbytes,
            self.reply_bytes,
            self.details,
            unanswered=unanswered,
            cut=self.cut,
        )


class Request(Protocol):
    """A request waiting for its reply as a decoder hands it over to the native path
    (outputs/fast.py): RESP's Waiting, MySQL's command."""

    @property
    def command(self) -> str: ...  # the statistics key
    @property
    def text(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def cut(self) -> int: ...


@dataclass(slots=True)
class Notice:
    protocol: str
    direction: Direction
    kind: str  # "greeting" | "push" | "monitor" | "label" | "undecodable" | "unpaired" | ...
    summary: str
    ts: float
    details: Details = field(default_factory=dict)
    conn: str = ""


DecoderEvent = Transaction | Notice


class Decoder(Protocol):
    protocol: str

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]: ...

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        """``n`` bytes of ``direction`` are unknown (sent at ``ts``); ``cut``: they were
        sent but not kept (snap length), in the same send() as the bytes before them."""
        ...

    def close(self) -> list[DecoderEvent]: ...


class ProtocolError(ValueError):
    """The bytes of one direction break the protocol's framing."""


T = TypeVar("T")


class Framing(Protocol[T]):
    """One direction's incremental parser: bytes in, complete messages out."""

    def feed(self, data: bytes, ts: float) -> list[T]: ...

    def skip(self, n: int, ts: float) -> list[T] | None:
        """``n`` bytes not captured (snap length): the messages that completes, or None
        when they held framing."""
        ...


class FramedDecoder(Generic[T]):
    """``feed`` and ``gap`` of a decoder that parses each direction with a
    :class:`Framing` and resyncs (docs/decoders.md) at a client chunk that starts a
    command, then at a server chunk sent after it that starts a reply (``_synced``)."""

    protocol: str
    _parsers: tuple[Framing[T], Framing[T]]
    _sync_ts: float | None  # ts of the first command after (re)sync
    _server_synced: bool

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        synced = self._synced(direction, data, ts)
        if synced is None:
            return events
        try:
            messages = self._parsers[direction].feed(synced, ts)
        except ProtocolError as exc:
            return self._desync(events, f"protocol error: {exc}", ts, direction)
        self._messages(direction, messages, ts, events)
        return events

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        parsing = self._sync_ts is not None and (
            direction is Direction.CLIENT or self._server_synced
        )
        if cut and not parsing:  # the rest of a send() skipped while not in sync
            self._forget_chunk_start()  # a command cannot continue across the cut
            return events
        messages = self._parsers[direction].skip(n, ts) if cut else None
        if messages is None:
            return self._desync(events, lost(n, cut), ts, direction)
        self._messages(direction, messages, ts, events)
        return events

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        self._abandon(events, "")
        return events

    def _desync(
        self, events: list[DecoderEvent], reason: str, ts: float, direction: Direction
    ) -> list[DecoderEvent]:
        """Framing lost: report the requests in flight, wait for the next sync point."""
        self._abandon(events, "(lost sync)")
        self._restart()
        events.append(Notice(self.protocol, direction, "undecodable", reason, ts))
        return events

    def _restart(self) -> None:
        """Parsers and sync state as in a new decoder."""
        raise NotImplementedError

    def _abandon(self, events: list[DecoderEvent], why: str) -> None:
        """Report every request in flight, without a reply: ``why`` says why ("" when
        none came before the end)."""
        raise NotImplementedError

    def _synced(self, direction: Direction, data: bytes, ts: float) -> bytes | None:
        """The bytes to parse, or None while waiting for a sync point."""
        raise NotImplementedError

    def _forget_chunk_start(self) -> None:
        """Drop the start of a chunk kept while too short to judge."""
        raise NotImplementedError

    def _messages(
        self, direction: Direction, messages: list[T], ts: float, events: list[DecoderEvent]
    ) -> None:
        for message in messages:
            if direction is Direction.CLIENT:
                self._request(message, ts, events)
            else:
                self._reply(message, events)

    def _request(self, message: T, ts: float, events: list[DecoderEvent]) -> None:
        """A request, complete at ``ts``."""
        raise NotImplementedError

    def _reply(self, message: T, events: list[DecoderEvent]) -> None:
        raise NotImplementedError


class Skipping(Protocol[T]):
    """One direction's reader that can step over bytes not captured (snap length)."""

    def skip(self, n: int, ts: float) -> list[T] | None: ...


class SyncedSide(Protocol[T]):
    """One direction of a decoder whose directions resync each on their own."""

    synced: bool
    sync_buf: bytes  # the start of a chunk too short to judge

    @property
    def reader(self) -> Skipping[T]: ...


class SidedDecoder(Generic[T]):
    """``gap`` of a decoder whose two directions each have a reader and resync on
    their own (FastCGI, D-Bus): a cut inside a message's payload keeps the framing;
    anything else loses it (``_desync``)."""

    def _side(self, direction: Direction) -> SyncedSide[T]:
        raise NotImplementedError

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        side = self._side(direction)
        if cut and not side.synced:  # the rest of a send() skipped while not in sync
            side.sync_buf = b""  # a message cannot continue across the cut
            return events
        items = side.reader.skip(n, ts) if cut else None
        if items is None:
            self._desync(direction, lost(n, cut), ts, events)
        else:
            self._items(direction, items, events)
        return events

    def _desync(
        self, direction: Direction, why: str, ts: float, events: list[DecoderEvent]
    ) -> None:
        raise NotImplementedError

    def _items(self, direction: Direction, items: list[T], events: list[DecoderEvent]) -> None:
        """The messages ``items`` of ``direction``, in stream order."""
        raise NotImplementedError


REDACTED = "***"


def lost(n: int, cut: bool) -> str:
    """Why a decoder lost sync at a gap of ``n`` bytes (``cut``: by the snap length)."""
    return f"{n} bytes {'cut by the snap length' if cut else 'missing'}"


def clip(text: str, limit: int) -> str:
    """Shorten ``text`` to at most ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord('"'), ord("\\")}
_PRINTABLE_BYTES = bytes(sorted(_PRINTABLE))  # bytes.translate deletes them: what is left is not


def show_bytes(value: bytes, limit: int = 64, total: int | None = None) -> str:
    """redis-cli style rendering: bare when printable without spaces, else quoted+escaped.

    ``total`` is the real size when ``value`` is only a kept prefix.
    """
    size = len(value) if total is None else total
    cut = value[:limit]
    if cut and size == len(cut) and not cut.translate(None, _PRINTABLE_BYTES):
        return cut.decode("ascii")
    body = "".join(
        chr(b) if b in _PRINTABLE or b == 0x20 else _ESCAPES.get(b, f"\\x{b:02x}") for b in cut
    )
    if size > len(cut):
        return f'"{body}"...({size} bytes)'
    return f'"{body}"'


_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
