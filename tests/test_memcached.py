"""memcached decoder and detectors, offline (sans-IO): the real session of
captures/memcached.pcapng fed in every way, and the cases a session does not show
(pairing of quiet requests, gaps, snap-length cuts, mid-stream starts, bounds).
The server replies used here are memcached 1.6.18's to the same requests."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from conftest import CAPTURES
from live_helpers import MEMCACHED_EXPECTED
from servers import start_memcached

from usniff.cli.read import read_records
from usniff.decoders.base import DecoderEvent, Notice, Transaction
from usniff.decoders.memcached import KEEP, MAX_LINE, MAX_PENDING, SHOWN, MemcachedDecoder
from usniff.decoders.registry import detect
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER


def session() -> list[tuple[Direction, bytes, float]]:
    recs = read_records(str(CAPTURES / "memcached.pcapng"))
    return [(S if r.path_is_own else C, r.data, r.ts) for r in recs if r.kind == "data"]


def run(steps: list[tuple[Direction, bytes, float]]) -> list[DecoderEvent]:
    d = MemcachedDecoder()
    out: list[DecoderEvent] = []
    for direction, data, ts in steps:
        out += d.feed(direction, data, ts)
    return out + d.close()


def txs(events: list[DecoderEvent]) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def exchange(*pairs: tuple[bytes, bytes]) -> list[Transaction]:
    steps = []
    for i, (request, reply) in enumerate(pairs):
        steps += [(C, request, float(2 * i)), (S, reply, 2.0 * i + 1)]
    events = run([s for s in steps if s[1]])
    assert not [e for e in events if isinstance(e, Notice)], events
    return txs(events)


def summary(t: Transaction) -> tuple[str, str]:
    return t.request, t.reply


def test_session_whole_and_byte_by_byte() -> None:
    steps = session()
    whole = sorted(txs(run(steps)), key=lambda t: t.ts_request)
    assert [t.request.split()[0] for t in whole] == [r.split()[0] for r, _ in MEMCACHED_EXPECTED]
    single = [(d, data[i : i + 1], ts) for d, data, ts in steps for i in range(len(data))]
    by_byte = sorted(txs(run(single)), key=lambda t: t.ts_request)
    key = [(t.request, t.reply, t.bytes_in, t.bytes_out, t.ts_request, t.ts_reply) for t in whole]
    assert key == [
        (t.request, t.reply, t.bytes_in, t.bytes_out, t.ts_request, t.ts_reply) for t in by_byte
    ]


def test_quiet_requests_pair_by_reply_code_opaque_and_key() -> None:
    # greedy by reply code: a quiet mg takes the VA (it may have sent it)
    got = exchange((b"mg a v q\r\nmg b v q\r\nmn\r\n", b"VA 1\r\nx\r\nMN\r\n"))
    assert [summary(t) for t in got] == [
        ("mg a v q", "VA 1 x"),
        ("mg b v q", "(EN, quiet)"),
        ("mn", "MN"),
    ]
    # the opaque token says the VA is b's: a missed
    got = exchange((b"mg a v q O1\r\nmg b v q O2\r\nmn\r\n", b"VA 1 O2\r\ny\r\nMN\r\n"))
    assert [t.reply for t in got] == ["(EN, quiet)", "VA 1 O2 y", "MN"]
    assert got[0].ts_reply is None and got[1].ts_reply == 1.0 and not got[0].unanswered
    # so does the returned key
    got = exchange((b"mg a v k q\r\nmg b v k q\r\nmn\r\n", b"VA 1 kb\r\ny\r\nMN\r\n"))
    assert [t.reply for t in got] == ["(EN, quiet)", "VA 1 kb y", "MN"]
    # md q suppresses HD, not NF
    got = exchange((b"md x q\r\nmd y q\r\nmn\r\n", b"NF\r\nMN\r\n"))
    assert [t.reply for t in got] == ["NF", "(HD, quiet)", "MN"]
    # errors come back in quiet mode too, with no token: the oldest quiet request takes them
    got = exchange((b"mg a q zz\r\nmn\r\n", b"CLIENT_ERROR invalid flag\r\nMN\r\n"))
    assert [t.reply for t in got] == ["CLIENT_ERROR invalid flag", "MN"] and got[0].error


def test_text_noreply_and_quit_expect_no_reply() -> None:
    got = exchange((b"set a 0 0 1 noreply\r\nx\r\ndelete b noreply\r\nget a\r\n",
                    b"VALUE a 0 1\r\nx\r\nEND\r\n"), (b"quit\r\n", b""))  # fmt: skip
    assert [summary(t) for t in got] == [
        ("set a 0 0 1 noreply x", ""),
        ("delete b noreply", ""),
        ("get a", "1/1 hit: a=x"),
        ("quit", ""),
    ]
    assert [t.unanswered for t in got] == [False] * 4
    assert got[2].details == {"keys": 1, "hits": 1, "value_bytes": 1}


def test_unanswered_and_pending_quiet_at_close() -> None:
    got = txs(run([(C, b"get a\r\nmg b q\r\n", 1.0)]))
    assert [(t.request, t.unanswered, t.details.get("quiet")) for t in got] == [
        ("get a", True, None),
        ("mg b q", False, True),
    ]


def test_big_value_streamed_and_cut_by_snap_length() -> None:
    size = 100_000
    d = MemcachedDecoder()
    events = d.feed(C, b"set big 0 0 %d\r\n" % size + b"a" * 1000, 1.0)
    events += d.gap(C, size - 1000, 1.0, True)  # the rest of the value not captured
    events += d.feed(C, b"\r\n", 1.1)
    assert len(d._parsers[0].buf) == 0  # the value is not buffered
    events += d.feed(S, b"STORED\r\n", 2.0)
    (t,) = txs(events)
    assert t.request == f'set big 0 0 {size} "{"a" * 48}"...({size} bytes)'
    assert (t.reply, t.cut, t.bytes_in) == ("STORED", size - 1000, size + len(t.request[:18]) + 4)
    assert not [e for e in events if isinstance(e, Notice)]
    assert KEEP < 1000


def test_gap_in_framing_resyncs_at_the_next_command() -> None:
    d = MemcachedDecoder()
    events = d.feed(C, b"get a\r\n", 1.0)
    events += d.gap(C, 10, 2.0, False)
    events += d.feed(S, b"END\r\n", 3.0)  # may answer a lost request: not paired
    events += d.feed(C, b"xyz\r\n", 4.0)  # the tail of a data block: no sync point
    events += d.feed(C, b"get b\r\n", 5.0)
    events += d.feed(S, b"VALUE b 0 1\r\n1\r\nEND\r\n", 6.0)
    notices = [e for e in events if isinstance(e, Notice)]
    assert [(n.kind, n.summary) for n in notices] == [("undecodable", "10 bytes missing")]
    assert [summary(t) for t in txs(events)] == [
        ("get a", "(lost sync)"),
        ("get b", "1/1 hit: b=1"),
    ]


def test_capture_started_mid_stream() -> None:
    got = txs(run([(S, b"STORED\r\n", 1.0), (C, b"lue\r\n", 2.0), (C, b"ge", 3.0),
                   (C, b"t a\r\n", 3.5), (S, b"END\r\n", 4.0)]))  # fmt: skip
    assert [summary(t) for t in got] == [("get a", "0/1 hit")]


def test_long_line_is_given_up_with_a_notice() -> None:
    d = MemcachedDecoder()
    events = d.feed(C, b"get " + b"k" * (MAX_LINE + 10), 1.0)
    assert [(type(e).__name__, getattr(e, "summary", "")) for e in events] == [
        ("Notice", "protocol error: line too long")
    ]
    assert len(d._parsers[0].buf) == 0


def test_multi_get_and_stats_keep_a_bounded_summary() -> None:
    keys = [b"k%d" % i for i in range(1000)]
    reply = b"".join(b"VALUE %s 0 2\r\nvv\r\n" % k for k in keys) + b"END\r\n"
    (t,) = exchange((b"get " + b" ".join(keys) + b"\r\n", reply))
    assert t.details == {"keys": 1000, "hits": 1000, "value_bytes": 2000}
    assert t.reply.startswith("1000/1000 hit: k0=vv, k1=vv") and len(t.reply) <= 160
    assert t.bytes_out == len(reply)
    stats = b"".join(b"STAT s%d %d\r\n" % (i, i) for i in range(100)) + b"END\r\n"
    (t,) = exchange((b"stats\r\n", stats))
    assert t.details == {"lines": 100} and t.reply.startswith("STAT s0 0, STAT s1 1")
    assert SHOWN < 100


def test_watch_lines_are_notices() -> None:
    events = run([(C, b"watch\r\n", 1.0), (S, b"OK\r\n", 2.0), (S, b"ts=1 gid=2 type=x\r\n", 3.0)])
    assert [summary(t) for t in txs(events)] == [("watch", "OK")]
    assert [(n.kind, n.summary) for n in events if isinstance(n, Notice)] == [
        ("monitor", "ts=1 gid=2 type=x")
    ]


def test_detect_memcached_apart_from_redis() -> None:
    # a first line only memcached's client sends
    assert detect(b"set foo 0 0 3\r\nbar\r\n", b"") == "memcached"
    assert detect(b"cas foo 0 0 3 12\r\nbar\r\n", b"") == "memcached"
    assert detect(b"set foo 0 0 300\r\n" + b"x" * 60, b"") == "memcached"  # the block goes on
    assert detect(b"set foo 0 0 3\r\nbarx\r\n", b"") is None  # not a data block: wait for a reply
    assert detect(b"mg foo v t\r\n", b"") == "memcached"
    assert detect(b"ms foo 3 T0\r\nbar\r\n", b"") == "memcached"
    assert detect(b"mn\r\n", b"") == "memcached"
    # lines Redis accepts inline too: the reply decides
    assert detect(b"get foo\r\n", b"") is None
    assert detect(b"get foo\r\n", b"END\r\n") == "memcached"
    assert detect(b"get foo\r\n", b"VALUE foo 0 3\r\nbar\r\nEND\r\n") == "memcached"
    assert detect(b"get foo\r\n", b"$-1\r\n") == "resp"
    assert detect(b"GET foo\r\n", b"$3\r\nbar\r\n") == "resp"
    assert detect(b"set foo bar\r\n", b"+OK\r\n") == "resp"
    assert detect(b"incr n 1\r\n", b"2\r\n") == "memcached"
    assert detect(b"stats\r\n", b"STAT pid 1\r\n") == "memcached"
    assert detect(b"stats\r\n", b"stats\r\n") == "unknown"  # an echo server
    assert detect(b"get foo\r\n", b"get foo\r\n") == "unknown"
    assert detect(b"hello world\r\n", b"END\r\n") == "unknown"


def binary_get(key: bytes) -> bytes:
    """A binary-protocol GET request (magic, opcode, key length, extras, type, vbucket,
    body length, opaque, cas)."""
    return struct.pack(">BBHBBHIIQ", 0x80, 0x00, len(key), 0, 0, 0, len(key), 7, 0) + key


def test_binary_protocol_detected_not_decoded(tmp_path: Path) -> None:
    request = binary_get(b"foo")
    with start_memcached(tmp_path) as sock, socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.settimeout(10)
        s.sendall(request)
        reply = s.recv(65536)
    assert reply[0] == 0x81 and reply[1] == 0x00 and reply[6:8] == b"\x00\x01"  # Key not found
    assert detect(request, b"") == "memcached-binary"
    assert detect(request[:20], b"") is None  # not a whole header yet
    assert detect(b"\x80" + request[1:5] + b"\x01" + request[6:], b"") is None  # data type 1


def test_quiet_bulk_load_without_replies_stays_bounded() -> None:
    d = MemcachedDecoder()
    n = MAX_PENDING + 100
    events = d.feed(C, b"ms k 1 q\r\nx\r\n" * n, 1.0)  # quiet sets that all succeed: no reply
    assert len(d._pending) == MAX_PENDING
    assert [(t.reply, t.unanswered, t.details) for t in txs(events)] == [
        ("", False, {"value_bytes": 1, "quiet": True})
    ] * 100
    events = d.feed(C, b"mn\r\n", 2.0) + d.feed(S, b"MN\r\n", 3.0)
    # mn pushes out one more; the others learn their code from MN
    assert [t.reply for t in txs(events)] == [""] + ["(HD, quiet)"] * (MAX_PENDING - 1) + ["MN"]
