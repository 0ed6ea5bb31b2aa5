"""D-Bus decoder (sans-IO): a bus daemon's socket (``dbus-daemon``, ``dbus-broker``)
or a peer-to-peer one (systemd's private socket).

A connection begins with the SASL handshake in text lines: the client sends a NUL
byte, ``AUTH mechanism [initial response in hex]``, perhaps ``DATA``,
``NEGOTIATE_UNIX_FD``, then ``BEGIN``; the server answers each but BEGIN with one
line (``OK guid``, ``REJECTED mechanisms``, ``DATA hex``, ``ERROR``,
``AGREE_UNIX_FD``).  Each client line is one transaction paired with the next
server line (BEGIN has no answer).  After BEGIN both sides send binary messages:
a 16-byte fixed header (endianness ``l``/``B``, type, flags, version 1, body
length, serial, header fields length), the header fields (path, interface,
member, error name, reply serial, destination, sender, signature, unix fds),
padding to 8, the body.

Messages are framed here (lengths from the fixed header: the decoder keeps at
most KEEP_BODY bytes of a body, counts the rest, and can skip bytes cut by the
snap length inside a body); their header fields and body values are read by
``Unmarshal``, which checks every length, signature and nesting depth (dbus-fast
and jeepney do not survive hostile bytes: see ``Unmarshal``).

Pairing is by serial: a METHOD_RETURN or ERROR carries the serial of the call it
answers (REPLY_SERIAL), so replies pair in any order.  Either side may call (the
bus forwards other peers' calls to a service over the service's connection):
calls are keyed by the direction they came from and their serial.  A call with
NO_REPLY_EXPECTED is reported at once, without a reply.  Signals are notices.

Sync: at the start (a capture may begin mid-connection) and after bytes it cannot
skip, a direction resumes only at a chunk (one ``send()``) that starts with a SASL
line or a plausible message header (``plausible_header``).  Calls in flight when
the other direction lost bytes are reported ``(lost sync)`` if no reply comes.

Memory is bounded: KEEP_BODY bytes of a message body, MAX_HEADER of its header
fields, MAX_LINE of a SASL line, MAX_PENDING calls in flight per direction.
"""

from __future__ import annotations

import functools
import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ..streams import Direction
from .base import (
    REDACTED,
    DecoderEvent,
    Details,
    Notice,
    Pending,
    ProtocolError,
    SidedDecoder,
    Transaction,
    clip,
    show_bytes,
)

PROTOCOL = "dbus"
FIXED = 16  # endianness, type, flags, version, body length, serial, header fields length
MAX_MESSAGE = 1 << 27  # the D-Bus specification's limit (128 MiB)
MAX_HEADER = 64 * 1024  # header fields kept; real ones are a few hundred bytes
KEEP_BODY = 64 * 1024  # body bytes kept (and decoded) per message
MAX_LINE = 16 * 1024  # longest SASL line (dbus-daemon's limit)
MAX_PENDING = 4096  # calls in flight per direction
MAX_ITEMS = 16  # elements shown of each array or dict, and of a message's values
SUMMARY = 200  # characters of a request/reply summary
DETAIL = 2000  # characters of a body in the details (JSON)

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
NO_REPLY_EXPECTED, NO_AUTO_START, ALLOW_INTERACTIVE_AUTHORIZATION = 1, 2, 4
_FLAG_NAMES = ((NO_REPLY_EXPECTED, "no_reply_expected"), (NO_AUTO_START, "no_auto_start"),
               (ALLOW_INTERACTIVE_AUTHORIZATION, "allow_interactive_authorization"))  # fmt: skip
UNIX_FDS = 9  # header field code
_FIELD_TYPES = b"osgu"  # the variant types of the header fields the specification defines

SASL_CLIENT = frozenset((b"AUTH", b"CANCEL", b"BEGIN", b"DATA", b"ERROR", b"NEGOTIATE_UNIX_FD"))
SASL_SERVER = frozenset((b"REJECTED", b"OK", b"DATA", b"ERROR", b"AGREE_UNIX_FD"))
# mechanisms whose SASL data is no secret: EXTERNAL's is the uid, ANONYMOUS's a trace string
_OPEN_MECHANISMS = frozenset((b"EXTERNAL", b"ANONYMOUS"))
# --redact: body values under dict keys (a{sv} properties, settings) that name a credential
SECRET_KEY = re.compile(r"pass|secret|token|psk|credential|private.?key|cookie", re.IGNORECASE)
# --redact: interfaces whose every argument may be a secret (the Secret Service API)
SECRET_INTERFACE = re.compile(r"^org\.freedesktop\.Secret\.|SecretAgent$")


