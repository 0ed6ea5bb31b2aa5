"""FastCGI decoder: records built here by hand from the specification (FastCGI 1.0),
fed as a web server and an application would send them."""

from __future__ import annotations

import json
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import CAPTURES, capture
from hypothesis import given
from hypothesis import strategies as st
from pcap_helpers import TSHARK
from php_session import CONCURRENT, COOKIE, PASSWORD, POST_BODY, TOKEN

from usniff.cli.read import dissect_wireshark, read_records
from usniff.decoders import fastcgi
from usniff.decoders.base import Notice, Transaction
from usniff.decoders.fastcgi import FastcgiDecoder, parse_pairs
from usniff.decoders.registry import detect
from usniff.outputs.decoded import decode_records
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER
BEGIN, ABORT, END, PARAMS, STDIN, STDOUT, STDERR, DATA, GET_VALUES, RESULT, UNKNOWN = range(1, 12)


def record(kind: int, rid: int, content: bytes = b"", padding: int = 0) -> bytes:
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), padding, 0) + content + bytes(padding)


def length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def pairs(items: dict[str, str]) -> bytes:
    out = b""
    for name, value in items.items():
        n, v = name.encode(), value.encode()
        out += length(len(n)) + length(len(v)) + n + v
    return out


def begin(rid: int, role: int = 1, keep: bool = True) -> bytes:
    return record(BEGIN, rid, struct.pack(">HB5x", role, int(keep)))


def cgi(method: str, uri: str, **extra: str) -> dict[str, str]:
    path, _, query = uri.partition("?")
    return {"REQUEST_METHOD": method, "SCRIPT_NAME": path, "REQUEST_URI": uri,
            "QUERY_STRING": query, "SCRIPT_FILENAME": "/srv/app" + path, **extra}  # fmt: skip


def request(rid: int, params: dict[str, str], stdin: bytes = b"", split: int = 0) -> bytes:
    """BEGIN_REQUEST, the params (in two records split at byte ``split`` when given),
    the body in STDIN records of at most 7 bytes (padded to 8, as nginx does), the end."""
    body = pairs(params)
    parts = [body[:split], body[split:]] if split else [body]
    out = begin(rid) + b"".join(record(PARAMS, rid, p) for p in parts) + record(PARAMS, rid)
    for i in range(0, len(stdin), 7):
        chunk = stdin[i : i + 7]
        out += record(STDIN, rid, chunk, (8 - len(chunk) % 8) % 8)
    return out + record(STDIN, rid)


def end(rid: int, app: int = 0, proto: int = 0) -> bytes:
    return record(END, rid, struct.pack(">IB3x", app, proto))


def answer(rid: int, stdout: bytes, stderr: bytes = b"", app: int = 0, proto: int = 0) -> bytes:
    out = record(STDERR, rid, stderr) if stderr else b""
    if stdout:
        out += record(STDOUT, rid, stdout) + record(STDOUT, rid)
    return out + end(rid, app, proto)


def records_of(data: bytes) -> list[bytes]:
    out = []
    while data:
        clen, padding = struct.unpack_from(">HB", data, 4)
        size = 8 + clen + padding
        out.append(data[:size])
        data = data[size:]
    return out


PAGE = b"Content-type: text/html; charset=UTF-8\r\n\r\n<h1>hi</h1>\n"


def run(steps: list[tuple[Direction, bytes]], redact: bool = False) -> list[Transaction | Notice]:
    decoder = FastcgiDecoder(redact=redact)
    events: list[Transaction | Notice] = []
    for i, (direction, data) in enumerate(steps):
        events += decoder.feed(direction, data, 10.0 + i)
    return events + decoder.close()


def txs(events: list[Transaction | Notice]) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def notices(events: list[Transaction | Notice]) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice)]


