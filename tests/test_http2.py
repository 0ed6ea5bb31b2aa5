"""HTTP/2 + gRPC decoder, offline: the real capture (captures/grpc.pcapng, a grpcio
client and server recorded by captures/record_live.py) and frames built here with
hpack's encoder for what a healthy session does not show (resets, GOAWAY,
CONTINUATION, mid-connection starts, lost and cut bytes, plain HTTP/2)."""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import hpack
import pytest

from tests.support.captures import CAPTURES
from tests.support.pcap_helpers import Conn
from tests.support.replay import Step, drive
from tests.support.tshark import TSHARK, tshark
from tests.support.usniff import USNIFF
from tests.test_fuzz_decoders import SESSIONS
from usniff.decoders.base import DecoderEvent, Notice, Transaction
from usniff.decoders.engine import decode_records
from usniff.decoders.http2 import (
    MAX_STREAMS,
    PREFACE,
    Http2Decoder,
    fields,
    h2_preface,
    plausible_frame,
)
from usniff.decoders.registry import detect
from usniff.events import CaptureStats
from usniff.outputs.pcapng import PcapngOutput
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER
GRPC_SERVICE = "/usniff.test.Demo/"


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def settings() -> bytes:
    return frame(4, 0, 0, b"")


def headers(sid: int, block: bytes, end_stream: bool = False, end_headers: bool = True) -> bytes:
    return frame(1, (1 if end_stream else 0) | (4 if end_headers else 0), sid, block)


def data(sid: int, payload: bytes, end_stream: bool = False) -> bytes:
    return frame(0, 1 if end_stream else 0, sid, payload)


def grpc_message(body: bytes) -> bytes:
    return b"\x00" + len(body).to_bytes(4, "big") + body


def request_headers(path: str, **extra: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "localhost"), ("content-type", "application/grpc"),
            *extra.items()]  # fmt: skip


RESPONSE = [(":status", "200"), ("content-type", "application/grpc")]


def run(steps: list[Step], redact: bool = False) -> list[DecoderEvent]:
    return drive(Http2Decoder(redact=redact), steps)


def txs(events: list[DecoderEvent]) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def notices(events: list[DecoderEvent], kind: str) -> list[str]:
    return [e.summary for e in events if isinstance(e, Notice) and e.kind == kind]


class Session:
    """Both sides' HPACK encoders and the bytes of a connection built call by call."""

    def __init__(self) -> None:
        self.enc = (hpack.Encoder(), hpack.Encoder())
        self.steps: list[Step] = [(C, PREFACE + settings()),
                                                           (S, settings())]  # fmt: skip

    def block(self, direction: Direction, hdrs: list[tuple[str, str]]) -> bytes:
        return bytes(self.enc[direction].encode(hdrs))

    def unary(self, sid: int, path: str, status: int = 0, **extra: str) -> None:
        req = self.block(C, request_headers(path, **extra))
        self.steps.append((C, headers(sid, req) + data(sid, grpc_message(b"\x08\x01"), True)))
        trailers = [("grpc-status", str(status))]
        if status == 0:
            resp = headers(sid, self.block(S, RESPONSE)) + data(sid, grpc_message(b"\x08\x02"))
            resp += headers(sid, self.block(S, trailers), end_stream=True)
        else:  # trailers-only
            resp = headers(sid, self.block(S, RESPONSE + trailers), end_stream=True)
        self.steps.append((S, resp))


# --------------------------------------------------------------------------- the real capture