# --------------------------------------------------------------------------- framing


@dataclass(slots=True)
class Msg:
    """One binary message: ``data`` holds its header and at most KEEP_BODY of its body."""

    data: bytes
    size: int  # bytes on the wire
    body_start: int  # offset of the body
    ts_first: float
    ts_last: float
    cut: int = 0  # bytes not captured (snap length)


@dataclass(slots=True)
class Line:
    """One SASL line, without its CRLF."""

    text: bytes
    size: int
    ts_first: float
    ts_last: float


def _u32(data: bytes | bytearray, pos: int, endian: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "little" if endian == 0x6C else "big")


def _sizes(head: bytes | bytearray) -> tuple[int, int]:
    """(offset of the body, message size) from a fixed header; ProtocolError when
    it is not one."""
    endian, kind, flags, version = head[0], head[1], head[2], head[3]
    if endian not in (0x6C, 0x42) or version != 1 or not 1 <= kind <= 4 or flags > 7:
        raise ProtocolError(f"not a message header: {show_bytes(bytes(head[:4]))}")
    body, fields = _u32(head, 4, endian), _u32(head, 12, endian)
    if fields > MAX_HEADER:
        raise ProtocolError(f"header fields of {fields} bytes")
    start = FIXED + fields + (-(FIXED + fields) & 7)
    if start + body > MAX_MESSAGE:
        raise ProtocolError(f"message of {start + body} bytes (the limit is {MAX_MESSAGE})")
    return start, start + body


class Reader:
    """One direction: SASL lines until the binary part begins, then messages."""

    def __init__(self, client: bool) -> None:
        self.client = client
        self.binary = False
        self.started = False  # the first line was read (the client's begins with a NUL)
        self.buf = bytearray()
        self.ts_first = 0.0
        self.size = 0  # size of the message being read; 0: its fixed header is not complete
        self.body_start = 0
        self.seen = 0  # bytes of the current message seen (kept, skipped or cut)
        self.cut = 0
        self.error = ""  # what broke the framing (the caller resynchronises)

    def feed(self, data: bytes, ts: float) -> list[Msg | Line]:
        """The messages and lines ``data`` completes; those before a framing error too
        (then ``error`` says what broke the framing)."""
        out: list[Msg | Line] = []
        try:
            self._feed(data, ts, out)
        except ProtocolError as exc:
            self.error = str(exc)
        return out

    def _feed(self, data: bytes, ts: float, out: list[Msg | Line]) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if not self.seen:
                self.ts_first = ts
            if not self.binary:
                pos = self._sasl(data, pos, ts, out)
                continue
            if not self.size:
                take = min(FIXED - len(self.buf), end - pos)
                self.buf += data[pos : pos + take]
                self.seen += take
                pos += take
                if len(self.buf) < FIXED:
                    break
                self.body_start, self.size = _sizes(self.buf)
            take = min(self.size - self.seen, end - pos)
            keep = min(take, max(0, self.body_start + KEEP_BODY - self.seen))
            self.buf += data[pos : pos + keep]
            self.seen += take
            pos += take
            if self.seen == self.size:
                out.append(self._message(ts))

    def skip(self, n: int, ts: float) -> list[Msg | Line] | None:
        """``n`` bytes not captured: counted as cut when they fall inside the body of
        the message being read (returns the message they complete); None when they
        hold framing (the caller resynchronises)."""
        if not self.binary or not self.size or self.seen < self.body_start:
            return None
        if n > self.size - self.seen:
            return None
        self.seen += n
        self.cut += n
        return [self._message(ts)] if self.seen == self.size else []

    def _message(self, ts: float) -> Msg:
        msg = Msg(bytes(self.buf), self.size, self.body_start, self.ts_first, ts, self.cut)
        self.buf = bytearray()
        self.size = self.seen = self.cut = 0
        return msg

    def _sasl(self, data: bytes, pos: int, ts: float, out: list[Msg | Line]) -> int:
        if not self.client and not self.buf and data[pos] in (0x6C, 0x42):
            self.binary = True  # the server's first message after its last SASL line
            return pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            self.buf += data[pos:]
            self.seen += len(data) - pos
            if len(self.buf) > MAX_LINE:
                raise ProtocolError(f"SASL line longer than {MAX_LINE} bytes")
            return len(data)
        self.buf += data[pos : nl + 1]
        line = bytes(self.buf)
        self.buf = bytearray()
        self.seen = 0
        if len(line) > MAX_LINE:
            raise ProtocolError(f"SASL line longer than {MAX_LINE} bytes")
        text = line.rstrip(b"\r\n")
        if self.client and not self.started:
            self.started = True
            text = text.removeprefix(b"\0")  # the NUL byte that begins the client's stream
        out.append(Line(text, len(line), self.ts_first, ts))
        if self.client and text == b"BEGIN":
            self.binary = True
        return nl + 1


