"""RESP decoder: real redis-server traffic (captures/redis.jsonl.gz) and synthetic edge cases."""

from __future__ import annotations

import random
from collections import Counter

import hiredis
import pytest
from conftest import capture
from hypothesis import given
from hypothesis import strategies as st

from usniff.decoders.base import Notice, Transaction
from usniff.decoders.resp import KEEP, Agg, Big, Parser, ProtocolError, RespDecoder, RespError
from usniff.outputs.decoded import decode_records
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER


@pytest.fixture(scope="module")
def decoded() -> list[Transaction | Notice]:
    return list(decode_records(capture("redis")))


@pytest.fixture(scope="module")
def txs(decoded: list[Transaction | Notice]) -> dict[str, list[Transaction]]:
    out: dict[str, list[Transaction]] = {}
    for ev in decoded:
        if isinstance(ev, Transaction):
            out.setdefault(ev.request, []).append(ev)
    return out


def reply(txs: dict[str, list[Transaction]], request: str, index: int = 0) -> str:
    return txs[request][index].reply


def test_every_request_is_paired_with_a_latency(decoded: list[Transaction | Notice]) -> None:
    transactions = [e for e in decoded if isinstance(e, Transaction)]
    assert len(transactions) > 450  # redis-cli, redis-benchmark (400), redis-py, raw sockets
    for tx in transactions:
        assert tx.protocol == "resp"
        if tx.details.get("reply_suppressed"):
            assert tx.latency is None and tx.reply == ""
        else:
            assert tx.latency is not None and 0 <= tx.latency < 1, tx
            assert tx.bytes_out > 0 and tx.bytes_in > 0
    assert not [
        e for e in decoded if isinstance(e, Notice) and e.kind in ("undecodable", "unpaired")
    ]


def test_request_bytes_add_up_to_everything_the_clients_sent(
    decoded: list[Transaction | Notice],
) -> None:
    records = capture("redis")
    client_bytes = sum(len(r.data) for r in records if not r.path_is_own)
    assert sum(t.bytes_in for t in decoded if isinstance(t, Transaction)) == client_bytes


def test_redis_cli_commands(txs: dict[str, list[Transaction]]) -> None:
    tx = txs['SET user:42 "{\\"name\\":\\"ann\\",\\"age\\":42}"'][0]
    assert (tx.reply, tx.client_comm, tx.server_comm) == ("+OK", "redis-cli", "redis-server")
    assert reply(txs, "GET user:42") == '"{\\"name\\":\\"ann\\",\\"age\\":42}"'
    assert reply(txs, "INCR counter") == ":1"
    assert reply(txs, "LRANGE list 0 -1") == "*3 [a, b, c]"
    assert reply(txs, "GET nokey") == "(nil)"
    wrong = txs["LPUSH user:42 x"][0]
    assert wrong.error and wrong.reply.startswith("-WRONGTYPE")
    assert txs["NOSUCHCMD arg"][0].reply.startswith("-ERR unknown command 'NOSUCHCMD'")


def test_redis_benchmark_pipelining(decoded: list[Transaction | Notice]) -> None:
    bench = [
        t for t in decoded if isinstance(t, Transaction) and t.client_comm == "redis-benchmark"
    ]
    counts = Counter(t.command for t in bench)
    assert counts["SET"] == 200 and counts["GET"] == 200
    assert all(t.reply == "+OK" for t in bench if t.command == "SET")
    assert all(t.reply == "VXK" for t in bench if t.command == "GET")  # benchmark's -d 3 value


def test_inline_commands(txs: dict[str, list[Transaction]]) -> None:
    assert txs["PING"][0].details == {"inline": True}
    assert reply(txs, "SET inline:1 hello") == "+OK"
    assert reply(txs, "GET inline:1") == "hello"