def _read(*extra: str) -> list[dict[str, Any]]:
    out = subprocess.run([USNIFF, "read", str(CAPTURES / "grpc.pcapng"), "--format", "json",
                          "--protocol", "auto", *extra],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_capture_decodes_every_call() -> None:
    events = _read()
    calls = [e for e in events if e["type"] == "transaction"]
    assert [c["command"].removeprefix(GRPC_SERVICE) for c in calls] == [
        "Echo", "Echo", "Count", "Sum", "Fail", "Watch"
    ]  # fmt: skip
    assert all(c["latency"] is not None and c["latency"] > 0 for c in calls)
    echo, _, count, total, fail, watch = calls
    assert echo["reply"] == "OK, 1 msg 9 bytes" and not echo["error"]
    assert count["reply"] == "OK, 4 msgs 40 bytes"
    assert total["request"] == f"#7 {GRPC_SERVICE}Sum 3 msgs 12 bytes"
    assert fail["error"] and fail["details"]["grpc_status"] == 5
    assert fail["reply"] == 'NOT_FOUND "no such thing: widget 42", 0 msgs 0 bytes'
    assert watch["error"] and watch["details"]["reset"] == "CANCEL by client"
    assert count["details"]["server_first_message"] == [[1, 0, 1], [2, 2, "item-1"]]
    kinds = {e["kind"] for e in events if e["type"] == "notice"}
    assert kinds == {"stream", "reset"}


def test_capture_redacted() -> None:
    plain, redacted = json.dumps(_read()), json.dumps(_read("--redact"))
    assert "grpc-s3cr3t-token" in plain and "grpc-s3cr3t-token" not in redacted
    assert '"authorization": "***"' in redacted


def _session() -> list[tuple[Direction, bytes]]:
    """The capture's one connection, its chunks in capture order."""
    [session] = SESSIONS["http2"]
    return [(d, item) for d, item in session if isinstance(item, bytes)]


def _summary(events: list[DecoderEvent]) -> list[tuple[str, str, str, bool, int, int]]:
    return [(t.command, t.request, t.reply, t.error, t.bytes_in, t.bytes_out) for t in txs(events)]


def test_byte_by_byte_feeding_decodes_the_same() -> None:
    session = _session()
    whole = run(list(session))
    split = run([(d, chunk[i : i + 1]) for d, chunk in session for i in range(len(chunk))])
    assert len(txs(whole)) == 6 and _summary(split) == _summary(whole)


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_server_settings_first_still_http2_in_the_pcapng(tmp_path: Path) -> None:
    """A gRPC server sends its SETTINGS as it accepts, often before the client's
    preface: the pcapng flow must still get HTTP/2's port (it got the unknown one,
    where stock tshark dissects nothing), and the decoding is the same."""
    session = _session()
    first_server = next(i for i, (d, _) in enumerate(session) if d is S)
    reordered = [session[first_server]] + session[:first_server] + session[first_server + 1 :]
    assert reordered[0][0] is S and reordered[1][1].startswith(PREFACE)
    conn = Conn(path="/run/app/grpc.sock", client_comm="client", server_comm="server")
    records = conn.exchange([(d is S, chunk) for d, chunk in reordered])
    path = str(tmp_path / "f.pcapng")
    out = PcapngOutput(path)
    out.write(records)
    out.close(CaptureStats(records=len(records), backend="test"))
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    paths = tshark("-r", path, "-Y", "http2.headers.path", "-T", "fields", "-E", "occurrence=a",
                   "-e", "http2.headers.path").split()  # fmt: skip
    assert sorted(p for line in paths for p in line.split(",")) == sorted(
        [f"{GRPC_SERVICE}{m}" for m in ("Echo", "Echo", "Count", "Sum", "Fail", "Watch")]
    )  # fmt: skip
    decoded = [e for e in decode_records(records) if isinstance(e, Transaction)]
    assert _summary(decoded) == _summary(run(list(session)))


def test_capture_started_mid_connection() -> None:
    """From the client's 4th chunk on: its HPACK references to entries sent before
    are not decoded (never resolved to a wrong entry), the server's table is whole
    (its first header block is in the capture): replies, gRPC message counts and
    statuses are as in the full capture."""
    session = _session()
    client = [i for i, (d, _) in enumerate(session) if d is C]
    events = run(list(session[client[3] :]))
    undecodable = notices(events, "undecodable")
    assert undecodable[0].startswith("capture began mid-connection (no client preface)")
    assert undecodable[1].startswith("#3 headers not decoded: HPACK: Invalid table index")
    assert len(undecodable) == 2  # one notice while the failures go on
    late, full = txs(events), txs(run(list(session)))
    assert [t.reply for t in late] == [t.reply for t in full]
    assert (late[0].command, late[0].request) == (
        "(begun before the capture)",
        "#1 (begun before the capture) 0 msgs 0 bytes",
    )
    for t in late[1:]:
        assert t.command == "(headers not decoded)" and t.details["headers_not_decoded"] == [
            "request"
        ], t  # fmt: skip
        assert t.request.startswith(f"#{t.details['stream_id']} (headers not decoded) ")


# --------------------------------------------------------------------------- built frames


def test_unary_calls_and_trailers_only_error() -> None:
    s = Session()
    s.unary(1, "/pkg.Svc/Get")
    s.unary(3, "/pkg.Svc/Get", status=14)
    ok, err = txs(run(s.steps))
    assert (ok.command, ok.reply, ok.error) == ("/pkg.Svc/Get", "OK, 1 msg 2 bytes", False)
    assert ok.details["grpc"] == {"service": "pkg.Svc", "method": "Get"}
    assert (err.reply, err.error, err.details["grpc_status"]) == ("UNAVAILABLE, 0 msgs 0 bytes",
                                                                   True, 14)  # fmt: skip


def test_redact_masks_credential_headers_and_query_values() -> None:
    s = Session()
    s.unary(1, "/pkg.Svc/Get?token=abc&x=1", authorization="Bearer xyz", cookie="sid=1",
            x_api_key="k")  # fmt: skip
    [t] = txs(run(s.steps, redact=True))
    hdrs = t.details["request_headers"]
    assert isinstance(hdrs, dict)
    assert hdrs["authorization"] == hdrs["cookie"] == "***"
    assert t.details["path"] == "/pkg.Svc/Get?token=***&x=1"
    assert "abc" not in t.request + json.dumps(t.details)


def test_status_that_is_not_a_short_number() -> None:
    """int() of a 5000-digit status raised ValueError (Python's digit limit)."""
    s = Session()
    req = s.block(C, request_headers("/pkg.Svc/Get"))
    s.steps.append((C, headers(1, req, end_stream=True)))
    resp = [(":status", "9" * 5000), ("content-type", "application/grpc"), ("grpc-status", "x1")]
    s.steps.append((S, headers(1, s.block(S, resp), end_stream=True)))
    [t] = txs(run(s.steps))
    assert t.details["status"] == "9" * 37 + "..." and t.details["grpc_status"] == "x1"
    assert t.error and t.reply == "grpc-status x1, 0 msgs 0 bytes"


def test_informational_responses_are_bounded() -> None:
    s = Session()
    s.steps.append((C, headers(1, s.block(C, request_headers("/pkg.Svc/Get")), end_stream=True)))
    for _ in range(100):
        s.steps.append((S, headers(1, s.block(S, [(":status", "103")]))))
    s.steps.append((S, headers(1, s.block(S, RESPONSE + [("grpc-status", "0")]), True)))
    [t] = txs(run(s.steps))
    assert t.details["informational"] == ["103"] * 8 and t.reply == "OK, 0 msgs 0 bytes"


def test_compressed_messages_and_redacted_stream_notices() -> None:
    s = Session()
    req = s.block(C, request_headers("/pkg.Svc/Up?token=abc"))
    chunks = [b"\x01" + (3).to_bytes(4, "big") + b"\x78\x9c\x03" for _ in range(2)]
    s.steps.append((C, headers(1, req) + data(1, b"".join(chunks), True)))
    s.steps.append((S, headers(1, s.block(S, RESPONSE + [("grpc-status", "0")]), True)))
    events = run(s.steps, redact=True)
    [t] = txs(events)
    assert t.details["client_first_message"] == "(compressed)"
    assert t.details["messages"] == {
        "client": {"count": 2, "bytes": 6, "complete": True, "compressed": 2},
        "server": {"count": 0, "bytes": 0, "complete": True},
    }
    assert notices(events, "stream") == [
        "#1 /pkg.Svc/Up?token=*** client message 1: 3 bytes",
        "#1 /pkg.Svc/Up?token=*** client message 2: 3 bytes",
    ]


def test_plain_http2_request_normalised_for_stats() -> None:
    s = Session()
    req = [(":method", "GET"), (":scheme", "http"), (":path", "/v1/items/12345?q=secret"),
           (":authority", "x")]  # fmt: skip
    s.steps.append((C, headers(1, s.block(C, req), end_stream=True)))
    resp = [(":status", "404"), ("content-type", "text/plain")]
    s.steps.append((S, headers(1, s.block(S, resp)) + data(1, b"not found", True)))
    [t] = txs(run(s.steps))
    assert t.command == "GET /v1/items/{n}"
    assert (t.request, t.reply, t.error) == ("#1 GET /v1/items/12345?q=secret",
                                             "404 text/plain, 9 bytes", True)  # fmt: skip


def test_continuation_frames() -> None:
    s = Session()
    block = s.block(C, request_headers("/pkg.Svc/Big", big="v" * 300))
    first, rest = block[:10], block[10:]
    s.steps.append((C, headers(1, first, end_headers=False) + frame(9, 0, 1, rest[:100])
                    + frame(9, 4, 1, rest[100:]) + data(1, grpc_message(b""), True)))  # fmt: skip
    s.steps.append((S, headers(1, s.block(S, RESPONSE + [("grpc-status", "0")]), True)))
    [t] = txs(run(s.steps))
    hdrs = t.details["request_headers"]
    assert isinstance(hdrs, dict) and t.command == "/pkg.Svc/Big"
    assert hdrs["big"] == "v" * 253 + "..."  # values are clipped in the details


def test_data_inside_a_header_block_is_a_protocol_error() -> None:
    s = Session()
    block = s.block(C, request_headers("/pkg.Svc/X"))
    s.steps.append((C, headers(1, block[:5], end_headers=False) + data(1, b"x")))
    events = run(s.steps)
    assert notices(events, "undecodable") == ["protocol error: DATA inside a header block"]


def test_rst_stream_and_goaway() -> None:
    s = Session()
    for sid in (1, 3, 5):
        s.steps.append((C, headers(sid, s.block(C, request_headers(f"/pkg.Svc/M{sid}")))))
    s.steps.append((S, frame(3, 0, 1, (8).to_bytes(4, "big"))))  # RST_STREAM CANCEL
    goaway = (3).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"bye"
    s.steps.append((S, frame(7, 0, 0, goaway)))
    s.steps.append((S, headers(3, s.block(S, RESPONSE + [("grpc-status", "0")]), True)))
    events = run(s.steps)
    assert notices(events, "reset") == ["#1 RST_STREAM CANCEL by server /pkg.Svc/M1"]
    assert notices(events, "goaway") == ["GOAWAY NO_ERROR by server, last stream 3: bye"]
    m1, m5, m3 = txs(events)
    assert (m1.command, m1.reply, m1.error) == ("/pkg.Svc/M1", "RST_STREAM CANCEL by server",
                                                True)  # fmt: skip
    assert m5.command == "/pkg.Svc/M5" and m5.error and m5.reply.startswith("not processed")
    assert m3.command == "/pkg.Svc/M3" and m3.reply == "OK, 0 msgs 0 bytes" and not m3.error


def test_push_promise_and_refused_streams_are_not_unanswered() -> None:
    s = Session()
    s.steps.append((C, headers(1, s.block(C, request_headers("/pkg.Svc/A")), end_stream=True)))
    s.steps.append((C, headers(3, s.block(C, request_headers("/pkg.Svc/B")), end_stream=True)))
    pushed = [(":method", "GET"), (":scheme", "http"), (":path", "/style.css?sig=1"),
              (":authority", "x")]  # fmt: skip
    s.steps.append((S, frame(5, 4, 1, (2).to_bytes(4, "big") + s.block(S, pushed))))
    s.steps.append((S, frame(7, 0, 0, (1).to_bytes(4, "big") + bytes(4))))  # GOAWAY, last 1
    s.steps.append((S, headers(2, s.block(S, [(":status", "200")])) + data(2, b"css", True)))
    s.steps.append((S, headers(1, s.block(S, RESPONSE + [("grpc-status", "0")]), True)))
    events = run(s.steps, redact=True)
    assert notices(events, "push") == ["#1 PUSH_PROMISE #2 /style.css?sig=***"]
    refused, css, a = txs(events)
    assert (refused.command, refused.unanswered, refused.error) == ("/pkg.Svc/B", False, True)
    assert (css.command, css.reply, css.unanswered) == ("GET /style.css", "200, 3 bytes", False)
    assert a.reply == "OK, 0 msgs 0 bytes"


def test_gap_resyncs_and_restarts_hpack() -> None:
    s = Session()
    s.unary(1, "/pkg.Svc/A")
    s.steps.append((C, 50))  # lost bytes: the client's HPACK insertions in them are unknown
    s.unary(3, "/pkg.Svc/A")  # its block refers to the entries of the first call
    s.unary(5, "/pkg.Svc/B")
    events = run(s.steps)
    assert notices(events, "undecodable")[0] == "50 bytes missing"
    a, lost, b = txs(events)
    assert a.command == "/pkg.Svc/A" and lost.command == "(headers not decoded)"
    assert "headers not decoded" in notices(events, "undecodable")[1]
    assert b.command in ("/pkg.Svc/B", "(headers not decoded)")  # never a wrong name
    assert lost.reply == "OK, 1 msg 2 bytes"  # the server's table is whole
    assert "lost_sync" not in lost.details  # it began after the gap


def test_cut_inside_data_keeps_framing() -> None:
    decoder = Http2Decoder()
    enc = hpack.Encoder()
    decoder.feed(C, PREFACE + headers(1, bytes(enc.encode(request_headers("/p.S/M")))), 1.0)
    body = data(1, grpc_message(b"x" * 100), True)
    decoder.feed(C, body[:50], 1.1)
    assert decoder.gap(C, len(body) - 50, 1.1, True) == []
    enc_s = hpack.Encoder()
    events = decoder.feed(S, headers(1, bytes(enc_s.encode(RESPONSE + [("grpc-status", "0")])),
                                     True), 1.2)  # fmt: skip
    [t] = txs(events)
    assert t.cut == len(body) - 50 and t.request == "#1 /p.S/M 0 msgs 0 bytes (incomplete)"


def test_stream_open_when_the_connection_ends() -> None:
    s = Session()
    s.steps.append((C, headers(1, s.block(C, request_headers("/pkg.Svc/Watch")), True)))
    s.steps.append((S, headers(1, s.block(S, RESPONSE)) + data(1, grpc_message(b"\x08\x01") * 3)))
    events = run(s.steps)
    [t] = txs(events)
    assert t.reply == "200, 3 msgs 6 bytes, (stream not ended)" and t.details["not_ended"]
    assert not t.error and not t.unanswered
    assert len(notices(events, "stream")) == 3


def test_padded_data_and_large_frames_are_not_buffered() -> None:
    """DATA payloads are passed on as they come (a 4 MiB frame in 64 KiB chunks is never
    held whole); padding is not data; other frames longer than a header block may be
    are a protocol error, not a buffer."""
    decoder = Http2Decoder()
    enc = hpack.Encoder()
    decoder.feed(C, PREFACE + headers(1, bytes(enc.encode(request_headers("/p.S/Up")))), 1.0)
    size = 4 << 20
    big = frame(0, 0, 1, grpc_message(bytes(size - 5))[:size])
    padded = frame(0, 0x9, 1, bytes([3]) + grpc_message(b"\x08\x01") + bytes(3))
    tracemalloc.start()
    for i in range(0, len(big), 65536):
        decoder.feed(C, big[i : i + 65536], 1.1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, peak
    decoder.feed(C, padded, 1.2)
    events = decoder.feed(S, headers(1, bytes(hpack.Encoder().encode(
        RESPONSE + [("grpc-status", "0")])), True), 1.3)  # fmt: skip
    [t] = txs(events)
    assert t.details["messages"]["client"] == {  # type: ignore[index]
        "count": 2, "bytes": size - 5 + 2, "complete": True
    }  # fmt: skip
    assert t.details["data_bytes"] == {"client": size + 7, "server": 0}
    huge = frame(4, 0, 0, bytes(300 * 1024 - 4))  # a SETTINGS frame of 300 KiB
    assert notices(decoder.feed(C, huge[:20], 1.4), "undecodable") == [
        "protocol error: a 307196-byte frame of type 4"
    ]


def test_streams_are_bounded() -> None:
    s = Session()
    for i in range(MAX_STREAMS + 5):
        s.steps.append((C, headers(2 * i + 1, s.block(C, request_headers("/p.S/Open")))))
    events = run(s.steps)
    assert len(txs(events)) == MAX_STREAMS + 5 and all(t.unanswered for t in txs(events))


def test_detection() -> None:
    assert h2_preface(PREFACE) and h2_preface(PREFACE[:8]) and not h2_preface(PREFACE[:7])
    assert not h2_preface(b"GET / HTTP/1.1\r\n")
    assert detect(PREFACE + settings(), b"") == "http2"
    grpc_settings = frame(4, 0, 0, bytes.fromhex("000400400000000500400000fe0300000001"))
    assert detect(b"", grpc_settings) == "http2"  # the server spoke first
    assert detect(b"", settings()) is None  # empty: not evidence enough
    assert detect(b"", frame(4, 0, 0, bytes.fromhex("000500000010"))) is None  # frame size 16
    assert detect(b"", grpc_settings[:-1]) is None  # not whole yet
    assert plausible_frame(settings()) and plausible_frame(data(1, b"x"))
    assert plausible_frame(b"\x00\x00") is None
    assert not plausible_frame(data(0, b"x"))  # DATA on stream 0
    assert not plausible_frame(frame(4, 0, 1, b""))  # SETTINGS on a stream
    assert not plausible_frame(frame(9, 4, 1, b""))  # CONTINUATION: not a block's start


@pytest.mark.parametrize(
    ("raw", "tree"),
    [
        (b"\x08\x96\x01", [[1, 0, 150]]),
        (b"\x12\x03abc", [[2, 2, "abc"]]),
        (b"\x1a\x02\x08\x01", [[3, 2, [[1, 0, 1]]]]),
        (b"\x25\x01\x00\x00\x00", [[4, 5, "00000001"]]),
        (b"\xff", "ff"),  # not a message: hex
    ],
)
def test_protobuf_field_tree(raw: bytes, tree: object) -> None:
    assert fields(raw) == tree


def _demo_descriptor_set(path: Path) -> None:
    """A descriptor set of the test service, as protoc would write it for
    package usniff.test; message Msg {string text = 1; int32 number = 2;}
    message Item {int32 index = 1; string name = 2;} message Ask {int32 n = 1;}
    service Demo {rpc Echo(Msg) returns (Msg); rpc Count(Ask) returns (stream Item);}"""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FileDescriptorProto(name="demo.proto", package="usniff.test")
    kind = descriptor_pb2.FieldDescriptorProto
    string, int32 = kind.TYPE_STRING, kind.TYPE_INT32
    for name, members in (("Msg", [("text", 1, string), ("number", 2, int32)]),
                         ("Item", [("index", 1, int32), ("name", 2, string)]),
                         ("Ask", [("n", 1, int32)])):  # fmt: skip
        m = f.message_type.add(name=name)
        for field, number, type_ in members:
            m.field.add(name=field, number=number, type=type_, label=kind.LABEL_OPTIONAL)
    service = f.service.add(name="Demo")
    service.method.add(name="Echo", input_type=".usniff.test.Msg", output_type=".usniff.test.Msg")
    service.method.add(name="Count", input_type=".usniff.test.Ask",
                       output_type=".usniff.test.Item", server_streaming=True)  # fmt: skip
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString())


def test_descriptor_set_names_the_fields(tmp_path: Path) -> None:
    schema = tmp_path / "demo.pb"
    _demo_descriptor_set(schema)
    calls = [e for e in _read("--proto-descriptor", str(schema)) if e["type"] == "transaction"]
    echo, count = calls[0], calls[2]
    assert echo["details"]["client_first_message"] == {"text": "hello", "number": 7}
    assert echo["details"]["server_first_message"] == {"text": "hello", "number": 7}
    assert count["details"]["client_first_message"] == {"n": 4}
    assert count["details"]["server_first_message"] == {"index": 1, "name": "item-1"}
    fail = calls[4]  # a method the descriptor set does not have: the raw tree
    assert fail["details"]["client_first_message"] == [[1, 2, "widget"]]
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\xff not a descriptor set")
    out = subprocess.run([USNIFF, "read", str(CAPTURES / "grpc.pcapng"), "--proto-descriptor",
                          str(bad)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "not a protobuf descriptor set" in out.stderr