def test_one_request_paired_with_its_answer() -> None:
    req = request(1, cgi("GET", "/index.php?a=1", CONTENT_LENGTH=""))
    resp = answer(1, b"X-Powered-By: PHP/8.2\r\n" + PAGE)
    [tx] = run([(C, req), (S, resp)])
    assert isinstance(tx, Transaction)
    assert tx.protocol == "fastcgi" and tx.command == "/index.php"
    assert tx.request == "#1 GET /index.php?a=1 file=/srv/app/index.php"
    assert tx.reply == "200 text/html; charset=UTF-8, 12 bytes"
    assert (tx.bytes_in, tx.bytes_out) == (len(req), len(resp))
    assert (tx.ts_request, tx.ts_reply, tx.error, tx.unanswered) == (10.0, 11.0, False, False)
    d = tx.details
    assert d["role"] == "RESPONDER" and d["keep_conn"] is True and d["stdin_bytes"] == 0
    assert d["params"]["SCRIPT_FILENAME"] == "/srv/app/index.php"
    assert (d["status"], d["body_bytes"], d["app_status"]) == (200, 12, 0)
    assert d["protocol_status"] == "REQUEST_COMPLETE"


def test_post_body_size_and_content_length() -> None:
    body = b"x" * 50
    req = request(1, cgi("POST", "/post.php", CONTENT_LENGTH="50"), body)
    [tx] = run([(C, req), (S, answer(1, b"Status: 201 Created\r\n\r\nok"))])
    assert isinstance(tx, Transaction)
    assert tx.request == "#1 POST /post.php file=/srv/app/post.php stdin=50"
    assert tx.reply == "201, 2 bytes" and tx.details["stdin_bytes"] == 50
    short = request(1, cgi("POST", "/post.php", CONTENT_LENGTH="60"), body)
    [tx] = txs(run([(C, short), (S, answer(1, PAGE))]))
    assert "CONTENT_LENGTH=60 stdin=50" in tx.request


def test_latency_from_the_empty_stdin_record_to_the_first_stdout_byte() -> None:
    head = begin(1) + record(PARAMS, 1, pairs(cgi("POST", "/p.php"))) + record(PARAMS, 1)
    steps = [
        (C, head),  # 10
        (C, record(STDIN, 1, b"abc")),  # 11
        (C, record(STDIN, 1)),  # 12: the request's last byte
        (S, record(STDERR, 1, b"PHP Warning: x")),  # 13: the answer's first record
        (S, record(STDOUT, 1, PAGE)),  # 14: the first STDOUT byte
        (S, record(STDOUT, 1) + end(1)),  # 15
    ]
    [tx] = txs(run(steps))
    assert (tx.ts_request, tx.ts_reply) == (12.0, 14.0)
    assert tx.reply == '200 text/html; charset=UTF-8, 12 bytes, stderr "PHP Warning: x"'


def test_keep_alive_requests_reuse_the_id() -> None:
    steps = []
    for i in range(3):
        steps += [
            (C, request(1, cgi("GET", f"/p{i}.php"))),
            (S, answer(1, b"Status: 40%d\r\n\r\n" % i)),
        ]
    got = [(t.command, t.reply) for t in txs(run(steps))]
    assert got == [
        ("/p0.php", "400, 0 bytes"),
        ("/p1.php", "401, 0 bytes"),
        ("/p2.php", "402, 0 bytes"),
    ]


def test_multiplexed_requests_pair_by_id() -> None:
    reqs = {rid: request(rid, cgi("GET", f"/r{rid}.php"), b"body%d" % rid) for rid in (1, 2, 3)}
    # interleave the three requests record by record, answer them in another order
    split = {rid: records_of(reqs[rid]) for rid in reqs}
    steps = []
    for i in range(max(map(len, split.values()))):
        for rid in (1, 2, 3):
            if i < len(split[rid]):
                steps.append((C, split[rid][i]))
    answers = {rid: answer(rid, b"Status: 2%02d\r\n\r\n" % rid + b"y" * rid) for rid in (3, 1, 2)}
    r3, r1, r2 = (records_of(answers[rid]) for rid in (3, 1, 2))
    steps += [
        (S, r3[0]),
        (S, r1[0]),
        (S, b"".join(r3[1:])),
        (S, b"".join(r2)),
        (S, b"".join(r1[1:])),
    ]
    got = {t.details["request_id"]: t for t in txs(run(steps))}
    assert sorted(got) == [1, 2, 3]
    for rid, tx in got.items():
        assert tx.command == f"/r{rid}.php" and tx.reply == f"2{rid:02d}, {rid} bytes", tx
        assert tx.details["stdin_bytes"] == 5 and tx.bytes_in == len(reqs[rid])
        assert tx.bytes_out == len(answers[rid])