def test_client_reply_off_and_skip(txs: dict[str, list[Transaction]]) -> None:
    for request in ("CLIENT REPLY OFF", "SET quiet 1", "CLIENT REPLY SKIP", "SET skipped 2"):
        assert txs[request][0].details.get("reply_suppressed") is True
    assert reply(txs, "CLIENT REPLY ON") == "+OK"
    assert reply(txs, "GET skipped") == "2"


def test_pipeline_and_multi_exec(txs: dict[str, list[Transaction]]) -> None:
    for i in range(20):
        assert reply(txs, f"SET pipe:{i} {i}") == "+OK"
        assert reply(txs, f"GET pipe:{i}") == str(i)
    assert reply(txs, "MULTI") == "+OK"
    assert reply(txs, "SET tx:key v") == "+QUEUED"
    assert reply(txs, "EXEC") == "*3 [:2, +OK, v]"
    assert reply(txs, "EXEC", 1) == "(nil)"  # WATCH-aborted transaction


def test_big_bulk_strings_are_streamed(txs: dict[str, list[Transaction]]) -> None:
    [set_big] = [t for r, ts in txs.items() if r.startswith("SET big ") for t in ts]
    assert set_big.request.endswith("...(320000 bytes)") and set_big.bytes_in > 320000
    get_big = txs["GET big"][0]
    assert get_big.reply.startswith('"0123456789abcdef') and get_big.reply.endswith(
        "(320000 bytes)"
    )
    assert get_big.bytes_out == len(b"$320000\r\n") + 320000 + 2
    assert reply(txs, "STRLEN big") == ":320000"


def test_blocking_commands(txs: dict[str, list[Transaction]]) -> None:
    timed_out = txs["BLPOP empty:queue 0.2"][0]
    assert timed_out.reply == "(nil)" and timed_out.details["blocking"] is True
    assert timed_out.latency is not None and 0.19 < timed_out.latency < 0.5
    served = txs["BLPOP jobs 5"][0]
    assert served.reply == "*2 [jobs, job1]" and served.latency is not None and served.latency > 0.1


def test_pubsub_resp2(
    decoded: list[Transaction | Notice], txs: dict[str, list[Transaction]]
) -> None:
    assert reply(txs, "SUBSCRIBE news sports") == (
        "*3 [subscribe, news, :1]; *3 [subscribe, sports, :2]"
    )
    assert reply(txs, "PSUBSCRIBE n*") == "*3 [psubscribe, n*, :3]"
    assert reply(txs, "UNSUBSCRIBE").count("unsubscribe") == 2  # one confirmation per channel
    assert reply(txs, "PUNSUBSCRIBE") == "*3 [punsubscribe, n*, :0]"
    assert '*2 [pong, ""]' in [t.reply for t in txs["PING"]]
    pushes = [e.summary for e in decoded if isinstance(e, Notice) and e.kind == "push"]
    assert "*3 [message, news, hello]" in pushes
    assert "*4 [pmessage, n*, news, hello]" in pushes
    assert "*3 [message, sports, goal]" in pushes


def test_monitor_feed_is_not_a_reply(decoded: list[Transaction | Notice]) -> None:
    lines = [e.summary for e in decoded if isinstance(e, Notice) and e.kind == "monitor"]
    assert len(lines) == 2
    assert lines[0].endswith('"SET" "monitored" "1"') and lines[1].endswith('"GET" "monitored"')


