"""HTTP/2 and gRPC decoder (sans-IO): h2c with prior knowledge, as gRPC speaks it
over Unix sockets (containerd, kubelet plugins, Go and Python services).

Framing is hyperframe's (frame headers and bodies; DATA payloads are read here as
they come, to buffer none) and header compression is hpack's; h2's connection state
machine is not used: it enforces flow control and stream states and raises on what
a passive observer must tolerate (a capture that starts mid-connection, frames after
a reset, lost bytes).

The client's first bytes are the preface ``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``
(the detector's evidence), then each side sends frames.  A request is the
client's HEADERS (+CONTINUATION) and DATA on one stream; its response the
server's HEADERS, DATA and trailers (a HEADERS ending the stream) on the same
stream id.  One :class:`Transaction` per stream, reported when the server ends
the stream (END_STREAM), either side resets it (RST_STREAM), a GOAWAY says the
server never processed it, or the connection ends.  ts_request is the client's
last frame on the stream before the server's first (a streaming client goes on
sending after the reply began), ts_reply the server's first frame on it.

gRPC (``content-type: application/grpc...``): the path is ``/service/method``,
the status is the trailers' ``grpc-status`` (non-zero: an error) and
``grpc-message``; DATA carries length-prefixed messages (a flag byte and a 4-byte
length), counted with their sizes per direction.  A direction with more than one
message is a streaming RPC: each of its messages is shown as it arrives as a
``stream`` Notice (the first when the second comes, as only then is the call
known to stream); unary calls give just the transaction, which carries the counts.

HPACK's dynamic table is built from every header block since the connection
began.  A capture that starts mid-connection syncs at a chunk starting with a
plausible frame header and says (a Notice) that headers referring to table
entries sent before it cannot be decoded; such a block is reported as not
decoded and the table restarts empty: entries inserted after that are the
newest of the real table, so later references to them decode exactly, and a
reference beyond them fails rather than resolving to a wrong entry.  Lost bytes
(a gap) do the same to the direction they hit.

Memory: DATA payloads are passed on as they arrive, never buffered; other frames
are buffered whole up to MAX_BLOCK bytes (a longer one is a protocol error), a
header block up to MAX_BLOCK bytes, at most MAX_STREAMS streams per connection,
KEEP bytes of each direction's first gRPC message.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from ..streams import Direction
from .base import (
    REDACTED,
    DecoderEvent,
    Details,
    Notice,
    ProtocolError,
    Transaction,
    clip,
    lost,
)
from .fastcgi import mask_query
from .http import route
from .protobuf import Schema

PROTOCOL = "http2"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER_SIZE = 9
END_STREAM, PADDED = 0x1, 0x8  # DATA flags
SYNC_FRAME = 16384  # largest DATA/HEADERS frame taken as a sync point (the default max)
MAX_BLOCK = 256 * 1024  # header block bytes (HEADERS + CONTINUATIONs) kept
MAX_HEADER_LIST = 256 * 1024  # decoded header list size hpack accepts
MAX_TABLE = 1 << 20  # HPACK dynamic table size accepted (SETTINGS_HEADER_TABLE_SIZE)
MAX_STREAMS = 1024  # streams tracked per connection; beyond, the oldest is reported
MAX_CLOSED = 1024  # recently ended stream ids remembered (their late frames are ignored)
MAX_HEADERS = 64  # headers kept per block in the details
HEADER_VALUE = 256  # characters of a header value kept
KEEP = 256  # bytes kept of each direction's first gRPC message
MAX_LISTED = 8  # informational responses and undecoded blocks listed per stream
SUMMARY = 200

(DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE,
 CONTINUATION) = range(10)  # fmt: skip
_FLAGS = {DATA: 0x09, HEADERS: 0x2D, PRIORITY: 0, RST_STREAM: 0, SETTINGS: 0x01,
          PUSH_PROMISE: 0x0C, PING: 0x01, GOAWAY: 0, WINDOW_UPDATE: 0}  # fmt: skip
_SIZE = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
_ON_STREAM = frozenset((DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE))
ERRORS = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR",
          "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL",
          "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY",
          "HTTP_1_1_REQUIRED")  # fmt: skip
GRPC_STATUS = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
               "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
               "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
               "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")  # fmt: skip

# --redact: headers (and gRPC metadata) whose value is a credential
SECRET_HEADER = re.compile(
    r"authorization|cookie|token|secret|passw|api-?key|session|credential|signature|x-auth",
    re.IGNORECASE,
)


def _error_name(code: int) -> str:
    return ERRORS[code] if code < len(ERRORS) else f"error 0x{code:x}"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- detector


def h2_preface(client: bytes) -> bool:
    """The HTTP/2 connection preface of a client with prior knowledge."""
    n = min(len(client), len(PREFACE))
    return n >= 8 and client[:n] == PREFACE[:n]


def server_settings(server: bytes) -> bool:
    """The server's connection preface: a whole, non-empty SETTINGS frame (stream 0, no
    ACK) whose known settings have valid values.  A gRPC server sends it as soon as it
    accepts, often before the client's preface arrives."""
    if len(server) < HEADER_SIZE or server[3:9] != b"\x04\x00\x00\x00\x00\x00":
        return False
    length = int.from_bytes(server[:3], "big")
    if not 0 < length <= 6 * 16 or length % 6 or len(server) < HEADER_SIZE + length:
        return False
    for pos in range(HEADER_SIZE, HEADER_SIZE + length, 6):
        ident = int.from_bytes(server[pos : pos + 2], "big")
        value = int.from_bytes(server[pos + 2 : pos + 6], "big")
        valid = _SETTING_VALID.get(ident)
        if ident == 0 or (valid is not None and not valid(value)):
            return False
    return True


