"""memcached text and meta protocol decoder (sans-IO), and its detectors.

Both directions are lines ending in ``\\n`` (``\\r\\n`` in practice); some
lines announce a data block of a given size that follows (requests: the storage
commands ``set``/``add``/``replace``/``append``/``prepend``/``cas`` and meta
``ms``; replies: ``VALUE`` and meta ``VA``).  Data blocks are streamed keeping
only a prefix, so a value of any size costs :data:`KEEP` bytes.

Pairing is FIFO, as the server answers in order, with three exceptions:

* ``noreply`` (text protocol): the server sends nothing, the request is
  reported at once (``details["reply_suppressed"]``).  An unknown command
  still gets ``ERROR``.
* The meta ``q`` flag suppresses one reply code (``mg``: ``EN``; ``ms``,
  ``md``, ``ma``: ``HD``).  A quiet request takes the next reply only if it
  could have produced it (its code, errors, the same opaque ``O`` token and
  key ``k`` when both sides carry them); otherwise the server answered it
  with the suppressed code, which the request shows as ``(EN, quiet)``, and
  the reply goes to the next request.  ``mn`` (answered ``MN``) thus closes a
  pipeline.  A quiet request still pending when the connection closes, or
  when more than MAX_PENDING requests wait, is reported without a reply (not
  unanswered: nothing was owed).
* ``quit`` closes the connection; ``watch`` turns the connection into a log
  stream (its lines are ``monitor`` notices).

Multi-line replies: retrievals (``get``/``gets``/``gat``/``gats``: ``VALUE``
items then ``END``) and ``stats``/``lru_crawler metadump`` (lines then
``END``; or one ``RESET``/``OK``/error line).

Sync (docs/decoders.md): at the start and after a gap the decoder resumes at a
client chunk (one ``send()``) that begins with a known command word, and pairs
server bytes only from the first chunk sent after it that begins with a reply
word.  Bytes cut by the snap length inside a data block keep the framing.

The binary protocol (magic ``0x80``, the only one with SASL authentication)
is detected as ``memcached-binary`` and not decoded.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..streams import Direction
from .base import (
    DecoderEvent,
    FramedDecoder,
    Notice,
    Pending,
    ProtocolError,
    clip,
    show_bytes,
)
from .detect import ENOUGH

KEEP = 256  # bytes kept of each data block
MAX_LINE = 64 * 1024  # longest command or reply line accepted
SUMMARY = 160  # characters of a request/reply summary
PREVIEW = 48  # characters of one value or key preview
SHOWN = 16  # reply units kept for the summary (a multi-get's VALUEs, stats lines)
# requests kept waiting for a reply: quiet ones wait until a later reply, and a bulk
# load of quiet sets may never get one
MAX_PENDING = 4096
KEY_MAX = 250  # memcached's longest key: a longer one is refused, its data not read

STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
RETRIEVAL = frozenset((b"get", b"gets", b"gat", b"gats"))
META = frozenset((b"mg", b"ms", b"md", b"ma", b"mn", b"me"))
# the other commands of memcached 1.6 (proto_text.c)
OTHER = frozenset(
    b"""incr decr touch delete flush_all version verbosity stats quit shutdown
    cache_memlimit lru_crawler lru slabs watch misbehave debugtime extstore
    mcp_config_routes""".split()
)
COMMANDS = STORAGE | RETRIEVAL | META | OTHER
_MULTI_LINE = frozenset((b"stats", b"lru_crawler"))  # lines until END
_MULTI_END = frozenset((b"END", b"RESET", b"OK"))
ERRORS = frozenset((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))
# meta reply codes each command can give, and the one its q flag suppresses
_META_CODES = {
    b"mg": (frozenset((b"VA", b"HD", b"EN")), b"EN"),
    b"ms": (frozenset((b"HD", b"NS", b"EX", b"NF")), b"HD"),
    b"md": (frozenset((b"HD", b"NF", b"EX")), b"HD"),
    b"ma": (frozenset((b"HD", b"VA", b"NF", b"NS", b"EX")), b"HD"),
    b"mn": (frozenset((b"MN",)), b""),
    b"me": (frozenset((b"ME", b"EN")), b""),
}
REPLY_WORDS = frozenset(
    b"""VALUE END STORED NOT_STORED EXISTS NOT_FOUND DELETED TOUCHED OK VERSION STAT
    RESET ITEM ERROR CLIENT_ERROR SERVER_ERROR VA HD EN NS EX NF MN ME BUSY""".split()
)
_COMMAND_START = re.compile(rb"([a-z_]{2,20})[ \r\n]")
_REPLY_START = re.compile(rb"([A-Z_]{2,12}|\d{1,20})[ \r\n]")
_SYNC_PREFIX = (re.compile(rb"[a-z_]*"), re.compile(rb"[A-Z_0-9]*"))  # client, server


@dataclass(slots=True)
class Unit:
    """One line and the data block it announced (if any)."""

    words: list[bytes]
    nbytes: int
    ts_first: float  # ts of the chunk holding its first byte
    data: bytes | None = None  # kept prefix of the data block
    size: int = 0  # the data block's real size
    cut: int = 0  # bytes not captured (snap length)


@dataclass(slots=True)
class _Block:
    size: int
    remaining: int  # payload + CRLF still to consume
    prefix: bytearray = field(default_factory=bytearray)


class Framer:
    """Incremental splitter of one direction into :class:`Unit`s."""

    def __init__(self, announces: Callable[[list[bytes]], int | None]) -> None:
        self._announces = announces  # a line's words -> its data block's size, or None
        self.buf = bytearray()
        self.block: _Block | None = None
        self.words: list[bytes] = []
        self.start_ts = 0.0
        self.nbytes = 0  # bytes of the unit in progress
        self.cut = 0
        self._started = False  # a unit is in progress

    def feed(self, data: bytes, ts: float) -> list[Unit]:
        self.buf += data
        return self._run(ts)

    def skip(self, n: int, ts: float) -> list[Unit] | None:
        """``n`` bytes not captured: fine inside a data block's payload (returns
        the units that completes), else None (framing lost)."""
        block = self.block
        if block is None or self.buf or n > block.remaining - 2:
            return None
        block.remaining -= n
        self.nbytes += n
        self.cut += n
        return self._run(ts)

    def _run(self, ts: float) -> list[Unit]:
        done: list[Unit] = []
        buf = self.buf
        pos = 0
        try:
            while pos < len(buf):
                if not self._started:
                    self._started, self.start_ts, self.nbytes, self.cut = True, ts, 0, 0
                block = self.block
                if block is not None:
                    pos = self._block_bytes(block, pos)
                    if block.remaining:
                        break
                    self.block = None
                    done.append(self._unit(block))
                    continue
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if len(buf) - pos > MAX_LINE:
                        raise ProtocolError("line too long")
                    break
                self.words = bytes(buf[pos:nl]).split()
                self.nbytes += nl + 1 - pos
                pos = nl + 1
                size = self._announces(self.words)
                if size is None:
                    done.append(self._unit(None))
                else:
                    self.block = _Block(size, size + 2)
        finally:
            del buf[:pos]
        return done

    def _block_bytes(self, block: _Block, pos: int) -> int:
        take = min(len(self.buf) - pos, block.remaining)
        keep = min(take, max(0, block.remaining - 2), KEEP - len(block.prefix))
        if keep > 0:
            block.prefix += self.buf[pos : pos + keep]
        block.remaining -= take
        self.nbytes += take
        return pos + take

    def _unit(self, block: _Block | None) -> Unit:
        self._started = False
        unit = Unit(self.words, self.nbytes, self.start_ts, cut=self.cut)
        if block is not None:
            unit.data, unit.size = bytes(block.prefix), block.size
        return unit


def _number(word: bytes) -> int | None:
    return int(word) if word.isdigit() and len(word) <= 19 else None


def request_block(words: list[bytes]) -> int | None:
    """Size of the data block a command line announces (None: none follows).
    As memcached: only when the line parses (key length, numeric fields)."""
    if not words:
        return None
    name = words[0]
    if name in STORAGE:
        want = 6 if name == b"cas" else 5
        if len(words) not in (want, want + 1) or len(words[1]) > KEY_MAX:
            return None
        flags, size = _number(words[2]), _number(words[4])
        exptime = words[3].removeprefix(b"-")
        if flags is None or size is None or not exptime.isdigit():
            return None
        if name == b"cas" and _number(words[5]) is None:
            return None
        return size
    if name == b"ms" and len(words) >= 3 and len(words[1]) <= KEY_MAX:
        return _number(words[2])
    return None


def reply_block(words: list[bytes]) -> int | None:
    """Size of the data block a reply line announces: ``VALUE k flags n [cas]``, ``VA n``."""
    if len(words) >= 4 and words[0] == b"VALUE":
        return _number(words[3])
    if len(words) >= 2 and words[0] == b"VA":
        return _number(words[1])
    return None


def _flag(words: list[bytes], letter: bytes) -> bytes | None:
    """The token of meta flag ``letter`` (``O123`` -> ``123``), None when absent."""
    for w in words:
        if w[:1] == letter:
            return w[1:]
    return None


@dataclass(slots=True)
class _Request(Pending):
    key: bytes = b""
    quiet: bool = False
    opaque: bytes | None = None
    units: list[Unit] = field(default_factory=list)  # the first SHOWN reply units
    received: int = 0  # reply units
    last: Unit | None = None
    hits: int = 0  # VALUE items
    value_bytes: int = 0


class MemcachedDecoder(FramedDecoder[Unit]):
    protocol = "memcached"

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact  # the text and meta protocols carry no credentials
        self._pending: deque[_Request] = deque()
        self._restart()

    # -- sync

    def _forget_chunk_start(self) -> None:
        self._sync_buf = [b"", b""]

    def _synced(self, direction: Direction, data: bytes, ts: float) -> bytes | None:
        """The bytes to parse, or None while waiting for a sync point (the start of a
        chunk too short to judge is kept until the next chunk of its direction)."""
        client = direction is Direction.CLIENT
        if self._sync_ts is not None and (client or self._server_synced):
            return data
        if not client and (self._sync_ts is None or ts < self._sync_ts):
            return None
        candidate = self._sync_buf[direction] + data
        self._sync_buf[direction] = b""
        start, words = (_COMMAND_START, COMMANDS) if client else (_REPLY_START, REPLY_WORDS)
        found = start.match(candidate)
        if found is None or not (found[1] in words or found[1].isdigit()):
            if len(candidate) < 24 and _SYNC_PREFIX[direction].fullmatch(candidate):
                self._sync_buf[direction] = candidate
            return None
        if client:
            self._sync_ts = ts
        else:
            self._server_synced = True
        return candidate

    def _restart(self) -> None:
        self._parsers = (Framer(request_block), Framer(reply_block))
        self._sync_ts = None
        self._sync_buf = [b"", b""]  # per direction: a chunk's start too short to judge
        self._server_synced = False
        self._watching = False  # after `watch`: the server's lines are a log stream

    def _abandon(self, events: list[DecoderEvent], why: str) -> None:
        while self._pending:
            self._finish(self._pending.popleft(), events, why)

    # -- requests

    def _request(self, unit: Unit, ts: float, events: list[DecoderEvent]) -> None:
        words = unit.words
        name = words[0] if words else b""
        command = name.decode() if name in COMMANDS else "(unknown)"
        shown = [show_bytes(w, PREVIEW) for w in words[:40]] or ["(empty line)"]
        if len(words) > 40:
            shown.append(f"...+{len(words) - 40} words")
        if unit.data is not None:
            shown.append(show_bytes(unit.data, PREVIEW, unit.size) if unit.size else '""')
        text = clip(" ".join(shown), SUMMARY)
        req = _Request(name, command, text, ts, unit.nbytes, cut=unit.cut)
        if unit.data is not None:
            req.details["value_bytes"] = unit.size
        if name in RETRIEVAL:
            keys = words[2:] if name in (b"gat", b"gats") else words[1:]
            req.details["keys"] = len(keys)
        elif len(words) > 1 and (name in META or name in STORAGE or name in OTHER):
            req.key = words[1]
        if name in META:
            req.quiet = b"q" in words[2:]
            req.opaque = _flag(words[2:], b"O")
        noreply = words[-1:] == [b"noreply"] and name in STORAGE | OTHER
        if noreply or name == b"quit":
            req.details["reply_suppressed"] = True
            self._finish(req, events, "")
            return
        self._pending.append(req)
        if len(self._pending) > MAX_PENDING:  # reported with what is known so far
            old = self._pending.popleft()
            self._finish(old, events, "" if old.quiet else "(too many requests in flight)")

    # -- replies

    def _reply(self, unit: Unit, events: list[DecoderEvent]) -> None:
        words = unit.words
        code = words[0] if words else b""
        if self._watching:
            text = clip(" ".join(show_bytes(w, PREVIEW) for w in words), SUMMARY)
            events.append(Notice(self.protocol, Direction.SERVER, "monitor", text, unit.ts_first))
            return
        while self._pending and self._skips(self._pending[0], unit, code):
            skipped = self._pending.popleft()
            suppressed = _META_CODES[skipped.name][1].decode() or "no reply"
            self._finish(skipped, events, f"({suppressed}, quiet)")
        if not self._pending:
            events.append(
                Notice(self.protocol, Direction.SERVER, "unpaired", _unit_text(unit), unit.ts_first)
            )
            return
        head = self._pending[0]
        head.received += 1
        head.last = unit
        if len(head.units) < SHOWN:
            head.units.append(unit)
        if code == b"VALUE" and unit.data is not None:
            head.hits += 1
            head.value_bytes += unit.size
        head.error |= code in ERRORS
        head.reply_bytes += unit.nbytes
        head.cut += unit.cut
        if head.ts_reply is None:
            head.ts_reply = unit.ts_first
        if self._complete(head, code):
            self._pending.popleft()
            if head.name == b"watch" and code == b"OK":
                self._watching = True
            self._finish(head, events, "")

    @staticmethod
    def _skips(head: _Request, unit: Unit, code: bytes) -> bool:
        """A quiet meta request that cannot have sent ``unit``: it was answered
        with its suppressed code."""
        if not head.quiet or head.received or code in ERRORS:
            return False
        codes, _ = _META_CODES.get(head.name, (frozenset(), b""))
        if code not in codes or code == _META_CODES[head.name][1]:
            return True
        opaque = _flag(unit.words[1:], b"O")
        if opaque is not None and head.opaque is not None and opaque != head.opaque:
            return True
        key = _flag(unit.words[1:], b"k")
        return key is not None and head.key != b"" and key != head.key

    @staticmethod
    def _complete(head: _Request, code: bytes) -> bool:
        if code in ERRORS:
            return True
        if head.name in RETRIEVAL:
            return code == b"END"
        if head.name in _MULTI_LINE:
            return code in _MULTI_END
        return True

    def _finish(self, req: _Request, events: list[DecoderEvent], why: str) -> None:
        """Report ``req``; without a reply ``why`` says why ("(lost sync)", or ""
        when none came before the end: unanswered unless none was owed)."""
        reply = self._reply_text(req) if req.received else why
        if req.quiet:
            req.details["quiet"] = True
        unanswered = (
            not req.received
            and not why
            and not req.quiet
            and not req.details.get("reply_suppressed")
        )
        events.append(req.transaction(self.protocol, reply, unanswered))

    def _reply_text(self, req: _Request) -> str:
        units, last = req.units, req.last
        assert last is not None
        if req.name in RETRIEVAL:
            req.details.update(hits=req.hits, value_bytes=req.value_bytes)
            parts = [_value_text(u) for u in units if u.data is not None and u.words[0] == b"VALUE"]
            if req.hits > len(parts):
                parts.append(f"...+{req.hits - len(parts)}")
            if last.words[:1] != [b"END"]:
                parts.append(_unit_text(last))  # an error
            text = f"{req.hits}/{req.details.get('keys', 0)} hit"
            return clip(text + (": " + ", ".join(parts) if parts else ""), SUMMARY)
        if req.name in _MULTI_LINE and req.received > 1:
            req.details["lines"] = req.received - 1
            shown = [_unit_text(u) for u in units if u is not last]
            more = req.received - 1 - len(shown)
            return clip(", ".join(shown + ([f"...+{more}"] if more else [])), SUMMARY)
        return clip("; ".join(_unit_text(u) for u in units), SUMMARY)


def _unit_text(unit: Unit) -> str:
    text = " ".join(show_bytes(w, PREVIEW) for w in unit.words[:40])
    if unit.data is not None:
        text += " " + (show_bytes(unit.data, PREVIEW, unit.size) if unit.size else '""')
    return text


def _value_text(unit: Unit) -> str:
    """``VALUE key flags size [cas]`` and its data as ``key=value`` (flags and cas when set)."""
    words = unit.words
    text = show_bytes(words[1], PREVIEW) + "="
    text += show_bytes(unit.data or b"", PREVIEW, unit.size) if unit.size else '""'
    if words[2] != b"0":
        text += f" flags={show_bytes(words[2], 20)}"
    if len(words) > 4:
        text += f" cas={show_bytes(words[4], 24)}"
    return text


# ------------------------------------------------ detectors (decoders/registry.py)

_STORAGE_LINE = re.compile(
    rb"(?:set|add|replace|append|prepend) [!-~]{1,250} \d{1,10} -?\d{1,10} (\d{1,10})"
    rb"(?: noreply)?\r?\n|cas [!-~]{1,250} \d{1,10} -?\d{1,10} (\d{1,10}) \d{1,20}"
    rb"(?: noreply)?\r?\n"
)
_META_LINE = re.compile(
    rb"(?:mg|md|ma|me) [!-~]{1,250}(?: [A-Za-z][!-~]*)*\r?\n|mn\r?\n"
    rb"|ms [!-~]{1,250} \d{1,10}(?: [A-Za-z][!-~]*)*\r?\n"
)
_TEXT_LINE = re.compile(rb"([a-z_]{3,16})(?: [^\r\n]*)?\r?\n")
_REPLY_LINE = re.compile(
    rb"(?:VALUE [!-~]{1,250} \d{1,10} \d{1,10}(?: \d{1,20})?|END|STORED|NOT_STORED|EXISTS"
    rb"|NOT_FOUND|DELETED|TOUCHED|OK|VERSION [!-~]+|STAT [!-~]+ [^\r\n]*|RESET|ERROR"
    rb"|(?:CLIENT|SERVER)_ERROR [^\r\n]*|\d{1,20})\r\n"
)

# binary protocol request opcodes -> the extras length each must carry (None: 0 or 4)
_BINARY_EXTRAS: dict[int, int | None] = {
    0x00: 0, 0x01: 8, 0x02: 8, 0x03: 8, 0x04: 0, 0x05: 20, 0x06: 20, 0x07: 0, 0x08: None,
    0x09: 0, 0x0A: 0, 0x0B: 0, 0x0C: 0, 0x0D: 0, 0x0E: 0, 0x0F: 0, 0x10: 0, 0x11: 8,
    0x12: 8, 0x13: 8, 0x14: 0, 0x15: 20, 0x16: 20, 0x17: 0, 0x18: None, 0x19: 0, 0x1A: 0,
    0x1C: 4, 0x1D: 4, 0x1E: 4, 0x20: 0, 0x21: 0, 0x22: 0,
}  # fmt: skip


def client_first(client: bytes) -> bool:
    """A first line only memcached's client sends: a storage command line whose
    data block follows (as far as ``ENOUGH`` bytes show it), or a meta command
    (Redis, whose inline commands look alike, has neither)."""
    if _META_LINE.match(client):
        return True
    line = _STORAGE_LINE.match(client)
    if line is None:
        return False
    size = int(line[1] or line[2])
    end = line.end() + size
    if end + 2 <= len(client):
        return client[end : end + 2] == b"\r\n"
    return len(client) >= ENOUGH  # the block goes on past what detection keeps


def exchange(client: bytes, server: bytes) -> bool | None:
    """A text command (a memcached command word) answered by a memcached reply
    line (``VALUE``, ``END``, ``STORED``, ``STAT``...); Redis answers in RESP."""
    line = _TEXT_LINE.match(client)
    if line is None:
        incomplete = b"\n" not in client and len(client) < ENOUGH and client[:1].islower()
        return None if incomplete else False
    if line[1] not in COMMANDS:
        return False
    if _REPLY_LINE.match(server):
        return True
    return None if b"\n" not in server and len(server) < ENOUGH else False


def binary_request(client: bytes) -> bool:
    """A binary-protocol request header: magic 0x80, a known opcode with its
    extras length, raw data type, a body that holds extras and key."""
    if len(client) < 24 or client[0] != 0x80 or client[5] != 0:
        return False
    want = _BINARY_EXTRAS.get(client[1], -1)
    extras, key = client[4], int.from_bytes(client[2:4], "big")
    body = int.from_bytes(client[8:12], "big")
    if (
        want == -1
        or (want is None and extras not in (0, 4))
        or (want is not None and extras != want)
    ):
        return False
    return extras + key <= body
