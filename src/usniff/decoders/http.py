"""HTTP/1.x decoder (sans-IO) on h11, and the HTTP detectors.

h11 is a connection state machine for *one* end, so the decoder runs two:
``_req`` plays the server (it parses what the client sends) and ``_resp``
plays the client (it parses what the server sends).  Each is told what the
other end did by *mirroring*: every request parsed from the client's bytes is
sent (method, target, version and the headers that change how the response is
framed: Connection, Upgrade) on ``_resp``, so that it frames the response the
way the server did (HEAD, CONNECT, 204/304, keep-alive, protocol switches);
``_req`` answers each request at once with an empty response so that it goes on
parsing pipelined requests, except for a request proposing a protocol switch
(``Upgrade``, ``CONNECT``), where it waits for the server's real answer.  The
bytes h11 produces for the mirrored messages are dropped.

One :class:`Transaction` per request, reported when both the request and its
final response are complete (or at a switch, a gap or the end): method,
target, status, reason, content type and body size (chunked: the de-chunked
total), informational responses (``100 Continue``) before the final one.
Latency runs from the request's last byte to the first byte of the final
response.  Wire sizes come from h11's unprocessed data (``trailing_data``):
h11 does not report how many bytes each event took.

Streamed responses (event streams, ``logs --follow``): every server ``send()``
carrying body bytes of a chunked or read-until-close response after the one
that carried its head is shown as it arrives, as a ``stream`` Notice; the
transaction follows when the response ends (for a stream the client stops
reading: when the connection closes, marked ``incomplete``).

Switched connections: a ``101 Switching Protocols``, a 2xx answer to
``CONNECT``, or Docker's hijack (a 200 whose content type is
``application/vnd.docker.raw-stream`` or ``multiplexed-stream`` with no body
framing, the answer to ``attach``/``exec start`` without ``Upgrade``) ends
HTTP on the connection: the transaction is reported, and every later chunk of
either side is a ``raw`` Notice.

Sync: capture may start mid-connection and bytes may be lost.  At the start
and after a gap the decoder resumes at a client chunk that begins with a
request line, and takes server bytes only from a chunk beginning with
``HTTP/1.`` sent after that request.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

import h11

from ..streams import Direction
from .base import REDACTED, DecoderEvent, Details, Notice, Transaction, clip, show_bytes

SUMMARY = 160  # characters of a request/reply summary
KEEP = 256  # bytes of each body kept for the preview
PREVIEW = 64  # bytes of a body shown
MAX_HEAD = 64 * 1024  # longest request/response head accepted (h11's default is 16 KiB)
MAX_BUFFER = 1024 * 1024  # bytes h11 may hold while paused (a switch not yet answered)
MAX_PENDING = 1024  # requests waiting for a response; beyond, the oldest is given up
MAX_CHUNKS = 1024  # chunk timestamps kept per direction (a long body: its first and latest)
MAX_INFORMATIONAL = 8  # 1xx responses listed per request (102 Processing may repeat)
MAX_HEADERS = 64  # headers kept per message in the details
HEADER_VALUE = 256  # characters of a header value kept in the details
FILL = 64 * 1024  # bytes of filler fed at a time for a body cut by the snap length

SECRET_HEADERS = frozenset(
    (b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-registry-auth")
)
# the content types of a Docker/Podman hijacked connection (attach, exec start)
_HIJACK_TYPES = (b"application/vnd.docker.raw-stream", b"application/vnd.docker.multiplexed-stream")
_MIRRORED = frozenset((b"connection", b"upgrade"))

_METHODS = rb"GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE"
_REQUEST_LINE = re.compile(rb"(?:" + _METHODS + rb") [\x21-\x7e]+ HTTP/1\.[01]\r?\n")
_REQUEST_PREFIX = re.compile(rb"(?:" + _METHODS + rb") [\x21-\x7e]+ HTTP/1")
_REQUEST_START = re.compile(
    rb"[A-Z]{1,7}(?: [\x21-\x7e]*(?: [HTP/1.0]{0,8}\r?)?)?"
)  # may grow into one

# route normalisation for --stats: numbers, hex ids and UUIDs in the path
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_ID = re.compile(r"[0-9a-fA-F]{12,}")
_NUMBER = re.compile(r"\d+")


# ------------------------------------------------ detectors (decoders/registry.py)


def request_line(client: bytes) -> bool:
    """An HTTP/1.0 or 1.1 request line (HTTP/2's ``PRI * HTTP/2.0`` is not one)."""
    return _REQUEST_PREFIX.match(client) is not None


# ------------------------------------------------ decoder


def route(target: bytes) -> str:
    """The path of ``target`` with numbers, hex ids and UUIDs replaced and the query
    dropped: ``/v1.41/containers/0123abcd4567ef/json?all=1`` -> ``/v1.41/containers/{id}/json``."""
    path = target.split(b"?", 1)[0].split(b"#", 1)[0].decode("utf-8", "replace")
    if path.startswith(("http://", "https://")):  # absolute form (proxies)
        path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
    parts = []
    for seg in path.split("/"):
        if _UUID.fullmatch(seg) or _HEX_ID.fullmatch(seg) and any(c.isdigit() for c in seg):
            seg = "{id}"
        elif _NUMBER.fullmatch(seg):
            seg = "{n}"
        parts.append(seg)
    return clip("/".join(parts), SUMMARY)


@dataclass(slots=True)
class _Side:
    """One direction: bytes fed to its h11 connection and the ts of each chunk."""

    fed: int = 0  # stream offset after the last byte fed
    msg_start: int = 0  # stream offset where the current message began
    chunks: deque[tuple[int, float]] = field(default_factory=deque)  # (end offset, ts)

    def add(self, n: int, ts: float) -> None:
        self.fed += n
        chunks = self.chunks
        chunks.append((self.fed, ts))
        while len(chunks) > 1 and chunks[0][0] <= self.msg_start:
            chunks.popleft()  # before the current message: never asked for again
        if len(chunks) > MAX_CHUNKS:
            # a message in very many chunks: keep its first (its start time) and the
            # latest half (where its end will be)
            first = chunks.popleft()
            for _ in range(MAX_CHUNKS // 2):
                chunks.popleft()
            chunks.appendleft(first)

    def ts_at(self, offset: int) -> float:
        """When the byte at stream ``offset`` was sent (chunks before it are forgotten)."""
        chunks = self.chunks
        while len(chunks) > 1 and chunks[0][0] <= offset:
            chunks.popleft()
        return chunks[0][1]


@dataclass(slots=True)
class _Body:
    size: int = 0
    chunked: bool = False
    until_close: bool = False
    remaining: int = -1  # Content-Length bytes still to come; -1: not length-framed
    prefix: bytearray = field(default_factory=bytearray)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.remaining > 0:
            self.remaining -= len(data)
        if len(self.prefix) < KEEP:
            self.prefix += data[: KEEP - len(self.prefix)]


@dataclass(slots=True)
class _Exchange:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    switch: bool  # proposes a protocol switch (Upgrade, CONNECT)
    body: _Body = field(default_factory=_Body)
    done: bool = False  # request complete
    ts_request: float = 0.0
    bytes_in: int = 0
    mirrored: bool = False  # sent on _resp
    status: int = 0  # final response's status; 0: none yet
    reason: bytes = b""
    resp_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[str] = field(default_factory=list)
    resp_body: _Body = field(default_factory=_Body)
    resp_done: bool = False
    ts_reply: float | None = None
    bytes_out: int = 0
    head_ts: float = 0.0  # ts of the chunk that completed the response head
    cut: int = 0


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key == name:
            return value
    return b""


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int]:
    """(chunked, Content-Length or -1)."""
    chunked = b"chunked" in _header(headers, b"transfer-encoding").lower()
    length = _header(headers, b"content-length")
    return chunked, int(length) if length.isdigit() and not chunked else -1


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class HttpDecoder:
    protocol = "http"

    def __init__(self, redact: bool = False) -> None:
        self.redact = redact
        self._pending: deque[_Exchange] = deque()  # oldest first, until answered
        self._reading: _Exchange | None = None  # the request whose body _req is reading
        self._raw = False  # the connection switched protocols: raw from now on
        self._client_synced = False
        self._server_synced = False
        self._sync_ts = 0.0
        self._ts = 0.0  # of the latest feed or gap
        self._held: tuple[list[tuple[bytes, float]], list[tuple[bytes, float]]] = ([], [])
        self._reset()

    def _reset(self) -> None:
        self._req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._sides = (_Side(), _Side())
        self._reading = None

    # -- public API

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        if not data:
            return events
        if self._raw:
            events.append(self._raw_notice(direction, data, ts))
            return events
        self._ts = ts
        pieces = (
            [(data, ts)] if self._synced(direction) else self._sync(direction, data, ts, events)
        )
        conn = self._req if direction is Direction.CLIENT else self._resp
        for piece, piece_ts in pieces:  # held pieces hold no line end: only the last can end a head
            self._feed(conn, direction, piece, piece_ts, events)
        return events

    def _synced(self, direction: Direction) -> bool:
        return self._client_synced if direction is Direction.CLIENT else self._server_synced

    def _sync(
        self, direction: Direction, data: bytes, ts: float, out: list[DecoderEvent]
    ) -> list[tuple[bytes, float]]:
        """While ``direction`` is out of sync: the pieces to parse (held bytes, each with
        its ts, then ``data``) once they begin a message, else [] (held while they may
        still be the start of one)."""
        held = self._held[direction]
        pieces = [*held, (data, ts)]
        candidate = b"".join(p for p, _ in pieces)
        if direction is Direction.CLIENT:
            start = _REQUEST_LINE.match(candidate) is not None
            maybe = b"\n" not in candidate and bool(_REQUEST_START.fullmatch(candidate[:MAX_HEAD]))
        else:
            answering = bool(self._pending) and pieces[0][1] >= self._sync_ts
            start = answering and candidate.startswith(b"HTTP/1.")
            maybe = answering and b"HTTP/1.".startswith(candidate)
            if not self._pending and self._client_synced:
                out.append(self._unpaired(data, ts))
        if start:
            held.clear()
            if direction is Direction.CLIENT:
                self._client_synced, self._sync_ts = True, pieces[0][1]
            else:
                self._server_synced = True
            return pieces
        if maybe and len(candidate) < MAX_HEAD:
            held.append((data, ts))
        else:
            held.clear()
        return []

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        if self._raw:
            what = "cut by the snap length" if cut else "missing"
            events.append(Notice(self.protocol, direction, "raw", f"{n} bytes {what}", ts))
            return events
        self._ts = ts
        if not self._synced(direction):
            return events
        body = self._body_in_progress(direction)
        if cut and body is not None and (body.until_close or n <= body.remaining):
            # the framing is intact: skip the payload bytes with filler
            ex = self._reading if direction is Direction.CLIENT else self._pending[0]
            assert ex is not None
            ex.cut += n
            conn = self._req if direction is Direction.CLIENT else self._resp
            for start in range(0, n, FILL):
                self._feed(conn, direction, bytes(min(FILL, n - start)), ts, events)
            return events
        why = f"{n} bytes {'cut by the snap length' if cut else 'missing'}"
        self._desync(events, why, ts, direction)
        return events

    def close(self) -> list[DecoderEvent]:
        events: list[DecoderEvent] = []
        head = self._pending[0] if self._pending else None
        if head is not None and head.resp_body.until_close and not head.resp_done:
            self._feed(self._resp, Direction.SERVER, b"", self._ts, events)  # its body ends here
        self._count_partial()
        while self._pending:
            self._finish(self._pending.popleft(), events)
        return events

    # -- parsing

    def _feed(
        self,
        conn: h11.Connection,
        direction: Direction,
        data: bytes,
        ts: float,
        out: list[DecoderEvent],
    ) -> None:
        side = self._sides[direction]
        if data:
            paused = conn.their_state not in (h11.IDLE, h11.SEND_RESPONSE, h11.SEND_BODY)
            if paused and len(conn.trailing_data[0]) + len(data) > MAX_BUFFER:
                self._desync(out, f"more than {MAX_BUFFER} bytes while paused", ts, direction)
                return
            side.add(len(data), ts)
        try:
            conn.receive_data(data)
            self._pump(out, ts)
        except (h11.ProtocolError, RuntimeError) as exc:
            self._desync(out, f"protocol error: {exc}", ts, direction)

    def _pump(self, out: list[DecoderEvent], ts: float) -> None:
        """Parse what both connections hold, until neither can go on."""
        progress = True
        while progress:
            progress = self._pump_client(out) | self._pump_server(out, ts)
            if self._raw:
                return

    def _pump_client(self, out: list[DecoderEvent]) -> bool:
        req, side = self._req, self._sides[Direction.CLIENT]
        progress = False
        while True:
            ev = req.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                return progress
            progress = True
            if isinstance(ev, h11.Request):
                self._request(ev)
            elif isinstance(ev, h11.Data):
                assert self._reading is not None
                self._reading.body.add(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                ex = self._reading
                assert ex is not None
                self._reading = None
                end = side.fed - len(req.trailing_data[0])
                ex.done, ex.bytes_in = True, end - side.msg_start
                ex.ts_request = side.ts_at(end - 1)
                side.msg_start = end
                if ex.mirrored and self._resp.our_state is h11.SEND_BODY:
                    self._resp.send(h11.EndOfMessage())
                if not ex.switch:  # answer it at once, to go on to the next request
                    self._answer(200)
                self._complete(out)

    def _request(self, ev: h11.Request) -> None:
        headers = list(ev.headers)
        switch = ev.method == b"CONNECT" or bool(_header(headers, b"upgrade"))
        ex = _Exchange(ev.method, ev.target, ev.http_version, headers, switch)
        ex.body.chunked, ex.body.remaining = _framing(headers)
        self._reading = ex
        self._pending.append(ex)
        if len(self._pending) > MAX_PENDING:
            # a client that keeps sending without reading replies: give up the oldest
            self._pending.popleft()

    def _pump_server(self, out: list[DecoderEvent], ts: float) -> bool:
        resp, side = self._resp, self._sides[Direction.SERVER]
        progress = False
        while True:
            self._mirror()
            ev = resp.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
                if resp.their_state is h11.SWITCHED_PROTOCOL:
                    self._switched(out, ts)
                return progress
            progress = True
            if not self._pending:  # the mirrored request was given up (MAX_PENDING)
                raise h11.RemoteProtocolError("a response to no known request")
            ex = self._pending[0]
            if isinstance(ev, h11.InformationalResponse):
                end = side.fed - len(resp.trailing_data[0])
                ex.bytes_out += end - side.msg_start
                side.msg_start = end
                if ev.status_code == 101:
                    ex.status, ex.reason = 101, ev.reason
                    ex.resp_headers = list(ev.headers)
                    ex.ts_reply = side.ts_at(end - 1)
                    self._req.send(h11.InformationalResponse(status_code=101, headers=ev.headers))
                elif len(ex.informational) < MAX_INFORMATIONAL:
                    ex.informational.append(f"{ev.status_code} {_text(ev.reason)}".rstrip())
                elif len(ex.informational) == MAX_INFORMATIONAL:
                    ex.informational.append("...")  # more of them, not listed
            elif isinstance(ev, h11.Response):
                ex.status, ex.reason, ex.resp_headers = ev.status_code, ev.reason, list(ev.headers)
                ex.ts_reply = side.ts_at(side.msg_start)
                ex.head_ts = side.ts_at(side.fed - len(resp.trailing_data[0]) - 1)
                body = ex.resp_body
                body.chunked, body.remaining = _framing(ex.resp_headers)
                body.until_close = not body.chunked and body.remaining < 0
                if ex.switch and ex.done and self._req.our_state is h11.SEND_RESPONSE:
                    # tell _req how the server answered the switch proposal
                    self._answer(ev.status_code)
                if self._hijacked(ex):
                    self._switched(out, ts)
                    return progress
            elif isinstance(ev, h11.Data):
                ex.resp_body.add(ev.data)
                body = ex.resp_body
                if (body.chunked or body.until_close) and ts > ex.head_ts:
                    out.append(self._stream_notice(ex, ev.data, ts))
            elif isinstance(ev, h11.EndOfMessage):
                end = side.fed - len(resp.trailing_data[0])
                ex.bytes_out += end - side.msg_start
                side.msg_start = end
                ex.resp_done = True
                self._cycle(resp)
                self._complete(out)

    def _mirror(self) -> None:
        """Send the next unanswered request on _resp, once it is idle."""
        resp = self._resp
        if resp.our_state is not h11.IDLE or resp.their_state is not h11.IDLE:
            return
        for ex in self._pending:
            if ex.mirrored:
                continue
            headers = [(b"host", _header(ex.headers, b"host") or b"-")]
            headers += [(k, v) for k, v in ex.headers if k in _MIRRORED]
            if ex.version < b"1.1":  # h11 sends only 1.1: an HTTP/1.0 exchange ends the connection
                headers.append((b"connection", b"close"))
            resp.send(h11.Request(method=ex.method, target=ex.target, headers=headers))
            ex.mirrored = True
            if ex.done:
                resp.send(h11.EndOfMessage())
            return

    def _answer(self, status: int) -> None:
        """Send ``status`` with an empty body on _req (a 2xx to CONNECT switches it)."""
        req = self._req
        req.send(h11.Response(status_code=status, headers=[(b"content-length", b"0")]))
        if req.our_state is h11.SEND_BODY:
            req.send(h11.EndOfMessage())
        self._cycle(req)

    @staticmethod
    def _cycle(conn: h11.Connection) -> None:
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()

    def _complete(self, out: list[DecoderEvent]) -> None:
        """Report the exchanges at the head whose request and response are complete."""
        while self._pending and self._pending[0].done and self._pending[0].resp_done:
            self._finish(self._pending.popleft(), out)

    def _hijacked(self, ex: _Exchange) -> bool:
        ctype = _header(ex.resp_headers, b"content-type").split(b";")[0].strip().lower()
        return ex.status == 200 and ex.resp_body.until_close and ctype in _HIJACK_TYPES

    def _switched(self, out: list[DecoderEvent], ts: float) -> None:
        """HTTP ends here: report the exchange, show what follows it as raw."""
        side = self._sides[Direction.SERVER]
        rest_server, _ = self._resp.trailing_data
        rest_client, _ = self._req.trailing_data
        ex = self._pending.popleft()
        ex.bytes_out += side.fed - len(rest_server) - side.msg_start
        self._finish(ex, out, switched=True)
        while self._pending:  # requests sent after it were raw bytes, not requests
            self._pending.pop()
        self._raw = True
        if rest_client:
            out.append(self._raw_notice(Direction.CLIENT, rest_client, ts))
        if rest_server:
            out.append(self._raw_notice(Direction.SERVER, rest_server, ts))

    def _count_partial(self) -> None:
        """The bytes of a response cut short (by the end or a gap) count for its request."""
        head = self._pending[0] if self._pending else None
        if head is not None and head.status and not head.resp_done:
            side = self._sides[Direction.SERVER]
            head.bytes_out += side.fed - side.msg_start
            side.msg_start = side.fed

    def _body_in_progress(self, direction: Direction) -> _Body | None:
        if direction is Direction.CLIENT:
            if self._reading is None or self._req.their_state is not h11.SEND_BODY:
                return None
            return self._reading.body
        if not self._pending or self._resp.their_state is not h11.SEND_BODY:
            return None
        return self._pending[0].resp_body

    def _desync(self, out: list[DecoderEvent], why: str, ts: float, direction: Direction) -> None:
        self._count_partial()
        while self._pending:
            self._finish(self._pending.popleft(), out, lost=True)
        self._reset()
        self._client_synced = self._server_synced = False
        for held in self._held:
            held.clear()
        out.append(Notice(self.protocol, direction, "undecodable", why, ts))

    # -- events

    def _finish(
        self, ex: _Exchange, out: list[DecoderEvent], lost: bool = False, switched: bool = False
    ) -> None:
        details: Details = {
            "method": _text(ex.method),
            "target": _text(ex.target),
            "version": _text(ex.version),
            "request_headers": self._headers(ex.headers),
        }
        request = f"{_text(ex.method)} {_text(ex.target)}"
        if ex.body.size or ex.body.chunked:
            ctype = _text(_header(ex.headers, b"content-type"))
            details.update(request_content_type=ctype, request_body=ex.body.size)
            shape = [ctype, "chunked" if ex.body.chunked else "", f"{ex.body.size} bytes"]
            request += f" ({' '.join(x for x in shape if x)})"
            details["request_body_preview"] = self._preview(ex.body)
        parts = list(ex.informational)
        if ex.status:
            ctype = _text(_header(ex.resp_headers, b"content-type"))
            details.update(status=ex.status, reason=_text(ex.reason), content_type=ctype,
                           response_body=ex.resp_body.size, response_chunked=ex.resp_body.chunked,
                           response_headers=self._headers(ex.resp_headers))  # fmt: skip
            final = f"{ex.status} {_text(ex.reason)}".rstrip()
            if switched:
                upgrade = _text(_header(ex.resp_headers, b"upgrade"))
                final += f" (switched{' to ' + upgrade if upgrade else ''}: raw from here)"
                details["switched"] = upgrade or True
            else:
                size = f"{'chunked ' if ex.resp_body.chunked else ''}{ex.resp_body.size} bytes"
                final += f" {ctype} {size}" if ctype else f" {size}"
                details["response_body_preview"] = self._preview(ex.resp_body)
            if ex.status and not ex.resp_done and not switched:
                final += " (incomplete)"
                details["incomplete"] = True
            parts.append(final)
        if ex.informational:
            details["informational"] = ex.informational
        if lost and not ex.resp_done:
            parts.append("(lost sync)")
        answered = ex.status != 0
        if not ex.done:
            details["request_incomplete"] = True
        out.append(
            Transaction(
                self.protocol,
                f"{_text(ex.method)} {route(ex.target)}",
                clip(request, SUMMARY),
                clip("; ".join(parts), SUMMARY),
                ex.status >= 400,
                ex.ts_request,
                ex.ts_reply if answered else None,
                ex.bytes_in,
                ex.bytes_out,
                details,
                unanswered=not answered and not lost,
                cut=ex.cut,
            )
        )

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
        shown = [
            [
                _text(k),
                REDACTED if self.redact and k in SECRET_HEADERS else clip(_text(v), HEADER_VALUE),
            ]
            for k, v in headers[:MAX_HEADERS]
        ]
        if len(headers) > MAX_HEADERS:
            shown.append(["...", f"+{len(headers) - MAX_HEADERS} headers"])
        return shown

    def _preview(self, body: _Body) -> str:
        if not body.size:
            return ""
        if self.redact:  # bodies carry credentials too (Docker's /auth, tokens in replies)
            return REDACTED
        return show_bytes(bytes(body.prefix[:PREVIEW]), PREVIEW, total=body.size)

    def _shown(self, data: bytes) -> str:
        """Size and (without --redact) a preview of bytes the decoder does not parse."""
        size = f"{len(data)} bytes"
        return size if self.redact else f"{size} {show_bytes(data[:PREVIEW], PREVIEW, len(data))}"

    def _stream_notice(self, ex: _Exchange, data: bytes, ts: float) -> Notice:
        summary = f"{_text(ex.method)} {_text(ex.target)} {ex.status}: {self._shown(data)}"
        return Notice(self.protocol, Direction.SERVER, "stream", clip(summary, SUMMARY), ts,
                      {"bytes": len(data)})  # fmt: skip

    def _raw_notice(self, direction: Direction, data: bytes, ts: float) -> Notice:
        return Notice(self.protocol, direction, "raw", self._shown(data), ts, {"bytes": len(data)})

    def _unpaired(self, data: bytes, ts: float) -> Notice:
        summary = f"before any request: {self._shown(data)}"
        return Notice(
            self.protocol, Direction.SERVER, "unpaired", summary, ts, {"bytes": len(data)}
        )
