"""DecodedOutput (the CLI glue): text lines, JSON lines, statistics, redaction, detection."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import re
from datetime import datetime

import pytest
from click.testing import CliRunner

from tests.support.captures import capture
from usniff.cli.main import main
from usniff.decoders.base import Transaction
from usniff.decoders.engine import Decoding
from usniff.decoders.registry import detect
from usniff.events import CaptureStats, Record
from usniff.outputs.base import clock_text
from usniff.outputs.decoded import DecodedOutput
from usniff.outputs.stats import Stats


def run(name: str, **kw: object) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    output = DecodedOutput(out, stats_stream=err, **kw)  # type: ignore[arg-type]
    records = capture(name)
    for i in range(0, len(records), 50):  # batches, as capture delivers them
        output.write(records[i : i + 50])
        output.flush()
    output.close(CaptureStats())
    return out.getvalue(), err.getvalue()


def test_text_lines() -> None:
    text, err = run("redis")
    line = next(x for x in text.splitlines() if "SET user:42" in x)
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{6} redis-cli\[\d+\] -> redis-server\[\d+\]  "
        r'SET user:42 "\{\\"name\\":\\"ann\\",\\"age\\":42\}"  \+OK  \d+\.\d{3} ms',
        line,
    ), line
    assert err == ""
    text, _ = run("mysql")
    line = next(x for x in text.splitlines() if "SELECT customer FROM orders" in x)
    assert re.fullmatch(
        r"\S+ python\d*\[\d+\] -> mariadbd\[\d+\]  conn 8 db=shop  "
        r"SELECT customer FROM orders WHERE id = 2  -> 1 row  \d+\.\d{3} ms",
        line,
    ), line


def test_json_lines_have_all_fields() -> None:
    text, _ = run("mysql", fmt="json")
    rows = [json.loads(x) for x in text.splitlines()]
    txs = [r for r in rows if r["type"] == "transaction"]
    fields = set(Transaction.__dataclass_fields__) | {"type", "latency"}
    assert all(set(r) == fields for r in txs)
    [err] = [r for r in txs if r["request"] == "SELECT * FROM missing_table"]
    assert err["error"] is True and err["details"]["error_code"] == 1146
    assert err["latency"] == pytest.approx(err["ts_reply"] - err["ts_request"])
    assert err["client_comm"] == "python" and err["server_comm"] == "mariadbd"
    assert {r["kind"] for r in rows if r["type"] == "notice"} == {"greeting", "label"}


def test_stats_table_printed_at_exit() -> None:
    _, err = run("redis", stats=True)
    set_row = next(x for x in err.splitlines() if re.search(r"\bresp\s+│\s*SET\s", x))
    cells = [c.strip() for c in set_row.split("│")]
    count, errors = int(cells[3]), int(cells[4])
    expected = sum(
        1
        for t in Decoding().feed(capture("redis"))
        if isinstance(t, Transaction) and t.command == "SET"
    )
    assert count >= expected - 5 and errors == 0  # the last connection is closed at exit
    assert "slowest requests" in err and "BLPOP empty:queue 0.2" in err


def test_stats_aggregates() -> None:
    stats = Stats(top=2)
    for i, latency in enumerate((0.001, 0.002, 0.003, 0.010)):
        tx = Transaction("resp", "GET", f"GET k{i}", "(nil)", i == 3, 0.0, latency, 10, 5)
        stats.add(tx)
    row = stats.rows[("resp", "GET")]
    assert (row.count, row.errors, row.bytes_in, row.bytes_out) == (4, 1, 40, 20)
    assert row.latencies.percentile(50) == pytest.approx(0.002, rel=5e-4)
    assert row.latencies.percentile(99) == 0.010  # the maximum: exact
    assert [t for _, _, t in sorted(stats.slowest)] == [" GET k2", " GET k3"]


def test_redact_option() -> None:
    text, _ = run("redis", redact=True)
    assert "s3cret" not in "".join(x for x in text.splitlines() if "ACL SETUSER" not in x)
    assert "HELLO 3 AUTH app ***" in text


def test_forced_protocol_and_labels() -> None:
    text, _ = run("redis", protocol="mysql")
    assert "[undecodable]" not in text and "SET user:42" not in text  # never synced: silent
    with pytest.raises(ValueError):
        DecodedOutput(io.StringIO(), protocol="raw")


def test_detect() -> None:
    assert detect(b"*1\r\n$4\r\nPING\r\n", b"") == "resp"
    # an inline command needs a Redis command name and a RESP-shaped reply
    assert detect(b"PING\r\n", b"") is None
    assert detect(b"PING\r\n", b"+PONG\r\n") == "resp"
    assert detect(b"PING\r\n", b"PING\r\n") == "unknown"  # an echo server
    assert detect(b"MSG hello\n", b"MSG hello\n") == "unknown"
    assert detect(b"set foo 0 0 3\r\nbar\r\n", b"STORED\r\n") == "memcached"
    assert detect(b"PI", b"+PONG\r\n") is None  # the line is not complete
    assert detect(b"", b"+PONG\r\n") is None  # replies alone prove nothing
    greeting = b"\x0a5.5.5-10.11\x00" + b"\x08\x00\x00\x00" + b"abcdefgh" + b"\x00" + bytes(40)
    assert detect(b"", len(greeting).to_bytes(3, "little") + b"\x00" + greeting) == "mysql"
    assert detect(b"", b"\x0a\x00\x00\x00\x0a\x1b\x01\x00" + bytes(60)) is None  # no version
    # a command mid-connection: only with a reply of sequence 1
    assert detect(b"\x01\x00\x00\x00\x0e", b"") is None
    assert detect(b"\x01\x00\x00\x00\x0e", b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00") == (
        "mysql"
    )
    assert detect(b"\x01\x00\x00\x00\x0e", b"+PONG\r\n") == "unknown"
    # the client's login packet (mariadb-slap's, as captured): caps, max packet, charset, filler
    login = b"\xa9\x00\x00\x01" + b"\x84\xa2\xbf\x80" + b"\x00\x00\x10\x00" + b"\x08"
    login += bytes(19) + b"\x1d\x00\x00\x00" + b"root\x00\x00mysql_native_password\x00"
    assert detect(login, b"") == "mysql"
    assert detect(login[:13] + b"\x01" + login[14:], b"") is None  # filler not zero
    assert detect(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"") == "postgres"
    assert detect(b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00", b"") == "postgres"
    assert detect(b"GET / HTTP/1.1\r\n", b"") == "http"
    assert detect(b"\x16\x03\x01\x02\x00", b"") == "tls"
    assert detect(b"\x00" * 3, b"") is None
    assert detect(b"\x00" * 64, b"\x01" * 64) == "unknown"


def test_closed_connections_release_their_decoders() -> None:
    """Decoder state lives as long as the connection: none is left after the
    closes, or close_grace after the client's close when the server never answers (a
    busy server's millions of short connections, memory flat)."""
    decoding = Decoding("resp")
    for i in range(300):
        c, s, t = 10_000 + 2 * i, 10_001 + 2 * i, 2.0 * i
        base = Record(t, 1, 1, 0, "cli", c, s, "stream", "/r.sock", False, 0, 14,
                      b"*1\r\n$4\r\nPING\r\n", sock_id=c, peer_id=s)  # fmt: skip
        reply = Record(t + 0.001, 2, 2, 0, "srv", s, c, "stream", "/r.sock", True, 0, 7,
                       b"+PONG\r\n", sock_id=s, peer_id=c)  # fmt: skip
        closes = [
            dataclasses.replace(r, offset=r.length, length=0, data=b"", kind="close", ts=t + 0.002)
            for r in (base, reply)
        ]
        # the server answers, or never does (then only the client's socket closes)
        records = [base, reply, *closes] if i % 2 else [base, closes[0]]
        events = decoding.feed(records)
        decoding.expire(t + 0.002 + decoding.assembler.close_grace, events)
        replies = [e.reply for e in events if isinstance(e, Transaction)]
        assert replies == (["+PONG"] if i % 2 else [""])
    assert decoding.open_connections == 0