def test_params_split_anywhere_and_four_byte_lengths() -> None:
    params = cgi("GET", "/x.php", HTTP_X_LONG="v" * 300, **{"N" * 200: "w" * 130})
    body = pairs(params)
    for split in (1, 2, 5, len(body) // 2, len(body) - 1):
        [tx] = txs(run([(C, request(7, params, split=split)), (S, answer(7, PAGE))]))
        assert tx.details["params"] == params, split


@given(cuts=st.lists(st.integers(0, 2000), max_size=30))
def test_any_chunking_decodes_the_same(cuts: list[int]) -> None:
    req = request(1, cgi("POST", "/a.php", HTTP_COOKIE="c" * 200), b"z" * 40) + request(
        2, cgi("GET", "/b.php")
    )
    resp = answer(2, PAGE, b"warning") + answer(1, b"Location: /next\r\n\r\n")
    whole = [(t.request, t.reply, t.bytes_in, t.bytes_out) for t in txs(run([(C, req), (S, resp)]))]
    steps: list[tuple[Direction, bytes]] = []
    for direction, data in ((C, req), (S, resp)):
        marks = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
        steps += [(direction, data[a:b]) for a, b in zip(marks, marks[1:], strict=False)]
    chunked = [(t.request, t.reply, t.bytes_in, t.bytes_out) for t in txs(run(steps))]
    assert chunked == whole
    assert whole[1][1] == "302 -> /next, 0 bytes" and whole[0][1].endswith(", stderr warning")


def test_cgi_status_rules() -> None:
    cases = {
        b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nno": (
            "404 text/plain, 2 bytes",
            True,
        ),
        b"Location: http://x/\n\n": ("302 -> http://x/, 0 bytes", False),
        b"Status: 301\r\nLocation: /a\r\n\r\n": ("301 -> /a, 0 bytes", False),
        b"Status: oops\r\n\r\n": ("None, 0 bytes", False),
        b"no header end": ("? (no end of the CGI header in 13 bytes)", False),
    }
    for stdout, (reply, error) in cases.items():
        [tx] = txs(run([(C, request(1, cgi("GET", "/s.php"))), (S, answer(1, stdout))]))
        assert (tx.reply, tx.error) == (reply, error), stdout


def test_end_request_statuses_and_abort() -> None:
    req = request(1, cgi("GET", "/a.php"))
    [busy] = txs(run([(C, req), (S, end(1, app=0, proto=2))]))
    assert busy.reply == "OVERLOADED" and busy.error and busy.ts_reply == 11.0
    [failed] = txs(run([(C, req), (S, answer(1, PAGE, app=255))]))
    assert failed.reply.endswith(", app status 255") and failed.error
    [aborted] = txs(run([(C, req), (C, record(ABORT, 1)), (S, end(1))]))
    assert aborted.request.endswith(" ABORT_REQUEST") and aborted.details["aborted"] is True
    assert aborted.ts_request == 11.0 and aborted.reply == ""


def test_management_records() -> None:
    query = record(GET_VALUES, 0, pairs({"FCGI_MAX_CONNS": "", "FCGI_MPXS_CONNS": ""}))
    result = record(RESULT, 0, pairs({"FCGI_MAX_CONNS": "5", "FCGI_MPXS_CONNS": "0"}))
    odd = record(42, 0, b"??")
    unknown = record(UNKNOWN, 0, bytes([42]) + bytes(7))
    events = run([(C, query), (S, result), (C, odd), (S, unknown)])
    values, other = txs(events)
    assert (values.command, values.request) == (
        "GET_VALUES",
        "#0 GET_VALUES FCGI_MAX_CONNS FCGI_MPXS_CONNS",
    )
    assert values.reply == "FCGI_MAX_CONNS=5 FCGI_MPXS_CONNS=0" and values.latency == 1.0
    assert (other.command, other.reply, other.bytes_out) == ("type 42", "UNKNOWN_TYPE 42", 16)