def test_resp3_types_and_pushes(
    decoded: list[Transaction | Notice], txs: dict[str, list[Transaction]]
) -> None:
    assert reply(txs, "HELLO 3").startswith("%7 {server: redis, version: 7.0.15, proto: :3")
    assert reply(txs, "HGETALL hash") == "%2 {f1: v1, f2: v2}"
    assert reply(txs, "SMEMBERS set") == "~2 {m1, m2}"
    assert reply(txs, "ZSCORE zset z") == ",1.5"
    assert reply(txs, 'EVAL "redis.setresp(3); return true" 0') == "#t"
    assert reply(txs, 'EVAL "redis.setresp(3); return {double=3.25}" 0') == ",3.25"
    big = [t for r, ts in txs.items() if "big_number" in r for t in ts]
    assert big[0].reply == "(123456789012345678901234567890"
    assert reply(txs, "INFO server").startswith('"# Server\\r\\nredis_version:7.0.15')
    assert reply(txs, "SUBSCRIBE resp3chan") == ">3 [subscribe, resp3chan, :1]"
    assert reply(txs, "UNSUBSCRIBE resp3chan") == ">3 [unsubscribe, resp3chan, :0]"
    pushes = [e.summary for e in decoded if isinstance(e, Notice) and e.kind == "push"]
    assert ">2 [invalidate, *1 [tracked]]" in pushes
    assert ">3 [message, resp3chan, pushed]" in pushes


