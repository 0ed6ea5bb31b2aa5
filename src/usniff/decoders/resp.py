"""Redis RESP2/RESP3 decoder (sans-IO).

Parsing is incremental and hand-written rather than built on
``hiredis.Reader``: the decoder needs the exact wire size of every message
(bytes in/out per transaction), the position of message boundaries (resync
after loss), inline commands, attributes kept apart from the value they
annotate, and bulk strings of any size streamed while keeping only a prefix.
hiredis.Reader returns values only, buffers every bulk string whole and has no
notion of inline commands.  The common messages (a command as an array of
bulk strings, a simple reply) are read whole in one call (``Parser._whole``);
the general token-by-token parser reads the rest and is the reference the
fast path is tested against.  hiredis is used in the tests as an independent
oracle for parsed values.

Pairing is FIFO: each request waits for one reply (or one confirmation per
channel for the SUBSCRIBE family).  Not replies: RESP3 push messages
(``>``), RESP2 pub/sub ``message``/``pmessage``/``smessage`` arrays while
subscribed, MONITOR feed lines, attributes (``|``, attached to the reply that
follows).  ``CLIENT REPLY OFF|SKIP`` suppress replies.

Sync: a RESP stream has no markers a decoder could find inside arbitrary
bytes, so after a gap (and at the start, because capture may begin
mid-connection) the decoder only resumes at a chunk boundary (one ``send()``)
whose first bytes are a well-formed command, and pairs server bytes only from
the first chunk sent after that command.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from ..streams import Direction
from .base import (
    REDACTED,
    DecoderEvent,
    FramedDecoder,
    Notice,
    Pending,
    ProtocolError,
    clip,
    show_bytes,
)

KEEP = 256  # bytes kept of each bulk string
MAX_ITEMS = 16  # elements kept of each aggregate
MAX_LINE = 64 * 1024  # longest header / inline command line accepted
MAX_DEPTH = 128
SUMMARY = 160  # characters of a request/reply summary

_AGG = {ord("*"): "*", ord("~"): "~", ord("%"): "%", ord(">"): ">", ord("|"): "|"}
_BLOB = {ord("$"): "$", ord("!"): "!", ord("="): "="}
_CRLF = b"\r\n"


@dataclass(slots=True)
class Big:
    """A bulk string of which only ``prefix`` was kept."""

    prefix: bytes
    size: int


class BigNumber(int):
    """RESP3 big number (``(``), kept apart from integers for display."""


@dataclass(slots=True)
class RespError:
    message: str


@dataclass(slots=True)
class Agg:
    kind: str  # "*" array, "~" set, "%" map, ">" push, "|" attribute
    items: list[object]  # the first MAX_ITEMS elements (maps: keys and values interleaved)
    size: int  # declared element count (maps: pairs)


@dataclass(slots=True)
class Message:
    value: object
    nbytes: int
    ts_first: float = 0.0  # ts of the chunk holding the message's first byte
    attribute: Agg | None = None
    inline: bool = False
    cut: int = 0  # bytes of the message not captured (Parser.skip)


@dataclass(slots=True)
class _Frame:
    kind: str
    want: int  # elements to read; -1: streamed aggregate, ends with "."
    size: int
    items: list[object] = field(default_factory=list)
    seen: int = 0


@dataclass(slots=True)
class _Blob:
    kind: str  # "$", "!", "=" or ";" (chunk of a streamed string)
    size: int
    remaining: int  # payload + CRLF bytes still to consume
    prefix: bytearray = field(default_factory=bytearray)


class Parser:
    """Incremental RESP parser for one direction: bytes in, complete messages out."""

    def __init__(self, inline: bool, fast: bool = True) -> None:
        self.inline = inline
        self.fast = fast  # False: every message through the general parser (the reference)
        self.buf = bytearray()
        self.pos = 0
        self.consumed = 0  # stream position of buf[0]
        self.stack: list[_Frame] = []
        self.blob: _Blob | None = None
        self.attribute: Agg | None = None
        self.msg_start = 0  # stream position where the current message began
        self.msg_ts = 0.0  # ts of the chunk where the current message began
        self.chunk_ts = 0.0  # ts of the chunk being parsed
        self.cut = 0  # bytes of the current message skipped (not captured)
        self._done: list[Message] = []

    def feed(self, data: bytes, ts: float) -> list[Message]:
        """Feed ``data`` (sent at ``ts``); return the messages it completed."""
        if self.msg_start >= self.consumed + len(self.buf):  # a message starts in ``data``
            self.msg_ts = ts
        self.chunk_ts = ts
        self.buf += data
        return self._run()

    def skip(self, n: int, ts: float) -> list[Message] | None:
        """``n`` bytes not captured at this point of the stream (snap length).

        When they fall inside the payload of the bulk string being read, the
        framing is intact: the bytes are counted as cut and parsing goes on
        (returns the messages that completes).  Otherwise (they hold framing)
        returns None: the caller must resynchronise.
        """
        blob = self.blob
        if blob is None or self.buf or n > blob.remaining:
            return None
        blob.remaining -= n
        self.consumed += n
        self.cut += n
        self.chunk_ts = ts
        return self._run()

    def _run(self) -> list[Message]:
        self._done = []
        try:
            self._parse()
        finally:
            if self.pos:
                self.consumed += self.pos
                del self.buf[: self.pos]
                self.pos = 0
        return self._done

    def _parse(self) -> None:
        buf = self.buf
        while True:
            if self.blob is not None:
                if not self._blob_bytes():
                    return
                continue
            pos = self.pos
            if pos >= len(buf):
                return
            if not self.stack and self.attribute is None and self._whole(buf, pos):
                continue
            if self.inline and not self.stack and buf[pos] != 0x2A and self.attribute is None:
                if not self._inline():
                    return
                continue
            nl = buf.find(_CRLF, pos)
            if nl < 0:
                if len(buf) - pos > MAX_LINE:
                    raise ProtocolError("header line too long")
                return
            kind = buf[pos]
            line = bytes(buf[pos + 1 : nl])
            self.pos = nl + 2
            self._token(kind, line)

    def _whole(self, buf: bytearray, pos: int) -> bool:
        """The common messages (a command as an array of bulk strings; a simple
        string, error, integer or bulk string reply) when wholly in ``buf``: one
        call instead of one per token (the collector's hot path, docs/performance.md).
        False, having consumed nothing, for anything else: the general parser then
        reads it, and is the one that reports malformed input."""
        kind = buf[pos]
        nl = buf.find(_CRLF, pos)
        if nl < 0 or not self.fast:
            return False
        try:
            if kind == 0x2A:  # *
                n = int(buf[pos + 1 : nl])
                if n < 1:
                    return False
                items: list[object] = []
                end = len(buf)
                p = nl + 2
                for _ in range(n):
                    if p >= end or buf[p] != 0x24:
                        return False
                    nl = buf.find(_CRLF, p)
                    size = int(buf[p + 1 : nl]) if nl > 0 else -1
                    start, p = nl + 2, nl + 4 + size
                    if size < 0 or p > end or buf[p - 2 : p] != _CRLF:
                        return False
                    if len(items) < MAX_ITEMS:
                        items.append(_blob(buf, start, size))
                value: object = Agg("*", items, n)
            elif self.inline:
                return False
            elif kind == 0x24:  # $
                size = int(buf[pos + 1 : nl])
                start, p = nl + 2, nl + 4 + size
                if size < 0 or p > len(buf) or buf[p - 2 : p] != _CRLF:
                    return False
                value = _blob(buf, start, size)
            elif kind == 0x2B:  # +
                value, p = buf[pos + 1 : nl].decode("utf-8", "replace"), nl + 2
            elif kind == 0x2D:  # -
                value, p = RespError(buf[pos + 1 : nl].decode("utf-8", "replace")), nl + 2
            elif kind == 0x3A:  # :
                value, p = int(buf[pos + 1 : nl]), nl + 2
            else:
                return False
        except ValueError:
            return False
        self.pos = p
        nbytes = self.consumed + p - self.msg_start
        self._done.append(Message(value, nbytes, self.msg_ts, cut=self.cut))
        self._next_message()
        return True

    def _token(self, kind: int, line: bytes) -> None:
        value: object
        if kind in _BLOB:
            if line == b"?":
                self._open(_BLOB[kind] + "?", -1, 0)
                return
            n = _int(line)
            if n < 0:
                if n != -1 or kind != 0x24:
                    raise ProtocolError("bad blob length")
                value = None
            else:
                self.blob = _Blob(_BLOB[kind], n, n + 2)
                return
        elif kind in _AGG:
            if line == b"?":
                self._open(_AGG[kind], -1, 0)
                return
            n = _int(line)
            if n < 0:
                if n != -1:
                    raise ProtocolError("bad aggregate length")
                value = None
            else:
                want = n * 2 if kind in (0x25, 0x7C) else n
                self._open(_AGG[kind], want, n)
                return
        elif kind == 0x2B:  # +
            value = line.decode("utf-8", "replace")
        elif kind == 0x2D:  # -
            value = RespError(line.decode("utf-8", "replace"))
        elif kind == 0x3A:  # :
            value = _int(line)
        elif kind == 0x28:  # (
            value = BigNumber(_int(line))
        elif kind == 0x5F:  # _
            if line:
                raise ProtocolError("bad null")
            value = None
        elif kind == 0x23:  # #
            if line not in (b"t", b"f"):
                raise ProtocolError("bad boolean")
            value = line == b"t"
        elif kind == 0x2C:  # ,
            try:
                value = float(line)
            except ValueError:
                raise ProtocolError("bad double") from None
        elif kind == 0x3B:  # ";" chunk of a streamed string
            top = self.stack[-1] if self.stack else None
            if top is None or top.kind[1:] != "?":
                raise ProtocolError("chunk outside streamed string")
            n = _int(line)
            if n < 0:
                raise ProtocolError("bad chunk length")
            if n == 0:
                self.stack.pop()
                self._value(_streamed_string(top))
            else:
                self.blob = _Blob(";", n, n + 2)
            return
        elif kind == 0x2E:  # "." end of streamed aggregate
            top = self.stack[-1] if self.stack else None
            if top is None or top.want != -1 or top.kind[1:] == "?":
                raise ProtocolError("end marker outside streamed aggregate")
            self.stack.pop()
            self._value(Agg(top.kind, top.items, top.seen // (2 if top.kind in "%|" else 1)))
            return
        else:
            raise ProtocolError(f"unknown type byte {kind:#x}")
        self._value(value)

    def _open(self, kind: str, want: int, size: int) -> None:
        if want == 0:
            self._value(Agg(kind, [], 0))
            return
        if len(self.stack) >= MAX_DEPTH:
            raise ProtocolError("nesting too deep")
        self.stack.append(_Frame(kind, want, size))

    def _blob_bytes(self) -> bool:
        """Consume payload of the blob in progress; False when more input is needed."""
        blob = self.blob
        assert blob is not None
        avail = len(self.buf) - self.pos
        take = min(avail, blob.remaining)
        payload_left = blob.remaining - 2  # bytes of payload (not CRLF) still to come
        keep = min(take, max(0, payload_left), KEEP - len(blob.prefix))
        if keep > 0:
            blob.prefix += self.buf[self.pos : self.pos + keep]
        # the CRLF ends up in the last two consumed bytes; check it when visible
        if take >= blob.remaining and blob.remaining >= 2:
            end = self.pos + blob.remaining
            if self.buf[end - 2 : end] != _CRLF:
                raise ProtocolError("blob not terminated by CRLF")
        self.pos += take
        blob.remaining -= take
        if blob.remaining:
            return False
        self.blob = None
        data = bytes(blob.prefix)
        value: object = data if blob.size <= len(data) else Big(data, blob.size)
        if blob.kind == ";":
            top = self.stack[-1]
            top.seen += blob.size
            if len(top.items) < MAX_ITEMS:
                top.items.append(value)
            return True
        if blob.kind == "!":
            value = RespError(_text(value))
        elif blob.kind == "=":
            value = _strip_verbatim(value)
        self._value(value)
        return True

    def _value(self, value: object) -> None:
        while True:
            if isinstance(value, Agg) and value.kind == "|":
                if not self.stack:
                    self.attribute = value
                return  # attributes annotate, they are not elements
            if not self.stack:
                nbytes = self.consumed + self.pos - self.msg_start
                self._done.append(Message(value, nbytes, self.msg_ts, self.attribute, cut=self.cut))
                self._next_message()
                self.attribute = None
                return
            top = self.stack[-1]
            if top.kind[1:] == "?":
                raise ProtocolError("non-chunk inside streamed string")
            if len(top.items) < MAX_ITEMS:
                top.items.append(value)
            top.seen += 1
            if top.seen != top.want:
                return
            self.stack.pop()
            value = Agg(top.kind, top.items, top.size)

    def _inline(self) -> bool:
        buf = self.buf
        nl = buf.find(b"\n", self.pos)
        if nl < 0:
            if len(buf) - self.pos > MAX_LINE:
                raise ProtocolError("inline command too long")
            return False
        line = bytes(buf[self.pos : nl]).rstrip(b"\r")
        self.pos = nl + 1
        args: list[object] = list(line.split())
        if args:
            nbytes = self.consumed + self.pos - self.msg_start
            value = Agg("*", args[:MAX_ITEMS], len(args))
            self._done.append(Message(value, nbytes, self.msg_ts, inline=True))
        self._next_message()
        return True

    def idle(self) -> bool:
        """Between messages, with nothing buffered."""
        return not self.buf and not self.stack and self.blob is None and self.attribute is None

    def _next_message(self) -> None:
        """The next message starts here, in the chunk being parsed."""
        self.msg_start = self.consumed + self.pos
        self.msg_ts = self.chunk_ts
        self.cut = 0


def _blob(buf: bytearray, start: int, size: int) -> object:
    """A bulk string's value as the general parser keeps it: whole up to KEEP bytes."""
    if size <= KEEP:
        return bytes(buf[start : start + size])
    return Big(bytes(buf[start : start + KEEP]), size)


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError("bad integer") from None


def _text(value: object) -> str:
    data = value.prefix if isinstance(value, Big) else value
    assert isinstance(data, bytes)
    return data.decode("utf-8", "replace")


def _strip_verbatim(value: object) -> object:
    if isinstance(value, Big):
        return Big(value.prefix[4:], value.size - 4)
    assert isinstance(value, bytes)
    return value[4:]


def _streamed_string(frame: _Frame) -> object:
    parts = b"".join(p.prefix if isinstance(p, Big) else p for p in frame.items)  # type: ignore[misc]
    return parts if len(parts) == frame.seen else Big(parts[:KEEP], frame.seen)


# --------------------------------------------------------------------------- rendering


def render(value: object, limit: int = SUMMARY) -> str:
    """Compact one-line rendering of a reply value."""
    return clip(_render(value, 0), limit)


def _render(value: object, depth: int) -> str:
    if isinstance(value, bytes):  # the commonest replies first
        return show_bytes(value) if value else '""'
    if isinstance(value, str):
        return "+" + value
    if value is None:
        return "(nil)"
    if isinstance(value, bool):
        return "#t" if value else "#f"
    if isinstance(value, BigNumber):
        return f"({value}"
    if isinstance(value, int):
        return f":{value}"
    if isinstance(value, float):
        return f",{value:g}"
    if isinstance(value, RespError):
        return "-" + value.message
    if isinstance(value, Big):
        return show_bytes(value.prefix, total=value.size)
    assert isinstance(value, Agg)
    if depth > 2:
        return f"{value.kind}{value.size}[...]"
    parts = [_render(v, depth + 1) for v in value.items]
    if value.kind in "%|":
        parts = [f"{k}: {v}" for k, v in zip(parts[::2], parts[1::2], strict=False)]
    shown = len(parts)
    if shown < value.size:
        parts.append(f"...+{value.size - shown}")
    open_, close = ("{", "}") if value.kind in "%~|" else ("[", "]")
    return f"{value.kind}{value.size} {open_}{', '.join(parts)}{close}"


def _arg(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Big):
        return value.prefix
    return _render(value, 3).encode()


def _show_arg(value: object) -> str:
    if isinstance(value, Big):
        return show_bytes(value.prefix, 48, value.size)
    return show_bytes(_arg(value), 48)


# --------------------------------------------------------------------------- pairing

CONTAINERS = frozenset(
    b"ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB "
    b"SCRIPT SLOWLOG XGROUP XINFO".split()
)
_BLOCKING = frozenset(
    b"BLPOP BRPOP BRPOPLPUSH BLMOVE BLMPOP BZPOPMIN BZPOPMAX BZMPOP XREAD XREADGROUP WAIT "
    b"WAITAOF".split()
)
_SUBSCRIBE = {
    b"SUBSCRIBE": "channel",
    b"PSUBSCRIBE": "pattern",
    b"SSUBSCRIBE": "shard",
}
_UNSUBSCRIBE = {
    b"UNSUBSCRIBE": "channel",
    b"PUNSUBSCRIBE": "pattern",
    b"SUNSUBSCRIBE": "shard",
}
_CONFIRM = {
    b"subscribe": "channel",
    b"psubscribe": "pattern",
    b"ssubscribe": "shard",
    b"unsubscribe": "channel",
    b"punsubscribe": "pattern",
    b"sunsubscribe": "shard",
}
_SUBSCRIBERS = frozenset(_SUBSCRIBE) | frozenset(_UNSUBSCRIBE)
_PUBSUB_MESSAGES = frozenset((b"message", b"pmessage", b"smessage"))
# commands (name, or name and subcommand) after which pairing is more than FIFO: a
# connection that sent one is decoded here, never by the native --stats path (_fast.c)
STATEFUL = frozenset(_SUBSCRIBERS | {b"MONITOR", b"CLIENT REPLY"})
_MONITOR_LINE = re.compile(r"\d+\.\d+ \[")
_COMMAND_START = re.compile(rb"\*[1-9]\d*\r\n\$\d+\r\n|[A-Za-z]+[ \r\n]")
_COMMAND_PREFIX = re.compile(rb"\*[1-9]?\d*\r?|\*[1-9]\d*\r\n(\$\d*\r?)?|[A-Za-z]+")
_REPLY_START = frozenset(b"+-:$*%~>|_#,(!=")


@dataclass(slots=True)
class Waiting(Pending):
    """A request waiting for its reply (or replies)."""

    expect: int = 1
    replies: list[str] = field(default_factory=list)


class RespDecoder(FramedDecoder[Message]):
    protocol = "resp"

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._pending: deque[Waiting] = deque()
        self._restart()
        self._subs: dict[str, set[bytes]] = {"channel": set(), "pattern": set(), "shard": set()}
        self._reply_off = False
        self._skip_next = False

    # -- sync

    def _forget_chunk_start(self) -> None:
        self._sync_buf = b""

    def _synced(self, direction: Direction, data: bytes, ts: float) -> bytes | None:
        if direction is Direction.CLIENT:
            if self._sync_ts is None:
                candidate = self._sync_buf + data
                self._sync_buf = b""
                if not _COMMAND_START.match(candidate):
                    if len(candidate) < 32 and _COMMAND_PREFIX.fullmatch(candidate):
                        self._sync_buf = candidate  # too short to tell yet
                    return None
                self._sync_ts = ts
                return candidate
            return data
        if not self._server_synced:
            if (
                self._sync_ts is None
                or ts < self._sync_ts
                or not data
                or data[0] not in _REPLY_START
            ):
                return None
            self._server_synced = True
        return data

    def _restart(self) -> None:
        self._parsers = (Parser(inline=True), Parser(inline=False))
        self._sync_ts = None
        self._sync_buf = b""  # start of a chunk too short to recognise a command in
        self._server_synced = False
        self._monitor = False

    def _abandon(self, events: list[DecoderEvent], why: str) -> None:
        while self._pending:
            self._finish(self._pending.popleft(), events, why)

    # -- requests

    def _request(self, msg: Message, ts: float, events: list[DecoderEvent]) -> None:
        req, sub, args = self._new_request(msg, ts)
        name = req.name
        no_reply = self._reply_off or self._skip_next
        self._skip_next = False
        if name == b"CLIENT" and sub == b"REPLY" and len(args) > 2:
            mode = _arg(args[2]).upper()
            self._reply_off = mode == b"OFF"
            self._skip_next = mode == b"SKIP"
            no_reply = mode != b"ON"
        if no_reply:
            req.details["reply_suppressed"] = True
            self._finish(req, events, "")
        else:
            self._pending.append(req)

    def _new_request(self, msg: Message, ts: float) -> tuple[Waiting, bytes, list[object]]:
        """The request ``msg``, complete at ``ts``; its subcommand and arguments."""
        value = msg.value
        args = value.items if isinstance(value, Agg) else [value]
        size = value.size if isinstance(value, Agg) else 1
        name = _arg(args[0]).upper() if args else b""
        sub = _arg(args[1]).upper() if name in CONTAINERS and len(args) > 1 else b""
        command = (name + b" " + sub if sub else name).decode("utf-8", "replace")
        req = Waiting(name, command, self._request_text(name, args, size), ts, msg.nbytes)
        req.cut = msg.cut
        if msg.inline:
            req.details["inline"] = True
        if name in _BLOCKING:
            req.details["blocking"] = True
        if name in _SUBSCRIBE:
            req.expect = max(1, size - 1)
        elif name in _UNSUBSCRIBE:
            req.expect = size - 1 if size > 1 else max(1, len(self._subs[_UNSUBSCRIBE[name]]))
        return req, sub, args

    # -- the native --stats path (outputs/fast.py) takes plain connections over

    def plain(self) -> bool:
        """In sync, no message half read, and every later request is answered by the next
        reply (no subscription, MONITOR or CLIENT REPLY in force or waiting)."""
        return (
            self._sync_ts is not None
            and self._server_synced
            and not self._sync_buf
            and not (self._monitor or self._reply_off or self._skip_next)
            and not any(self._subs.values())
            and all(isinstance(p, Parser) and p.idle() for p in self._parsers)
            and all(
                r.expect == 1 and not r.replies and r.name not in STATEFUL for r in self._pending
            )  # fmt: skip
        )

    def hand_over(self) -> tuple[list[Waiting], None]:
        """The requests waiting for a reply, taken out (the connection is :meth:`plain`),
        and no more state."""
        pending = list(self._pending)
        self._pending.clear()
        return pending, None

    def take_back(self, pending: list[tuple[object, float, int]], state: None = None) -> None:
        """The requests waiting for a reply, handed back: each one taken out by
        :meth:`hand_over`, or (the request as sent, the ts of its last byte, its size)."""
        for item, ts, nbytes in pending:
            self._pending.append(
                item if isinstance(item, Waiting) else self.request(item, ts, nbytes)
            )

    def request(self, raw: object, ts: float, nbytes: int) -> Waiting:
        """The request whose bytes were ``raw`` (one whole command, as sent), or ``raw``
        itself when it was handed over."""
        if isinstance(raw, Waiting):
            return raw
        assert isinstance(raw, bytes)
        [msg] = Parser(inline=False).feed(raw, ts)
        msg.nbytes = nbytes
        return self._new_request(msg, ts)[0]

    def _request_text(self, name: bytes, args: list[object], size: int) -> str:
        shown = [_show_arg(a) for a in args]
        if shown:
            shown[0] = name.decode("utf-8", "replace")
        if self.redact:
            _redact(name, args, shown)
        if size > len(args):
            shown.append(f"...+{size - len(args)} args")
        return clip(" ".join(shown), SUMMARY)

    # -- replies

    def _reply(self, msg: Message, events: list[DecoderEvent]) -> None:
        value, ts = msg.value, msg.ts_first
        head = self._pending[0] if self._pending else None
        kind = _pubsub_kind(value)
        is_push = isinstance(value, Agg) and value.kind == ">"
        if kind in _CONFIRM and head is not None and head.name in _SUBSCRIBERS:
            self._confirm(value, kind)
        elif is_push or (kind in _PUBSUB_MESSAGES and any(self._subs.values())):
            events.append(Notice(self.protocol, Direction.SERVER, "push", render(value), ts))
            return
        elif self._monitor and isinstance(value, str) and _MONITOR_LINE.match(value):
            events.append(Notice(self.protocol, Direction.SERVER, "monitor", value, ts))
            return
        if head is None:
            events.append(Notice(self.protocol, Direction.SERVER, "unpaired", render(value), ts))
            return
        head.replies.append(render(_masked_reply(head.command, value) if self.redact else value))
        head.reply_bytes += msg.nbytes
        head.cut += msg.cut
        if head.ts_reply is None:
            head.ts_reply = ts
        if msg.attribute is not None:
            head.details["attribute"] = render(msg.attribute)
        if isinstance(value, RespError):
            head.error = True
        elif head.name == b"MONITOR":
            self._monitor = True
        head.expect -= 1
        if head.expect <= 0:
            self._pending.popleft()
            self._finish(head, events, "")

    def _confirm(self, value: object, kind: bytes) -> None:
        assert isinstance(value, Agg)
        channel = value.items[1] if len(value.items) > 1 else None
        if isinstance(channel, bytes):
            subs = self._subs[_CONFIRM[kind]]
            if kind.endswith(b"unsubscribe"):
                subs.discard(channel)
            else:
                subs.add(channel)

    def _finish(self, req: Waiting, events: list[DecoderEvent], why: str) -> None:
        """Report ``req``.  Without a reply, ``why`` says what happened: "" (none came
        before the connection or the capture ended: unanswered) or "(lost sync)" (it
        may have come in bytes that could not be decoded: neither answered nor not)."""
        reply = "; ".join(req.replies) if req.replies else why
        unanswered = not req.replies and not why and not req.details.get("reply_suppressed")
        events.append(req.transaction(self.protocol, clip(reply, SUMMARY), unanswered))


def _pubsub_kind(value: object) -> bytes:
    if isinstance(value, Agg) and value.kind in "*>" and value.items:
        first = value.items[0]
        if isinstance(first, bytes):
            return first.lower()
    return b""


def _redact(name: bytes, args: list[object], shown: list[str]) -> None:
    """Mask passwords: AUTH [user] pass; HELLO ... AUTH user pass; MIGRATE ...
    AUTH pass / AUTH2 user pass; ACL SETUSER rules >pass <pass #hash !hash;
    CONFIG SET requirepass / masterauth (in any of its pairs)."""
    words = [_arg(a) for a in args]
    if name == b"AUTH" and len(shown) > 1:
        shown[-1] = REDACTED
    elif name == b"HELLO":
        _mask_options(words, shown, 1, {b"AUTH": 2}, stop=b"")
    elif name == b"MIGRATE":  # MIGRATE host port key db timeout [options] [KEYS k ...]
        _mask_options(words, shown, 6, {b"AUTH": 1, b"AUTH2": 2}, stop=b"KEYS")
    elif name == b"ACL" and len(words) > 1 and words[1].upper() == b"SETUSER":
        for i in range(3, len(words)):
            if words[i][:1] in _PASSWORD_RULES:
                shown[i] = words[i][:1].decode() + REDACTED
    elif name == b"CONFIG" and len(words) > 1 and words[1].upper() == b"SET":
        for i in range(2, len(words) - 1, 2):
            if words[i].lower() in _SECRET_CONFIG:
                shown[i + 1] = REDACTED


def _mask_options(
    words: list[bytes], shown: list[str], first: int, secret: dict[bytes, int], stop: bytes
) -> None:
    """Mask the password after each option in ``secret`` (its last argument:
    AUTH2 user pass), from ``words[first]`` up to the word ``stop`` (MIGRATE's
    KEYS, after which come key names)."""
    i = first
    while i < len(words):
        word = words[i].upper()
        if stop and word == stop:
            return
        n = secret.get(word, 0)
        if n and i + n < len(shown):
            shown[i + n] = REDACTED
        i += 1 + n


def _masked_reply(command: str, value: object) -> object:
    """A reply that carries a secret, masked: CONFIG GET's requirepass and
    masterauth, ACL GETUSER's "passwords", the hashes in ACL LIST's rules
    (unsalted SHA-256 of the passwords)."""
    if not isinstance(value, Agg):
        return value
    items = list(value.items)
    if command in ("CONFIG GET", "ACL GETUSER"):
        for i in range(0, len(items) - 1, 2):
            key = _arg(items[i]).lower()
            if key in _SECRET_CONFIG or (command == "ACL GETUSER" and key == b"passwords"):
                items[i + 1] = REDACTED.encode()
    elif command == "ACL LIST":
        items = [
            b" ".join(b"#" + REDACTED.encode() if w[:1] == b"#" else w for w in x.split(b" "))
            if isinstance(x, bytes)
            else x
            for x in items
        ]
    return Agg(value.kind, items, value.size)


# the command keys (name, or name and subcommand) whose request text or reply _redact or
# _masked_reply may mask: with --redact, the native text path (_fast.c) leaves them to Python
MASKED = frozenset(
    (b"AUTH", b"HELLO", b"MIGRATE", b"ACL SETUSER", b"ACL GETUSER", b"ACL LIST", b"CONFIG SET",
     b"CONFIG GET")
)  # fmt: skip
_PASSWORD_RULES = frozenset((b">", b"<", b"#", b"!"))  # ACL SETUSER: add/remove a password or hash
_SECRET_CONFIG = frozenset((b"requirepass", b"masterauth"))