def test_unanswered_and_incomplete_at_close() -> None:
    req = request(1, cgi("GET", "/slow.php"))
    [tx] = txs(run([(C, req)]))
    assert tx.unanswered and tx.reply == "" and tx.latency is None
    [tx] = txs(run([(C, req), (S, record(STDOUT, 1, PAGE))]))
    assert (
        not tx.unanswered and tx.reply == "200 text/html; charset=UTF-8, 12 bytes, no END_REQUEST"
    )


def test_capture_started_mid_request() -> None:
    whole = request(1, cgi("POST", "/m.php"), b"abcdefghij")
    tail = whole[whole.index(record(PARAMS, 1)) :]  # from the empty PARAMS on
    events = run([(C, tail), (S, answer(1, PAGE)), (C, request(1, cgi("GET", "/n.php"))),
                  (S, answer(1, PAGE))])  # fmt: skip
    first, second = txs(events)
    assert first.request == "#1 (begun before the capture) stdin=10" and first.latency == 1.0
    assert first.details["begin_not_seen"] is True and first.command == "(params not seen)"
    assert second.command == "/n.php" and not notices(events)


def test_records_of_no_request_in_flight_are_reported() -> None:
    events = run([(C, request(1, cgi("GET", "/a.php"))), (S, answer(1, PAGE)),
                  (C, record(STDIN, 1, b"late")), (S, answer(5, PAGE))])  # fmt: skip
    assert len(txs(events)) == 1
    stray, orphan = notices(events)
    assert (
        stray.kind == "unpaired"
        and stray.summary == "#1 STDIN record for no request in flight (12 bytes)"
    )
    assert orphan.kind == "unpaired" and orphan.direction is S
    size = len(answer(5, PAGE))
    assert orphan.summary == (
        f"#5 answer to a request not seen ({size} bytes, app status 0, REQUEST_COMPLETE)"
    )


def test_snap_length_cut_inside_a_record_keeps_the_framing() -> None:
    body = b"b" * 1000
    req = request(1, cgi("POST", "/up.php"), b"")[:-8] + record(STDIN, 1, body) + record(STDIN, 1)
    cut_at = req.index(body) + 100
    decoder = FastcgiDecoder()
    events = decoder.feed(C, req[:cut_at], 1.0)
    events += decoder.gap(C, 900, 1.0, True)
    events += decoder.feed(C, req[cut_at + 900 :], 2.0)
    events += decoder.feed(S, answer(1, PAGE), 3.0)
    [tx] = events
    assert isinstance(tx, Transaction)
    assert tx.cut == 900 and tx.bytes_in == len(req) and tx.details["stdin_bytes"] == 1000
    assert tx.latency == 1.0 and tx.reply.startswith("200 ")


def test_lost_bytes_resync_at_the_next_chunk_and_mark_requests_in_flight() -> None:
    decoder = FastcgiDecoder()
    events = decoder.feed(C, request(1, cgi("GET", "/a.php")), 1.0)
    events += decoder.feed(S, record(STDOUT, 1, PAGE), 2.0)
    events += decoder.gap(S, 500, 3.0, False)  # the rest of the answer, lost
    events += decoder.feed(S, b"body bytes, not a record", 4.0)  # mid-record: not a sync point
    events += decoder.feed(C, request(2, cgi("GET", "/b.php")), 5.0)
    events += decoder.feed(S, answer(2, PAGE), 6.0)
    events += decoder.close()
    [lost] = notices(events)
    assert (lost.kind, lost.direction, lost.summary, lost.ts) == (
        "undecodable",
        S,
        "500 bytes missing",
        3.0,
    )
    second, first = txs(events)
    assert second.command == "/b.php" and second.reply.startswith("200 ") and second.latency == 1.0
    assert first.command == "/a.php" and first.details["lost_sync"] is True
    assert first.reply.endswith("no END_REQUEST, (lost sync)") and not first.unanswered


