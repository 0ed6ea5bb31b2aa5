"""PostgreSQL frontend/backend protocol 3 decoder (sans-IO).

Covers: the startup (StartupMessage's user, database, application_name; the
SSLRequest / GSSENCRequest answered by one byte, ``N`` to go on in clear;
``S``/``G`` start TLS/GSSAPI and the connection is labelled and not parsed
further), authentication (cleartext, MD5, SASL SCRAM-SHA-256 with its
exchange shown; the password, MD5 hash and SCRAM proof/signature masked with
``redact``), the simple query (Query -> RowDescription, DataRow...,
CommandComplete per statement -> ReadyForQuery), the extended protocol
(Parse/Bind/Describe/Execute/Close/Sync/Flush, prepared statement names
remembered per connection, bound parameters shown: text values, binary ones
as their size), COPY in and out (sizes), FunctionCall, ErrorResponse,
NoticeResponse and NotificationResponse, ParameterStatus, CancelRequest and
Terminate.

Pairing: the server answers the client's messages in order, so each message
that expects an answer queues an expectation (Parse -> ParseComplete, Bind ->
BindComplete, Describe -> [ParameterDescription] RowDescription|NoData,
Execute -> DataRow... CommandComplete|EmptyQueryResponse|PortalSuspended,
Close -> CloseComplete, Sync and Query -> ReadyForQuery).  A transaction is one
Query, or one Execute with the Parse/Bind/Describe sent before it (and the
Sync right after it), or the Parse/Describe/Close messages a Sync ends
without an Execute (preparing a statement), or a Sync alone.  After an
ErrorResponse the server skips everything up to the next Sync: the Executes
it skipped are reported as errors of their own ("skipped").

Memory: each message keeps at most ``KEEP`` bytes of its body (a longer one
is counted and skipped); rows are counted with the first ``SAMPLE_ROWS``
kept for the preview; at most ``MAX_PENDING`` transactions wait for replies.

Sync after a gap, or when the capture starts mid-connection: a client chunk
that begins with a Query, Parse, Bind or FunctionCall message, then server
chunks sent after it that begin with a backend message.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TypeVar

from ..streams import Direction
from .base import REDACTED, DecoderEvent, Details, Notice, Transaction, clip, lost, show_bytes
from .sql import one_line
from .sql import query_shape as sql_shape

KEEP = 64 * 1024  # bytes kept of each message's body
SAMPLE_ROWS = 3
MAX_PENDING = 4096  # transactions waiting for a reply before the decoder gives up
MAX_PARAMS = 16  # bound parameters shown
MAX_STEPS = 32  # messages listed per transaction (details.messages)
MAX_NAMES = 4096  # prepared statements and portals remembered per connection
MAX_LENGTH = 1 << 30  # PostgreSQL's largest message (MaxAllocSize)
SUMMARY = 200
_V = TypeVar("_V")

PROTOCOL_3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

_FRONTEND = frozenset(b"BCDEFHPQSXcdfp")
_BACKEND = frozenset(b"123ACDEGHIKNRSTVWZcdnstv")
_SYNC_START = frozenset(b"QPBF")
_ENCRYPTION_REQUESTS = (
    SSL_REQUEST.to_bytes(4, "big"),
    GSSENC_REQUEST.to_bytes(4, "big"),
)  # client messages that begin a unit of work

# PostgreSQL literals: standard strings ('' doubles a quote, no backslash escape),
# E'' strings (backslash escapes), dollar-quoted strings, numbers; $1 parameters
# and identifiers ("quoted" ones included) are kept.
# The lookahead lets the regex engine skip, at one test, a character where no literal
# can begin (it tries every alternative at every character otherwise: twice the time).
_LITERAL = re.compile(
    r"""(?=[eExXbB]'|['$\d-])(?:"""
    r"""[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|(\$\w*\$).*?\1|"""
    r"""\b[xXbB]'[0-9a-fA-F]*'|(?<![\w.$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b)""",
    re.DOTALL,
)
_SECRETS = re.compile(
    r"(?P<pre>\bPASSWORD\s+)(?P<lit>'(?:[^']|'')*'|[eE]'(?:[^'\\]|\\.|'')*')", re.I
)

_DONE = {"1": "parsed", "2": "bound", "3": "closed", "n": "no data"}
# server messages that answer what a transaction expects next: kind -> what it may answer
_ANSWERS = {"1": "1", "2": "2", "3": "3", "t": "t", "n": "T", "C": "EZ", "I": "EZ", "s": "E",
            "Z": "Z"}  # fmt: skip
_STATUS = {"I": "idle", "T": "in transaction", "E": "failed transaction"}  # ReadyForQuery's
_AUTH = {
    0: "ok",
    2: "KerberosV5",
    3: "cleartext password",
    5: "MD5 password",
    7: "GSSAPI",
    8: "GSSAPI continue",
    9: "SSPI",
    10: "SASL",
    11: "SASL continue",
    12: "SASL final",
}


def query_shape(sql: str) -> str:
    """Statistics key: PostgreSQL literals replaced by ``?`` (sql.query_shape)."""
    return sql_shape(sql, _LITERAL)


def stats_key(sql: bytes) -> bytes | None:
    """The --stats key (the shape, utf-8) of a Query whose SQL bytes are ``sql``, as
    PostgresDecoder keys it; None when the shape is empty (the decoder names it)."""
    shape = query_shape(sql.decode("utf-8", "replace"))
    return shape.encode() if shape else None


def redact_sql(sql: str) -> str:
    """``ALTER/CREATE ROLE ... PASSWORD '...'`` with the password masked."""
    return _SECRETS.sub(lambda m: f"{m['pre']}'{REDACTED}'", sql)


class ProtocolError(ValueError):
    pass


# --------------------------------------------------------------------------- framing


@dataclass(slots=True)
class Message:
    kind: int  # type byte; 0 for the untyped startup-phase messages
    body: bytes  # the first KEEP bytes of the body
    size: int  # the body's real size
    nbytes: int  # wire size (header included)
    ts_first: float  # ts of the chunk holding the first byte
    cut: int = 0  # bytes not captured (snap length)


class Framer:
    """One direction's bytes in, complete messages out; a long body is kept as a prefix."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.untyped = False  # the next message has no type byte (startup phase)
        self.single = False  # the next "message" is one byte (SSLRequest's answer)
        self._cur: Message | None = None
        self._left = 0  # body bytes of _cur still to come

    def feed(self, data: bytes, ts: float) -> list[Message]:
        out: list[Message] = []
        if self._cur is None and not (self.buf or self.untyped or self.single):
            pos = self._whole(data, ts, out)
            if pos == len(data):
                return out
            data = data[pos:]
        view = memoryview(data)
        while view:
            if self._cur is not None:
                view = self._body(view, out)
                continue
            if self.single and not self.buf:
                out.append(Message(view[0], b"", 0, 1, ts))
                self.single = False
                view = view[1:]
                continue
            head = 8 if self.untyped else 5
            need = head - len(self.buf)
            self.buf += view[:need]
            view = view[need:]
            if len(self.buf) < head:
                break
            if self.untyped:
                kind, length = 0, int.from_bytes(self.buf[:4], "big")
                code = int.from_bytes(self.buf[4:8], "big")
                if code not in (PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST):
                    raise ProtocolError(f"unknown startup code {code}")
                if not 8 <= length <= 10000:
                    raise ProtocolError(f"startup message length {length}")
                body, left = bytes(self.buf[4:]), length - 8
            else:
                kind, length = self.buf[0], int.from_bytes(self.buf[1:5], "big")
                if not 4 <= length <= MAX_LENGTH:
                    raise ProtocolError(f"message {chr(kind)!r} length {length}")
                body, left = b"", length - 4
            self.buf.clear()
            wire = length + (0 if self.untyped else 1)  # the type byte is outside the length
            self._cur = Message(kind, body, len(body) + left, wire, ts)
            self._left = left
            if not left:
                out.append(self._done())
        return out

    @staticmethod
    def _whole(data: bytes, ts: float, out: list[Message]) -> int:
        """The typed messages wholly in ``data`` read in place, as ``feed`` reads them
        through its buffer and views (half of the framing's time); the end."""
        pos, n = 0, len(data)
        while n - pos >= 5:
            length = int.from_bytes(data[pos + 1 : pos + 5], "big")
            end = pos + 1 + length
            if not 4 <= length <= MAX_LENGTH or end > n:
                break  # feed's loop raises, or waits for the rest
            body = data[pos + 5 : pos + 5 + min(length - 4, KEEP)]
            out.append(Message(data[pos], body, length - 4, length + 1, ts))
            pos = end
        return pos

    def _body(self, view: memoryview, out: list[Message]) -> memoryview:
        cur = self._cur
        assert cur is not None
        take = min(len(view), self._left)
        keep = min(take, KEEP - len(cur.body))
        if keep > 0:
            cur.body += bytes(view[:keep])
        self._left -= take
        if not self._left:
            out.append(self._done())
        return view[take:]

    def _done(self) -> Message:
        cur = self._cur
        assert cur is not None
        self._cur = None
        if cur.kind == 0 and cur.body[:4] not in _ENCRYPTION_REQUESTS:
            self.untyped = False  # an SSL/GSSENC request refused: the StartupMessage follows
        return cur

    def idle(self) -> bool:
        """No message half read, typed messages next."""
        return self._cur is None and not (self.buf or self.untyped or self.single)

    def skip(self, n: int) -> list[Message] | None:
        """``n`` bytes not captured here: fine inside a message's body (counted as
        cut), None when they hold framing (the caller must resynchronise)."""
        cur = self._cur
        if cur is None or n > self._left:
            return None
        cur.cut += n
        self._left -= n
        return [self._done()] if not self._left else []


class _Reader:
    """Fields of a message body (which may be a kept prefix: reading past it fails)."""

    __slots__ = ("data", "pos", "prefix")

    def __init__(self, data: bytes, prefix: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.prefix = prefix  # ``data`` is the kept start of a longer body

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message shorter than its fields")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def i32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0 and self.prefix:
            end = len(self.data)  # the string goes on past the bytes kept
        if end < 0:
            raise ProtocolError("string not terminated")
        out = self.data[self.pos : end]
        self.pos = end + 1
        return out.decode("utf-8", "replace")

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by their code letter."""
    r, out = _Reader(body), {}
    while r.left and r.data[r.pos] != 0:
        code = chr(r.take(1)[0])
        try:
            out[code] = r.cstr()
        except ProtocolError:
            out[code] = r.data[r.pos :].decode("utf-8", "replace")
            break
    return out


def _problem(body: bytes) -> tuple[str, Details]:
    f = _fields(body)
    severity = f.get("V") or f.get("S", "")
    text = f"{severity} {f.get('C', '')}: {f.get('M', '')}".strip()
    details: Details = {"severity": severity, "sqlstate": f.get("C", ""), "message": f.get("M", "")}
    for code, name in (("D", "detail"), ("H", "hint"), ("P", "position")):
        if code in f:
            details[name] = f[code]
    return text, details


def _value(data: bytes | None, size: int, binary: bool) -> str:
    if data is None:
        return "NULL"
    if binary:
        return f"({size} bytes)"
    return show_bytes(data, 48, size)


def _row(body: bytes, size: int) -> str:
    """A DataRow (``body`` may be a prefix of ``size`` bytes) as ``(v1, v2, ...)``."""
    r = _Reader(body)
    shown: list[str] = []
    try:
        n = r.i16()
        for _ in range(n):
            length = r.i32()
            if length < 0:
                shown.append("NULL")
                continue
            avail = min(length, r.left)
            shown.append(_value(r.take(avail), length, False))
            if avail < length:
                break
    except ProtocolError:
        pass
    if len(body) < size:
        shown.append("...")
    return "(" + ", ".join(shown) + ")"


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Txn:
    command: str  # statistics key
    text: str
    ts: float
    nbytes: int = 0
    expect: deque[str] = field(default_factory=deque)  # expected answers, in order
    executes: int = 0
    reply_bytes: int = 0
    ts_reply: float | None = None
    error: str = ""
    tags: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # Parse/Bind/Close/NoData acknowledged
    more_messages: int = 0  # extended-protocol messages beyond those listed
    rows: int = 0
    row_bytes: int = 0
    sample: list[str] = field(default_factory=list)
    copy: str = ""
    copy_bytes: int = 0
    cut: int = 0
    no_reply: bool = False
    details: Details = field(default_factory=dict)


# Where the oldest transaction's reply stands when a native reader hands the connection
# back: (its bytes, the ts of its first message, the body of its last ErrorResponse or
# None, rows, row bytes).
PostgresHead = tuple[int, float, bytes | None, int, int]
# What a native reader must know of the decoder besides the transactions waiting for a
# reply (PostgresDecoder.hand_over, .take_back): the oldest reply (None when not begun;
# always None handed over).
PostgresState = tuple[PostgresHead | None]


class PostgresDecoder:
    protocol = "postgres"

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._framers = (Framer(), Framer())
        self._started = False  # the first bytes were seen (startup or sync decided)
        self._sync_ts: float | None = None  # ts of the first client message parsed
        self._server_synced = False
        self._opaque = False
        self._pending: deque[_Txn] = deque()  # transactions waiting for answers, in order
        self._building: _Txn | None = None  # extended-protocol messages since the last Execute/Sync
        self._stmts: dict[str, str] = {}  # prepared statement name -> SQL
        self._portals: dict[str, tuple[str, str]] = {}  # portal -> (SQL, parameters shown)
        self._startup: _Txn | None = None
        self._sasl_step = 0
        self._ssl_request: _Txn | None = None
        self._skipping = False  # an error was answered: the server ignores messages until Sync

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        if self._opaque or not data:
            return events
        synced = self._synced(direction, data, ts)
        if synced is None:
            return events
        try:
            messages = self._framers[direction].feed(synced, ts)
        except ProtocolError as exc:
            return self._desync(events, str(exc), ts, direction)
        self._messages(direction, messages, ts, events)
        return events

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        if self._opaque or not self._parsing(direction):
            return events
        messages = self._framers[direction].skip(n) if cut else None
        if messages is None:
            return self._desync(events, lost(n, cut), ts, direction)
        self._messages(direction, messages, ts, events)
        return events

    def _messages(
        self, direction: Direction, messages: list[Message], ts: float, events: list[DecoderEvent]
    ) -> None:
        try:
            for msg in messages:
                if direction is Direction.CLIENT:
                    self._client(msg, ts, events)
                else:
                    self._server(msg, events)
                if self._opaque:
                    return
        except ProtocolError as exc:
            self._desync(events, str(exc), ts, direction)

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        self._building = None
        while self._pending:
            self._finish(self._pending.popleft(), events)
        return events

    # -- the native --stats path (outputs/fast.py) takes plain connections over

    def plain(self) -> bool:
        """Both sides in sync after the startup, not encrypted, no message half read, no
        extended-protocol batch open or failed, and every transaction waiting only for
        its ReadyForQuery with no answer yet and a key (an empty one the decoder names
        when it reports it): the state in which the native path reads
        simple queries exactly."""
        return (
            self._server_synced
            and self._sync_ts is not None
            and not (self._opaque or self._skipping)
            and self._building is None
            and self._startup is None
            and self._ssl_request is None
            and all(f.idle() for f in self._framers)
            and all(
                list(t.expect) == ["Z"]
                and t.command
                and t.ts_reply is None
                and not (t.error or t.cut)
                for t in self._pending
            )  # fmt: skip
        )

    def hand_over(self) -> tuple[list[_Txn], PostgresState]:
        """The transactions waiting for a reply, taken out (the connection is
        :meth:`plain`), and no reply begun (:data:`PostgresState`)."""
        pending = list(self._pending)
        self._pending.clear()
        return pending, (None,)

    def take_back(self, pending: list[tuple[object, float, int]], state: PostgresState) -> None:
        """Handed back: the transactions waiting for a reply, each one taken out by
        :meth:`hand_over`, or (its Query as sent, the ts of its last byte, its size), and
        ``state`` (:data:`PostgresState`).  The command tags, columns and sample rows read
        natively are not kept (the native path serves --stats and --metrics, which do not
        show them)."""
        (head,) = state
        for raw, ts, nbytes in pending:
            self._pending.append(self.request(raw, ts, nbytes))
        if head is None:
            return
        txn = self._pending[0]
        txn.reply_bytes, txn.ts_reply, error, txn.rows, txn.row_bytes = head
        if error is not None:
            self._error(txn, Message(ord("E"), error, len(error), len(error) + 5, txn.ts_reply))

    def request(self, raw: object, ts: float, nbytes: int) -> _Txn:
        """The transaction of the Query whose message (whole) was ``raw``, its last byte
        sent at ``ts``, ``nbytes`` long; or ``raw`` itself when it was handed over."""
        if isinstance(raw, _Txn):
            return raw
        assert isinstance(raw, bytes)
        [msg] = Framer().feed(raw, ts)
        sql = _Reader(msg.body).cstr()
        msg.nbytes = nbytes
        return self._new(query_shape(sql), self._sql_text(sql), ts, msg, "Z")

    # -- sync

    def _parsing(self, direction: Direction) -> bool:
        return self._sync_ts is not None and (direction is Direction.CLIENT or self._server_synced)

    def _synced(self, direction: Direction, data: bytes, ts: float) -> bytes | None:
        if not self._started:
            self._started = True
            if direction is Direction.CLIENT and _startup_header(data):
                self._framers[0].untyped = True
                self._sync_ts = ts
                self._server_synced = True
                return data
        if direction is Direction.CLIENT:
            if self._sync_ts is None:
                if not _message_start(data, _SYNC_START):
                    return None
                self._sync_ts = ts
            return data
        if not self._server_synced:
            if self._sync_ts is None or ts < self._sync_ts or not _message_start(data, _BACKEND):
                return None
            self._server_synced = True
        return data

    def _desync(
        self, events: list[DecoderEvent], reason: str, ts: float, direction: Direction
    ) -> list[DecoderEvent]:
        self._building = None
        while self._pending:
            self._finish(self._pending.popleft(), events, "(lost sync)")
        self._framers = (Framer(), Framer())
        self._sync_ts = None
        self._server_synced = False
        self._startup = None
        self._ssl_request = None
        self._skipping = False
        events.append(Notice(self.protocol, direction, "undecodable", reason, ts))
        return events

    # -- client messages

    def _client(self, msg: Message, ts: float, events: list[DecoderEvent]) -> None:
        if msg.kind == 0:
            self._startup_message(msg, ts, events)
            return
        kind = chr(msg.kind)
        if msg.kind not in _FRONTEND:
            raise ProtocolError(f"unknown client message {kind!r}")
        r = _Reader(msg.body, len(msg.body) < msg.size)
        if kind == "Q":
            sql = r.cstr()
            self._building = None
            txn = self._new(query_shape(sql), self._sql_text(sql), ts, msg, "Z")
            self._queue(txn)
        elif kind == "H" and self._building is None:
            if self._pending:  # a Flush after a Sync: no answer of its own
                self._pending[-1].nbytes += msg.nbytes
        elif kind in "PBDECH":
            self._extended(kind, r, msg, ts, events)
        elif kind == "S":
            building, self._building = self._building, None
            self._skipping = False
            if building is None:
                self._queue(self._new("SYNC", "SYNC", ts, msg, "Z"))
            else:
                txn = building
                txn.nbytes += msg.nbytes
                txn.cut += msg.cut
                txn.expect.append("Z")
                if txn.ts_reply is None:  # the request ends before its reply begins
                    txn.ts = ts
        elif kind == "F":
            oid = r.i32()
            self._building = None
            self._queue(self._new("FUNCTION CALL", f"function call oid={oid}", ts, msg, "Z"))
        elif kind == "X":
            self._building = None
            txn = self._new("TERMINATE", "TERMINATE", ts, msg)
            txn.no_reply = True
            self._finish(txn, events)
        elif kind == "p":
            self._password(msg, ts)
        else:  # d, c, f: COPY data from the client, part of the COPY FROM STDIN transaction
            target = self._pending[-1] if self._pending else None
            if target is None:
                raise ProtocolError(f"COPY message {kind!r} outside COPY")
            target.nbytes += msg.nbytes
            target.cut += msg.cut
            if kind == "d":
                target.copy_bytes += msg.size
            elif kind == "f":
                target.details["copy_fail"] = _Reader(msg.body).cstr()

    def _new(self, command: str, text: str, ts: float, msg: Message, *expect: str) -> _Txn:
        txn = _Txn(command, text, ts, msg.nbytes, deque(expect), cut=msg.cut)
        return txn

    def _queue(self, txn: _Txn) -> None:
        if len(self._pending) >= MAX_PENDING:
            raise ProtocolError(f"more than {MAX_PENDING} requests without a reply")
        self._pending.append(txn)

    def _sql_text(self, sql: str) -> str:
        return one_line(redact_sql(sql) if self.redact else sql, SUMMARY)

    def _extended(
        self, kind: str, r: _Reader, msg: Message, ts: float, events: list[DecoderEvent]
    ) -> None:
        txn = self._building
        if txn is None or txn.executes:
            txn = _Txn("", "", ts)
            txn.details["messages"] = []
            self._building = txn
            self._queue(txn)
        txn.nbytes += msg.nbytes
        txn.cut += msg.cut
        if txn.ts_reply is None:  # the request ends before its reply begins
            txn.ts = ts
        if len(txn.expect) >= MAX_PENDING:
            raise ProtocolError(f"more than {MAX_PENDING} messages without an Execute or Sync")
        steps = txn.details["messages"]
        assert isinstance(steps, list)
        if len(steps) >= MAX_STEPS:  # the first ones are shown, the rest counted
            txn.more_messages += 1
            steps = []
        if self._skipping:
            txn.error = "skipped: an earlier message of the batch failed"
        expect = txn.expect if not self._skipping else deque[str]()
        if kind == "P":
            name, sql = r.cstr(), r.cstr()
            _remember(self._stmts, name, sql)
            expect.append("1")
            steps.append(f"parse {name or '(unnamed)'}")
            if not txn.command:
                txn.command, txn.text = (
                    "PREPARE " + query_shape(sql),
                    "PREPARE " + self._sql_text(sql),
                )
                txn.details["statement"] = name
        elif kind == "B":
            portal, name = r.cstr(), r.cstr()
            known = self._stmts.get(name)
            try:
                params = self._params(r)
            except ProtocolError:  # past the bytes kept of a huge Bind
                params = "..."
            shown = known or f"(statement {name or '(unnamed)'} prepared earlier)"
            _remember(self._portals, portal, (shown, params))
            expect.append("2")
            steps.append(f"bind {name or '(unnamed)'}")
            txn.details["statement"] = name
            if params:
                txn.details["parameters"] = params
        elif kind == "D":
            what, name = chr(r.take(1)[0]), r.cstr()
            expect.append("t" if what == "S" else "T")
            steps.append(
                f"describe {'statement' if what == 'S' else 'portal'} {name or '(unnamed)'}"
            )
        elif kind == "E":
            portal = r.cstr()
            limit = r.i32()
            sql, params = self._portals.get(portal, ("(portal bound earlier)", ""))
            txn.command = query_shape(sql)
            txn.text = self._sql_text(sql) + (f" [{params}]" if params else "")
            txn.executes = 1
            expect.append("E")
            steps.append("execute" + (f" max {limit} rows" if limit else ""))
        elif kind == "C":
            what, name = chr(r.take(1)[0]), r.cstr()
            if what == "S":
                self._stmts.pop(name, None)
            expect.append("3")
            steps.append(f"close {'statement' if what == 'S' else 'portal'} {name or '(unnamed)'}")
            if not txn.command:
                txn.command, txn.text = "CLOSE", f"CLOSE {name or '(unnamed)'}"
        else:  # H: Flush, no answer of its own
            steps.append("flush")

    def _params(self, r: _Reader) -> str:
        """Bind's parameter values: text shown, binary as their size."""
        formats = [r.i16() for _ in range(r.i16())]
        n = r.i16()
        shown: list[str] = []
        for i in range(n):
            if i == MAX_PARAMS:
                shown.append(f"...+{n - i}")
                break
            length = r.i32()
            # one format for all, or one per parameter (a short list: text for the rest)
            binary = bool(formats[0] if len(formats) == 1 else i < len(formats) and formats[i])
            if length < 0:
                shown.append(f"${i + 1}=NULL")
                continue
            avail = min(length, r.left)
            shown.append(f"${i + 1}={_value(r.take(avail), length, binary)}")
        return ", ".join(shown)

    def _startup_message(self, msg: Message, ts: float, events: list[DecoderEvent]) -> None:
        r = _Reader(msg.body)
        code = r.i32()
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            what = "SSLRequest" if code == SSL_REQUEST else "GSSENCRequest"
            self._ssl_request = self._new(what, what, ts, msg)
            self._framers[1].single = True
            return
        if code == CANCEL_REQUEST:
            pid, secret = r.i32(), r.i32()
            txn = self._new("CANCEL", f"CANCEL pid={pid}", ts, msg)
            txn.details.update(pid=pid, key=REDACTED if self.redact else secret)
            txn.no_reply = True  # the server closes the connection without an answer
            self._finish(txn, events)
            return
        params: dict[str, str] = {}
        while r.left > 1:
            key = r.cstr()
            params[key] = r.cstr()
        shown = [
            f"{k}={params[k]}" for k in ("user", "database", "application_name") if k in params
        ]
        txn = self._new("STARTUP", "STARTUP " + " ".join(shown), ts, msg, "Z")
        txn.details.update(params)
        txn.details["auth"] = []
        self._startup = txn
        self._sasl_step = 0
        self._queue(txn)

    def _password(self, msg: Message, ts: float) -> None:
        """PasswordMessage, SASLInitialResponse or SASLResponse (by the auth in progress)."""
        txn = self._startup
        if txn is None:
            raise ProtocolError("password message outside authentication")
        txn.nbytes += msg.nbytes
        txn.cut += msg.cut
        if txn.ts_reply is None:  # the request ends before its reply begins
            txn.ts = ts
        r = _Reader(msg.body)
        auth = txn.details["auth"]
        assert isinstance(auth, list)
        if self._sasl_step == 1:  # SASLInitialResponse: mechanism, client-first-message
            mech = r.cstr()
            n = r.i32()
            data = r.take(max(n, 0)).decode("utf-8", "replace")
            auth.append(f"client-first {mech} {data}")
            self._sasl_step = 2
        elif self._sasl_step == 2:  # SASLResponse: client-final-message with the proof
            data = msg.body.decode("utf-8", "replace")
            if self.redact:
                data = re.sub(r"(^|,)p=[^,]*", rf"\1p={REDACTED}", data)
            auth.append(f"client-final {data}")
        else:
            password = r.cstr() if b"\0" in msg.body else ""
            auth.append("password " + (REDACTED if self.redact else password))

    # -- server messages

    def _server(self, msg: Message, events: list[DecoderEvent]) -> None:
        if self._ssl_request is not None and msg.size == 0 and msg.nbytes == 1:
            self._ssl_answer(msg, events)
            return
        kind = chr(msg.kind)
        if msg.kind not in _BACKEND:
            raise ProtocolError(f"unknown server message {kind!r}")
        if kind in "NAS" and not (kind == "S" and self._startup is not None):
            self._async(kind, msg, events)
            return
        txn = self._pending[0] if self._pending else None
        if txn is None:
            summary = f"{kind} message without a request"
            events.append(
                Notice(self.protocol, Direction.SERVER, "unpaired", summary, msg.ts_first)
            )
            return
        txn.reply_bytes += msg.nbytes
        txn.cut += msg.cut
        if txn.ts_reply is None:
            txn.ts_reply = msg.ts_first
        if txn is self._startup:
            self._login(txn, kind, msg)
        elif kind == "E":
            self._error(txn, msg)
        else:
            self._answer(txn, kind, msg)
        self._complete(events)

    def _ssl_answer(self, msg: Message, events: list[DecoderEvent]) -> None:
        txn = self._ssl_request
        assert txn is not None
        self._ssl_request = None
        answer = chr(msg.kind)
        txn.reply_bytes, txn.ts_reply = 1, msg.ts_first
        txn.tags.append(answer)
        self._finish(txn, events)
        if answer == "N":
            return
        if answer in "SG":
            label = "TLS" if answer == "S" else "GSSAPI encryption"
            events.append(
                Notice(
                    self.protocol,
                    Direction.SERVER,
                    "label",
                    f"{label}: encrypted, not decoded",
                    msg.ts_first,
                )
            )
            self._opaque = True
        else:
            raise ProtocolError(f"answer {answer!r} to {txn.command}")

    def _async(self, kind: str, msg: Message, events: list[DecoderEvent]) -> None:
        if kind == "A":
            r = _Reader(msg.body)
            pid, channel = r.i32(), r.cstr()
            payload = r.cstr() if r.left else ""
            summary = f"NOTIFY {channel} {show_bytes(payload.encode(), 64)} (from pid {pid})"
            details: Details = {"channel": channel, "payload": payload, "pid": pid}
            events.append(
                Notice(
                    self.protocol, Direction.SERVER, "notification", summary, msg.ts_first, details
                )
            )
        elif kind == "N":
            summary, details = _problem(msg.body)
            events.append(
                Notice(self.protocol, Direction.SERVER, "notice", summary, msg.ts_first, details)
            )
        else:  # ParameterStatus after the startup (SET of a reported parameter)
            r = _Reader(msg.body)
            name, value = r.cstr(), r.cstr()
            events.append(
                Notice(
                    self.protocol, Direction.SERVER, "parameter", f"{name}={value}", msg.ts_first
                )
            )

    def _login(self, txn: _Txn, kind: str, msg: Message) -> None:
        r = _Reader(msg.body)
        auth = txn.details["auth"]
        assert isinstance(auth, list)
        if kind == "R":
            code = r.i32()
            name = _AUTH.get(code, f"auth {code}")
            if code == 5:
                name += f" salt={r.take(4).hex()}"
            elif code == 10:
                mechs = []
                while r.left > 1:
                    mechs.append(r.cstr())
                name += " " + ",".join(mechs)
                self._sasl_step = 1
                txn.details["method"] = mechs[0] if mechs else "SASL"
            elif code in (11, 12):
                data = msg.body[4:].decode("utf-8", "replace")
                if code == 12 and self.redact:
                    data = re.sub(r"(^|,)v=[^,]*", rf"\1v={REDACTED}", data)
                name = ("server-first " if code == 11 else "server-final ") + data
            if code in (3, 5):
                txn.details["method"] = _AUTH[code]
            auth.append(name)
        elif kind == "S":
            r2 = _Reader(msg.body)
            params = txn.details.setdefault("server", {})
            assert isinstance(params, dict)
            params[r2.cstr()] = r2.cstr() if r2.left else ""
        elif kind == "K":
            pid, key = r.i32(), r.i32()
            txn.details["backend_pid"] = pid
            txn.details["cancel_key"] = REDACTED if self.redact else key
        elif kind == "E":
            self._error(txn, msg)
            txn.expect.clear()
            self._startup = None
        elif kind == "Z":
            txn.expect.clear()
            method = txn.details.get("method")
            txn.tags.append(f"authenticated ({method}), ready" if method else "ready")
            self._startup = None
        elif kind == "v":
            newest, unknown = r.i32(), r.i32()
            auth.append(f"server supports protocol 3.{newest & 0xFFFF}, not {unknown} options")
        else:
            raise ProtocolError(f"unexpected {kind!r} during authentication")

    def _error(self, txn: _Txn, msg: Message) -> None:
        """ErrorResponse: the error of ``txn``; in the extended protocol the server
        then skips every message up to the next Sync."""
        text, details = _problem(msg.body)
        txn.error = text
        txn.details["error"] = details
        if txn.expect and txn.expect[0] == "Z":
            return  # Query / FunctionCall: ReadyForQuery follows
        for t in self._pending:
            while t.expect and t.expect[0] != "Z":
                t.expect.popleft()
            if t is not txn and not t.error:
                t.error = "skipped: an earlier message of the batch failed"
            if t.expect:
                return
        self._skipping = True

    def _answer(self, txn: _Txn, kind: str, msg: Message) -> None:
        want = txn.expect[0] if txn.expect else "-"  # "-": nothing expected
        if kind in "DT" and want in "EZT":
            if kind == "T":
                txn.details["columns"] = _columns(msg.body)
                if want == "T":
                    txn.expect.popleft()
            else:
                txn.rows += 1
                txn.row_bytes += msg.size
                if len(txn.sample) < SAMPLE_ROWS:
                    txn.sample.append(_row(msg.body, msg.size))
            return
        if kind in "GHW" and want in "EZ":
            txn.copy = {"G": "COPY IN", "H": "COPY OUT", "W": "COPY BOTH"}[kind]
            return
        if kind in "dc" and want in "EZ":
            if kind == "d":
                txn.copy_bytes += msg.size
            return
        if kind == "V" and want == "Z":
            n = _Reader(msg.body).i32() if msg.size >= 4 else -1
            txn.tags.append("result NULL" if n < 0 else f"result {n} bytes")
            return
        if want not in _ANSWERS.get(kind, ""):
            raise ProtocolError(f"server message {kind!r} while expecting {want!r}")
        if kind in _DONE:
            txn.answers.append(_DONE[kind])
        if kind == "t":
            txn.expect[0] = "T"  # RowDescription or NoData follows
            return
        if kind == "C":
            tag = _Reader(msg.body).cstr() if b"\0" in msg.body else ""
            txn.tags.append(tag)
        elif kind == "I":
            txn.tags.append("(empty query)")
        elif kind == "s":
            txn.tags.append("suspended")
        elif kind == "Z":
            status = msg.body[:1].decode("ascii", "replace")
            txn.details["status"] = _STATUS.get(status, status)
        if kind in "CI" and want == "Z":
            return  # one statement of a multi-statement Query: more may follow
        txn.expect.popleft()

    def _complete(self, events: list[DecoderEvent]) -> None:
        """Report the answered transactions at the head of the queue; one the client
        is still adding messages to waits, unless its Execute was answered (a Sync
        sent after that is a transaction of its own)."""
        while self._pending and not self._pending[0].expect:
            if self._pending[0] is self._building:
                if not self._building.executes:
                    return
                self._building = None
            self._finish(self._pending.popleft(), events)

    # -- output

    def _finish(self, txn: _Txn, events: list[DecoderEvent], why: str = "") -> None:
        if not txn.command:  # Bind/Describe only (a statement prepared earlier)
            txn.command, txn.text = "DESCRIBE", "DESCRIBE"
        parts = list(txn.tags)
        if txn.rows or txn.details.get("columns"):
            parts.append(f"{txn.rows} rows")
            txn.details["rows"] = txn.rows
            txn.details["row_bytes"] = txn.row_bytes
        if txn.sample:
            parts.append(" ".join(txn.sample) + (" ..." if txn.rows > len(txn.sample) else ""))
        if txn.copy:
            parts.append(f"{txn.copy} {txn.copy_bytes} bytes")
            txn.details["copy_bytes"] = txn.copy_bytes
        if txn.more_messages:
            txn.details["more_messages"] = txn.more_messages
        if txn.error:
            parts.insert(0, txn.error)
        elif not parts:
            parts = txn.answers
        answered = txn.ts_reply is not None or bool(txn.error)
        reply = "; ".join(p for p in parts if p) if answered else why
        unanswered = not answered and not why and not txn.no_reply
        if txn.expect and answered and not why:
            reply += " (reply incomplete)"
        events.append(
            Transaction(
                self.protocol,
                txn.command,
                txn.text,
                clip(reply, SUMMARY),
                bool(txn.error),
                txn.ts,
                txn.ts_reply,
                txn.nbytes,
                txn.reply_bytes,
                txn.details,
                unanswered=unanswered,
                cut=txn.cut,
            )
        )


def _columns(body: bytes) -> list[str]:
    r, names = _Reader(body), []
    try:
        for _ in range(r.i16()):
            names.append(r.cstr())
            r.take(18)
    except ProtocolError:
        pass
    return names


def _remember(names: dict[str, _V], name: str, value: _V) -> None:
    """``names[name] = value``, forgetting the oldest name beyond MAX_NAMES."""
    names.pop(name, None)
    names[name] = value
    if len(names) > MAX_NAMES:
        del names[next(iter(names))]


def _startup_header(data: bytes) -> bool:
    if len(data) < 8:
        return False
    length, code = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
    return (
        code in (PROTOCOL_3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST) and 8 <= length <= 10000
    )


def _message_start(data: bytes, kinds: frozenset[int]) -> bool:
    return (
        len(data) >= 5 and data[0] in kinds and 4 <= int.from_bytes(data[1:5], "big") <= MAX_LENGTH
    )


# ------------------------------------------------ detection (decoders/registry.py)

_FRONTEND = frozenset(b"BCcDdEfFHPpQSX")
# messages of one length only: ReadyForQuery (5), ParseComplete, BindComplete,
# CloseComplete, NoData, EmptyQueryResponse, PortalSuspended, CopyDone (4)
_FIXED = {ord("Z"): 5, **dict.fromkeys(b"123nIsc", 4)}


def _tiled(data: bytes, kinds: frozenset[int]) -> int:
    """How many messages of ``kinds`` ``data`` begins with, each of a length its type
    allows (a Query ending in its NUL, a ReadyForQuery's status I, T or E), the last
    one possibly cut; -1 when one does not fit."""
    i = n = 0
    while i + 5 <= len(data):
        kind, length = data[i], int.from_bytes(data[i + 1 : i + 5], "big")
        end = i + 1 + length
        if kind not in kinds or not 4 <= length <= MAX_LENGTH or _FIXED.get(kind, length) != length:
            return -1
        if kind == ord("Q") and end <= len(data) and data[end - 1] != 0:
            return -1
        if kind == ord("Z") and end <= len(data) and data[end - 1] not in b"ITE":
            return -1
        n, i = n + 1, end
    return n


def query_exchange(client: bytes, server: bytes) -> bool | None:
    """Mid-connection: the client's bytes begin with a Query, Parse, Bind or FunctionCall
    message and are all frontend messages, the server's all backend messages (types and
    big-endian lengths checked, as far as detection keeps them)."""
    if len(client) < 5 or len(server) < 5:
        return None
    if client[0] not in _SYNC_START:
        return False
    return _tiled(client, _FRONTEND) > 0 and _tiled(server, _BACKEND) > 0
