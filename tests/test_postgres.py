"""PostgreSQL decoder: the real capture captures/postgres.pcapng (psql, psycopg 3 and a
raw client against postgres 15, recorded by captures/record_live.py) read offline
with `usniff read` and dissected by tshark, plus protocol cases crafted from the
protocol documentation (MD5 auth, a huge result stream, loss and resync)."""

from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.captures import connection_sends
from tests.support.pg_session import PIPELINE_INSERTS, PREPARED_RUNS
from tests.support.servers import PG_PASSWORD
from tests.support.usniff import USNIFF
from usniff.decoders.base import Notice, Transaction
from usniff.decoders.detect import ENOUGH
from usniff.decoders.postgres import KEEP, MAX_PENDING, PostgresDecoder, query_exchange, query_shape
from usniff.decoders.registry import detect
from usniff.streams import Direction

CAPTURE = Path(__file__).resolve().parent.parent / "captures" / "postgres.pcapng"
C, S = Direction.CLIENT, Direction.SERVER


@functools.cache
def read(*extra: str) -> tuple[dict[str, Any], ...]:
    args = [USNIFF, "read", str(CAPTURE), "--format", "json", "--protocol", "auto", *extra]
    out = subprocess.run(args,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr
    return tuple(json.loads(line) for line in out.stdout.splitlines())


def txs(*extra: str) -> list[dict[str, Any]]:
    return [e for e in read(*extra) if e["type"] == "transaction"]


def one(request: str, *extra: str) -> dict[str, Any]:
    found = [t for t in txs(*extra) if t["request"] == request]
    assert len(found) == 1, (request, [t["request"] for t in txs(*extra)])
    return found[0]


# --------------------------------------------------------------------------- the real capture


def test_capture_is_auto_detected_and_every_request_paired() -> None:
    events = read()
    bad = [e for e in events if e["type"] == "notice" and e["kind"] in ("undecodable", "unpaired")]
    assert not bad and not [e for e in events if e["type"] == "record"]
    assert len(txs()) > 40
    for tx in txs():
        assert tx["protocol"] == "postgres"
        if tx["command"] not in ("TERMINATE", "CANCEL"):
            assert tx["ts_reply"] is not None and tx["latency"] >= 0, tx


def test_startup_and_authentication() -> None:
    starts = [t for t in txs() if t["command"] == "STARTUP"]
    users = [(t["details"]["user"], t["details"].get("application_name")) for t in starts]
    assert users == [("postgres", "psql"), ("app", "psql"), ("plain", "psql"),
                     ("postgres", "raw"), ("postgres", "usniff-test")]  # fmt: skip
    assert starts[1]["reply"] == "authenticated (SCRAM-SHA-256), ready"
    scram = starts[1]["details"]["auth"]
    assert [s.split()[0] for s in scram] == [
        "SASL", "client-first", "server-first", "client-final", "server-final", "ok"
    ]  # fmt: skip
    assert starts[2]["details"]["auth"] == ["cleartext password", f"password {PG_PASSWORD}", "ok"]
    assert all(t["details"]["backend_pid"] for t in starts)
    ssl = one("SSLRequest")
    assert ssl["reply"] == "N" and (ssl["bytes_in"], ssl["bytes_out"]) == (8, 1)


def test_redact_masks_password_and_scram_secrets() -> None:
    text = subprocess.run([USNIFF, "read", str(CAPTURE), "--redact"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert PG_PASSWORD in json.dumps(read())  # what --redact has to hide is there without it
    for out in (text, json.dumps(read("--redact"))):
        assert PG_PASSWORD not in out
    starts = [t for t in txs("--redact") if t["command"] == "STARTUP"]
    assert starts[2]["details"]["auth"][1] == "password ***"
    final = [s for s in starts[1]["details"]["auth"] if s.split()[0].endswith("final")]
    assert final[0].endswith(",p=***") and final[1] == "server-final v=***"
    assert all(t["details"]["cancel_key"] == "***" for t in starts)


def test_simple_queries_rows_tags_errors_notifications() -> None:
    sel = one("SELECT * FROM t ORDER BY id")
    assert sel["reply"] == "SELECT 3; 3 rows; (1, one) (2, two) (3, NULL)"
    assert sel["details"]["columns"] == ["id", "v"] and sel["details"]["rows"] == 3
    err = one("SELECT * FROM no_such_table")
    assert err["error"] and err["details"]["error"]["sqlstate"] == "42P01"
    assert err["reply"] == 'ERROR 42P01: relation "no_such_table" does not exist'
    notes = [e for e in read() if e["type"] == "notice" and e["kind"] == "notification"]
    assert [n["details"]["payload"] for n in notes] == ["hello there"]
    assert one("NOTIFY chan, 'hello there'")["command"] == "NOTIFY chan, ?"


def test_extended_protocol_prepared_and_pipelined() -> None:
    prepared = [t for t in txs() if t["command"] == "SELECT id, v FROM t WHERE id = $1"]
    assert len(prepared) == PREPARED_RUNS
    assert [t["reply"] for t in prepared[1:4]] == [
        "SELECT 1; 1 rows; (1, one)", "SELECT 1; 1 rows; (2, two)", "SELECT 1; 1 rows; (3, NULL)"
    ]  # fmt: skip
    assert len({t["details"]["statement"] for t in prepared}) == 1  # one named statement
    binary = [t for t in txs() if t["command"] == "SELECT length($1)"]
    assert binary[0]["request"] == "SELECT length($1) [$1=(3 bytes)]"
    inserts = [t for t in txs() if t["command"] == "INSERT INTO t VALUES ($1, $2)"]
    assert [t["reply"] for t in inserts] == ["INSERT 0 1"] * (PIPELINE_INSERTS + 1) + [
        "skipped: an earlier message of the batch failed"
    ]
    assert inserts[0]["request"].endswith("$2=p]") and inserts[-1]["error"]
    assert one("SELECT 1/0")["reply"] == "ERROR 22012: division by zero"
    assert one("COPY t TO STDOUT")["reply"] == "COPY 8; COPY OUT 42 bytes"
    cancelled = one("SELECT pg_sleep(5)")
    assert cancelled["details"]["error"]["sqlstate"] == "57014"
    cancel = [t for t in txs() if t["command"] == "CANCEL"]
    assert cancel[0]["details"]["pid"] == cancelled["details"].get(
        "backend_pid", cancel[0]["details"]["pid"]
    )


def test_stats_keyed_by_statement_shape() -> None:
    out = subprocess.run([USNIFF, "read", str(CAPTURE), "--stats"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    rows = [
        line for line in (out.stdout + out.stderr).splitlines() if line.startswith("│ postgres")
    ]
    prepared = [r for r in rows if "│ SELECT id, v FROM t WHERE id = $1 " in r]
    assert len(prepared) == 1, rows
    assert prepared[0].split("│")[3].strip() == str(PREPARED_RUNS)  # the count column


@pytest.mark.skipif(shutil.which("tshark") is None, reason="setup.sh installs tshark")
def test_tshark_dissects_the_capture_as_pgsql() -> None:
    def tshark(*args: str) -> str:
        return subprocess.run(["tshark", "-r", str(CAPTURE), *args],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    assert tshark("-Y", "_ws.malformed") == ""
    queries = tshark("-Y", 'pgsql.type == "Simple query"', "-T", "fields", "-e", "pgsql.query")
    assert "SELECT * FROM t ORDER BY id" in queries.splitlines()
    parses = tshark("-Y", 'pgsql.type == "Parse"', "-T", "fields", "-e", "pgsql.query")
    assert "SELECT id, v FROM t WHERE id = $1" in parses.splitlines()


# --------------------------------------------------------------------------- crafted cases


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">i", len(body) + 4) + body


def startup(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">ii", len(body) + 8, 196608) + body


READY = msg(b"Z", b"I")


def run(steps: list[tuple[Direction, bytes | int]], redact: bool = False) -> list[Any]:
    d = PostgresDecoder(redact=redact)
    events: list[Any] = []
    for i, (direction, item) in enumerate(steps):
        if isinstance(item, int):
            events += d.gap(direction, item, float(i), False)
        else:
            events += d.feed(direction, item, float(i))
    return events + d.close()


def test_md5_password_masked() -> None:
    steps: list[tuple[Direction, bytes | int]] = [
        (C, startup(user="u", database="d")),
        (S, msg(b"R", struct.pack(">i", 5) + b"\x01\x02\x03\x04")),
        (C, msg(b"p", b"md5" + b"a" * 32 + b"\0")),
        (S, msg(b"R", struct.pack(">i", 0)) + READY),
    ]
    (tx,) = run(steps, redact=True)
    assert tx.details["auth"] == ["MD5 password salt=01020304", "password ***", "ok"]
    assert tx.reply == "authenticated (MD5 password), ready"
    assert tx.bytes_in == len(startup(user="u", database="d")) + 41
    (tx,) = run(steps)
    assert tx.details["auth"][1] == "password md5" + "a" * 32


def test_huge_result_is_counted_not_buffered() -> None:
    """40 MB of DataRows (20000 rows of 2 kB, in 64 kB sends): rows and bytes
    counted, three kept for the preview, memory bounded by KEEP."""
    row = msg(b"D", struct.pack(">hi", 1, 2000) + b"x" * 2000)
    chunk = row * 32
    d = PostgresDecoder()
    d.feed(C, msg(b"Q", b"SELECT big\0"), 1.0)
    tracemalloc.start()
    for _ in range(20000 // 32):
        assert d.feed(S, chunk, 2.0) == []
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * KEEP + len(chunk)
    (tx,) = d.feed(S, msg(b"C", b"SELECT 20000\0") + READY, 3.0)
    assert isinstance(tx, Transaction)
    assert tx.details["rows"] == 20000 and tx.details["row_bytes"] == 20000 * 2006
    assert tx.reply.startswith("SELECT 20000; 20000 rows; (") and tx.reply.endswith("...")
    assert tx.bytes_out == 20000 * len(row) + 18 + 6


def test_mid_stream_start_and_resync_after_loss() -> None:
    q = msg(b"Q", b"SELECT 1\0")
    answer = msg(b"T", b"\0\0") + msg(b"C", b"SELECT 1\0") + READY
    events = run([(S, answer[3:]), (C, q[2:]), (C, q), (S, answer), (C, 7), (S, answer),
                  (C, q), (S, answer)])  # fmt: skip
    kinds = [(type(e).__name__, getattr(e, "kind", "")) for e in events]
    assert kinds == [("Transaction", ""), ("Notice", "undecodable"), ("Transaction", "")]
    assert [e.reply for e in events if isinstance(e, Transaction)] == ["SELECT 1"] * 2


def test_pipeline_error_skips_to_sync() -> None:
    def extended(sql: bytes) -> bytes:
        return (msg(b"P", b"\0" + sql + b"\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0")
                + msg(b"E", b"\0\0\0\0\0"))  # fmt: skip

    events = run([
        (C, extended(b"SELECT 1") + extended(b"SELECT 1/0") + extended(b"SELECT 3") + msg(b"S")),
        (S, msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\0") + msg(b"1") + msg(b"2")
            + msg(b"E", b"SERROR\0C22012\0Mdivision by zero\0\0") + READY),
    ])  # fmt: skip
    assert [(e.request, e.error) for e in events] == [
        ("SELECT 1", False), ("SELECT 1/0", True), ("SELECT 3", True)
    ]  # fmt: skip
    assert events[2].reply == "skipped: an earlier message of the batch failed"
    assert sum(e.bytes_out for e in events) == 5 * 4 + 14 + 38 + 6


def test_query_shape() -> None:
    assert query_shape("SELECT * FROM t WHERE a = 'it''s' AND b = 42 AND c IN (1, 2)") == (
        "SELECT * FROM t WHERE a = ? AND b = ? AND c IN (?+)"
    )
    assert (
        query_shape("select $1::int,\n  E'a\\'b', $$x'y$$, \"Col1\"")
        == 'select $1::int, ?, ?, "Col1"'
    )


def test_detected_from_startup_or_first_server_bytes() -> None:
    assert detect(startup(user="u"), b"") == "postgres"
    assert detect(struct.pack(">ii", 8, 80877103), b"") == "postgres"
    assert detect(b"", msg(b"R", struct.pack(">i", 0))) == "postgres"
    assert isinstance(run([(C, b"\0\0\0\x08\x04\xd2\x16\x2f"), (S, b"N")])[0], Transaction)
    assert not [e for e in run([(C, b"GET / HTTP/1.1\r\n\r\n")]) if isinstance(e, Notice)]


def test_unbounded_batch_without_execute_gives_up() -> None:
    """A client binding without end (no Execute, no Sync) does not grow the decoder without
    bound: it gives up with a notice once MAX_PENDING answers are awaited."""
    bind = msg(b"B", b"\0\0\0\0\0\0\0\0")
    d = PostgresDecoder()
    d.feed(C, msg(b"Q", b"SELECT 1\0"), 0.0)
    events = d.feed(C, bind * (MAX_PENDING + 1), 1.0)
    assert [(type(e).__name__, e.kind) for e in events if isinstance(e, Notice)] == [
        ("Notice", "undecodable")
    ]
    assert not d._pending


def test_refused_login_and_role_password_redacted() -> None:
    refused = run([
        (C, startup(user="app")),
        (S, msg(b"R", struct.pack(">i", 3))),
        (C, msg(b"p", b"wrong\0")),
        (S, msg(b"E", b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0")),
    ], redact=True)  # fmt: skip
    (tx,) = refused
    assert tx.error and tx.reply == "FATAL 28P01: password authentication failed"
    assert tx.details["auth"] == ["cleartext password", "password ***"]
    sql = b"ALTER ROLE app PASSWORD 'pw''1' VALID UNTIL 'infinity'\0"
    (tx,) = run([(C, msg(b"Q", sql)), (S, msg(b"C", b"ALTER ROLE\0") + READY)], redact=True)
    assert tx.request == "ALTER ROLE app PASSWORD '***' VALID UNTIL 'infinity'"
    assert tx.command == "ALTER ROLE app PASSWORD ? VALID UNTIL ?"


def test_bind_with_fewer_formats_than_parameters() -> None:
    """A malformed Bind (2 format codes, 3 values) decodes without an error: the
    rest are taken as text (found by the fuzz test, seed 12912)."""
    dec = PostgresDecoder()
    body = (b"\0\0" + struct.pack("!h", 2) + struct.pack("!hh", 0, 1) + struct.pack("!h", 3)
            + b"".join(struct.pack("!i", 1) + v for v in (b"a", b"b", b"c")) + b"\0\0")  # fmt: skip
    bind = b"B" + struct.pack("!i", 4 + len(body)) + body
    dec.feed(Direction.CLIENT, bind, 1.0)


def _mid_stream(
    sends: list[tuple[Direction, bytes]],
) -> Iterator[tuple[bytes, bytes, bytes, bytes]]:
    """Per client send: (it, the client's bytes from it, the server's from the send after
    it, the server's from the server send before it), each as detection keeps them, for a
    capture begun there."""
    last = 0  # the last server send so far
    for i, (direction, data) in enumerate(sends):
        if direction == 1:
            last = i
        elif data:
            client = b"".join(x for d, x in sends[i:] if d == 0)[:ENOUGH]
            server = b"".join(x for d, x in sends[i:] if d == 1)[:ENOUGH]
            earlier = b"".join(x for d, x in sends[last:] if d == 1)[:ENOUGH]
            yield data, client, server, earlier


def test_detected_mid_connection_at_a_unit_of_work() -> None:
    """A capture begun on a live connection: detected at a client send beginning with a
    Query, Parse, Bind or FunctionCall once the server has answered."""
    starts = 0
    for sends in connection_sends("postgres"):
        for first, client, server, _ in _mid_stream(sends):
            if first[:1] in (b"Q", b"P", b"B", b"F") and server:
                assert detect(client, server) == "postgres", (client, server)
                starts += 1
    assert starts > 20


@pytest.mark.parametrize("name", ["redis", "mysql", "http", "fastcgi", "memcached", "dbus", "grpc"])
def test_no_other_protocol_taken_for_postgres_mid_connection(name: str) -> None:
    """Wherever a capture of another protocol begins (any client send, with the server's
    bytes from there or from its send before), detection never says postgres."""
    checked = 0
    for sends in connection_sends(name):
        for _, client, server, earlier in _mid_stream(sends):
            for answer in (server, earlier):
                assert detect(client, answer) != "postgres", (client, answer)
                assert query_exchange(client, answer) is not True, (client, answer)
                checked += 1
    assert checked > 20