def test_bad_version_is_a_protocol_error_then_resync() -> None:
    bad = b"\x02" + request(1, cgi("GET", "/a.php"))[1:]
    ok, other = request(1, cgi("GET", "/ok.php")), request(2, cgi("GET", "/b.php"))
    events = run([(C, ok), (C, bad), (C, other), (S, answer(1, PAGE) + answer(2, PAGE))])
    assert [n.summary for n in notices(events)] == ["protocol error: record version 2, not 1"]
    assert [(t.command, t.details.get("lost_sync", False)) for t in txs(events)] == [
        ("/ok.php", True),
        ("/b.php", False),
    ]


def test_redact_masks_credentials_in_params_queries_and_location() -> None:
    secrets = {"HTTP_AUTHORIZATION": "Basic c2VjcmV0", "HTTP_COOKIE": "sid=cookie-secret",
               "PHP_AUTH_PW": "pw-secret", "HTTP_X_API_KEY": "key-secret",
               "HTTP_PROXY_AUTHORIZATION": "Bearer proxy-secret"}  # fmt: skip
    params = cgi("GET", "/login.php?user=ann&token=tok-secret&password=qs-secret", **secrets)
    params["PHP_AUTH_USER"] = "ann"
    stdout = b"Status: 302\r\nLocation: /home?session=loc-secret&x=1\r\n\r\n"
    steps = [(C, request(1, params)), (S, answer(1, stdout))]
    [tx] = txs(run(steps, redact=True))
    dumped = json.dumps([tx.request, tx.reply, tx.details])
    for secret in ("c2VjcmV0", "cookie-secret", "pw-secret", "key-secret", "proxy-secret",
                   "tok-secret", "qs-secret", "loc-secret"):  # fmt: skip
        assert secret not in dumped, secret
    shown = tx.details["params"]
    assert shown["HTTP_COOKIE"] == "***" and shown["PHP_AUTH_USER"] == "ann"
    assert shown["QUERY_STRING"] == "user=ann&token=***&password=***"
    assert tx.request.startswith("#1 GET /login.php?user=ann&token=***&password=*** ")
    assert tx.reply == "302 -> /home?session=***&x=1, 0 bytes"
    [plain] = txs(run(steps))
    assert (
        "tok-secret" in plain.request
        and plain.details["params"]["HTTP_COOKIE"] == "sid=cookie-secret"
    )


def test_memory_is_bounded() -> None:
    decoder = FastcgiDecoder()
    huge = pairs({"HTTP_X": "v" * 60000})
    decoder.feed(
        C, begin(1) + record(PARAMS, 1, huge[:60000]) + record(PARAMS, 1, huge[60000:]), 1.0
    )
    assert len(decoder._active[1].params_buf) <= fastcgi.MAX_PARAMS
    events = []
    for rid in range(2, 400):
        events += decoder.feed(C, begin(rid), 2.0)
    assert len(decoder._active) == fastcgi.MAX_ACTIVE
    assert sum(isinstance(e, Transaction) for e in events) == 400 - 1 - fastcgi.MAX_ACTIVE
    [first] = [e for e in events if isinstance(e, Transaction) and e.details["request_id"] == 1]
    assert (
        first.details["params"]["..."] == "(params incomplete)"
        and first.details["params_dropped_bytes"] > 0
    )


def test_parse_pairs_reports_leftovers() -> None:
    data = pairs({"A": "1", "LONG": "x" * 200})
    assert parse_pairs(data) == ([(b"A", b"1"), (b"LONG", b"x" * 200)], 0)
    assert parse_pairs(data[:-1]) == ([(b"A", b"1")], len(data) - 4 - 1)