def plausible_header(data: bytes) -> bool | None:
    """Does ``data`` start with a message header (the fixed part, then a first header
    field of a defined code and type)?  None: too short to tell, and what is there fits."""
    n = len(data)
    if not n or data[0] not in (0x6C, 0x42):
        return False
    if (n > 1 and not 1 <= data[1] <= 4) or (n > 2 and data[2] > 7) or (n > 3 and data[3] != 1):
        return False
    if n < FIXED + 4:
        return None
    try:
        _sizes(data)
    except ProtocolError:
        return False
    if _u32(data, 8, data[0]) == 0 or _u32(data, 12, data[0]) == 0:
        return False  # serial 0, or no header fields (every message type needs some)
    return 1 <= data[16] <= 9 and data[17] == 1 and data[18] in _FIELD_TYPES and data[19] == 0


def _sasl_start(data: bytes, words: frozenset[bytes]) -> bool | None:
    """Does ``data`` start with one of the SASL commands ``words`` (then a space or
    the end of the line)?  None: too short to tell."""
    word = re.match(rb"[A-Z_]*", data)
    assert word is not None
    if word.end() == len(data) and len(data) < 20:
        return None if any(w.startswith(word[0]) for w in words) else False
    return word[0] in words and data[word.end() : word.end() + 1] in (b" ", b"\r", b"\n")


# --------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Parsed:
    kind: int
    flags: int
    serial: int
    endian: str
    path: str | None
    interface: str | None
    member: str | None
    error_name: str | None
    reply_serial: int
    destination: str | None
    sender: str | None
    signature: str
    body: list[object] | None  # None: not decoded (too big, cut, or malformed)
    unix_fds: int
    why: str = ""  # why the body is not decoded


def parse(msg: Msg) -> Parsed:
    """The message's header fields and body values; ProtocolError when its header
    cannot be read (a body that cannot be read is reported in ``why``)."""
    data = msg.data
    order: Literal["little", "big"] = "little" if data[0] == 0x6C else "big"
    fields = Unmarshal(data, msg.body_start, order).header_fields()
    for code, kind in _FIELD_KINDS.items():
        if code in fields and not isinstance(fields[code], kind):
            raise ProtocolError(f"header field {code} of the wrong type")
    signature = _opt(fields.get(8)) or ""
    body: list[object] | None = None
    body_len = msg.size - msg.body_start
    why = ""
    if len(data) < msg.size or msg.cut:
        why = f"{body_len} bytes, {msg.cut} not captured" if msg.cut else f"{body_len} bytes"
    else:
        try:
            types = split_signature(signature)
            reader = Unmarshal(data, msg.size, order)
            reader.pos = msg.body_start
            body = [reader.value(t, 0) for t in types]
        except ProtocolError as exc:
            why = f"malformed: {exc}"
    return Parsed(
        data[1],
        data[2],
        _u32(data, 8, data[0]),
        order,
        _opt(fields.get(1)),
        _opt(fields.get(2)),
        _opt(fields.get(3)),
        _opt(fields.get(4)),
        _int(fields.get(5)),
        _opt(fields.get(6)),
        _opt(fields.get(7)),
        signature,
        body,
        _int(fields.get(UNIX_FDS)),
        why,
    )