_SETTING_VALID: dict[int, Callable[[int], bool]] = {
    2: lambda v: v <= 1,  # ENABLE_PUSH
    4: lambda v: v < 1 << 31,  # INITIAL_WINDOW_SIZE
    5: lambda v: 1 << 14 <= v < 1 << 24,  # MAX_FRAME_SIZE
}


def plausible_frame(data: bytes) -> bool | None:
    """Does ``data`` start with a frame header a sync point can be (a known type of
    the right size, on stream 0 or not as the type wants, only defined flags)?
    None: too short to tell."""
    if len(data) < HEADER_SIZE:
        return None
    length = int.from_bytes(data[:3], "big")
    kind, flags, sid = data[3], data[4], int.from_bytes(data[5:9], "big")
    if kind not in _FLAGS or flags & ~_FLAGS[kind] or sid >> 31:
        return False
    if (sid != 0) != (kind in _ON_STREAM):
        return False
    if kind in _SIZE:
        return length == _SIZE[kind]
    if kind == SETTINGS:
        return length % 6 == 0 and (length == 0 or not flags)
    if kind == GOAWAY:
        return 8 <= length <= SYNC_FRAME
    return length <= SYNC_FRAME


# --------------------------------------------------------------------------- streams


@dataclass(slots=True)
class _Messages:
    """gRPC length-prefixed messages in one direction of a stream."""

    count: int = 0
    size: int = 0  # payload bytes of the complete messages
    compressed: int = 0  # messages with the compressed flag
    prefix: bytearray = field(default_factory=bytearray)
    length: int = 0  # the current message's size
    first_size: int = 0
    first_compressed: bool = False
    left: int = 0  # bytes of it still to come
    first: bytearray = field(default_factory=bytearray)  # start of the first message
    holed: bool = False  # DATA bytes were not captured: message boundaries are unknown
    partial: bool = False  # a message is being read

    def feed(self, data: bytes) -> list[int]:
        """Read ``data``; return the sizes of the messages it completes."""
        done: list[int] = []
        pos, end = 0, len(data)
        while pos < end and not self.holed:
            if not self.partial:
                take = min(5 - len(self.prefix), end - pos)
                self.prefix += data[pos : pos + take]
                pos += take
                if len(self.prefix) < 5:
                    break
                self.compressed += self.prefix[0] & 1
                if self.count == 0:
                    self.first_compressed = bool(self.prefix[0] & 1)
                self.left = self.length = int.from_bytes(self.prefix[1:5], "big")
                self.prefix.clear()
                self.partial = True
            take = min(self.left, end - pos)
            if self.count == 0 and len(self.first) < KEEP:
                self.first += data[pos : pos + min(take, KEEP - len(self.first))]
            pos += take
            self.left -= take
            if self.left == 0:
                self.partial = False
                self.count += 1
                self.size += self.length
                if self.count == 1:
                    self.first_size = self.length
                done.append(self.length)
        return done

    @property
    def complete(self) -> bool:
        return not self.partial and not self.prefix and not self.holed


