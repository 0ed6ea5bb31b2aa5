"""MySQL / MariaDB client/server protocol decoder (sans-IO).

Covers: handshake v10 (server version, connection id, capabilities, auth
plugin), HandshakeResponse41 (user, database, plugin), auth switch and extra
auth rounds, COM_QUERY with text resultsets, OK/ERR/EOF and OK-as-EOF
(CLIENT_DEPRECATE_EOF), COM_INIT_DB, COM_PING, COM_QUIT, prepared statements
(COM_STMT_PREPARE/EXECUTE/CLOSE/RESET/SEND_LONG_DATA) with binary resultsets
and bound parameter values, multi-statements and multi-resultsets
(SERVER_MORE_RESULTS_EXISTS), LOAD DATA LOCAL INFILE, logical packets above
16 MiB (0xffffff continuation; only a prefix of each is kept), sequence-id
checking.  TLS (SSLRequest) and compressed (CLIENT_COMPRESS/ZSTD) connections
are labelled and not parsed further.

The decoder is a state machine: the connection's :class:`Phase` (waiting
for sync, login, commands, opaque) and, per command in flight, where its
reply is (:class:`Reply`); each reply state has its reader
(``_REPLY_READERS``), each client and server packet goes to the reader of
the state it arrives in.  Command bytes are :class:`Command`, the first
byte of a server packet :class:`Header`.

Resultset terminators are recognised the way libmysqlclient does (``0xfe``
header and length below 0xffffff), which works with and without
CLIENT_DEPRECATE_EOF, so a connection seen mid-stream (no handshake) still
decodes.  Sync rule after a gap or at the start: a client chunk that begins
with a well-formed command packet (sequence 0), then server chunks sent after
it that begin with sequence 1; or a server greeting.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import Enum, IntEnum

from ..streams import Direction
from .base import REDACTED, DecoderEvent, Details, Notice, Transaction, clip, lost
from .sql import one_line
from .sql import query_shape as sql_shape

KEEP = 64 * 1024  # bytes kept of each logical packet
SAMPLE_ROWS = 3
MAX_COLUMNS = 64  # column definitions kept per resultset
SUMMARY = 200

CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_PLUGIN_AUTH_LENENC = 0x200000
CLIENT_DEPRECATE_EOF = 0x1000000
CLIENT_ZSTD = 0x4000000
CLIENT_QUERY_ATTRIBUTES = 0x8000000
MARIADB_CACHE_METADATA = 1 << 36
SERVER_MORE_RESULTS_EXISTS = 0x8


class Command(IntEnum):
    """The first byte of a command packet (COM_*)."""

    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    CHANGE_USER = 0x11
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    RESET_CONNECTION = 0x1F


COMMANDS = {c.value: c.name for c in Command}
LOGIN = -1  # _Command.code of the login exchange (no command byte)
_NO_REPLY = frozenset((Command.QUIT, Command.STMT_SEND_LONG_DATA, Command.STMT_CLOSE))
_RESULTSETS = frozenset((Command.QUERY, Command.STMT_EXECUTE, Command.STMT_FETCH))
_AUTH = frozenset((LOGIN, Command.CHANGE_USER))  # replies: OK, ERR, auth switch, more data
_ON_STATEMENT = {  # commands on a prepared statement (stmt_id first): their verb
    Command.STMT_EXECUTE: "EXECUTE",
    Command.STMT_CLOSE: "CLOSE",
    Command.STMT_RESET: "RESET",
    Command.STMT_SEND_LONG_DATA: "LONG DATA",
    Command.STMT_FETCH: "FETCH",
}


class Header(IntEnum):
    """The first byte of a server packet (and of a LOCAL INFILE request)."""

    OK = 0x00
    AUTH_MORE_DATA = 0x01
    GREETING = 0x0A  # protocol version 10
    LOCAL_INFILE = 0xFB
    EOF = 0xFE  # also an auth switch request during login, and OK-as-EOF
    ERR = 0xFF


class Phase(Enum):
    """The connection's phase."""

    SYNC = "sync"  # waiting for a point to start decoding (start, or after a gap)
    LOGIN = "login"  # greeting seen: the handshake response and its auth exchange
    COMMAND = "command"  # commands and their replies
    OPAQUE = "opaque"  # TLS or compressed: not decoded any further


class Reply(Enum):
    """Where a command's reply is: what its next server packet may be."""

    FIRST = "first"  # a result's first packet: OK, ERR, LOCAL INFILE or a resultset header
    INFILE = "infile"  # LOCAL INFILE requested: the client sends the file, then FIRST
    PARAMS = "params"  # parameter definitions (PREPARE reply)
    COLUMNS = "columns"  # column definitions (resultset or PREPARE reply)
    ROWS = "rows"  # rows, up to a terminator or ERR
    EOF = "eof"  # definitions of a PREPARE ended: only the EOF packet after them may follow
    DONE = "done"  # complete


_, T_TINY, T_SHORT, T_LONG, T_FLOAT, T_DOUBLE, T_NULL, T_TIMESTAMP = range(8)
T_LONGLONG, T_INT24, T_DATE, T_TIME, T_DATETIME, T_YEAR = range(8, 14)
_INT_SIZES = {T_TINY: 1, T_SHORT: 2, T_YEAR: 2, T_LONG: 4, T_INT24: 4, T_LONGLONG: 8}
_INT_FORMATS = {1: "b", 2: "h", 4: "i", 8: "q"}
UNSIGNED_FLAG = 0x20