def test_detection() -> None:
    nginx = request(1, cgi("GET", "/a.php"))
    assert detect(nginx[:16], b"") == "fastcgi"
    assert detect(nginx[:15], b"") is None  # not enough yet: wait
    assert detect(record(GET_VALUES, 0, pairs({"FCGI_MAX_REQS": ""})), b"") == "fastcgi"
    assert fastcgi.begin_request(begin(1, role=9)) is False
    assert fastcgi.begin_request(begin(0)) is False  # request id 0 is for management records
    # mid-connection: a request record answered for the same id
    assert detect(record(STDIN, 3, b"xyz"), record(STDOUT, 3, PAGE)) == "fastcgi"
    assert detect(record(STDIN, 3, b"xyz"), record(STDOUT, 4, PAGE)) == "unknown"
    # other protocols' first bytes are not taken for FastCGI
    for other in (b"*1\r\n$4\r\nPING\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(16)):
        assert not fastcgi.begin_request(other) and detect(other, b"") != "fastcgi"


@pytest.mark.parametrize("direction", [C, S])
def test_garbage_before_sync_is_ignored(direction: Direction) -> None:
    decoder = FastcgiDecoder()
    assert decoder.feed(direction, b"GET / HTTP/1.1\r\n\r\n", 1.0) == []
    assert decoder.feed(direction, b"\x01", 1.0) == []  # could be a header: kept
    assert decoder._sides[direction].sync_buf == b"\x01"


# --------------------------------------------------------------------------- the real capture
# captures/fastcgi.pcapng: usniff -w of tests/php_session.py against nginx + php-fpm 8.2


def _capture_txs(redact: bool = False) -> list[Transaction]:
    events = list(decode_records(capture("fastcgi"), redact=redact))
    assert all(isinstance(e, Transaction) for e in events), [
        e for e in events if isinstance(e, Notice)
    ]
    return [e for e in events if isinstance(e, Transaction)]


def test_capture_decodes_every_request() -> None:
    got = {}
    for tx in _capture_txs():
        assert tx.protocol == "fastcgi" and tx.latency is not None and tx.latency > 0, tx
        assert tx.server_comm == "php-fpm8.2" and tx.client_pid and tx.server_pid
        uri = tx.details.get("params", {}).get("REQUEST_URI", tx.command)
        got[uri] = (tx.client_comm, tx.details.get("status"), tx.details.get("body_bytes"),
                    tx.details.get("stdin_bytes"), tx.error)  # fmt: skip
    assert got == {
        "/hello.php?name=ann": ("nginx", 200, 10, 0, False),
        "/nope.php": ("nginx", 404, 16, 0, True),
        "/warn.php": ("nginx", 200, 7, 0, False),
        "/slow.php": ("nginx", 200, 6, 0, False),
        "/teapot.php": ("nginx", 418, 16, 0, True),
        "/fail.php": ("nginx", 500, 0, 0, True),
        "/post.php?x=1": ("nginx", 200, 40, len(POST_BODY), False),
        f"/hello.php?name=bob&token={TOKEN}": ("nginx", 200, 10, 0, False),
        **{f"/slow.php?n={i}": ("nginx", 200, 6, 0, False) for i in range(CONCURRENT)},
        "/post.php?via=libfcgi": ("cgi-fcgi", 200, 36, 18, False),
        "GET_VALUES": ("python", None, None, None, False),
    }


def test_capture_details() -> None:
    txs = {t.request.split(" file=")[0]: t for t in _capture_txs()}
    slow = [t.latency for k, t in txs.items() if "/slow.php" in k]
    assert len(slow) == 1 + CONCURRENT and min(x or 0 for x in slow) >= 0.2, slow
    warn = txs["#1 GET /warn.php"]
    assert warn.details["stderr"].startswith("PHP message: usniff-warning: disk almost full")
    assert txs["#1 GET /teapot.php"].reply == "418 application/json, 16 bytes"
    assert txs["#0 GET_VALUES FCGI_MAX_CONNS FCGI_MAX_REQS FCGI_MPXS_CONNS"].reply == (
        "FCGI_MPXS_CONNS=0"
    )
    records = capture("fastcgi")
    client = sum(len(r.data) for r in records if not r.path_is_own)
    server = sum(len(r.data) for r in records if r.path_is_own)
    assert (sum(t.bytes_in for t in txs.values()), sum(t.bytes_out for t in txs.values())) == (
        client, server
    )  # fmt: skip


def test_capture_redacted() -> None:
    txs = _capture_txs(redact=True)
    dumped = json.dumps([(t.request, t.reply, t.details) for t in txs])
    for secret in (PASSWORD, COOKIE, TOKEN):
        assert secret not in dumped
    assert "HTTP_AUTHORIZATION" in dumped and "token=***" in dumped


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_read_dissect_wireshark_gives_fastcgi_its_port() -> None:
    """Stock Wireshark has no FastCGI port: `usniff read --dissect wireshark` passes it."""
    types = Counter(
        p.fields["type"]
        for p in dissect_wireshark(str(CAPTURES / "fastcgi.pcapng"))
        if p.protocol == "fcgi"
    )
    assert types["FCGI_BEGIN_REQUEST (1)"] == types["FCGI_END_REQUEST (3)"] == 12, types
    assert types["FCGI_GET_VALUES (9)"] == types["FCGI_GET_VALUES_RESULT (10)"] == 1, types


def test_cgi_header_split_across_stdout_records() -> None:
    stdout = b"Status: 503 Busy\r\nContent-Type: text/plain\r\n\r\nlater"
    for split in range(1, len(stdout)):
        steps = [(C, request(1, cgi("GET", "/h.php"))),
                 (S, record(STDOUT, 1, stdout[:split]) + record(STDOUT, 1, stdout[split:])
                  + record(STDOUT, 1) + end(1))]  # fmt: skip
        [tx] = txs(run(steps))
        assert tx.reply == "503 text/plain, 5 bytes" and tx.details["header_bytes"] == 46, split


@pytest.mark.skipif(TSHARK is None, reason="editcap (Wireshark) is not installed")
def test_capture_as_plain_tcp_pcap_decodes_the_same(tmp_path: Path) -> None:
    """Without usniff's comments (classic pcap) the flows are plain TCP on port 9000."""
    pcap = tmp_path / "fastcgi.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(CAPTURES / "fastcgi.pcapng"), str(pcap)],
                   check=True)  # fmt: skip
    plain = [e for e in decode_records(read_records(str(pcap))) if isinstance(e, Transaction)]

    def rows(events: list[Transaction]) -> list[tuple[str, str, int, int]]:
        return [(t.request, t.reply, t.bytes_in, t.bytes_out) for t in events]

    usniffs = _capture_txs()
    assert rows(plain) == rows(usniffs) and len(plain) == 13
    # classic pcap keeps microseconds
    assert [t.latency for t in plain] == pytest.approx([t.latency for t in usniffs], abs=2e-6)
    assert {t.path for t in plain} == {"10.0.0.1:9000"}