@dataclass(slots=True)
class _Stream:
    id: int
    ts_request: float
    request: list[tuple[bytes, bytes]] | None = None  # decoded request headers
    request_seen: bool = False  # the client's HEADERS were seen (decoded or not)
    response: list[tuple[bytes, bytes]] | None = None  # final response headers
    informational: list[str] = field(default_factory=list)  # 1xx statuses
    trailers: list[tuple[bytes, bytes]] | None = None
    undecoded: list[str] = field(default_factory=list)  # header blocks HPACK could not decode
    ts_reply: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    data_in: int = 0
    data_out: int = 0
    msgs: tuple[_Messages, _Messages] = field(default_factory=lambda: (_Messages(), _Messages()))
    streaming: list[bool] = field(default_factory=lambda: [False, False])
    reset: str = ""  # "CANCEL by client"
    refused: str = ""  # a GOAWAY said the server did not process it
    cut: int = 0
    lost: bool = False
    open: bool = False  # reported before it ended

    @property
    def grpc(self) -> bool:
        ctype = _get(self.request, b"content-type") or _get(self.response, b"content-type")
        return ctype is not None and ctype.startswith(b"application/grpc")


def _get(headers: list[tuple[bytes, bytes]] | None, name: bytes) -> bytes | None:
    if headers:
        for key, value in headers:
            if key == name:
                return value
    return None


# --------------------------------------------------------------------------- framing


@dataclass(slots=True)
class _Block:
    """A header block being assembled from HEADERS/PUSH_PROMISE and CONTINUATIONs."""

    kind: int
    stream: int
    end_stream: bool
    fragment: bytearray
    ts_first: float
    promised: int = 0
    dropped: bool = False  # longer than MAX_BLOCK


@dataclass(slots=True)
class _Wire:
    """Where a frame was on the wire."""

    size: int  # bytes, its header included
    ts_first: float  # ts of the chunk holding its first byte
    ts: float  # ts of the chunk holding its last byte
    cut: int  # bytes of it not captured (snap length)


@dataclass(slots=True)
class _Data:
    """A DATA frame being read: its payload is never buffered, only passed on."""

    sid: int
    flags: int
    length: int  # payload bytes
    left: int  # payload bytes still to come
    stream: _Stream | None  # None: stream 0 or ended, the bytes are dropped
    content: int  # payload bytes that are data, not padding (-1: pad length not read yet)
    seen: int = 0  # data bytes passed on (or cut)
    cut: int = 0