def test_help_says_what_latency_and_count_measure() -> None:
    out = CliRunner().invoke(main, ["--help"])
    text = " ".join(out.output.split())
    assert "Latency is the server-side time from the request's last byte to the reply's " \
        "first byte" in text, text  # fmt: skip
    assert "Stop after N printed items: decoded lines" in text, text


def test_stats_table_keeps_unanswered_out_of_percentiles_and_markup_out_of_rich() -> None:
    err = io.StringIO()
    output = DecodedOutput(io.StringIO(), stats=True, stats_stream=err)
    assert output.stats is not None
    for latency in (None, None, 0.004):
        tx = Transaction("resp", "[red]GET", "GET k", "", False, 1.0, None, 10, 0)
        tx.ts_reply, tx.unanswered = (None, True) if latency is None else (1.0 + latency, False)
        output.stats.add(tx)
    output.stats.add(Transaction("resp", "CONFIG GET", "", "", False, 1.0, None, 5, 0,
                                 unanswered=True))  # fmt: skip
    output.close(CaptureStats())
    rows = {c[1]: c for c in ([x.strip() for x in line.split("│")][1:-1]
            for line in err.getvalue().splitlines()) if len(c) == 11}  # fmt: skip
    assert rows["[red]GET"][2:9] == ["3", "0", "2", "4.000", "4.000", "4.000", "4.000"], rows
    assert rows["CONFIG GET"][2:9] == ["1", "0", "1", "-", "-", "-", "-"], rows


def test_clock_text_matches_datetime_around_second_boundaries() -> None:
    """clock_text formats one strftime per second; the microseconds must round as
    datetime does, also where they round up into the next second."""
    rng = random.Random(7)
    edges = (0.0, 5e-7, 1.5e-6, 2.5e-6, 0.4999995, 0.9999994999, 0.9999995, 0.9999996)
    for i in range(50_000):
        ts = 1.7e9 + rng.randint(0, 3) + (edges[i % len(edges)] if i % 2 else rng.random())
        assert clock_text(ts) == datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f"), ts


def test_only_the_table_alone_takes_packed_records() -> None:
    # the capture runs packed (records read from their C fields) only for outputs that
    # all take Packed: the table alone, counted natively; lines or listeners need Records
    assert DecodedOutput(None, stats=True, stats_stream=io.StringIO()).takes_packed
    assert not DecodedOutput(io.StringIO(), stats=True, stats_stream=io.StringIO()).takes_packed
    listened = DecodedOutput(None, stats=True, stats_stream=io.StringIO(), listeners=[print])
    assert not listened.takes_packed