def _opt(value: object) -> str | None:
    """A header field's text, terminal- and JSON-safe (bytes not UTF-8 as \\xNN)."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


# header field code -> the Python type of its value (o, s, s, s, u, s, s, g, u)
_FIELD_KINDS: dict[int, type] = {1: str, 2: str, 3: str, 4: str, 5: int, 6: str, 7: str,
                                 8: str, 9: int}  # fmt: skip
_BASIC = frozenset("ybnqiuxtdsogh")
_FIXED = {"y": (1, False), "n": (2, True), "q": (2, False), "i": (4, True), "u": (4, False),
          "h": (4, False), "x": (8, True), "t": (8, False)}  # fmt: skip
_ALIGN = {"y": 1, "g": 1, "v": 1, "n": 2, "q": 2, "b": 4, "i": 4, "u": 4, "h": 4, "s": 4,
          "o": 4, "a": 4, "x": 8, "t": 8, "d": 8, "(": 8, "{": 8}  # fmt: skip
MAX_ARRAY = 1 << 26  # the specification's limit on an array's bytes
MAX_DEPTH = 64  # containers nested, variants included (the specification's 32 + 32)


@dataclass(slots=True)
class More:
    """The elements of an array past the first MAX_ITEMS: their bytes, not parsed."""

    nbytes: int


@functools.lru_cache(maxsize=1024)
def split_signature(sig: str) -> tuple[str, ...]:
    """The complete types of ``sig``; ProtocolError when it is not a valid signature."""
    types, pos = [], 0
    while pos < len(sig):
        end = _complete_type(sig, pos, 0, 0)
        types.append(sig[pos:end])
        pos = end
    return tuple(types)


def _complete_type(sig: str, pos: int, arrays: int, structs: int) -> int:
    """The end of the complete type starting at ``sig[pos]``."""
    if pos >= len(sig):
        raise ProtocolError(f"signature {sig!r} ends inside a type")
    code = sig[pos]
    if code in _BASIC or code in "vd":
        return pos + 1
    if code == "a":
        if arrays >= 32:
            raise ProtocolError("arrays nested too deep")
        if sig[pos + 1 : pos + 2] == "{":
            key = pos + 2
            if key >= len(sig) or sig[key] not in _BASIC and sig[key] != "d":
                raise ProtocolError(f"signature {sig!r}: dict key not of a basic type")
            end = _complete_type(sig, key + 1, arrays + 1, structs + 1)
            if sig[end : end + 1] != "}":
                raise ProtocolError(f"signature {sig!r}: dict entry not closed")
            return end + 1
        return _complete_type(sig, pos + 1, arrays + 1, structs)
    if code == "(":
        if structs >= 32:
            raise ProtocolError("structs nested too deep")
        end = pos + 1
        while sig[end : end + 1] != ")":
            end = _complete_type(sig, end, arrays, structs + 1)
        if end == pos + 1:
            raise ProtocolError("empty struct")
        return end + 1
    raise ProtocolError(f"signature {sig!r}: {code!r} is not a type")


class Unmarshal:
    """Values of the D-Bus wire format read from ``data[pos:end]``, every length
    checked against ``end``.  Written here rather than taken from dbus-fast or jeepney:
    on hostile bytes dbus-fast's compiled unmarshaller crashes the process (a 48-byte
    message: signature ``aay``, array length 0xffffffff, SIGSEGV in dbus-fast 5.2.0)
    and jeepney's loops forever (a variant ``a()`` with a non-zero length)."""

    def __init__(self, data: bytes, end: int, order: Literal["little", "big"]) -> None:
        self.data = data
        self.end = end
        self.order = order
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise ProtocolError("value runs past the end")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def _align(self, n: int) -> None:
        pos = self.pos + (-self.pos % n)
        if pos > self.end:
            raise ProtocolError("value runs past the end")
        self.pos = pos

    def _uint(self, n: int) -> int:
        start = self.pos + (-self.pos % n)
        end = start + n
        if end > self.end:
            raise ProtocolError("value runs past the end")
        self.pos = end
        return int.from_bytes(self.data[start:end], self.order)

    def _text(self, n: int) -> str:
        start, end = self.pos, self.pos + n
        if end >= self.end:
            raise ProtocolError("value runs past the end")
        if self.data[end]:
            raise ProtocolError("string without its NUL")
        self.pos = end + 1
        # bytes that are not UTF-8 are kept (shown as \\xNN by render), never refused
        return self.data[start:end].decode("utf-8", "surrogateescape")

    def header_fields(self) -> dict[int, object]:
        """The header fields (``a(yv)`` at offset 12), code -> value; the common
        single-type variants read inline (the decoder's hot path)."""
        fields: dict[int, object] = {}
        data = self.data
        self.pos = 12
        end = self._uint(4) + 16
        if end > self.end:
            raise ProtocolError("header fields run past the end")
        while self.pos < end:
            self._align(8)
            pos = self.pos
            if (
                pos + 4 <= end
                and data[pos + 1] == 1
                and data[pos + 2] in _FIELD_TYPES
                and not data[pos + 3]
            ):
                self.pos = pos + 4
                value = self.value(chr(data[pos + 2]), 1)
            else:
                self.pos = pos + 1
                value = self.value("v", 1)
            if self.pos > end:
                raise ProtocolError("header field runs past the header")
            fields[data[pos]] = value
        return fields

    def value(self, sig: str, depth: int) -> object:
        """One value of the complete type ``sig``."""
        if depth > MAX_DEPTH:
            raise ProtocolError("values nested too deep")
        code = sig[0]
        fixed = _FIXED.get(code)
        if fixed is not None:
            n, signed = fixed
            self._align(n)
            return int.from_bytes(self._take(n), self.order, signed=signed)
        if code in "so":
            return self._text(self._uint(4))
        if code == "g":
            return self._text(self._take(1)[0])
        if code == "b":
            return self._uint(4) != 0
        if code == "d":
            self._align(8)
            return struct.unpack("<d" if self.order == "little" else ">d", self._take(8))[0]
        if code == "v":
            inner = self._text(self._take(1)[0])
            if len(split_signature(inner)) != 1:
                raise ProtocolError(f"variant signature {inner!r} is not one type")
            return self.value(inner, depth + 1)
        if code == "(":
            self._align(8)
            return tuple(self.value(t, depth + 1) for t in split_signature(sig[1:-1]))
        return self._array(sig[1:], depth)

    def _array(self, elem: str, depth: int) -> object:
        size = self._uint(4)
        if size > MAX_ARRAY:
            raise ProtocolError(f"array of {size} bytes")
        self._align(_ALIGN[elem[0]])
        end = self.pos + size
        if end > self.end:
            raise ProtocolError("array runs past the end")
        if elem == "y":
            return self._take(size)
        entry = elem[0] == "{"
        types = split_signature(elem[1:-1]) if entry else [elem]
        items: list[object] = []
        while self.pos < end and len(items) < MAX_ITEMS:
            if entry:
                self._align(8)
                items.append(tuple(self.value(t, depth + 1) for t in types))
            else:
                items.append(self.value(elem, depth + 1))
        if self.pos > end:
            raise ProtocolError("array element runs past the array")
        if self.pos < end:
            items.append(More(end - self.pos))
            self.pos = end
        if entry:
            return {k: v for k, v in (i if isinstance(i, tuple) else ("...", i) for i in items)}
        return items