class ProtocolError(ValueError):
    pass


class _Reader:
    """Bounds-checked little-endian reader over one packet payload."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise ProtocolError("packet too short")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def lenenc(self) -> int | None:
        pos = self.pos
        if pos >= len(self.data):
            raise ProtocolError("packet too short")
        first = self.data[pos]  # read in place: a result's every value starts so
        self.pos = pos + 1
        if first < 0xFB:
            return first
        if first == 0xFB:
            return None
        if first == 0xFF:
            raise ProtocolError("bad length-encoded integer")
        return self.uint({0xFC: 2, 0xFD: 3, 0xFE: 8}[first])

    def lenstr(self) -> bytes | None:
        n = self.lenenc()
        return None if n is None else self.take(n)

    def cstr(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("missing NUL terminator")
        return self.take(end - self.pos + 1)[:-1]

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


# --------------------------------------------------------------------------- packets


@dataclass(slots=True)
class Packet:
    seq: int  # sequence id of the first physical packet
    last_seq: int  # sequence id of the last physical packet (continuations)
    payload: bytes  # the payload, or its first KEEP bytes
    length: int  # logical payload length
    nbytes: int  # wire bytes including headers
    cut: int = 0  # payload bytes not captured (PacketReader.skip)

    @property
    def complete(self) -> bool:
        return len(self.payload) == self.length


@dataclass(slots=True)
class _Partial:
    seq: int
    last_seq: int
    prefix: bytearray = field(default_factory=bytearray)
    length: int = 0
    nbytes: int = 0
    cut: int = 0


class PacketReader:
    """Split one direction into logical packets (joining 0xffffff continuations)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.cur: _Partial | None = None
        self.body_left = 0
        self.more = False  # current physical packet is 0xffffff long: another follows

    def idle(self) -> bool:
        """No packet half read."""
        return self.cur is None and not self.buf

    def skip(self, n: int) -> list[Packet] | None:
        """``n`` bytes not captured here (snap length).  When they lie inside the
        payload of the packet being read, its framing is intact: they are counted
        as cut and reading goes on (returns the packets that completes).  Otherwise
        (they hold a packet header) returns None: the caller must resynchronise."""
        cur = self.cur
        if cur is None or self.buf or n > self.body_left:
            return None
        self.body_left -= n
        cur.length += n
        cur.nbytes += n
        cur.cut += n
        return self.feed(b"")

    def feed(self, data: bytes) -> list[Packet]:
        out: list[Packet] = []
        if self.cur is None and not self.buf:
            pos = self._whole(data, out)
            if pos == len(data):
                return out
            data = data[pos:]
        self.buf += data
        buf = self.buf
        pos = 0
        while True:
            cur = self.cur
            if cur is None or (self.body_left == 0 and self.more):
                if len(buf) - pos < 4:
                    break
                n = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
                seq = buf[pos + 3]
                pos += 4
                if cur is None:
                    cur = self.cur = _Partial(seq, seq)
                elif seq != (cur.last_seq + 1) & 0xFF:
                    raise ProtocolError(f"continuation sequence {seq} after {cur.last_seq}")
                cur.last_seq = seq
                cur.nbytes += 4
                self.body_left = n
                self.more = n == 0xFFFFFF
            take = min(self.body_left, len(buf) - pos)
            keep = min(take, KEEP - len(cur.prefix))
            if keep > 0:
                cur.prefix += buf[pos : pos + keep]
            pos += take
            self.body_left -= take
            cur.length += take
            cur.nbytes += take
            if self.body_left:
                break
            if self.more:
                continue
            payload = bytes(cur.prefix)
            out.append(Packet(cur.seq, cur.last_seq, payload, cur.length, cur.nbytes, cur.cut))
            self.cur = None
        del buf[:pos]
        return out

    @staticmethod
    def _whole(data: bytes, out: list[Packet]) -> int:
        """The packets wholly in ``data`` (no continuation) read in place, as ``feed``
        reads them through its buffer (a third of MySQL's decoding time); the end."""
        pos, n = 0, len(data)
        while n - pos >= 4:
            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            end = pos + 4 + length
            if length == 0xFFFFFF or end > n:
                break
            seq = data[pos + 3]
            out.append(Packet(seq, seq, data[pos + 4 : pos + 4 + min(length, KEEP)], length,
                              length + 4))  # fmt: skip
            pos = end
        return pos


# --------------------------------------------------------------------------- values


@dataclass(slots=True)
class Column:
    name: str
    type: int
    flags: int


def _column(payload: bytes) -> Column:
    r = _Reader(payload)
    for _ in range(4):  # catalog, schema, table, org_table
        r.lenstr()
    name = r.lenstr() or b""
    r.lenstr()  # org_name
    r.lenenc()  # length of fixed fields (0x0c)
    r.take(6)  # charset, column length
    col_type = r.uint(1)
    flags = r.uint(2)
    return Column(name.decode("utf-8", "replace"), col_type, flags)


def _show_value(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return repr(clip(value.decode("utf-8", "replace"), 40))
    return str(value)


def _binary_value(r: _Reader, col_type: int, unsigned: bool) -> object:
    size = _INT_SIZES.get(col_type)
    if size is not None:
        fmt = _INT_FORMATS[size]
        raw = r.take(size)
        return struct.unpack("<" + (fmt.upper() if unsigned else fmt), raw)[0]
    if col_type == T_FLOAT:
        return round(struct.unpack("<f", r.take(4))[0], 7)
    if col_type == T_DOUBLE:
        return struct.unpack("<d", r.take(8))[0]
    if col_type == T_NULL:
        return None
    if col_type in (T_DATE, T_DATETIME, T_TIMESTAMP):
        n = r.uint(1)
        f = r.take(n) + bytes(11 - n) if n <= 11 else r.take(n)
        year, month, day = int.from_bytes(f[0:2], "little"), f[2], f[3]
        if col_type == T_DATE:
            return date(year, month, day).isoformat() if n else "0000-00-00"
        if not n:
            return "0000-00-00 00:00:00"
        micro = int.from_bytes(f[7:11], "little")
        return datetime(year, month, day, f[4], f[5], f[6], micro).isoformat(" ")
    if col_type == T_TIME:
        n = r.uint(1)
        f = r.take(n) + bytes(12 - n) if n <= 12 else r.take(n)
        delta = timedelta(
            days=int.from_bytes(f[1:5], "little"),
            hours=f[5],
            minutes=f[6],
            seconds=f[7],
            microseconds=int.from_bytes(f[8:12], "little"),
        )
        return ("-" if f[0] else "") + str(delta)
    return r.lenstr()


def _binary_values(r: _Reader, types: list[tuple[int, bool]], nulls: bytes, bit0: int) -> str:
    values = []
    for i, (col_type, unsigned) in enumerate(types):
        bit = i + bit0
        if nulls[bit >> 3] & (1 << (bit & 7)):
            values.append("NULL")
        else:
            values.append(_show_value(_binary_value(r, col_type, unsigned)))
    return "(" + ", ".join(values) + ")"


def _text_row(payload: bytes, ncols: int) -> str:
    r = _Reader(payload)
    return "(" + ", ".join(_show_value(r.lenstr()) for _ in range(ncols)) + ")"


# --------------------------------------------------------------------------- SQL text

_LITERAL = re.compile(  # the lookahead: as postgres._LITERAL's
    r"""(?=['"\d-])(?:'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|\b0x[0-9a-fA-F]+\b|"""
    r"""(?<![\w.$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b)"""
)
_SECRETS = re.compile(
    r"""(?P<pre>\bIDENTIFIED\s+(?:(?:WITH|VIA)\s+\w+\s+)?(?:BY|AS|USING)\s+(?:PASSWORD\s*)?\(?\s*"""
    r"""|\bPASSWORD\s*\(\s*|\bSET\s+PASSWORD\b[^=]*=\s*(?:PASSWORD\s*\(\s*)?)"""
    r"""(?P<lit>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")""",
    re.IGNORECASE,
)
_USE = re.compile(r"\s*use\s+`?([^`;\s]+)`?\s*;?\s*$", re.IGNORECASE)


def query_shape(sql: str) -> str:
    """Statistics key: MySQL literals replaced by ``?`` (sql.query_shape)."""
    return sql_shape(sql, _LITERAL)


def stats_key(sql: bytes) -> bytes | None:
    """The --stats key (the shape, utf-8) of a COM_QUERY whose SQL bytes are ``sql``, as
    MysqlDecoder keys it; None for a USE statement, which changes the decoder's state
    (the native path, outputs/fast.py, leaves it to the decoder)."""
    text = sql.decode("utf-8", "replace")
    return None if _USE.match(text) else query_shape(text).encode()


def redact_sql(sql: str) -> str:
    return _SECRETS.sub(lambda m: f"{m['pre']}'{REDACTED}'", sql)


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class _Stmt:
    sql: str
    nparams: int
    ncols: int
    param_types: list[tuple[int, bool]] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)


@dataclass(slots=True)
class _Command:
    code: int  # command byte (a Command, or a byte this decoder does not know); LOGIN
    name: str
    text: str
    shape: str
    ts: float
    nbytes: int
    seq: int  # next expected sequence id
    state: Reply = Reply.FIRST
    reply_bytes: int = 0
    ts_reply: float | None = None  # first byte of the reply
    cut: int = 0  # bytes of request and reply not captured
    error: bool = False
    results: list[str] = field(default_factory=list)
    details: Details = field(default_factory=dict)
    binary: bool = False
    left: int = 0  # definitions still to read in state PARAMS/COLUMNS
    eof_pending: bool = False  # an EOF packet may follow the definitions just read
    progress: int = 0  # MariaDB progress reports received
    columns: list[Column] = field(default_factory=list)
    ncols: int = 0
    rows: int = 0
    samples: list[str] = field(default_factory=list)
    stmt: _Stmt | None = None
    prepared: _Stmt | None = None  # statement being described by a PREPARE reply

    @property
    def command(self) -> str:
        """The statistics key (base.Request's)."""
        return self.shape


def _ok(r: _Reader) -> tuple[str, int, Details]:
    affected = r.lenenc() or 0
    insert_id = r.lenenc() or 0
    status = r.uint(2) if r.left >= 2 else 0
    warnings = r.uint(2) if r.left >= 2 else 0
    info = r.rest().decode("utf-8", "replace") if r.left else ""
    details: Details = {"affected_rows": affected, "status": status, "warnings": warnings}
    text = "OK"
    if affected:
        text += f", {affected} row{'s' * (affected != 1)} affected"
    if insert_id:
        details["insert_id"] = insert_id
        text += f", insert id {insert_id}"
    if info.strip("\0\x01\x02\x03 "):
        details["info"] = info
    return text, status, details


def _err(payload: bytes) -> tuple[str, Details]:
    r = _Reader(payload, 1)
    code = r.uint(2)
    state = ""
    if r.left and payload[r.pos] == 0x23:  # '#'
        r.take(1)
        state = r.take(5).decode("ascii", "replace")
    message = r.rest().decode("utf-8", "replace")
    details: Details = {"error_code": code, "sqlstate": state, "error_message": message}
    return f"ERR {code} ({state}): {message}" if state else f"ERR {code}: {message}", details


def _terminator(packet: Packet) -> bool:
    return bool(packet.payload) and packet.payload[0] == Header.EOF and packet.length < 0xFFFFFF


def _status_of_terminator(payload: bytes) -> int:
    r = _Reader(payload, 1)
    if len(payload) < 9:  # EOF: warnings, status
        r.take(2)
        return r.uint(2) if r.left >= 2 else 0
    return _ok(r)[1]


# Where the oldest command's reply stands when a native reader hands the connection
# back: (Reply's value, packets left of its part, an EOF due, the next sequence id, its
# bytes, the ts of its first packet, ERR, columns, rows).
MysqlHead = tuple[str, int, bool, int, int, float, bool, int, int]
# What a native reader must know of the decoder besides the commands waiting for a reply
# (MysqlDecoder.hand_over, .take_back): CLIENT_DEPRECATE_EOF, the next sequence id of the
# last command done or None, MARIADB_CLIENT_CACHE_METADATA, and the oldest reply (None
# when not begun; always None handed over).
MysqlState = tuple[bool, int | None, bool, MysqlHead | None]


class MysqlDecoder:
    protocol = "mysql"

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._readers = (PacketReader(), PacketReader())
        self.phase = Phase.SYNC
        self.server_caps = 0
        self.client_caps = 0
        self.server_version = ""
        self.conn_id = 0
        self.user = ""
        self.db = ""
        self._stmts: dict[int, _Stmt] = {}
        self._commands: deque[_Command] = deque()
        self._sync_ts: float | None = None  # ts of the first command after (re)sync
        self._sync_buf = [b"", b""]  # per direction: chunk start too short to judge
        self._done_seq: int | None = None  # next sequence id of the last finished command
        self.deprecate_eof: bool | None = None  # CLIENT_DEPRECATE_EOF; None until known

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        synced = None if self.phase is Phase.OPAQUE else self._synced(direction, data, ts)
        if synced is None:
            return events
        self._packets(direction, synced, ts, events)
        return events

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        if self.phase is Phase.OPAQUE:
            return events
        if cut and self.phase is Phase.SYNC and not self._parsing(direction):
            # the rest of a send() skipped while not in sync: no packet continues across it
            self._sync_buf[direction] = b""
            return events
        if cut:
            self._packets(direction, b"", ts, events, cut=n)
        else:
            self._desync(events, lost(n, False), ts, direction)
        return events

    def _parsing(self, direction: Direction) -> bool:
        """Are this direction's bytes parsed (not skipped while waiting for sync)?"""
        return self._sync_ts is not None and direction is Direction.CLIENT

    def _packets(
        self,
        direction: Direction,
        data: bytes,
        ts: float,
        events: list[DecoderEvent],
        cut: int = 0,
    ) -> None:
        """Parse ``data``, or skip ``cut`` bytes the snap length cut, and handle the
        packets that completes."""
        reader = self._readers[direction]
        try:
            packets = reader.skip(cut) if cut else reader.feed(data)
            if packets is None:
                raise ProtocolError(lost(cut, True))
            for packet in packets:
                if direction is Direction.CLIENT:
                    self._client(packet, ts, events)
                else:
                    self._server(packet, ts, events)
                if self.phase is Phase.OPAQUE:
                    break
        except ValueError as exc:  # ProtocolError, or a malformed value (e.g. a date)
            self._desync(events, str(exc), ts, direction)

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        while self._commands:
            self._finish(self._commands.popleft(), events)
        return events

    # -- the native --stats path (outputs/fast.py) takes plain connections over

    def plain(self) -> bool:
        """In the command phase, uncompressed, no packet half read, CLIENT_DEPRECATE_EOF
        known, no query attributes, and the commands in flight whole
        COM_QUERY statements (not USE) whose reply has not begun: the state in which the
        native path reads COM_QUERY exchanges exactly."""
        return (
            self.phase is Phase.COMMAND
            and all(
                c.code == Command.QUERY
                and c.state is Reply.FIRST
                and c.seq == 1
                and not (c.reply_bytes or c.cut or c.progress or "use_db" in c.details)
                and "query_bytes" not in c.details
                for c in self._commands
            )  # fmt: skip
            and self.deprecate_eof is not None
            and not self.client_caps & CLIENT_QUERY_ATTRIBUTES
            and not any(self._sync_buf)
            and all(r.idle() for r in self._readers)
        )

    def hand_over(self) -> tuple[list[_Command], MysqlState]:
        """The commands waiting for a reply, taken out (the connection is :meth:`plain`),
        and what the native path must know (:data:`MysqlState`)."""
        pending = list(self._commands)
        self._commands.clear()
        cache = bool(self.client_caps & MARIADB_CACHE_METADATA)
        assert self.deprecate_eof is not None  # known when plain()
        return pending, (self.deprecate_eof, self._done_seq, cache, None)

    def take_back(self, pending: list[tuple[object, float, int]], state: MysqlState) -> None:
        """Handed back: the COM_QUERY commands waiting for a reply, each one taken out by
        :meth:`hand_over`, or (its packet as sent, the ts of its last byte, its size), and
        ``state`` (:data:`MysqlState`, the cache flag unchanged).  The reply's column
        definitions and sample rows read natively are not kept (the native path serves
        --stats and --metrics, which do not show them); placeholders stand for the
        samples, so that the decoder parses the same rows."""
        self.deprecate_eof, self._done_seq, _, head = state
        for raw, ts, nbytes in pending:
            self._commands.append(self.request(raw, ts, nbytes))
        if head is None:
            return
        cmd = self._commands[0]
        reply, cmd.left, cmd.eof_pending, cmd.seq, cmd.reply_bytes = head[:5]
        cmd.ts_reply, cmd.error, cmd.ncols, cmd.rows = head[5:]
        cmd.state = Reply(reply)
        cmd.samples = ["?"] * min(cmd.rows, SAMPLE_ROWS)

    def request(self, raw: object, ts: float, nbytes: int) -> _Command:
        """The command whose packet (header included, whole) was ``raw``, its last byte
        sent at ``ts``, ``nbytes`` long; or ``raw`` itself when it was handed over."""
        if isinstance(raw, _Command):
            return raw
        assert isinstance(raw, bytes)
        [packet] = PacketReader().feed(raw)
        packet.nbytes = nbytes
        return self._command(packet, ts)

    # -- sync

    def _synced(self, direction: Direction, data: bytes, ts: float) -> bytes | None:
        """The bytes to parse, or None while waiting for a sync point."""
        if self.phase is not Phase.SYNC:
            return data
        data, self._sync_buf[direction] = self._sync_buf[direction] + data, b""
        if len(data) < 5:
            self._sync_buf[direction] = data  # too short to judge a packet header
            return None
        if direction is Direction.SERVER:
            if data[3] == 0 and data[4] == Header.GREETING:  # a fresh connection
                self.phase = Phase.LOGIN
                return data
            if self._sync_ts is None or ts < self._sync_ts or data[3] != 1:
                return None
            self.phase = Phase.COMMAND
            return data
        if self._sync_ts is None:
            n = int.from_bytes(data[:3], "little")
            if not n or data[3] != 0 or data[4] not in COMMANDS or n + 4 > max(len(data), KEEP):
                return None
            self._sync_ts = ts
        return data

    def _desync(
        self, events: list[DecoderEvent], reason: str, ts: float, direction: Direction
    ) -> None:
        while self._commands:
            self._finish(self._commands.popleft(), events, lost_sync=True)
        self._readers = (PacketReader(), PacketReader())
        self.phase = Phase.SYNC
        self._sync_ts = None
        self._sync_buf = [b"", b""]
        self._done_seq = None
        events.append(Notice(self.protocol, direction, "undecodable", reason, ts))

    def _opaque(self, events: list[DecoderEvent], label: str, ts: float) -> None:
        self.phase = Phase.OPAQUE
        events.append(Notice(self.protocol, Direction.CLIENT, "label", label, ts))
        events.extend(self.close())

    # -- client packets

    def _client(self, packet: Packet, ts: float, events: list[DecoderEvent]) -> None:
        head = self._commands[0] if self._commands else None
        if self.phase is Phase.LOGIN and head is None:
            self._handshake_response(packet, ts, events)
            return
        if packet.seq != 0 and head is not None:  # infile data, auth data
            self._check_seq(head, packet)
            head.nbytes += packet.nbytes
            head.cut += packet.cut
            if head.state is Reply.INFILE and packet.length == 0:  # the file's end
                head.state = Reply.FIRST
            return
        if packet.seq != 0 or not packet.payload:
            raise ProtocolError(f"unexpected client packet seq {packet.seq}")
        cmd = self._command(packet, ts)
        cmd.cut = packet.cut
        if packet.payload[0] in _NO_REPLY:
            self._finish(cmd, events)
        else:
            self._commands.append(cmd)

    def _command(self, packet: Packet, ts: float) -> _Command:
        code = packet.payload[0]
        name = COMMANDS.get(code, f"0x{code:02x}")
        r = _Reader(packet.payload, 1)
        text, shape = "COM_" + name, "COM_" + name
        details: Details = {"conn_id": self.conn_id, "db": self.db} if self.conn_id else {}
        cmd = _Command(code, name, text, shape, ts, packet.nbytes, (packet.last_seq + 1) & 0xFF)
        if code == Command.QUERY:
            if self.client_caps & CLIENT_QUERY_ATTRIBUTES:
                r.lenenc()
                r.lenenc()
            sql = r.rest().decode("utf-8", "replace")
            if not packet.complete:
                details["query_bytes"] = packet.length - 1
            cmd.shape = query_shape(sql)
            cmd.text = redact_sql(sql) if self.redact else sql
            use = _USE.match(sql)
            if use:
                details["use_db"] = use.group(1)
        elif code == Command.INIT_DB:
            cmd.details["init_db"] = db = r.rest().decode("utf-8", "replace")
            cmd.text = f"USE {db}"
        elif code == Command.STMT_PREPARE:
            sql = r.rest().decode("utf-8", "replace")
            cmd.shape = "PREPARE " + query_shape(sql)
            cmd.text = "PREPARE " + (redact_sql(sql) if self.redact else sql)
            cmd.prepared = _Stmt(sql, 0, 0)
        elif code in _ON_STATEMENT:
            self._statement_command(cmd, r)
        elif code == Command.PROCESS_KILL:
            cmd.text = f"KILL {r.uint(4)}"
        cmd.details.update(details)
        cmd.text = one_line(cmd.text, SUMMARY)
        return cmd

    def _statement_command(self, cmd: _Command, r: _Reader) -> None:
        stmt_id = r.uint(4)
        stmt = self._stmts.get(stmt_id)
        cmd.details["stmt_id"] = stmt_id
        sql = stmt.sql if stmt is not None else f"stmt {stmt_id}"
        verb = _ON_STATEMENT[Command(cmd.code)]
        cmd.shape = f"{verb} " + (query_shape(sql) if stmt else "?")
        cmd.text = f"{verb} {sql}"
        if cmd.code == Command.STMT_CLOSE:
            self._stmts.pop(stmt_id, None)
        if cmd.code != Command.STMT_EXECUTE:
            return
        cmd.binary = True
        cmd.stmt = stmt
        if stmt is None:
            return
        r.take(5)  # flags, iteration count
        if stmt.nparams:
            nulls = r.take((stmt.nparams + 7) // 8)
            if r.uint(1):
                raw = r.take(2 * stmt.nparams)
                stmt.param_types = [
                    (raw[i], bool(raw[i + 1] & 0x80)) for i in range(0, len(raw), 2)
                ]
            if len(stmt.param_types) == stmt.nparams:
                params = _binary_values(r, stmt.param_types, nulls, 0)
                cmd.details["params"] = REDACTED if self.redact else params
                cmd.text += " " + (REDACTED if self.redact else params)

    def _handshake_response(self, packet: Packet, ts: float, events: list[DecoderEvent]) -> None:
        r = _Reader(packet.payload)
        caps = r.uint(4)
        if packet.length == 32 and caps & CLIENT_SSL:
            self._opaque(events, "TLS (SSLRequest): encrypted, not decoded", ts)
            return
        r.take(5)  # max packet size, charset
        filler = r.take(23)
        if not caps & 1:  # MariaDB: extended capabilities in the last 4 filler bytes
            caps |= int.from_bytes(filler[19:23], "little") << 32
        self.client_caps = caps
        self.deprecate_eof = bool(caps & CLIENT_DEPRECATE_EOF)
        self.user = r.cstr().decode("utf-8", "replace")
        if caps & CLIENT_PLUGIN_AUTH_LENENC:
            auth = r.lenstr() or b""
        elif caps & CLIENT_SECURE_CONNECTION:
            auth = r.take(r.uint(1))
        else:
            auth = r.cstr()
        if caps & CLIENT_CONNECT_WITH_DB and r.left:
            self.db = r.cstr().decode("utf-8", "replace")
        plugin = r.cstr().decode("utf-8", "replace") if caps & CLIENT_PLUGIN_AUTH and r.left else ""
        text = f"login user={self.user}" + (f" db={self.db}" if self.db else "")
        seq = (packet.last_seq + 1) & 0xFF
        cmd = _Command(LOGIN, "LOGIN", text, "LOGIN", ts, packet.nbytes, seq)
        cmd.cut = packet.cut
        cmd.details.update(
            user=self.user,
            db=self.db,
            client_plugin=plugin,
            auth_response=REDACTED if self.redact else auth.hex(),
            client_caps=caps,
            conn_id=self.conn_id,
            server_version=self.server_version,
        )
        self._commands.append(cmd)

    # -- server packets

    def _server(self, packet: Packet, ts: float, events: list[DecoderEvent]) -> None:
        if not self._commands:
            greeting = packet.payload[:1] == bytes((Header.GREETING,))
            if self.phase is Phase.LOGIN and packet.seq == 0 and greeting:
                self._greeting(packet, ts, events)
                return
            if _terminator(packet) and packet.seq == self._done_seq:
                self._done_seq = None  # EOF after PREPARE definitions (seen mid-stream)
                self.deprecate_eof = False
                return
            raise ProtocolError(f"server packet seq {packet.seq} without a command")
        cmd = self._commands[0]
        self._check_seq(cmd, packet)
        cmd.reply_bytes += packet.nbytes
        cmd.cut += packet.cut
        if cmd.ts_reply is None:
            cmd.ts_reply = ts
        if not packet.payload:
            raise ProtocolError("empty server packet")
        if cmd.code in _AUTH:
            self._login_reply(cmd, packet)
        else:
            self._response(cmd, packet)
        if cmd.state is Reply.DONE:
            self._commands.popleft()
            self._done_seq = cmd.seq
            self._finish(cmd, events)
            if cmd.code == LOGIN and not cmd.error:
                self.phase = Phase.COMMAND
                compress = self.client_caps & self.server_caps & (CLIENT_COMPRESS | CLIENT_ZSTD)
                if compress:
                    self._opaque(events, "compressed protocol: not decoded", ts)

    def _check_seq(self, cmd: _Command, packet: Packet) -> None:
        if packet.seq != cmd.seq:
            raise ProtocolError(f"sequence id {packet.seq}, expected {cmd.seq} ({cmd.name})")
        cmd.seq = (packet.last_seq + 1) & 0xFF

    def _greeting(self, packet: Packet, ts: float, events: list[DecoderEvent]) -> None:
        r = _Reader(packet.payload, 1)
        self.server_version = r.cstr().decode("utf-8", "replace")
        self.conn_id = r.uint(4)
        r.take(9)  # auth data part 1, filler
        caps = r.uint(2)
        plugin = ""
        if r.left:
            r.take(3)  # charset, status
            caps |= r.uint(2) << 16
            auth_len = r.uint(1)
            reserved = r.take(10)
            if not caps & 1:
                caps |= int.from_bytes(reserved[6:10], "little") << 32
            if caps & CLIENT_SECURE_CONNECTION:
                r.take(max(13, auth_len - 8))
            if caps & CLIENT_PLUGIN_AUTH and r.left:
                plugin = r.rest().rstrip(b"\0").decode("utf-8", "replace")
        self.server_caps = caps
        details: Details = {
            "server_version": self.server_version,
            "conn_id": self.conn_id,
            "server_caps": caps,
            "auth_plugin": plugin,
        }
        summary = f"server {self.server_version} conn {self.conn_id} auth {plugin}"
        events.append(Notice(self.protocol, Direction.SERVER, "greeting", summary, ts, details))

    def _login_reply(self, cmd: _Command, packet: Packet) -> None:
        first = packet.payload[0]
        if first == Header.OK:
            cmd.results.append("OK")
            cmd.state = Reply.DONE
        elif first == Header.ERR:
            self._error(cmd, packet.payload)
        elif first == Header.EOF:
            plugin = _Reader(packet.payload, 1).cstr().decode("utf-8", "replace")
            cmd.details["auth_switch"] = plugin
            cmd.results.append(f"auth switch to {plugin}")
        elif first == Header.AUTH_MORE_DATA:
            cmd.results.append("auth more data")
        else:
            raise ProtocolError(f"unexpected login reply {first:#x}")

    def _response(self, cmd: _Command, packet: Packet) -> None:
        """A server packet of a command's reply: to the reader of its state."""
        payload = packet.payload
        if payload[:3] == b"\xff\xff\xff":  # MariaDB progress report (error code 0xffff)
            cmd.progress += 1
            return
        if cmd.eof_pending:
            cmd.eof_pending = False
            if _terminator(packet) and len(payload) < 9:
                self.deprecate_eof = False
                if cmd.state is Reply.EOF:
                    cmd.state = Reply.DONE
                return
            if self.deprecate_eof is None:
                self.deprecate_eof = True
        reader = _REPLY_READERS.get(cmd.state)
        if reader is None:
            raise ProtocolError(f"unexpected server packet in state {cmd.state.value}")
        reader(self, cmd, packet)

    def _error(self, cmd: _Command, payload: bytes, before: str = "") -> None:
        """An ERR packet ends the command."""
        text, details = _err(payload)
        cmd.results.append(before + text)
        cmd.details.update(details)
        cmd.error = True
        cmd.state = Reply.DONE

    def _first(self, cmd: _Command, packet: Packet) -> None:
        """Reader of FIRST and INFILE: a result's first packet."""
        payload = packet.payload
        first = payload[0]
        if first == Header.ERR:
            self._error(cmd, payload)
        elif first == Header.OK and cmd.code == Command.STMT_PREPARE:
            self._prepare_ok(cmd, payload)
        elif first == Header.OK or (first == Header.EOF and cmd.code not in _RESULTSETS):
            self._ok_result(cmd, payload)
        elif first == Header.LOCAL_INFILE and cmd.code == Command.QUERY:
            name = payload[1:].decode("utf-8", "replace")
            cmd.details["infile"] = name
            cmd.results.append(f"LOCAL INFILE {name}")
            cmd.state = Reply.INFILE
        elif cmd.code == Command.STATISTICS:  # its reply is a string, no header
            cmd.results.append(clip(payload.decode("utf-8", "replace"), SUMMARY))
            cmd.state = Reply.DONE
        else:
            r = _Reader(payload)
            ncols = r.lenenc() or 0
            send_meta = r.uint(1) if r.left and self.client_caps & MARIADB_CACHE_METADATA else 1
            cmd.ncols, cmd.rows, cmd.columns, cmd.samples = ncols, 0, [], []
            if send_meta:
                cmd.state, cmd.left = Reply.COLUMNS, ncols
            else:
                if cmd.stmt is not None:
                    cmd.columns = cmd.stmt.columns
                cmd.state = Reply.ROWS

    def _definition(self, cmd: _Command, packet: Packet) -> None:
        """Reader of PARAMS and COLUMNS: one definition."""
        column = _column(packet.payload)
        if cmd.state is Reply.PARAMS and cmd.prepared is not None:
            cmd.prepared.param_types.append((column.type, bool(column.flags & UNSIGNED_FLAG)))
        elif len(cmd.columns) < MAX_COLUMNS:
            cmd.columns.append(column)
        cmd.left -= 1
        if cmd.left == 0:
            self._definitions_done(cmd)

    def _ok_result(self, cmd: _Command, payload: bytes) -> None:
        if payload[0] == Header.EOF and len(payload) < 9:
            status = _status_of_terminator(payload)
            text = "EOF"
        else:
            text, status, details = _ok(_Reader(payload, 1))
            cmd.details.update(details)
        cmd.results.append(text)
        if cmd.code == Command.INIT_DB:
            self.db = str(cmd.details["init_db"])
        elif "use_db" in cmd.details:
            self.db = str(cmd.details["use_db"])
        cmd.state = Reply.FIRST if status & SERVER_MORE_RESULTS_EXISTS else Reply.DONE

    def _prepare_ok(self, cmd: _Command, payload: bytes) -> None:
        r = _Reader(payload, 1)
        stmt_id = r.uint(4)
        ncols = r.uint(2)
        nparams = r.uint(2)
        stmt = cmd.prepared
        assert stmt is not None
        stmt.ncols, stmt.nparams = ncols, nparams
        self._stmts[stmt_id] = stmt
        cmd.details.update(stmt_id=stmt_id, params=nparams, columns=ncols)
        cmd.results.append(f"stmt {stmt_id}: {nparams} params, {ncols} columns")
        cmd.state, cmd.left = (Reply.PARAMS, nparams) if nparams else (Reply.COLUMNS, ncols)
        if not cmd.left:
            cmd.state = Reply.DONE  # no definitions follow

    def _definitions_done(self, cmd: _Command) -> None:
        """A block of column/parameter definitions ended; an EOF may follow it."""
        cmd.eof_pending = self.deprecate_eof is not True
        stmt = cmd.prepared
        if stmt is None:
            if cmd.stmt is not None:
                cmd.stmt.columns = cmd.columns
            cmd.state = Reply.ROWS
        elif cmd.state is Reply.PARAMS and stmt.ncols:
            cmd.state, cmd.left = Reply.COLUMNS, stmt.ncols
        else:
            stmt.columns = cmd.columns
            # with CLIENT_DEPRECATE_EOF unknown (no handshake seen) a trailing EOF is
            # recognised by its sequence id after the command finished
            cmd.state = Reply.EOF if self.deprecate_eof is False else Reply.DONE

    def _row(self, cmd: _Command, packet: Packet) -> None:
        """Reader of ROWS: a row, or the resultset's end."""
        payload = packet.payload
        if _terminator(packet):
            self._resultset_done(cmd, _status_of_terminator(payload))
        elif payload[0] == Header.ERR:
            self._error(cmd, payload, f"{cmd.rows} rows then ")
        else:
            cmd.rows += 1
            if len(cmd.samples) < SAMPLE_ROWS and packet.complete:
                cmd.samples.append(self._sample(cmd, payload))

    def _sample(self, cmd: _Command, payload: bytes) -> str:
        if not cmd.binary:
            return _text_row(payload, cmd.ncols)
        if len(cmd.columns) != cmd.ncols:
            return "?"
        r = _Reader(payload, 1)
        nulls = r.take((cmd.ncols + 9) // 8)
        types = [(c.type, bool(c.flags & UNSIGNED_FLAG)) for c in cmd.columns]
        return _binary_values(r, types, nulls, 2)

    def _resultset_done(self, cmd: _Command, status: int) -> None:
        rows = cmd.rows
        text = f"{rows} row{'s' * (rows != 1)}"
        cmd.results.append(text)
        sets: list[object] = cmd.details.setdefault("resultsets", [])  # type: ignore[assignment]
        sets.append(
            {
                "columns": [c.name for c in cmd.columns],
                "rows": rows,
                "sample": cmd.samples,
            }
        )
        cmd.state = Reply.FIRST if status & SERVER_MORE_RESULTS_EXISTS else Reply.DONE

    # -- results

    def _finish(self, cmd: _Command, events: list[DecoderEvent], lost_sync: bool = False) -> None:
        """Report ``cmd``; ``lost_sync``: the rest of its reply may be in bytes that could
        not be decoded (not "unanswered": nobody knows)."""
        unanswered = False
        if cmd.state not in (Reply.DONE, Reply.EOF) and cmd.code not in _NO_REPLY:
            if lost_sync:
                cmd.results.append("(lost sync)")
            else:
                cmd.results.append("(no reply)" if not cmd.results else "(incomplete)")
                unanswered = cmd.reply_bytes == 0
        if cmd.progress:
            cmd.details["progress_reports"] = cmd.progress
        events.append(
            Transaction(
                self.protocol,
                cmd.shape,
                cmd.text,
                clip("; ".join(cmd.results), SUMMARY),
                cmd.error,
                cmd.ts,
                cmd.ts_reply,
                cmd.nbytes,
                cmd.reply_bytes,
                cmd.details,
                unanswered=unanswered,
                cut=cmd.cut,
            )
        )


# The reader of each reply state (EOF and DONE take no server packet but the EOF
# that _response handles before these).
_REPLY_READERS: dict[Reply, Callable[[MysqlDecoder, _Command, Packet], None]] = {
    Reply.FIRST: MysqlDecoder._first,
    Reply.INFILE: MysqlDecoder._first,
    Reply.PARAMS: MysqlDecoder._definition,
    Reply.COLUMNS: MysqlDecoder._definition,
    Reply.ROWS: MysqlDecoder._row,
}