class _Side:
    """One direction: frame reassembly, its HPACK context, its header block in progress."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.synced = False
        self.sync_buf = b""
        self.hpack = _new_hpack()
        self.block: _Block | None = None
        self.data: _Data | None = None
        self.failing = False  # HPACK failed on the last block (one notice until it recovers)
        self.ts_first = 0.0  # ts of the current frame's first byte

    def want(self) -> int:
        """Bytes still missing from the current frame (header included)."""
        if len(self.buf) < HEADER_SIZE:
            return HEADER_SIZE - len(self.buf)
        return HEADER_SIZE + int.from_bytes(self.buf[:3], "big") - len(self.buf)


def _new_hpack() -> hpack.Decoder:
    decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
    decoder.max_allowed_table_size = MAX_TABLE
    return decoder


# --------------------------------------------------------------------------- decoder


class Http2Decoder:
    protocol = PROTOCOL

    def __init__(self, redact: bool = False, schema: Schema | None = None) -> None:
        self.redact = redact
        self.schema = schema  # names for gRPC messages' fields (--proto-descriptor)
        self._sides = (_Side(), _Side())
        self._preface = b""  # the client's first bytes while they may be the preface
        self._started = False  # the client's first chunk was seen
        self._streams: dict[int, _Stream] = {}
        self._closed: OrderedDict[int, None] = OrderedDict()

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        side = self._sides[direction]
        if direction is Direction.CLIENT and not self._started:
            candidate = self._preface + data
            n = min(len(candidate), len(PREFACE))
            if candidate[:n] == PREFACE[:n]:
                if len(candidate) < len(PREFACE):
                    self._preface = candidate
                    return events
                self._started = side.synced = True
                data = candidate[len(PREFACE) :]
            else:
                self._started = True
                data = candidate
                events.append(
                    Notice(PROTOCOL, direction, "undecodable",
                           "capture began mid-connection (no client preface): headers that use "
                           "HPACK table entries sent before it cannot be decoded", ts)
                )  # fmt: skip
            self._preface = b""
        if not side.synced:
            candidate = side.sync_buf + data
            side.sync_buf = b""
            verdict = plausible_frame(candidate)
            if verdict is None:
                side.sync_buf = candidate[:HEADER_SIZE]
            if not verdict:
                return events
            side.synced = True
            data = candidate
        try:
            self._frames(direction, side, data, ts, events)
        except ProtocolError as exc:
            self._desync(direction, f"protocol error: {exc}", ts, events)
        return events

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        side = self._sides[direction]
        if not side.synced:
            side.sync_buf = b""
            if direction is Direction.CLIENT and not self._started:
                self._started = True  # the preface, if any, is lost
                self._preface = b""
            return events
        data = side.data
        if cut and data is not None and n <= data.left:  # inside a DATA payload: framing kept
            data.left -= n
            data.cut += n
            if data.content < 0:  # the pad length was cut: taken as 0
                data.content = data.length - 1
                n -= 1
            data.seen += n  # taken as data (if it held padding, the count is too high)
            if data.stream is not None:
                data.stream.msgs[direction].holed = True
            if data.left == 0:
                self._data_end(direction, side, data, ts, events)
            return events
        self._desync(direction, lost(n, cut), ts, events)
        return events

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        for stream in list(self._streams.values()):
            self._finish(stream, events, ended=False)
        self._streams.clear()
        return events

    # -- framing

    def _frames(
        self, direction: Direction, side: _Side, data: bytes, ts: float, events: list[DecoderEvent]
    ) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if side.data is not None:
                pos = self._data_bytes(direction, side, side.data, data, pos, ts, events)
                continue
            if not side.buf:
                side.ts_first = ts
            take = min(side.want(), end - pos)
            side.buf += data[pos : pos + take]
            pos += take
            if len(side.buf) == HEADER_SIZE:
                length = int.from_bytes(side.buf[:3], "big")
                if side.buf[3] == DATA:
                    self._data_start(direction, side, length, ts, events)
                    continue
                if length > MAX_BLOCK:  # never buffered: a header block this long is not kept
                    raise ProtocolError(f"a {length}-byte frame of type {side.buf[3]}")
            if side.want() == 0:
                self._complete(direction, side, ts, events)

    def _complete(
        self, direction: Direction, side: _Side, ts: float, events: list[DecoderEvent]
    ) -> None:
        """The frame in ``side.buf`` is whole: parse and handle it."""
        raw = bytes(side.buf)
        side.buf.clear()
        try:
            frame, _ = Frame.parse_frame_header(memoryview(raw[:HEADER_SIZE]))
            frame.parse_body(memoryview(raw[HEADER_SIZE:]))
        except HyperframeError as exc:
            raise ProtocolError(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # hyperframe's struct unpacking of short bodies
            raise ProtocolError(f"frame type {raw[3]}: {exc}") from exc
        self._frame(direction, side, frame, _Wire(len(raw), side.ts_first, ts, 0), events)

    def _desync(
        self, direction: Direction, why: str, ts: float, events: list[DecoderEvent]
    ) -> None:
        """Bytes of ``direction`` lost: resync at its next plausible frame, with an
        HPACK context that knows no entry (see the module docstring)."""
        fresh = _Side()
        self._sides = (fresh, self._sides[1]) if direction is Direction.CLIENT else (
            self._sides[0], fresh)  # fmt: skip
        for stream in self._streams.values():
            stream.lost = True
            stream.msgs[direction].holed = True
        events.append(Notice(PROTOCOL, direction, "undecodable", why, ts))

    def _frame(
        self,
        direction: Direction,
        side: _Side,
        frame: Frame,
        wire: _Wire,
        events: list[DecoderEvent],
    ) -> None:
        block = side.block
        if block is not None and not isinstance(frame, ContinuationFrame):
            raise ProtocolError(f"{frame.__class__.__name__} inside a header block")
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            promised = frame.promised_stream_id if isinstance(frame, PushPromiseFrame) else 0
            kind = PUSH_PROMISE if promised else HEADERS
            side.block = _Block(kind, frame.stream_id, "END_STREAM" in frame.flags,
                                bytearray(frame.data), wire.ts_first, promised)  # fmt: skip
            self._count(direction, frame.stream_id, wire, events)
            if "END_HEADERS" in frame.flags:
                self._block(direction, side, events)
        elif isinstance(frame, ContinuationFrame):
            if block is None or block.stream != frame.stream_id:
                raise ProtocolError("CONTINUATION without its HEADERS")
            if len(block.fragment) + len(frame.data) > MAX_BLOCK:
                block.dropped = True
                block.fragment.clear()
            elif not block.dropped:
                block.fragment += frame.data
            self._count(direction, frame.stream_id, wire, events)
            if "END_HEADERS" in frame.flags:
                self._block(direction, side, events)
        elif isinstance(frame, RstStreamFrame):
            self._count(direction, frame.stream_id, wire, events)
            self._reset(direction, frame.stream_id, frame.error_code, wire.ts, events)
        elif isinstance(frame, GoAwayFrame):
            self._goaway(direction, frame, wire.ts, events)
        elif isinstance(frame, SettingsFrame):
            table = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if table is not None:  # the most the peer's encoder may use
                self._sides[1 - direction].hpack.max_allowed_table_size = min(table, MAX_TABLE)
        # PING, WINDOW_UPDATE, PRIORITY, ALTSVC and extension frames: connection upkeep

    def _count(
        self,
        direction: Direction,
        sid: int,
        wire: _Wire,
        events: list[DecoderEvent],
    ) -> _Stream | None:
        """Count a frame of stream ``sid`` (opened when new); None for stream 0 and
        streams already ended (late frames after a reset)."""
        stream = self._streams.get(sid)
        if stream is None:
            if sid == 0 or sid in self._closed:
                return None
            stream = self._open(sid, wire.ts, events)
        stream.cut += wire.cut
        if direction is Direction.CLIENT:
            stream.bytes_in += wire.size
            if stream.ts_reply is None:
                stream.ts_request = wire.ts
        else:
            stream.bytes_out += wire.size
            if stream.ts_reply is None:
                stream.ts_reply = wire.ts_first
        return stream

    def _open(self, sid: int, ts: float, events: list[DecoderEvent]) -> _Stream:
        if len(self._streams) >= MAX_STREAMS:  # the oldest is reported as it stands
            self._done(next(iter(self._streams.values())), events, ended=False)
        stream = self._streams[sid] = _Stream(sid, ts)
        return stream

    def _end(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        self._closed[stream.id] = None
        if len(self._closed) > MAX_CLOSED:
            self._closed.popitem(last=False)

    # -- headers

    def _block(self, direction: Direction, side: _Side, events: list[DecoderEvent]) -> None:
        block = side.block
        assert block is not None
        side.block = None
        headers: list[tuple[bytes, bytes]] | None = None
        why = ""
        if block.dropped:
            why = f"header block longer than {MAX_BLOCK} bytes"
        else:
            try:
                headers = [(bytes(k), bytes(v)) for k, v in
                           side.hpack.decode(bytes(block.fragment), raw=True)]  # fmt: skip
            except (hpack.HPACKError, ValueError, IndexError) as exc:
                why = f"HPACK: {exc}"
        if headers is None:
            side.hpack = _new_hpack()  # its table no longer matches the sender's
            if not side.failing:
                events.append(Notice(PROTOCOL, direction, "undecodable",
                                     f"#{block.stream} headers not decoded: {clip(why, 120)}"
                                     " (and later ones until a block decodes)",
                                     block.ts_first))  # fmt: skip
        side.failing = headers is None
        if block.kind == PUSH_PROMISE:
            path = self._masked_path(_get(headers, b":path") or b"?")
            events.append(Notice(PROTOCOL, direction, "push",
                                 f"#{block.stream} PUSH_PROMISE #{block.promised} {path}",
                                 block.ts_first))  # fmt: skip
            promised = block.promised
            if promised not in self._streams and promised not in self._closed:
                # the promised request, as if the client had sent it
                pushed = self._open(promised, block.ts_first, events)
                pushed.request_seen, pushed.request = True, headers
            return
        stream = self._streams.get(block.stream)
        if stream is None:
            return  # stream 0 or a stream already ended (its table update is applied)
        if headers is None and len(stream.undecoded) < MAX_LISTED:
            stream.undecoded.append("request" if direction is Direction.CLIENT else "response")
        if direction is Direction.CLIENT:
            if not stream.request_seen:
                stream.request_seen = True
                stream.request = headers
            else:
                stream.trailers = stream.trailers or headers
            return
        status = _get(headers, b":status")
        if stream.response is None and status is not None and status[:1] == b"1":
            if len(stream.informational) < MAX_LISTED:
                stream.informational.append(clip(_text(status), 40))
        elif stream.response is None:
            stream.response = headers if headers is not None else []
            if block.end_stream:  # trailers-only (a gRPC error without a body)
                stream.trailers = stream.response
        else:
            stream.trailers = headers if headers is not None else []
        if block.end_stream:
            self._done(stream, events)

    # -- data

    def _data_start(
        self, direction: Direction, side: _Side, length: int, ts: float, events: list[DecoderEvent]
    ) -> None:
        """A DATA frame's header is in ``side.buf``: read its payload as it comes."""
        if side.block is not None:
            raise ProtocolError("DATA inside a header block")
        flags, sid = side.buf[4], int.from_bytes(side.buf[5:9], "big") & 0x7FFFFFFF
        side.buf.clear()
        if sid == 0:
            raise ProtocolError("DATA on stream 0")
        stream = self._streams.get(sid)
        if stream is None and sid not in self._closed:
            stream = self._open(sid, ts, events)
        content = -1 if flags & PADDED else length
        data = side.data = _Data(sid, flags, length, length, stream, content)
        if length == 0:
            if flags & PADDED:
                raise ProtocolError("PADDED DATA without its pad length")
            self._data_end(direction, side, data, ts, events)

    def _data_bytes(
        self,
        direction: Direction,
        side: _Side,
        data: _Data,
        chunk: bytes,
        pos: int,
        ts: float,
        events: list[DecoderEvent],
    ) -> int:
        """Pass on the payload bytes of ``data`` in ``chunk`` from ``pos``; the position
        after them."""
        take = min(data.left, len(chunk) - pos)
        start, end = pos, pos + take
        if data.content < 0:  # the pad length comes first
            data.content = data.length - 1 - chunk[start]
            if data.content < 0:
                raise ProtocolError(f"padding of {chunk[start]} bytes in a {data.length}-byte DATA")
            start += 1
        body = chunk[start : min(end, start + max(0, data.content - data.seen))]
        data.seen += len(body)
        data.left -= take
        if body and data.stream is not None and self._streams.get(data.sid) is data.stream:
            sizes = data.stream.msgs[direction].feed(body)
            self._progress(direction, data.stream, sizes, ts, events)
        if data.left == 0:
            self._data_end(direction, side, data, ts, events)
        return end

    def _data_end(
        self, direction: Direction, side: _Side, data: _Data, ts: float, events: list[DecoderEvent]
    ) -> None:
        side.data = None
        wire = _Wire(HEADER_SIZE + data.length, side.ts_first, ts, data.cut)
        stream = self._count(direction, data.sid, wire, events)
        if stream is None:
            return
        if direction is Direction.CLIENT:
            stream.data_in += data.seen
        else:
            stream.data_out += data.seen
            if data.flags & END_STREAM:
                self._done(stream, events)

    def _progress(
        self,
        direction: Direction,
        stream: _Stream,
        sizes: list[int],
        ts: float,
        events: list[DecoderEvent],
    ) -> None:
        """The last ``sizes`` messages of ``direction`` arrived: shown when it streams."""
        msgs = stream.msgs[direction]
        if msgs.count < 2 or not stream.grpc:
            return
        if not stream.streaming[direction]:  # the first message, held back until now
            stream.streaming[direction] = True
            if msgs.count > len(sizes):
                sizes = [msgs.first_size, *sizes]
        who = "client" if direction is Direction.CLIENT else "server"
        path = clip(self._masked_path(_get(stream.request, b":path") or b"?"), 100)
        for n, size in enumerate(sizes, msgs.count - len(sizes) + 1):
            summary = f"#{stream.id} {path} {who} message {n}: {size} bytes"
            details: Details = {"stream_id": stream.id, "message": n, "bytes": size}
            events.append(Notice(PROTOCOL, direction, "stream", summary, ts, details))

    # -- resets and endings

    def _reset(
        self, direction: Direction, sid: int, code: int, ts: float, events: list[DecoderEvent]
    ) -> None:
        who = "client" if direction is Direction.CLIENT else "server"
        stream = self._streams.get(sid)
        path = self._masked_path(_get(stream.request if stream else None, b":path") or b"")
        events.append(Notice(PROTOCOL, direction, "reset",
                             f"#{sid} RST_STREAM {_error_name(code)} by {who} {path}".rstrip(),
                             ts, {"stream_id": sid, "error_code": code}))  # fmt: skip
        if stream is not None:
            stream.reset = f"{_error_name(code)} by {who}"
            self._done(stream, events)

    def _goaway(
        self, direction: Direction, frame: GoAwayFrame, ts: float, events: list[DecoderEvent]
    ) -> None:
        who = "client" if direction is Direction.CLIENT else "server"
        debug = _text(bytes(frame.additional_data[:120]))
        summary = (f"GOAWAY {_error_name(frame.error_code)} by {who}, last stream "
                   f"{frame.last_stream_id}" + (f": {debug}" if debug else ""))  # fmt: skip
        events.append(Notice(PROTOCOL, direction, "goaway", summary, ts,
                             {"error_code": frame.error_code,
                              "last_stream_id": frame.last_stream_id}))  # fmt: skip
        if direction is Direction.SERVER:  # client streams after last_stream_id were not processed
            for stream in list(self._streams.values()):
                if stream.id > frame.last_stream_id and stream.id % 2:
                    stream.refused = f"not processed (GOAWAY last stream {frame.last_stream_id})"
                    self._done(stream, events)

    def _done(self, stream: _Stream, events: list[DecoderEvent], ended: bool = True) -> None:
        self._end(stream)
        self._finish(stream, events, ended)

    # -- transactions

    def _finish(self, stream: _Stream, events: list[DecoderEvent], ended: bool) -> None:
        """Report ``stream``; ``ended``: the server ended it, or a reset or GOAWAY did
        (not: the connection or capture ended, or too many streams were open)."""
        if not ended:
            stream.open = True
        grpc = stream.grpc
        details: Details = {"stream_id": stream.id}
        req = stream.request
        if not stream.request_seen:
            details["begun_before_capture"] = True
        if req is not None:
            for name in (b":method", b":scheme", b":authority", b":path"):
                value = _get(req, name)
                if value is not None:
                    details[_text(name[1:])] = self._masked_path(value) if name == b":path" \
                        else _text(value)  # fmt: skip
            details["request_headers"] = self._headers(req)
        if stream.undecoded:
            details["headers_not_decoded"] = list(stream.undecoded)
        if stream.informational:
            details["informational"] = list(stream.informational)
        status = _get(stream.response, b":status")
        if status is not None:
            details["status"] = _number(status) if _number(status) >= 0 else clip(_text(status), 40)
        if stream.response:
            details["response_headers"] = self._headers(stream.response)
        if stream.trailers and stream.trailers is not stream.response:
            details["trailers"] = self._headers(stream.trailers)
        details["data_bytes"] = {"client": stream.data_in, "server": stream.data_out}
        grpc_status: int | None = None
        if grpc:
            path = _text((_get(req, b":path") or b"").split(b"?", 1)[0])
            service, _, method = path.lstrip("/").rpartition("/")
            details["grpc"] = {"service": service, "method": method}
            raw = _get(stream.trailers, b"grpc-status")
            if raw is not None:
                grpc_status = _number(raw)
                details["grpc_status"] = grpc_status if grpc_status >= 0 else clip(_text(raw), 40)
                message = _get(stream.trailers, b"grpc-message")
                if message is not None:
                    details["grpc_message"] = _percent_decoded(message)
            messages: dict[str, dict[str, object]] = {}
            for who, m in zip(("client", "server"), stream.msgs, strict=True):
                messages[who] = {"count": m.count, "bytes": m.size, "complete": m.complete}
                if m.compressed:
                    messages[who]["compressed"] = m.compressed
                if m.count and m.first:
                    details[f"{who}_first_message"] = self._message(path, who, m)
            details["messages"] = messages
        if stream.reset:
            details["reset"] = stream.reset
        if stream.refused:
            details["refused"] = stream.refused
        if stream.lost:
            details["lost_sync"] = True
        if stream.open and stream.ts_reply is not None:
            details["not_ended"] = True
        error = bool(
            (grpc_status is not None and grpc_status != 0)
            or (isinstance(details.get("status"), int) and int(status or 0) >= 400)
            or (stream.reset and not stream.reset.startswith("NO_ERROR"))
            or stream.refused
        )
        events.append(
            Transaction(
                PROTOCOL,
                self._command(stream, grpc),
                clip(self._request_text(stream, grpc), SUMMARY),
                clip(self._reply_text(stream, grpc, grpc_status), SUMMARY),
                error,
                stream.ts_request,
                stream.ts_reply,
                stream.bytes_in,
                stream.bytes_out,
                details,
                unanswered=stream.ts_reply is None
                and not (stream.lost or stream.reset or stream.refused),
                cut=stream.cut,
            )
        )

    def _message(self, path: str, who: str, m: _Messages) -> object:
        """The first message of one side: named by the schema when it knows the call and
        the message was kept whole, else a raw field tree."""
        if m.first_compressed:
            return "(compressed)"
        data = bytes(m.first)
        if self.schema is not None and m.first_size == len(data):
            named = self.schema.decode(path, who == "client", data)
            if named is not None:
                return named
        return fields(data)

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in headers:
            if name.startswith(b":") or len(out) >= MAX_HEADERS:
                continue
            key = _text(name)
            text = REDACTED if self.redact and SECRET_HEADER.search(key) else _text(value)
            out[key] = clip(f"{out[key]}, {text}" if key in out else text, HEADER_VALUE)
        return out

    def _masked_path(self, path: bytes) -> str:
        text = _text(path)
        return mask_query(text) if self.redact else text

    @staticmethod
    def _command(stream: _Stream, grpc: bool) -> str:
        if not stream.request_seen:
            return "(begun before the capture)"
        path = _get(stream.request, b":path")
        if stream.request is None or path is None:
            return "(headers not decoded)" if stream.request is None else "(no :path)"
        if grpc:
            return clip(_text(path.split(b"?", 1)[0]), 100)
        method = _text(_get(stream.request, b":method") or b"?")
        return f"{method} {route(path)}"

    def _request_text(self, stream: _Stream, grpc: bool) -> str:
        parts = [f"#{stream.id}"]
        if not stream.request_seen:
            parts.append("(begun before the capture)")
        elif stream.request is None:
            parts.append("(headers not decoded)")
        else:
            method = _text(_get(stream.request, b":method") or b"?")
            path = self._masked_path(_get(stream.request, b":path") or b"?")
            parts.append(path if grpc and method == "POST" else f"{method} {path}")
        parts.append(self._body_text(stream, Direction.CLIENT, grpc))
        return " ".join(p for p in parts if p)

    def _reply_text(self, stream: _Stream, grpc: bool, grpc_status: int | None) -> str:
        parts: list[str] = []
        if stream.refused:
            parts.append(stream.refused)
        elif stream.ts_reply is None and not stream.reset:
            return "(lost sync)" if stream.lost else ""
        if stream.response is not None or stream.trailers is not None:
            if grpc and grpc_status is not None:
                shown = _text(_get(stream.trailers, b"grpc-status") or b"")
                name = (GRPC_STATUS[grpc_status] if 0 <= grpc_status < len(GRPC_STATUS)
                        else f"grpc-status {clip(shown, 40)}")  # fmt: skip
                message = _get(stream.trailers, b"grpc-message")
                if message:
                    name += f' "{clip(_percent_decoded(message), 80)}"'
                parts.append(name)
            else:
                status = _get(stream.response, b":status")
                head = _text(status) if status is not None else "?"
                ctype = _get(stream.response, b"content-type")
                if ctype and not grpc:
                    head += f" {_text(ctype)}"
                if grpc:
                    head += " (no grpc-status)" if stream.trailers is not None else ""
                parts.append(head)
        elif "response" in stream.undecoded:
            parts.append("(headers not decoded)")
        body = self._body_text(stream, Direction.SERVER, grpc)
        if body and stream.response is not None:
            parts.append(body)
        if stream.reset:
            parts.append(f"RST_STREAM {stream.reset}")
        if stream.lost:
            parts.append("(lost sync)")
        if stream.open:
            parts.append("(stream not ended)")
        return ", ".join(parts)

    @staticmethod
    def _body_text(stream: _Stream, direction: Direction, grpc: bool) -> str:
        size = stream.data_in if direction is Direction.CLIENT else stream.data_out
        if grpc:
            m = stream.msgs[direction]
            text = f"{m.count} msg{'' if m.count == 1 else 's'} {m.size} bytes"
            return text + ("" if m.complete else " (incomplete)")
        return f"{size} bytes" if size or direction is Direction.SERVER else ""