# --------------------------------------------------------------------------- rendering


def render(values: list[object], limit: int = SUMMARY) -> str:
    """Body values in one line: strings quoted, arrays ``[...]``, dicts ``{k: v}``,
    structs ``(...)``, byte arrays as bytes, variants as their value."""
    return clip(", ".join(_value(v, 0) for v in values[:MAX_ITEMS]) + _more(len(values)), limit)


def _more(n: int) -> str:
    return f", ...+{n - MAX_ITEMS}" if n > MAX_ITEMS else ""


def _value(value: object, depth: int) -> str:
    if isinstance(value, str):  # quoted even when show_bytes would leave it bare
        shown = show_bytes(value.encode("utf-8", "surrogateescape"), 80)
        return shown if shown.startswith('"') else f'"{shown}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return "b" + show_bytes(value, 48)
    if isinstance(value, More):
        return f"...({value.nbytes} bytes more)"
    if depth >= 4:
        return "..."
    # arrays and dicts come capped at MAX_ITEMS by Unmarshal (then a More)
    if isinstance(value, dict):
        pairs = [
            _value(v, depth + 1)
            if isinstance(v, More)
            else f"{_value(k, depth + 1)}: {_value(v, depth + 1)}"
            for k, v in value.items()
        ]
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_value(v, depth + 1) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)