def test_redact_masks_passwords() -> None:
    plain = {e.request for e in decode_records(capture("redis")) if isinstance(e, Transaction)}
    assert "HELLO 3 AUTH app s3cret" in plain
    redacted = {
        e.request
        for e in decode_records(capture("redis"), redact=True)
        if isinstance(e, Transaction)
    }
    assert "HELLO 3 AUTH app ***" in redacted
    assert "ACL SETUSER app on >*** ~* &* +@all" in redacted
    assert not [r for r in redacted if "s3cret" in r]
    d = RespDecoder(redact=True)
    d.feed(C, b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$2\r\npw\r\n", 1.0)
    [tx] = d.feed(S, b"+OK\r\n", 1.1)
    assert isinstance(tx, Transaction) and tx.request == "AUTH bob ***"


def test_split_anywhere_gives_the_same_result() -> None:
    """Feeding each chunk in random small pieces must not change a single event."""
    rng = random.Random(1)
    records = [r for r in capture("redis") if len(r.data) < 5000]

    def pieces(data: bytes) -> list[bytes]:
        out, i = [], 0
        while i < len(data):
            n = rng.randint(1, 7)
            out.append(data[i : i + n])
            i += n
        return out

    for r in (r for r in records if not r.path_is_own):
        whole, parts = RespDecoder(), RespDecoder()
        a = whole.feed(C, r.data, 1.0)
        b = [ev for p in pieces(r.data) for ev in parts.feed(C, p, 1.0)]
        assert [
            (t.request, t.bytes_in) for t in a + whole.close() if isinstance(t, Transaction)
        ] == [(t.request, t.bytes_in) for t in b + parts.close() if isinstance(t, Transaction)]


def test_attributes_streamed_strings_and_aggregates() -> None:
    p = Parser(inline=False)
    msgs = p.feed(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:1\r\n:2\r\n", 1.0)
    assert len(msgs) == 1 and msgs[0].attribute is not None
    assert msgs[0].value == Agg("*", [1, 2], 2)
    assert (
        p.feed(b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n", 1.0)[0].value
        == b"Hello word"
    )
    got = p.feed(b"*?\r\n:1\r\n+a\r\n.\r\n%?\r\n+k\r\n:2\r\n.\r\n", 1.0)
    assert [m.value for m in got] == [Agg("*", [1, "a"], 2), Agg("%", ["k", 2], 1)]
    assert p.feed(b"!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n_\r\n#f\r\n", 1.0)[
        0
    ].value == (RespError("SYNTAX invalid syntax"))


def test_big_bulk_keeps_only_a_prefix() -> None:
    p = Parser(inline=False)
    assert p.feed(b"$100000\r\n" + b"x" * 50000, 1.0) == []
    [msg] = p.feed(b"y" * 50000 + b"\r\n", 2.0)
    assert msg.value == Big(b"x" * KEEP, 100000) and msg.nbytes == len(b"$100000\r\n") + 100000 + 2
    assert len(p.buf) == 0


def test_gap_drops_pending_and_resyncs_on_next_command() -> None:
    d = RespDecoder()
    d.feed(C, b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n", 1.0)
    events = d.gap(S, 10, 1.05, False)
    assert [type(e) for e in events] == [Transaction, Notice]
    assert events[0].ts_reply is None and events[1].kind == "undecodable"
    assert d.feed(S, b"$1\r\nx\r\n", 1.1) == []  # no command seen since the gap
    assert d.feed(C, b"1\r\n*1\r\n$4\r\nPING\r\n", 1.2) == []  # not at a command start
    d.feed(C, b"*1\r\n$4\r\nPING\r\n", 1.3)
    [tx] = d.feed(S, b"+PONG\r\n", 1.4)
    assert isinstance(tx, Transaction) and (tx.request, tx.reply) == ("PING", "+PONG")


def test_protocol_error_declares_undecodable() -> None:
    d = RespDecoder()
    d.feed(C, b"*1\r\n$4\r\nPING\r\n", 1.0)
    events = d.feed(S, b"+OK\r\n?garbage\r\n", 1.1)
    assert [getattr(e, "kind", "tx") for e in events] == ["tx", "undecodable"]


resp_values = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(lambda i: b":%d\r\n" % i),
        st.binary(max_size=300).map(lambda b: b"$%d\r\n%s\r\n" % (len(b), b)),
        st.from_regex(rb"\A[a-zA-Z0-9 ]{0,20}\Z").map(lambda s: b"+" + s + b"\r\n"),
        st.from_regex(rb"\A[A-Z]{1,8} [a-z ]{0,20}\Z").map(lambda s: b"-" + s + b"\r\n"),
        st.just(b"$-1\r\n"),
        st.just(b"*-1\r\n"),
    ),
    lambda children: st.lists(children, max_size=20).map(
        lambda items: b"*%d\r\n" % len(items) + b"".join(items)
    ),
    max_leaves=40,
)


def _plain(value: object) -> object:
    if isinstance(value, Agg):
        return [_plain(v) for v in value.items]
    if isinstance(value, Big):
        return value.prefix
    if isinstance(value, RespError):
        return ("error", value.message)
    if isinstance(value, str):
        return value.encode()
    return value


def _hiredis_plain(value: object) -> object:
    if isinstance(value, list):
        return [_hiredis_plain(v) for v in value[:16]]
    if isinstance(value, hiredis.ReplyError):
        return ("error", str(value))
    if isinstance(value, bytes):
        return value[:KEEP]
    return value


@given(st.lists(resp_values, min_size=1, max_size=10), st.integers(1, 64))
def test_parser_agrees_with_hiredis(messages: list[bytes], piece: int) -> None:
    wire = b"".join(messages)
    reader = hiredis.Reader()
    reader.feed(wire)
    expected = []
    while (value := reader.gets()) is not False:
        expected.append(_hiredis_plain(value))
    parser = Parser(inline=False)
    got = [m for i in range(0, len(wire), piece) for m in parser.feed(wire[i : i + piece], 1.0)]
    assert [_plain(m.value) for m in got] == expected
    assert [m.nbytes for m in got] == [len(m) for m in messages]


def test_latency_runs_to_the_first_byte_of_the_reply() -> None:
    """A reply sent in two writes is stamped with the first: latency is the server's time."""
    d = RespDecoder()
    assert d.feed(C, b"*2\r\n$3\r\nGET\r\n", 1.0) == []
    assert d.feed(C, b"$1\r\nk\r\n", 1.5) == []  # the request's last byte
    assert d.feed(S, b"$6\r\nabc", 2.0) == []
    [tx] = d.feed(S, b"def\r\n", 7.0)
    assert (tx.ts_request, tx.ts_reply, tx.latency) == (1.5, 2.0, 0.5)
    # a pipelined reply starting inside the previous one's last chunk takes that chunk's time
    d.feed(C, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", 8.0)
    [first] = d.feed(S, b"+PONG\r\n+PO", 9.0)
    [second] = d.feed(S, b"NG\r\n", 10.0)
    assert (first.ts_reply, second.ts_reply) == (9.0, 9.0)


def test_cut_inside_a_bulk_string_is_skipped_and_marked() -> None:
    """-s: the bytes cut from a bulk string are counted; framing continues after them."""
    d = RespDecoder()
    request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\n" + b"v" * 1000 + b"\r\n"
    assert d.feed(C, request[:100], 1.0) == []
    assert d.gap(C, len(request) - 100, 1.0, True) == []  # ends the request
    [tx] = d.feed(S, b"+OK\r\n", 2.0)
    assert (tx.reply, tx.bytes_in, tx.cut, tx.latency) == (
        "+OK",
        len(request),
        len(request) - 100,
        1.0,
    )
    assert tx.request.endswith("...(1000 bytes)") and not tx.unanswered
    # a cut over framing (pipelined commands) resyncs, stamped with the record's time
    d.feed(C, b"*1\r\n$4\r\nPING\r\n*1\r\n$4", 3.0)
    [lost, notice] = d.gap(C, 100, 3.0, True)
    assert isinstance(lost, Transaction) and lost.request == "PING"
    # its reply may have come (in bytes that cannot be paired): not claimed unanswered
    assert (lost.reply, lost.unanswered, lost.latency) == ("(lost sync)", False, None)
    assert isinstance(notice, Notice) and (notice.ts, notice.kind) == (3.0, "undecodable")
    assert notice.summary == "100 bytes cut by the snap length"


def test_a_cut_before_sync_forgets_the_bytes_kept_of_that_send() -> None:
    d = RespDecoder()
    assert d.feed(C, b"*1\r\n$4", 1.0) == []  # too short to tell: kept for the next chunk
    assert d.gap(C, 10, 1.0, True) == []
    d.feed(C, b"*1\r\n$4\r\nPING\r\n", 2.0)  # a new send(): not glued to the cut one
    [tx] = d.feed(S, b"+PONG\r\n", 2.5)
    assert (tx.request, tx.reply) == ("PING", "+PONG")


def _run_parser(parser: Parser, chunks: list[bytes]) -> list[str]:
    """What the parser returns for each chunk (or the error it raises), as text."""
    seen = []
    for i, chunk in enumerate(chunks):
        try:
            seen.append(repr(parser.feed(chunk, float(i))))
        except ProtocolError as exc:
            seen.append(f"error {exc}")
            break
    return seen


_edge_bulk = st.sampled_from([0, 1, KEEP - 1, KEEP, KEEP + 1]).map(
    lambda n: b"$%d\r\n%s\r\n" % (n, b"v" * n)
)
_commands = st.lists(st.one_of(_edge_bulk, resp_values), min_size=1, max_size=4).map(
    lambda items: b"*%d\r\n" % len(items) + b"".join(items)
)


@given(
    st.lists(st.one_of(resp_values, _commands, _edge_bulk), min_size=1, max_size=8),
    st.lists(st.integers(0, 400), max_size=6),
    st.lists(
        st.tuples(st.integers(0, 60), st.sampled_from([b"", b"x", b"\r", b"\n", b"-"])), max_size=2
    ),  # fmt: skip
    st.booleans(),
)
def test_whole_message_fast_path_agrees_with_the_general_parser(
    messages: list[bytes], cuts: list[int], edits: list[tuple[int, bytes]], inline: bool
) -> None:
    """Parser._whole (one call per common message) is checked against the general
    token-by-token parser (the reference) on valid and damaged streams, cut anywhere."""
    wire = bytearray(b"".join(messages))
    for nth, junk in edits:  # damage a line end (the framing the fast path checks)
        at = -1
        for _ in range(nth % max(1, wire.count(b"\r\n")) + 1):
            at = wire.find(b"\r\n", at + 1)
        if at >= 0:
            wire[at : at + 1] = junk
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    chunks = [bytes(wire[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    fast = _run_parser(Parser(inline=inline), chunks)
    assert fast == _run_parser(Parser(inline=inline, fast=False), chunks)