def _number(value: bytes) -> int:
    """A status code's value; -1 when it is not a (short) decimal number."""
    return int(value) if value.isdigit() and len(value) <= 9 else -1


def _percent_decoded(value: bytes) -> str:
    """grpc-message is percent-encoded (gRPC's HTTP/2 mapping)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == 0x25 and i + 2 < len(value) + 0 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return _text(bytes(out))


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# --------------------------------------------------------------------------- protobuf


MAX_FIELDS = 64  # fields shown per message (nested ones included)
MAX_DEPTH = 4


def fields(data: bytes, depth: int = 0) -> list[object] | str:
    """A protobuf message as a raw field tree, no schema: ``[[number, wire type,
    value], ...]`` with varints as numbers, fixed32/64 as hex, length-delimited as a
    nested tree when it parses as one, else as text or hex.  The bytes as hex when
    they are not a protobuf message (or are cut)."""
    out: list[object] = []
    pos, end = 0, len(data)
    while pos < end and len(out) < MAX_FIELDS:
        key, pos = _varint(data, pos)
        if key is None or key >> 3 == 0:
            return data.hex()
        number, wire = key >> 3, key & 7
        value: object
        if wire == 0:
            value, pos = _varint(data, pos)
            if value is None:
                return data.hex()
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                return data.hex()
            value, pos = data[pos : pos + size][::-1].hex(), pos + size
        elif wire == 2:
            length, pos = _varint(data, pos)
            if length is None or pos + length > end:
                return data.hex()
            chunk = data[pos : pos + length]
            pos += length
            nested = fields(chunk, depth + 1) if depth < MAX_DEPTH and chunk else chunk.hex()
            if isinstance(nested, list) and nested:
                value = nested
            else:
                try:
                    value = chunk.decode("utf-8")
                except UnicodeDecodeError:
                    value = chunk.hex()
        else:
            return data.hex()
        out.append([number, wire, value])
    return out


def _varint(data: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos
