"""FastCGI decoder (sans-IO): a web server (nginx, Apache, Caddy) talking to
php-fpm or another FastCGI application.

The wire is a sequence of records, each an 8-byte header (version 1, type,
request id, content length, padding length, a reserved byte) then the content
and the padding.  A request is a BEGIN_REQUEST (role, keep-connection flag),
the PARAMS stream (CGI name-value pairs, possibly split anywhere across
records, ended by an empty PARAMS record), the STDIN stream (the request body,
ended by an empty record) and, for the FILTER role, DATA.  The application
answers on the same request id with STDOUT (a CGI response: header lines, a
blank line, the body), STDERR and one END_REQUEST (application and protocol
status).  Management records (request id 0) are GET_VALUES, answered by
GET_VALUES_RESULT, and any type the application does not know, answered by
UNKNOWN_TYPE.

Pairing is by request id, so keep-alive connections (ids reused after
END_REQUEST) and multiplexed ones (several ids in flight) pair exactly.
A request is one transaction, reported at its END_REQUEST: ts_request is the
request's last byte (the empty STDIN record, or whatever the client sent last
before the application began to answer), ts_reply the first STDOUT byte (the
first record of the answer when there is no STDOUT).

Sync: records carry no marker a decoder could find inside arbitrary bytes, so
each direction, at the start and after a gap it cannot skip, resumes only at a
chunk (one ``send()``) that starts with a plausible record header for its
side.  Requests in flight at a gap are marked: their transaction says
``(lost sync)`` as its counts may be short.  Before the first BEGIN_REQUEST
after a client sync, records of an unknown request id open a request whose
beginning was not seen (a capture started mid-request); after it, such
records (and replies to ids not in flight) are reported as ``unpaired``
notices.

Memory is bounded: a record's content is at most 65535 bytes, a request keeps
at most MAX_PARAMS bytes of params, MAX_HEAD of its CGI response header and
KEEP_STDERR of stderr, and at most MAX_ACTIVE requests are tracked at once.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass, field

from ..streams import Direction
from .base import (
    REDACTED,
    DecoderEvent,
    Details,
    Notice,
    SidedDecoder,
    Transaction,
    clip,
    show_bytes,
)

PROTOCOL = "fastcgi"
HEADER = struct.Struct(">BBHHBB")  # version, type, request id, content length, padding, reserved
HEADER_SIZE = HEADER.size
MAX_PARAMS = 32 * 1024  # params bytes kept per request
MAX_HEAD = 8 * 1024  # STDOUT bytes searched for the end of the CGI response header
KEEP_STDERR = 1024  # stderr bytes kept per request
MAX_ACTIVE = 128  # requests tracked per connection
MAX_MGMT = 64  # management requests awaiting their answer
MAX_SHOWN_PARAMS = 128  # params in a transaction's details
PARAM_VALUE = 1024  # characters kept of each param value in the details
SUMMARY = 200

(BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR, DATA, GET_VALUES,
 GET_VALUES_RESULT, UNKNOWN_TYPE) = range(1, 12)  # fmt: skip
TYPES = {
    BEGIN_REQUEST: "BEGIN_REQUEST",
    ABORT_REQUEST: "ABORT_REQUEST",
    END_REQUEST: "END_REQUEST",
    PARAMS: "PARAMS",
    STDIN: "STDIN",
    STDOUT: "STDOUT",
    STDERR: "STDERR",
    DATA: "DATA",
    GET_VALUES: "GET_VALUES",
    GET_VALUES_RESULT: "GET_VALUES_RESULT",
    UNKNOWN_TYPE: "UNKNOWN_TYPE",
}
CLIENT_TYPES = frozenset((BEGIN_REQUEST, ABORT_REQUEST, PARAMS, STDIN, DATA, GET_VALUES))
SERVER_TYPES = frozenset((END_REQUEST, STDOUT, STDERR, GET_VALUES_RESULT, UNKNOWN_TYPE))
_FIXED_SIZE = {BEGIN_REQUEST: 8, END_REQUEST: 8, UNKNOWN_TYPE: 8, ABORT_REQUEST: 0}
ROLES = {1: "RESPONDER", 2: "AUTHORIZER", 3: "FILTER"}
PROTOCOL_STATUS = {0: "REQUEST_COMPLETE", 1: "CANT_MPX_CONN", 2: "OVERLOADED", 3: "UNKNOWN_ROLE"}
FCGI_KEEP_CONN = 1

# --redact: params whose value is a credential, and query keys whose value may be one
SECRET_PARAM = re.compile(
    r"AUTHORIZATION|COOKIE|PASSW|PHP_AUTH_PW|PHP_AUTH_DIGEST|SECRET|TOKEN|API_?KEY|SESSION"
    r"|CREDENTIAL|SIGNATURE",
    re.IGNORECASE,
)
SECRET_QUERY_KEY = re.compile(
    r"pass|pwd|token|secret|api[_-]?key|auth|sig|session|credential", re.IGNORECASE
)
_QUERY_PARAMS = frozenset(("QUERY_STRING", "REQUEST_URI", "REDIRECT_QUERY_STRING"))
_QUERY_PAIR = re.compile(r"([^&=?#]+)=([^&#]*)")


class ProtocolError(ValueError):
    pass


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Rec:
    """One record.  ``content`` is whole unless bytes of it were not captured
    (``cut`` > 0): then it holds the content up to the first missing byte."""

    type: int
    id: int
    content: bytes
    clen: int
    size: int  # bytes on the wire: header, content and padding
    ts_first: float  # ts of the chunk holding the record's first byte
    ts_last: float  # ts of the chunk holding its last byte
    cut: int = 0


class Reader:
    """Incremental record framing for one direction."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.type = self.id = self.clen = self.padding = 0
        self.left = -1  # content+padding bytes still to come; -1: reading a header
        self.content = bytearray()
        self.holed = False  # bytes of the current record were skipped: keep no more
        self.cut = 0
        self.ts_first = 0.0

    def feed(self, data: bytes, ts: float) -> list[Rec]:
        out: list[Rec] = []
        pos, end = 0, len(data)
        while pos < end or self.left == 0:
            if self.left < 0:
                if not self.head:
                    self.ts_first = ts
                take = min(HEADER_SIZE - len(self.head), end - pos)
                self.head += data[pos : pos + take]
                pos += take
                if len(self.head) < HEADER_SIZE:
                    break
                version, self.type, self.id, self.clen, self.padding, _ = HEADER.unpack(self.head)
                if version != 1:
                    raise ProtocolError(f"record version {version}, not 1")
                self.head.clear()
                self.left = self.clen + self.padding
                continue
            take = min(self.left, end - pos)
            if not self.holed:
                want = self.clen - len(self.content)
                if want > 0:
                    self.content += data[pos : pos + min(take, want)]
            pos += take
            self.left -= take
            if self.left == 0:
                out.append(self._record(ts))
        return out

    def skip(self, n: int, ts: float) -> list[Rec] | None:
        """``n`` bytes not captured here: counted as cut when they fall inside the
        current record's content or padding (returns the record they complete);
        None when they hold framing (the caller resynchronises)."""
        if self.left < 0 or n > self.left:
            return None
        self.left -= n
        self.cut += n
        self.holed = True
        return [self._record(ts)] if self.left == 0 else []

    def _record(self, ts: float) -> Rec:
        size = HEADER_SIZE + self.clen + self.padding
        rec = Rec(self.type, self.id, bytes(self.content), self.clen, size, self.ts_first, ts,
                  self.cut)  # fmt: skip
        self.left = -1
        self.content = bytearray()
        self.holed = False
        self.cut = 0
        return rec


def parse_pairs(data: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """Name-value pairs (1- or 4-byte lengths); and the bytes left over at the end
    (0 when ``data`` is exactly a sequence of pairs)."""
    pairs: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        lengths = []
        for _ in range(2):
            if pos >= end:
                return pairs, end - start
            if data[pos] & 0x80:
                if pos + 4 > end:
                    return pairs, end - start
                lengths.append(int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF)
                pos += 4
            else:
                lengths.append(data[pos])
                pos += 1
        name_len, value_len = lengths
        if pos + name_len + value_len > end:
            return pairs, end - start
        pairs.append(
            (data[pos : pos + name_len], data[pos + name_len : pos + name_len + value_len])
        )
        pos += name_len + value_len
    return pairs, 0


def _text(value: bytes) -> str:
    """Exact: bytes that are not UTF-8 are shown as \\xNN escapes."""
    return value.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- requests


@dataclass(slots=True)
class _Request:
    id: int
    ts_request: float
    role: str = ""  # "" when the BEGIN_REQUEST was not seen
    keep_conn: bool | None = None
    params_buf: bytearray = field(default_factory=bytearray)
    params_dropped: int = 0  # params bytes beyond MAX_PARAMS
    params_holed: bool = False  # params bytes were not captured: keep no more (misaligned)
    params_done: bool = False
    params: dict[str, str] | None = None
    stdin_bytes: int = 0
    data_bytes: int = 0
    aborted: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    cut: int = 0
    ts_server: float | None = None  # first record of the answer
    ts_stdout: float | None = None  # first STDOUT record
    head: bytearray = field(default_factory=bytearray)  # start of STDOUT, until the header ends
    header_len: int = -1  # bytes of the CGI response header; -1: its end not seen yet
    head_holed: bool = False  # STDOUT bytes before the header's end were not captured
    headers: dict[str, str] = field(default_factory=dict)
    stdout_bytes: int = 0
    stderr: bytearray = field(default_factory=bytearray)
    stderr_bytes: int = 0
    app_status: int | None = None
    protocol_status: int | None = None
    lost: bool = False  # bytes of a direction were lost while it was in flight


@dataclass(slots=True)
class _Mgmt:
    """A management request (GET_VALUES, or a type the application may not know)."""

    type: int
    text: str
    ts: float
    size: int
    cut: int


@dataclass(slots=True)
class _Side:
    reader: Reader = field(default_factory=Reader)
    synced: bool = False
    sync_buf: bytes = b""  # the start of a chunk too short to judge


def plausible_header(data: bytes, types: frozenset[int]) -> bool | None:
    """Does ``data`` start with a record header one of ``types`` would have
    (version 1, reserved byte 0, the fixed content size of its type)?  None:
    too short to tell, and what is there fits."""
    if not data or data[0] != 1 or (len(data) > 1 and data[1] not in types):
        return False
    if len(data) < HEADER_SIZE:
        return None
    _, kind, _, clen, _, reserved = HEADER.unpack_from(data)
    return bool(reserved == 0 and _FIXED_SIZE.get(kind, clen) == clen)


class FastcgiDecoder(SidedDecoder[Rec]):
    protocol = PROTOCOL

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._sides = (_Side(), _Side())
        self._active: dict[int, _Request] = {}
        self._mgmt: deque[_Mgmt] = deque()
        self._begun = False  # a BEGIN_REQUEST was seen since the client side synced
        self._orphans: dict[int, int] = {}  # request id -> answer bytes of a request not seen

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        side = self._sides[direction]
        if not side.synced:
            candidate = side.sync_buf + data
            side.sync_buf = b""
            verdict = plausible_header(
                candidate, CLIENT_TYPES if direction is Direction.CLIENT else SERVER_TYPES
            )
            if verdict is None:
                side.sync_buf = candidate
            if not verdict:
                return events
            side.synced = True
            data = candidate
            if direction is Direction.CLIENT:
                self._begun = False
        try:
            records = side.reader.feed(data, ts)
        except ProtocolError as exc:
            self._desync(direction, f"protocol error: {exc}", ts, events)
            return events
        self._items(direction, records, events)
        return events

    def _side(self, direction: Direction) -> _Side:
        return self._sides[direction]

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        for req in list(self._active.values()):
            self._finish(req, events)
        self._active.clear()
        while self._mgmt:
            self._finish_mgmt(self._mgmt.popleft(), "", None, 0, 0, events)
        return events

    # -- framing and sync

    def _items(self, direction: Direction, records: list[Rec], events: list[DecoderEvent]) -> None:
        for rec in records:
            if direction is Direction.CLIENT:
                self._client(rec, events)
            else:
                self._server(rec, events)

    def _desync(
        self, direction: Direction, why: str, ts: float, events: list[DecoderEvent]
    ) -> None:
        self._sides = (
            (_Side(), self._sides[1])
            if direction is Direction.CLIENT
            else (self._sides[0], _Side())
        )
        for req in self._active.values():
            req.lost = True
            if direction is Direction.CLIENT:
                req.params_holed |= not req.params_done
            else:  # STDOUT bytes after the hole are not the CGI header's start or sequel
                req.head_holed |= req.header_len < 0
        events.append(Notice(PROTOCOL, direction, "undecodable", why, ts))

    # -- the client's records

    def _client(self, rec: Rec, events: list[DecoderEvent]) -> None:
        kind = rec.type
        if kind == GET_VALUES or (rec.id == 0 and kind not in TYPES):
            self._management(rec, events)
            return
        if kind not in CLIENT_TYPES:
            self._unexpected(Direction.CLIENT, rec, events)
            return
        req = self._active.get(rec.id)
        if kind == BEGIN_REQUEST:
            if req is not None:  # an id reused before its END_REQUEST was seen
                self._finish(self._active.pop(rec.id), events)
            req = self._begin(rec, events)
        elif req is None:
            if self._begun:
                self._unexpected(Direction.CLIENT, rec, events)
                return
            req = self._open(_Request(rec.id, rec.ts_last), events)  # begun before the capture
        req.bytes_in += rec.size
        req.cut += rec.cut
        if req.ts_server is None:
            req.ts_request = rec.ts_last
        if kind == PARAMS:
            if rec.clen == 0:
                req.params_done = True
            elif not req.params_holed:
                keep = rec.content[: max(0, MAX_PARAMS - len(req.params_buf))]
                req.params_buf += keep
                req.params_dropped += len(rec.content) - len(keep)
                req.params_holed = rec.cut > 0
        elif kind == STDIN:
            req.stdin_bytes += rec.clen
        elif kind == DATA:
            req.data_bytes += rec.clen
        elif kind == ABORT_REQUEST:
            req.aborted = True

    def _begin(self, rec: Rec, events: list[DecoderEvent]) -> _Request:
        self._begun = True
        req = _Request(rec.id, rec.ts_last)
        body = rec.content
        if len(body) >= 3:
            role = int.from_bytes(body[:2], "big")
            req.role = ROLES.get(role, f"role {role}")
            req.keep_conn = bool(body[2] & FCGI_KEEP_CONN)
        else:
            req.role = "?"
        return self._open(req, events)

    def _open(self, req: _Request, events: list[DecoderEvent]) -> _Request:
        if len(self._active) >= MAX_ACTIVE:  # the oldest is reported as it stands
            oldest = next(iter(self._active))
            self._finish(self._active.pop(oldest), events)
            events.append(
                Notice(PROTOCOL, Direction.CLIENT, "undecodable",
                       f"more than {MAX_ACTIVE} requests in flight: request {oldest} "
                       "reported before its END_REQUEST", req.ts_request)
            )  # fmt: skip
        self._active[req.id] = req
        return req

    def _management(self, rec: Rec, events: list[DecoderEvent]) -> None:
        if rec.type == GET_VALUES:
            pairs, _ = parse_pairs(rec.content)
            names = " ".join(_text(n) for n, _ in pairs[:MAX_SHOWN_PARAMS])
            text = clip(f"#{rec.id} GET_VALUES {names}".rstrip(), SUMMARY)
        else:
            text = f"#{rec.id} type {rec.type} ({rec.clen} bytes)"
        if len(self._mgmt) >= MAX_MGMT:
            self._finish_mgmt(self._mgmt.popleft(), "", None, 0, 0, events)
        self._mgmt.append(_Mgmt(rec.type, text, rec.ts_last, rec.size, rec.cut))

    def _unexpected(self, direction: Direction, rec: Rec, events: list[DecoderEvent]) -> None:
        name = TYPES.get(rec.type, f"type {rec.type}")
        why = "for no request in flight" if rec.type in TYPES else "of an unknown type"
        summary = f"#{rec.id} {name} record {why} ({rec.size} bytes)"
        events.append(Notice(PROTOCOL, direction, "unpaired", summary, rec.ts_first))

    # -- the application's records

    def _server(self, rec: Rec, events: list[DecoderEvent]) -> None:
        kind = rec.type
        if kind in (GET_VALUES_RESULT, UNKNOWN_TYPE):
            self._management_answer(rec, events)
            return
        if kind not in SERVER_TYPES:
            self._unexpected(Direction.SERVER, rec, events)
            return
        req = self._active.get(rec.id)
        if req is None:
            self._orphan(rec, events)
            return
        req.bytes_out += rec.size
        req.cut += rec.cut
        if req.ts_server is None:
            req.ts_server = rec.ts_first
        if kind == STDOUT:
            if req.ts_stdout is None:
                req.ts_stdout = rec.ts_first
            self._stdout(req, rec)
        elif kind == STDERR:
            req.stderr += rec.content[: max(0, KEEP_STDERR - len(req.stderr))]
            req.stderr_bytes += rec.clen
        else:  # END_REQUEST
            if len(rec.content) >= 5:
                req.app_status = int.from_bytes(rec.content[:4], "big")
                req.protocol_status = rec.content[4]
            del self._active[rec.id]
            self._finish(req, events)

    def _stdout(self, req: _Request, rec: Rec) -> None:
        req.stdout_bytes += rec.clen
        if req.header_len >= 0 or req.head_holed:
            return
        start = len(req.head)
        req.head += rec.content[: MAX_HEAD - start]
        end = _header_end(req.head, max(0, start - 3))
        if end >= 0:
            req.header_len = end
            req.headers = _cgi_headers(bytes(req.head[:end]))
            req.head = bytearray()
        elif rec.cut or len(req.head) >= MAX_HEAD:
            req.head_holed = True  # the header's end will not be found

    def _orphan(self, rec: Rec, events: list[DecoderEvent]) -> None:
        """An answer to a request id not in flight: counted, reported at its END_REQUEST."""
        if rec.id in self._orphans or len(self._orphans) < MAX_ACTIVE:
            self._orphans[rec.id] = self._orphans.get(rec.id, 0) + rec.size
        if rec.type != END_REQUEST:
            return
        size = self._orphans.pop(rec.id, rec.size)
        status = ""
        if len(rec.content) >= 5:
            app, proto = int.from_bytes(rec.content[:4], "big"), rec.content[4]
            status = f", app status {app}, {PROTOCOL_STATUS.get(proto, f'status {proto}')}"
        summary = f"#{rec.id} answer to a request not seen ({size} bytes{status})"
        events.append(Notice(PROTOCOL, Direction.SERVER, "unpaired", summary, rec.ts_first))

    def _management_answer(self, rec: Rec, events: list[DecoderEvent]) -> None:
        if not self._mgmt:
            self._unexpected(Direction.SERVER, rec, events)
            return
        mgmt = self._mgmt.popleft()
        if rec.type == GET_VALUES_RESULT:
            pairs, _ = parse_pairs(rec.content)
            reply = " ".join(f"{_text(n)}={_text(v)}" for n, v in pairs[:MAX_SHOWN_PARAMS])
        else:
            unknown = rec.content[0] if rec.content else "?"
            reply = f"UNKNOWN_TYPE {unknown}"
        self._finish_mgmt(mgmt, reply or "(empty)", rec.ts_first, rec.size, rec.cut, events)

    # -- transactions

    def _finish_mgmt(
        self,
        mgmt: _Mgmt,
        reply: str,
        ts_reply: float | None,
        size: int,
        cut: int,
        events: list[DecoderEvent],
    ) -> None:
        command = "GET_VALUES" if mgmt.type == GET_VALUES else f"type {mgmt.type}"
        events.append(
            Transaction(PROTOCOL, command, mgmt.text, clip(reply, SUMMARY), False, mgmt.ts,
                        ts_reply, mgmt.size, size, {"request_id": 0},
                        unanswered=ts_reply is None, cut=mgmt.cut + cut)
        )  # fmt: skip

    def _finish(self, req: _Request, events: list[DecoderEvent]) -> None:
        params = self._params(req)
        details: Details = {"request_id": req.id}
        if req.role:
            details["role"] = req.role
            details["keep_conn"] = req.keep_conn
        else:
            details["begin_not_seen"] = True
        if params is not None:
            details["params"] = params
        if req.params_dropped:
            details["params_dropped_bytes"] = req.params_dropped
        details["stdin_bytes"] = req.stdin_bytes
        if req.data_bytes:
            details["data_bytes"] = req.data_bytes
        if req.aborted:
            details["aborted"] = True
        status = self._reply_details(req, details)
        if req.lost:
            details["lost_sync"] = True
        reply = self._reply_text(req, status)
        error = (
            (status is not None and status >= 400)
            or bool(req.app_status)
            or (req.protocol_status is not None and req.protocol_status != 0)
        )
        events.append(
            Transaction(
                PROTOCOL,
                _command(params),
                self._request_text(req, params),
                reply,
                error,
                req.ts_request,
                req.ts_stdout if req.ts_stdout is not None else req.ts_server,
                req.bytes_in,
                req.bytes_out,
                details,
                unanswered=req.ts_server is None and not req.lost,
                cut=req.cut,
            )
        )

    def _params(self, req: _Request) -> dict[str, str] | None:
        # without the BEGIN_REQUEST, the params seen may be the tail of the stream: not parsed
        if req.params is None and req.role and (req.params_buf or req.params_done):
            pairs, left = parse_pairs(bytes(req.params_buf))
            params: dict[str, str] = {}
            for name, value in pairs[:MAX_SHOWN_PARAMS]:
                key = _text(name)
                params[key] = clip(self._masked(key, _text(value)), PARAM_VALUE)
            incomplete = left or req.params_dropped or req.params_holed or not req.params_done
            if incomplete or len(pairs) > len(params):
                params["..."] = "(params incomplete)"  # a marker no CGI name can be
            req.params = params
        return req.params

    def _masked(self, name: str, value: str) -> str:
        if not self.redact:
            return value
        if SECRET_PARAM.search(name):
            return REDACTED
        if name in _QUERY_PARAMS:
            return mask_query(value)
        return value

    def _reply_details(self, req: _Request, details: Details) -> int | None:
        """Fill in the answer's details; return the response status (None: not known)."""
        status: int | None = None
        if req.ts_stdout is not None:
            if req.header_len >= 0:
                status = _status(req.headers)
                details["status"] = status
                for name in ("content-type", "location", "content-length"):
                    if name in req.headers:
                        value = req.headers[name]
                        details[name.replace("-", "_")] = (
                            mask_query(value) if self.redact and name == "location" else value
                        )
                details["header_bytes"] = req.header_len
                details["body_bytes"] = req.stdout_bytes - req.header_len
            details["stdout_bytes"] = req.stdout_bytes
        if req.stderr_bytes:
            details["stderr"] = _text(bytes(req.stderr))
            details["stderr_bytes"] = req.stderr_bytes
        if req.app_status is not None:
            details["app_status"] = req.app_status
            assert req.protocol_status is not None
            details["protocol_status"] = PROTOCOL_STATUS.get(
                req.protocol_status, f"status {req.protocol_status}"
            )
        return status

    def _reply_text(self, req: _Request, status: int | None) -> str:
        if req.ts_server is None:
            return "(lost sync)" if req.lost else ""
        parts = []
        if req.ts_stdout is not None:
            if req.header_len < 0 and req.head_holed and len(req.head) < MAX_HEAD:
                parts.append("? (CGI header not captured)")
            elif req.header_len < 0:
                parts.append(f"? (no end of the CGI header in {len(req.head)} bytes)")
            else:
                head = str(status)
                ctype = req.headers.get("content-type")
                location = req.headers.get("location")
                if ctype:
                    head += f" {ctype}"
                if location:
                    head += f" -> {mask_query(location) if self.redact else location}"
                parts.append(head)
                parts.append(f"{req.stdout_bytes - req.header_len} bytes")
        if req.stderr_bytes:
            parts.append("stderr " + show_bytes(bytes(req.stderr), 120, req.stderr_bytes))
        if req.app_status is None:
            parts.append("no END_REQUEST")
        else:
            if req.app_status:
                parts.append(f"app status {req.app_status}")
            if req.protocol_status:
                parts.append(
                    PROTOCOL_STATUS.get(req.protocol_status, f"status {req.protocol_status}")
                )
        if req.lost:
            parts.append("(lost sync)")
        return clip(", ".join(parts), SUMMARY)

    @staticmethod
    def _request_text(req: _Request, params: dict[str, str] | None) -> str:
        parts = [f"#{req.id}"]
        if req.role and req.role != "RESPONDER":
            parts.append(req.role)
        if params is None:
            parts.append("(params not seen)" if req.role else "(begun before the capture)")
        else:
            method = params.get("REQUEST_METHOD", "?")
            uri = params.get("REQUEST_URI")
            if uri is None:
                uri = params.get("SCRIPT_NAME", "?")
                query = params.get("QUERY_STRING")
                if query:
                    uri += "?" + query
            parts.append(f"{method} {uri}")
            if "SCRIPT_FILENAME" in params:
                parts.append(f"file={params['SCRIPT_FILENAME']}")
            length = params.get("CONTENT_LENGTH")
            if length and length != str(req.stdin_bytes):
                parts.append(f"CONTENT_LENGTH={length}")
        if req.stdin_bytes or (params and params.get("CONTENT_LENGTH")):
            parts.append(f"stdin={req.stdin_bytes}")
        if req.aborted:
            parts.append("ABORT_REQUEST")
        return clip(" ".join(parts), SUMMARY)


def _command(params: dict[str, str] | None) -> str:
    """The --stats key: the script (SCRIPT_NAME, else the path of REQUEST_URI)."""
    if params is None:
        return "(params not seen)"
    script = params.get("SCRIPT_NAME") or params.get("REQUEST_URI", "").split("?", 1)[0]
    return clip(script, 100) if script else "(no script)"


def mask_query(value: str) -> str:
    """``value`` with the values of secret-looking query keys masked."""
    if "=" not in value:
        return value

    def mask(m: re.Match[str]) -> str:
        return f"{m[1]}={REDACTED}" if SECRET_QUERY_KEY.search(m[1]) else m[0]

    return _QUERY_PAIR.sub(mask, value)


def _header_end(head: bytearray, start: int) -> int:
    """Length of the CGI header (its blank line included) in ``head``; -1: not there yet."""
    found = [(i, n) for i, n in ((head.find(b"\r\n\r\n", start), 4), (head.find(b"\n\n", start), 2))
             if i >= 0]  # fmt: skip
    if not found:
        return -1
    i, n = min(found)
    return i + n


def _cgi_headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in head.splitlines():
        name, sep, value = line.partition(b":")
        if sep:
            headers.setdefault(_text(name.strip()).lower(), _text(value.strip()))
    return headers


def _status(headers: dict[str, str]) -> int | None:
    """The response status: the Status header's code; without one 302 when there is a
    Location (RFC 3875 6.2.3: a client redirect), else 200.  None: a Status header
    that is not a number."""
    value = headers.get("status")
    if value is None:
        return 302 if "location" in headers else 200
    code = value.split(" ", 1)[0]
    return int(code) if code.isdigit() and len(code) == 3 else None


# ------------------------------------------------ detectors (decoders/registry.py)


def begin_request(client: bytes) -> bool:
    """A BEGIN_REQUEST (request id > 0, 8 bytes of content: a known role, flags 0
    or 1, zeros), or a GET_VALUES (request id 0) asking for an FCGI_ variable."""
    if len(client) < 16 or client[0] != 1 or client[7] != 0:
        return False
    kind, rid, clen = client[1], int.from_bytes(client[2:4], "big"), client[4:6]
    if kind == BEGIN_REQUEST:
        role = int.from_bytes(client[8:10], "big")
        return (rid > 0 and clen == b"\x00\x08" and role in ROLES and client[10] in (0, 1)
                and client[11:16] == bytes(5))  # fmt: skip
    if kind == GET_VALUES and rid == 0:
        pairs, _ = parse_pairs(client[8 : 8 + int.from_bytes(clen, "big")])
        return bool(pairs) and pairs[0][0].startswith(b"FCGI_")
    return False


def record_exchange(client: bytes, server: bytes) -> bool | None:
    """Mid-connection: the client's first bytes a request record, the server's an
    answer record for the same request id."""
    verdicts = plausible_header(client, CLIENT_TYPES), plausible_header(server, SERVER_TYPES)
    if False in verdicts:
        return False
    if None in verdicts:
        return None
    return client[2:4] == server[2:4]