def _masked(value: object) -> object:
    """``value`` with what is stored under secret-looking dict keys masked."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) else _masked(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple):
        items = [_masked(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


# --------------------------------------------------------------------------- decoder


@dataclass(slots=True)
class _Call(Pending):
    serial: int = 0
    secret: bool = False  # --redact: its reply's body is masked too
    lost: bool = False  # the other direction lost bytes while it waited


@dataclass(slots=True)
class _Side:
    reader: Reader
    synced: bool = False
    sync_buf: bytes = b""  # the start of a chunk too short to judge
    calls: dict[int, _Call] = field(default_factory=dict)  # serial -> call from this side
    sasl: deque[_Call] = field(default_factory=deque)  # SASL commands awaiting their answer
    mechanism: bytes = b""  # the last AUTH's (client side)


class DbusDecoder(SidedDecoder[Msg | Line]):
    protocol = PROTOCOL

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._sides = (_Side(Reader(True)), _Side(Reader(False)))

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        side = self._sides[direction]
        if not side.synced:
            data = self._sync(side, direction, data)
            if not data:
                return events
        items = side.reader.feed(data, ts)
        self._items(direction, items, events)  # those before a framing error still count
        if side.reader.error:
            self._desync(direction, f"protocol error: {side.reader.error}", ts, events)
        return events

    def _side(self, direction: Direction) -> _Side:
        return self._sides[direction]

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        for side in self._sides:
            while side.sasl:
                self._unanswered(side.sasl.popleft(), events)
            for call in side.calls.values():
                self._unanswered(call, events)
            side.calls.clear()
        return events

    # -- sync

    def _sync(self, side: _Side, direction: Direction, data: bytes) -> bytes:
        """The bytes to parse once ``side`` is in sync (b"": not yet)."""
        candidate = side.sync_buf + data
        side.sync_buf = b""
        client = direction is Direction.CLIENT
        words = SASL_CLIENT if client else SASL_SERVER
        sasl = _sasl_start(candidate[1:] if client and candidate[:1] == b"\0" else candidate, words)
        binary = plausible_header(candidate)
        if sasl or binary:
            side.synced = True
            side.reader = Reader(client)
            side.reader.binary = bool(binary) and not sasl
            return candidate
        if sasl is None or binary is None:
            side.sync_buf = candidate[:64]
        return b""

    def _desync(
        self, direction: Direction, why: str, ts: float, events: list[DecoderEvent]
    ) -> None:
        side = self._sides[direction]
        side.synced = False
        side.sync_buf = b""
        other = self._sides[1 - direction]
        for call in other.calls.values():
            call.lost = True  # its reply may have been in the bytes lost
        for call in other.sasl:
            call.lost = True
        events.append(Notice(PROTOCOL, direction, "undecodable", why, ts))

    # -- items

    def _items(
        self, direction: Direction, items: list[Msg | Line], events: list[DecoderEvent]
    ) -> None:
        for item in items:
            if isinstance(item, Line):
                self._line(direction, item, events)
                continue
            try:
                msg = parse(item)
            except ProtocolError as exc:  # framing holds: the next message is parsed
                events.append(Notice(PROTOCOL, direction, "undecodable", str(exc), item.ts_first))
                continue
            self._message(direction, item, msg, events)

    # -- SASL

    def _line(self, direction: Direction, line: Line, events: list[DecoderEvent]) -> None:
        side = self._sides[direction]
        word, _, arg = line.text.partition(b" ")
        if direction is Direction.CLIENT:
            if word == b"AUTH":
                side.mechanism = arg.partition(b" ")[0]
            text = self._sasl_text(side.mechanism, word, arg)
            command = "AUTH " + _ascii(side.mechanism) if word == b"AUTH" else _ascii(word)
            call = _Call(b"", command, text, line.ts_last, line.size, details={"sasl": True})
            if word == b"BEGIN":
                call.details["reply_suppressed"] = True  # BEGIN has no answer
                events.append(call.transaction(PROTOCOL, "", False))
            else:
                if len(side.sasl) >= MAX_PENDING:  # a client that never waits for answers
                    reply = f"(no answer while {MAX_PENDING} later lines were sent)"
                    events.append(side.sasl.popleft().transaction(PROTOCOL, reply, False))
                side.sasl.append(call)
            return
        client = self._sides[Direction.CLIENT]
        reply = _sasl_reply(word, arg)
        if not client.sasl:
            events.append(Notice(PROTOCOL, direction, "unpaired", reply, line.ts_first))
            return
        call = client.sasl.popleft()
        error = word in (b"REJECTED", b"ERROR")
        events.append(_answered(call, reply, line.ts_first, line.size, 0, error))

    def _sasl_text(self, mechanism: bytes, word: bytes, arg: bytes) -> str:
        if word == b"AUTH":
            mech, _, data = arg.partition(b" ")
            parts = ["AUTH", _ascii(mech)] if mech else ["AUTH"]
            if data:
                secret = self.redact and mech not in _OPEN_MECHANISMS
                parts.append(REDACTED if secret else _hex_text(data))
            return " ".join(parts)
        if word == b"DATA" and arg:
            secret = self.redact and mechanism not in _OPEN_MECHANISMS
            return "DATA " + (REDACTED if secret else _hex_text(arg))
        return clip(_ascii(word + (b" " + arg if arg else b"")), SUMMARY)

    # -- binary messages

    def _message(
        self, direction: Direction, item: Msg, msg: Parsed, events: list[DecoderEvent]
    ) -> None:
        if msg.kind == METHOD_CALL:
            self._call(direction, item, msg, events)
        elif msg.kind == SIGNAL:
            secret = self._secret(msg.interface)
            text = f"{self._route(msg)}{_name(msg, True)}({self._body(msg, secret)})"
            details = _details(msg, item)
            details["body"] = self._body(msg, secret, DETAIL)
            events.append(Notice(PROTOCOL, direction, "signal", clip(text, SUMMARY),
                                 item.ts_first, details))  # fmt: skip
        else:
            self._reply(direction, item, msg, events)

    def _call(
        self, direction: Direction, item: Msg, msg: Parsed, events: list[DecoderEvent]
    ) -> None:
        secret = self._secret(msg.interface)
        text = f"{self._route(msg)}{_name(msg, True)}({self._body(msg, secret)})"
        details = _details(msg, item)
        details["body"] = self._body(msg, secret, DETAIL)
        details["caller"] = "client" if direction is Direction.CLIENT else "server"
        if direction is Direction.SERVER:  # e.g. the bus forwarding a peer's call to a service
            text = "[call from the server side] " + text
        call = _Call(b"", _name(msg), clip(text, SUMMARY), item.ts_last, item.size, cut=item.cut,
                     details=details, serial=msg.serial, secret=secret)  # fmt: skip
        if msg.flags & NO_REPLY_EXPECTED:
            details["reply_suppressed"] = True
            events.append(call.transaction(PROTOCOL, "", False))
            return
        calls = self._sides[direction].calls
        if msg.serial in calls:  # a serial reused before its reply came
            self._unanswered(calls.pop(msg.serial), events)
        if len(calls) >= MAX_PENDING:
            oldest = calls.pop(next(iter(calls)))
            reply = f"(no reply while {MAX_PENDING} later calls were made)"
            events.append(oldest.transaction(PROTOCOL, reply, False))
        calls[msg.serial] = call

    def _reply(
        self, direction: Direction, item: Msg, msg: Parsed, events: list[DecoderEvent]
    ) -> None:
        call = self._sides[1 - direction].calls.pop(msg.reply_serial, None)
        body = self._body(msg, call is not None and call.secret)
        if msg.kind == ERROR:
            reply = f"ERROR {msg.error_name}" + (f": {body}" if body else "")
        else:
            reply = f"({body})"
        if call is None:
            summary = f"reply to #{msg.reply_serial}, no call seen: {reply}"
            events.append(Notice(PROTOCOL, direction, "unpaired", clip(summary, SUMMARY),
                                 item.ts_first, _details(msg, item)))  # fmt: skip
            return
        call.details["reply_serial"] = msg.reply_serial
        if msg.error_name:
            call.details["error_name"] = msg.error_name
        if msg.signature:
            call.details["reply_signature"] = msg.signature
        if msg.unix_fds:
            call.details["reply_unix_fds"] = msg.unix_fds
        if msg.sender:
            call.details["reply_sender"] = msg.sender
        call.details["reply_body"] = self._body(msg, call.secret, DETAIL)
        events.append(_answered(call, clip(reply, SUMMARY), item.ts_first, item.size, item.cut,
                                msg.kind == ERROR))  # fmt: skip

    def _body(self, msg: Parsed, secret: bool, limit: int = SUMMARY) -> str:
        if msg.body is None:
            return f"<body not decoded: {msg.why}>" if msg.why else ""
        if self.redact and secret and msg.body:
            text = REDACTED
        elif self.redact:
            text = render([_masked(v) for v in msg.body], limit)
        else:
            text = render(msg.body, limit)
        if msg.unix_fds:
            fds = f"[{msg.unix_fds} fd{'s' if msg.unix_fds > 1 else ''}]"
            text = f"{text} {fds}" if text else fds
        return text

    def _secret(self, interface: str | None) -> bool:
        return self.redact and interface is not None and bool(SECRET_INTERFACE.search(interface))

    @staticmethod
    def _route(msg: Parsed) -> str:
        if msg.sender and msg.destination:
            return f"{msg.sender} -> {msg.destination} "
        if msg.destination:
            return f"-> {msg.destination} "
        return f"{msg.sender} " if msg.sender else ""

    # -- transactions

    def _unanswered(self, call: _Call, events: list[DecoderEvent]) -> None:
        reply = "(lost sync)" if call.lost else ""
        events.append(call.transaction(PROTOCOL, reply, not call.lost))


def _answered(
    call: _Call, reply: str, ts_reply: float, size: int, cut: int, error: bool
) -> Transaction:
    call.ts_reply, call.reply_bytes, call.error = ts_reply, size, error
    call.cut += cut
    return call.transaction(PROTOCOL, reply, False)


def _name(msg: Parsed, path: bool = False) -> str:
    """The --stats key: interface.member (member alone when the call names no
    interface); with ``path``, the object path before it."""
    member = msg.member or "?"
    name = f"{msg.interface}.{member}" if msg.interface else member
    return f"{msg.path} {name}" if path and msg.path else name


def _details(msg: Parsed, item: Msg) -> Details:
    details: Details = {"serial": msg.serial}
    for key in ("sender", "destination", "path", "interface", "member", "signature"):
        value = getattr(msg, key)
        if value:
            details[key] = value
    flags = [name for bit, name in _FLAG_NAMES if msg.flags & bit]
    if flags:
        details["flags"] = flags
    if msg.unix_fds:
        details["unix_fds"] = msg.unix_fds
    if msg.endian == "big":
        details["endian"] = "big"
    if msg.why:
        details["body_not_decoded"] = msg.why
    return details


def _ascii(data: bytes) -> str:
    return data.decode("ascii", "backslashreplace")


def _hex_text(data: bytes) -> str:
    """A SASL argument: its hex, with the text it encodes when that is printable."""
    try:
        text = bytes.fromhex(data.decode("ascii"))
    except ValueError:
        return clip(_ascii(data), SUMMARY)
    shown = show_bytes(text, 80)
    return clip(f"{_ascii(data)} ({shown})", SUMMARY)


def _sasl_reply(word: bytes, arg: bytes) -> str:
    if word == b"DATA" and arg:
        return "DATA " + _hex_text(arg)
    return clip(_ascii(word + (b" " + arg if arg else b"")), SUMMARY)


# ------------------------------------------------ detectors (decoders/registry.py)


def auth(client: bytes) -> bool:
    """The client's first bytes: a NUL byte, then ``AUTH`` (with a mechanism, or
    alone to ask the server for its list); or the NUL byte alone, as libdbus and
    dbus-fast send it (in a send() of its own: the pcapng writer sees nothing more
    before it chooses the flow's port)."""
    return client == b"\0" or client[:6] in (b"\0AUTH ", b"\0AUTH\r")


def messages(client: bytes, server: bytes) -> bool | None:
    """Mid-connection: both sides begin with a message header."""
    verdicts = plausible_header(client), plausible_header(server)
    if False in verdicts:
        return False
    return None if None in verdicts else True