def test_params_cut_by_the_snap_length_are_kept_up_to_the_cut() -> None:
    params = cgi("GET", "/c.php", HTTP_X_BIG="b" * 300)
    body = pairs(params)
    params["HTTP_X_AFTER"] = "a" * 1000  # misread from inside, its a's make 97-byte "pairs"
    after = pairs({"HTTP_X_AFTER": params["HTTP_X_AFTER"]})
    parts = (body[:40], body[40:], after)  # the cut falls in the second record
    req = begin(1) + b"".join(record(PARAMS, 1, p) for p in parts) + record(PARAMS, 1)
    req += record(STDIN, 1)
    cut_at = len(begin(1)) + 8 + 40 + 8 + 100
    decoder = FastcgiDecoder()
    events = decoder.feed(C, req[:cut_at], 1.0) + decoder.gap(C, 150, 1.0, True)
    events += decoder.feed(C, req[cut_at + 150 :], 2.0) + decoder.feed(S, answer(1, PAGE), 3.0)
    [tx] = events
    assert isinstance(tx, Transaction) and tx.cut == 150 and tx.reply.startswith("200 ")
    shown = tx.details["params"]
    assert shown["REQUEST_METHOD"] == "GET" and shown["..."] == "(params incomplete)"
    assert set(shown) <= set(params) | {"..."}, shown  # nothing parsed from misaligned bytes


def test_stdout_after_lost_bytes_is_not_read_as_the_cgi_header() -> None:
    decoder = FastcgiDecoder()
    events = decoder.feed(C, request(1, cgi("GET", "/l.php")), 1.0)
    events += decoder.gap(S, 60, 2.0, False)  # the first STDOUT record, lost
    events += decoder.feed(S, record(STDOUT, 1, b"Status: 200\r\n\r\nbody\r\n\r\n"), 3.0)
    events += decoder.feed(S, record(STDOUT, 1) + end(1), 4.0)
    [_, tx] = events
    assert isinstance(tx, Transaction) and "status" not in tx.details, tx
    assert tx.reply == "? (CGI header not captured), (lost sync)", tx.reply
