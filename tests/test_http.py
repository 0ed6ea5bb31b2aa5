"""HTTP/1.x decoder: wire cases fed directly (no root), and the real capture
captures/http.pcapng (podman's Docker API driven by curl, captures/record_live.py)
decoded by `usniff read`.

The wire cases are written after what Docker/Podman and curl send (RFC 9112
framing, Docker's attach/exec upgrade and hijack); the live tests against podman
are in tests/test_live_http.py.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from http_session import MISSING_ID, PINGS, SECRETS
from pcap_helpers import TSHARK, Conn, tshark

from usniff.decoders.base import DecoderEvent, Notice, Transaction
from usniff.decoders.http import MAX_BUFFER, MAX_CHUNKS, HttpDecoder, route
from usniff.decoders.registry import detect
from usniff.events import CaptureStats
from usniff.outputs.decoded import Undecoded, decode_records
from usniff.outputs.pcapng import PcapngOutput
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER
CAPTURES = Path(__file__).resolve().parent.parent / "captures"
USNIFF = str(Path(sys.executable).with_name("usniff"))

GET = b"GET /v1.41/version HTTP/1.1\r\nHost: d\r\nUser-Agent: curl/7.88.1\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello"
POST = b"POST /v1.41/volumes/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
POST += b"Content-Length: 13\r\n\r\n" + b'{"Name":"v1"}'
CHUNKED = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
CHUNKED += b"\r\n\r\n4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n"


def run(steps: list[tuple[Direction, bytes | int]], redact: bool = False) -> list[DecoderEvent]:
    """Feed ``steps`` (bytes, or a gap of n bytes) 1 ms apart; close; all events."""
    dec = HttpDecoder(redact=redact)
    out: list[DecoderEvent] = []
    for i, (direction, item) in enumerate(steps):
        ts = 1.0 + i / 1000
        if isinstance(item, int):
            out += dec.gap(direction, item, ts, cut=False)
        else:
            out += dec.feed(direction, item, ts)
    return out + dec.close()


def txs(events: list[DecoderEvent]) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def notices(events: list[DecoderEvent], kind: str) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and e.kind == kind]


# --------------------------------------------------------------------------- detection


def test_detects_http1_but_not_http2_prior_knowledge() -> None:
    assert detect(GET[:32], b"") == "http"
    assert detect(GET[:20], b"") is None  # wait for the version
    assert detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"") == "http2"
    assert detect(b"PRI * HTTP/2.0\r\n", b"") == "http2"
    assert detect(b"GET / HTTP/2.0\r\n", b"") is None  # not HTTP/1: wait for more / unknown
    assert detect(b"*1\r\n$4\r\nPING\r\n", b"") == "resp"


def test_route_normalises_ids_and_drops_the_query() -> None:
    assert route(b"/v1.41/containers/" + b"ab12" * 16 + b"/json?all=1") == (
        "/v1.41/containers/{id}/json"
    )
    assert route(b"/v1.41/containers/0123456789ab/logs") == "/v1.41/containers/{id}/logs"
    assert route(b"/users/42/orders/7") == "/users/{n}/orders/{n}"
    assert route(b"/x/123e4567-e89b-12d3-a456-426614174000") == "/x/{id}"
    assert route(b"/v1.41/volumes/web-data") == "/v1.41/volumes/web-data"  # a name stays
    assert route(b"http://d/v1.41/_ping") == "/v1.41/_ping"  # absolute form


# --------------------------------------------------------------------------- framing


def test_one_exchange_sizes_times_and_summary() -> None:
    [tx] = txs(run([(C, GET), (S, OK)]))
    assert (tx.request, tx.reply, tx.error) == (
        "GET /v1.41/version",
        "200 OK application/json 5 bytes",
        False,
    )
    assert (tx.bytes_in, tx.bytes_out) == (len(GET), len(OK))
    assert tx.command == "GET /v1.41/version"
    assert tx.ts_request == 1.0 and tx.ts_reply == 1.001
    assert tx.details["response_body_preview"] == "hello"


def test_pipelined_requests_in_one_write_and_replies_in_one_write() -> None:
    got = txs(run([(C, GET + POST + GET), (S, OK + CHUNKED + OK)]))
    assert [(t.request, t.reply) for t in got] == [
        ("GET /v1.41/version", "200 OK application/json 5 bytes"),
        ("POST /v1.41/volumes/create (application/json 13 bytes)",
         "201 Created application/json chunked 7 bytes"),
        ("GET /v1.41/version", "200 OK application/json 5 bytes"),
    ]  # fmt: skip
    assert [t.bytes_in for t in got] == [len(GET), len(POST), len(GET)]
    assert [t.bytes_out for t in got] == [len(OK), len(CHUNKED), len(OK)]


def test_requests_and_replies_split_at_every_byte() -> None:
    stream = [(C, GET), (S, OK), (C, POST), (S, CHUNKED)]
    steps: list[tuple[Direction, bytes | int]] = [
        (d, data[i : i + 1]) for d, data in stream for i in range(len(data))
    ]
    got = txs(run(steps))
    assert [t.reply for t in got] == [
        "200 OK application/json 5 bytes",
        "201 Created application/json chunked 7 bytes",
    ]
    assert [t.bytes_out for t in got] == [len(OK), len(CHUNKED)]
    # latency: the request's last byte to the reply's first byte
    assert got[0].ts_request == 1.0 + (len(GET) - 1) / 1000
    assert got[0].ts_reply == 1.0 + len(GET) / 1000


def test_expect_100_continue_latency_from_the_body() -> None:
    head = b"PUT /x HTTP/1.1\r\nHost: d\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    [tx] = txs(run([(C, head), (S, cont), (C, b"body"), (S, OK)]))
    assert tx.reply == "100 Continue; 200 OK application/json 5 bytes"
    assert tx.details["informational"] == ["100 Continue"]
    assert (tx.ts_request, tx.ts_reply) == (1.002, 1.003)
    assert tx.bytes_out == len(cont) + len(OK)


def test_head_204_and_http10_read_until_close() -> None:
    head = b"HEAD /f HTTP/1.1\r\nHost: d\r\n\r\n"
    head_ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # no body after a HEAD
    delete = b"DELETE /v/x HTTP/1.1\r\nHost: d\r\n\r\n"
    gone = b"HTTP/1.1 204 No Content\r\n\r\n"
    got = txs(run([(C, head), (S, head_ok), (C, delete), (S, gone)]))
    assert [t.reply for t in got] == ["200 OK 0 bytes", "204 No Content 0 bytes"]
    old = b"GET / HTTP/1.0\r\n\r\n"
    body = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>"
    [tx] = txs(run([(C, old), (S, body), (S, b"</html>")]))
    assert tx.reply == "200 OK text/html 13 bytes" and tx.bytes_out == len(body) + 7


def test_error_status_counts_as_error() -> None:
    miss = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found"
    )
    [tx] = txs(run([(C, GET), (S, miss)]))
    assert tx.error and tx.reply == "404 Not Found text/plain 9 bytes"


# --------------------------------------------------------------------------- streams and switches


def test_event_stream_shown_per_write_then_transaction_at_close() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    events = run([
        (C, b"GET /v1.41/events HTTP/1.1\r\nHost: d\r\n\r\n"),
        (S, head + b"\r\n"),
        (S, b'b\r\n{"id":"e1"}\r\n'),
        (S, b'b\r\n{"id":"e2"}\r\n'),
    ])  # fmt: skip
    stream = notices(events, "stream")
    assert [n.summary for n in stream] == [
        'GET /v1.41/events 200: 11 bytes "{\\"id\\":\\"e1\\"}"',
        'GET /v1.41/events 200: 11 bytes "{\\"id\\":\\"e2\\"}"',
    ]
    assert isinstance(events[-1], Transaction)  # after the notices
    tx = events[-1]
    assert tx.reply == "200 OK application/json chunked 22 bytes (incomplete)"
    assert tx.details["incomplete"] and not tx.unanswered and tx.latency == pytest.approx(0.001)


def test_upgrade_101_then_raw_stream() -> None:
    attach = b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
    attach += b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    switched = b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    switched += b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    events = run([(C, attach), (S, switched + b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"),
                  (C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"out")])  # fmt: skip
    [tx] = txs(events)
    assert tx.reply == "101 UPGRADED (switched to tcp: raw from here)"
    assert tx.bytes_out == len(switched) and tx.details["switched"] == "tcp"
    raw = notices(events, "raw")
    assert [(n.direction, n.details["bytes"]) for n in raw] == [(S, 11), (C, 18), (S, 3)]


def test_upgrade_refused_keeps_decoding() -> None:
    ws = b"GET /ws HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    no = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    got = txs(run([(C, ws), (S, no), (C, GET), (S, OK)]))
    assert [t.reply for t in got] == ["400 Bad Request 0 bytes", "200 OK application/json 5 bytes"]


def test_docker_hijack_without_upgrade_and_connect() -> None:
    start = b"POST /v1.41/exec/abc/start HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n\r\n{}"
    hijack = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n"
    events = run([(C, start), (S, hijack), (C, b"ls\n"), (S, b"file\n")])
    [tx] = txs(events)
    assert tx.reply == "200 OK (switched: raw from here)"
    assert [n.details["bytes"] for n in notices(events, "raw")] == [3, 5]
    connect = b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"
    events = run([(C, connect), (S, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                  (C, b"\x16\x03\x01")])  # fmt: skip
    assert txs(events)[0].reply.startswith("200 Connection established (switched")
    assert [n.direction for n in notices(events, "raw")] == [C]


# --------------------------------------------------------------------------- loss and sync


def test_snap_length_cut_inside_a_body_keeps_the_framing() -> None:
    dec = HttpDecoder()
    out = dec.feed(C, POST[:-10], 1.0) + dec.gap(C, 10, 1.0, cut=True)
    out += dec.feed(S, OK, 1.1) + dec.feed(C, GET, 1.2) + dec.feed(S, OK, 1.3) + dec.close()
    got = txs(out)
    assert [t.reply for t in got] == ["200 OK application/json 5 bytes"] * 2
    assert got[0].cut == 10 and got[0].bytes_in == len(POST) and not notices(out, "undecodable")


def test_lost_bytes_resync_at_the_next_request() -> None:
    events = run([(C, GET), (S, OK[:20]), (S, 30), (S, b"tail of it"), (C, POST),
                  (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")])  # fmt: skip
    got = txs(events)
    assert [t.reply for t in got] == ["(lost sync)", "201 Created 0 bytes"]
    assert got[0].latency is None and not got[0].unanswered
    [lost] = notices(events, "undecodable")
    assert lost.summary == "30 bytes missing" and lost.direction is S


def test_capture_starting_mid_connection() -> None:
    got = txs(run([(C, b'e":"x"}'), (S, b'ream-tail"}\r\n'), (C, GET), (S, OK)]))
    assert [t.reply for t in got] == ["200 OK application/json 5 bytes"]


def test_garbage_from_the_client_is_said_and_resynced() -> None:
    events = run([(C, GET), (S, OK), (C, b"GET / HTTP/1.1\r\nbad header line\r\n\r\n"),
                  (C, GET), (S, OK)])  # fmt: skip
    assert [t.reply for t in txs(events)] == ["200 OK application/json 5 bytes"] * 2
    assert len(notices(events, "undecodable")) == 1


def test_unanswered_request_at_close() -> None:
    [tx] = txs(run([(C, GET)]))
    assert tx.unanswered and tx.reply == "" and tx.latency is None


def test_memory_bounded_while_a_switch_is_unanswered() -> None:
    attach = b"POST /a HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    dec = HttpDecoder()
    out = dec.feed(C, attach, 1.0)
    for i in range(MAX_BUFFER // 65536 + 2):
        out += dec.feed(C, bytes(65536), 1.0 + i)
    assert len(dec._req.trailing_data[0]) <= MAX_BUFFER
    assert notices(out, "undecodable")[0].summary == f"more than {MAX_BUFFER} bytes while paused"


def test_a_body_in_many_writes_keeps_bounded_timestamps() -> None:
    n = 5 * MAX_CHUNKS
    dec = HttpDecoder()
    out = dec.feed(C, GET, 1.0)
    out += dec.feed(S, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n, 2.0)
    for i in range(n):
        out += dec.feed(S, b"x", 3.0 + i)
        assert len(dec._sides[S].chunks) <= MAX_CHUNKS + 1
    [tx] = txs(out)
    assert (tx.ts_reply, tx.reply, tx.details["response_body"]) == (2.0, f"200 OK {n} bytes", n)


# --------------------------------------------------------------------------- redaction


def test_redact_masks_credential_headers_and_bodies() -> None:
    secret_get = (
        b"GET /v1.41/images/json HTTP/1.1\r\nHost: d\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"
        b"Proxy-Authorization: Bearer p1\r\nCookie: s=c1\r\nX-Registry-Auth: eyJhIjoi\r\n\r\n"
    )
    reply = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=c2\r\nContent-Length: 9\r\n\r\ntoken=t1!"
    [tx] = txs(run([(C, secret_get), (S, reply)], redact=True))
    dumped = json.dumps([tx.request, tx.reply, tx.details])
    for secret in ("dXNlcjpwYXNz", "p1", "c1", "eyJhIjoi", "c2", "t1"):
        assert secret not in dumped, secret
    headers = dict(tx.details["request_headers"])  # type: ignore[arg-type]
    assert headers["authorization"] == headers["cookie"] == "***"
    assert tx.details["response_body_preview"] == "***"
    [plain] = txs(run([(C, secret_get), (S, reply)]))
    assert "dXNlcjpwYXNz" in json.dumps(plain.details)  # without --redact: shown


# --------------------------------------------------------------------------- the real capture


@functools.cache
def read(*extra: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [USNIFF, "read", str(CAPTURES / "http.pcapng"), "--format", "json", "--protocol",
         "auto", *extra], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr
    return tuple(json.loads(line) for line in out.stdout.splitlines())


def test_capture_every_request_decoded_with_a_latency() -> None:
    events = read()
    assert not [e for e in events if e["type"] in ("record",) or e.get("kind") in
                ("undecodable", "unpaired")]  # fmt: skip
    got = [e for e in events if e["type"] == "transaction"]
    assert len(got) == PINGS + 11
    for tx in got:
        assert tx["protocol"] == "http" and tx["server_comm"] == "podman", tx
        assert tx["client_pid"] > 0 and tx["latency"] is not None, tx
    pings = [t for t in got if t["command"] == "GET /v1.41/_ping"]
    assert len(pings) == PINGS + 2 and all(t["reply"].startswith("200 OK") for t in pings)
    assert len({t["conn"] for t in pings[:PINGS]}) == 1  # curl kept the connection alive
    [missing] = [t for t in got if t["command"] == "GET /v1.41/containers/{id}/json"]
    assert missing["details"]["target"] == f"/v1.41/containers/{MISSING_ID}/json"
    assert missing["error"] and missing["reply"].startswith("404 Not Found")
    expect = [t for t in got if t["reply"].startswith("100 Continue; 201 Created")]
    assert len(expect) == 1
    assert len([e for e in events if e.get("kind") == "stream"]) == 2


def test_capture_redacted() -> None:
    plain = json.dumps(read())
    assert all(secret in plain for secret in SECRETS)
    redacted = json.dumps(read("--redact"))
    assert not any(secret in redacted for secret in SECRETS)


# --------------------------------------------------------------------------- pcapng flows


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize(
    ("client", "server", "proto"),
    [
        (GET, OK, "http"),
        # HTTP/2 with prior knowledge: the preface and a SETTINGS frame each way
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"),
         bytes.fromhex("000000040000000000"), "http2"),
    ],
)  # fmt: skip
def test_pcapng_flows_dissected_by_tshark(
    tmp_path: Path, client: bytes, server: bytes, proto: str
) -> None:
    """usniff's pcapng puts both on Wireshark's HTTP port, where stock tshark tells
    HTTP/1.1 from an HTTP/2 preface by itself."""
    out = PcapngOutput(str(tmp_path / "f.pcapng"))
    conn = Conn(path="/run/podman/podman.sock", client_comm="curl", server_comm="podman")
    records = conn.exchange([(False, client), (True, server)])
    out.write(records)
    out.close(CaptureStats(records=len(records), backend="test"))
    path = str(tmp_path / "f.pcapng")
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    frames = tshark("-r", path, "-Y", proto, "-T", "fields", "-e", "frame.protocols").split()
    layers = {"http": {"http"}, "http2": {"http", "http2"}}[proto]  # h2 is handed on by http
    assert len(frames) == 2 and all(set(f.split(":")) & {"http", "http2"} == layers
                                    for f in frames), frames  # fmt: skip
    decoded = list(decode_records(records))
    if proto == "http":
        assert [e.reply for e in decoded if isinstance(e, Transaction)] == [
            "200 OK application/json 5 bytes"
        ]
    else:  # detected, not decoded as HTTP/1.1
        assert {e.reason for e in decoded if isinstance(e, Undecoded)} == {"http2, no decoder"}
        assert not [e for e in decoded if isinstance(e, Transaction | Notice)]
