"""Decoded output never invents or hides, and never lets captured bytes drive the
terminal (issues 15 and 17): the real `usniff` CLI against real servers and clients.

Ground truth is what the clients themselves sent and received (their own bytes),
the servers' replies as the clients read them, and the terminal-safety rule: no
control character other than newline in anything usniff prints.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.live_helpers import raw_exchange, resp_command
from tests.support.servers import start_memcached, start_redis
from tests.support.usniff import USNIFF, Result, Usniff, run, wait_until

pytestmark = pytest.mark.root

# C0 controls but newline and tab (tcpdump's -X layout), DEL, C1 controls (UTF-8)
CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-out-") as d:
        yield d


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.text.splitlines()]


def records_by_direction(events: list[dict[str, Any]]) -> dict[str, bytes]:
    """The bytes of the undecoded records, per direction, in stream order."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    for e in events:
        assert e["type"] == "record", e  # nothing was decoded
        out.setdefault(e["direction"], []).append((e["offset"], base64.b64decode(e["data"])))
    return {d: b"".join(data for _, data in sorted(parts)) for d, parts in out.items()}


# --------------------------------------------------------------------------- item 1


MEMCACHED_SESSION = [
    (b"set foo 0 0 3\r\nbar\r\n", b"STORED\r\n"),
    (b"get foo\r\n", b"END\r\n"),
    (b"delete foo\r\n", b"DELETED\r\n"),
]


def test_memcached_is_decoded_as_memcached_not_as_redis(tmp: str) -> None:
    """memcached's `set foo 0 0 3` starts like Redis' SET: it must not be decoded as one."""
    with start_memcached(tmp) as sock:
        sent, received = b"", b""
        with Usniff("--path", sock, "--format", "json", "--protocol", "auto") as json_run:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.settimeout(10)
                for request, end in MEMCACHED_SESSION:
                    s.sendall(request)
                    got = b""
                    while not got.endswith(end):
                        got += s.recv(65536)
                    sent, received = sent + request, received + got
            result = json_run.stop()
        with Usniff("--path", sock) as text_run:
            raw_exchange(sock, b"set foo 0 0 3\r\nbar\r\n", b"STORED\r\n")
            text = text_run.stop()
    events = json_lines(result)
    assert [(e["type"], e["protocol"], e["request"], e["reply"]) for e in events] == [
        ("transaction", "memcached", "set foo 0 0 3 bar", "STORED"),
        ("transaction", "memcached", "get foo", "1/1 hit: foo=bar"),
        ("transaction", "memcached", "delete foo", "DELETED"),
    ], events
    assert sum(e["bytes_in"] for e in events) == len(sent)
    assert sum(e["bytes_out"] for e in events) == len(received)
    lines = text.text.splitlines()
    assert len(lines) == 1 and "  set foo 0 0 3 bar  STORED  " in lines[0], lines
    assert "SET" not in text.text and "unanswered" not in text.text


def serve_one(path: str, handle: Callable[[socket.socket], None]) -> threading.Thread:
    """A server on ``path`` (a thread) accepting one connection and running ``handle`` on it."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        with listener as srv:
            conn, _ = srv.accept()
            with conn:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def echo(conn: socket.socket) -> None:
    while data := conn.recv(4096):
        conn.sendall(data)


def test_echo_server_lines_are_shown_raw(tmp: str) -> None:
    path = str(Path(tmp) / "echo.sock")
    server = serve_one(path, echo)
    lines = [b"MSG hello\n", b"MSG world\n", b"PING\r\n"]
    with Usniff("--path", path, "--format", "json", "--protocol", "auto") as usniff:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            for line in lines:
                s.sendall(line)
                assert s.recv(4096) == line
        result = usniff.stop()
    server.join(10)
    events = json_lines(result)
    assert records_by_direction(events) == {"client": b"".join(lines), "server": b"".join(lines)}


def test_undecided_connection_is_shown_while_it_is_open(tmp: str) -> None:
    """A request never answered leaves the protocol undecided: shown raw within seconds."""
    path = str(Path(tmp) / "silent.sock")
    done = threading.Event()

    def read_and_stay_silent(conn: socket.socket) -> None:
        conn.recv(4096)
        done.wait(30)

    server = serve_one(path, read_and_stay_silent)
    try:
        with Usniff("--path", path) as usniff, socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"HELLO there\n")
            t0 = time.monotonic()
            wait_until(lambda: b"HELLO" in usniff.stdout, 10, "the raw record")
            waited = time.monotonic() - t0
            result = usniff.stop()
    finally:
        done.set()
        server.join(10)
    assert 0.5 < waited < 5, waited
    [line] = result.text.splitlines()
    assert line.endswith(
        "[not decoded: protocol not recognised; only the client's side seen] "
        r'"HELLO there\n"'
    ), line


# --------------------------------------------------------------------------- item 2


def test_datagrams_are_printed_in_the_default_mode(tmp: str) -> None:
    path = str(Path(tmp) / "dgram.sock")
    messages = [b"<13>first datagram", b"second \x1b datagram"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        with Usniff("--path", path) as usniff:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for m in messages:
                    sender.sendto(m, path)
                    assert receiver.recv(4096) == m
            result = usniff.stop()
    lines = result.text.splitlines()
    assert len(lines) == 2, (lines, result.stderr)
    assert lines[0].endswith(r'len 18 [not decoded: datagram] "<13>first datagram"'), lines
    assert lines[1].endswith(r'len 17 [not decoded: datagram] "second \x1b datagram"'), lines
    assert re.search(r"usniff: 2 lines printed\n", result.stderr), result.stderr


def test_server_only_capture_is_printed(tmp: str) -> None:
    """--comm redis-server sees the replies only: they are shown, not swallowed."""
    with start_redis(tmp) as sock, Usniff("--path", sock, "--comm", "redis-server") as usniff:
        for i in range(3):
            assert run(["redis-cli", "-s", sock, "SET", f"k{i}", "v"]).stdout == "OK\n"
        result = usniff.stop()
    lines = result.text.splitlines()
    # redis-cli asks for COMMAND DOCS first (a long reply), then sends SET
    oks = [x for x in lines if x.endswith(r'"+OK\r\n"')]
    assert len(oks) == 3, lines
    assert all("[not decoded: protocol not recognised; only the server's side seen]" in x
               for x in lines), lines  # fmt: skip
    assert all(" redis-server[" in x for x in lines), lines


# --------------------------------------------------------------------------- items 3 and 7


def test_unanswered_requests_are_listed_and_kept_out_of_latency(tmp: str) -> None:
    blpop = resp_command("BLPOP", "never", "0")  # blocks until usniff has stopped
    with start_redis(tmp) as sock:
        text_args = ("--path", sock, "--stats", "--format", "text")
        with Usniff(*text_args) as text_run, socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(blpop)
            assert raw_exchange(sock, resp_command("GET", "k"), b"\r\n") == b"$-1\r\n"
            text = text_run.stop()
        args = ("--path", sock, "--format", "json", "--protocol", "resp")
        with Usniff(*args) as json_run, socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(blpop)
            result = json_run.stop()
    line = next(x for x in text.text.splitlines() if "BLPOP never 0" in x)
    assert line.endswith("BLPOP never 0  unanswered"), line
    [tx] = [e for e in json_lines(result) if e.get("request") == "BLPOP never 0"]
    assert tx["unanswered"] is True and tx["latency"] is None and tx["ts_reply"] is None, tx
    # the table, on a stderr that is a pipe: whole (no "…"), with the unanswered column
    assert "…" not in text.stderr, text.stderr
    header = next(x for x in text.stderr.splitlines() if "unanswered" in x and "p50" in x)
    cols = [c.strip() for c in re.split(r"[│┃]", header)[1:-1]]
    assert cols[:6] == ["protocol", "command", "count", "errors", "unanswered", "p50 ms"], cols
    rows = {}
    for x in text.stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", x)[1:-1]]
        if len(cells) == len(cols) and cells[0] == "resp":
            rows[cells[1]] = dict(zip(cols, cells, strict=True))
    assert rows["BLPOP"]["count"] == "1" and rows["BLPOP"]["unanswered"] == "1", rows
    assert [rows["BLPOP"][c] for c in ("p50 ms", "p95 ms", "p99 ms", "max ms")] == ["-"] * 4
    assert rows["GET"]["unanswered"] == "0" and float(rows["GET"]["p50 ms"]) > 0, rows
    assert "request's last byte to reply's first byte" in text.stderr


# --------------------------------------------------------------------------- item 4


def test_snaplen_marks_cut_transactions(tmp: str) -> None:
    value = b"v" * 4000
    set_ = resp_command("SET", "big", value)
    get = resp_command("GET", "big")
    bulk = b"$4000\r\n" + value + b"\r\n"
    pipeline = b"".join(resp_command("SET", f"k{i}", "x" * 20) for i in range(20))
    with start_redis(tmp) as sock:
        with Usniff(
            "--path", sock, "-s", "120", "--format", "json", "--protocol", "auto"
        ) as usniff:
            assert raw_exchange(sock, set_, b"\r\n") == b"+OK\r\n"
            assert raw_exchange(sock, get, bulk[-2:]) == bulk
            assert raw_exchange(sock, pipeline, b"+OK\r\n" * 20).count(b"+OK") == 20
            result = usniff.stop()
        with Usniff("--path", sock, "-s", "120") as text_run:
            assert raw_exchange(sock, get, bulk[-2:]) == bulk
            text = text_run.stop()
    start = time.time() - 600
    events = json_lines(result)
    assert all(e.get("ts", e.get("ts_request")) > start for e in events), events
    [tx_set] = [e for e in events if e.get("command") == "SET" and "big" in e["request"]]
    assert tx_set["reply"] == "+OK" and tx_set["latency"] is not None, tx_set
    assert (tx_set["bytes_in"], tx_set["cut"]) == (len(set_), len(set_) - 120), tx_set
    [tx_get] = [e for e in events if e.get("command") == "GET"]
    assert tx_get["reply"].startswith('"vvvv') and tx_get["reply"].endswith("...(4000 bytes)")
    assert (tx_get["bytes_out"], tx_get["cut"]) == (len(bulk), len(bulk) - 120), tx_get
    # the pipeline's 20 SETs in one 120-byte-cut write cannot be framed: said so, with a time
    cut = [e for e in events if e["type"] == "notice" and "cut by the snap length" in e["summary"]]
    assert cut, events
    line = next(x for x in text.text.splitlines() if "GET big" in x)
    kept, total = len(get) + 120, len(get) + len(bulk)
    assert f"[cut: {kept} of {total} bytes]" in line and line.endswith(" ms"), line
    assert "00:00:00.000000" not in text.text + result.text


# --------------------------------------------------------------------------- item 6


def test_latency_is_request_last_byte_to_reply_first_byte(tmp: str) -> None:
    """Checked against the records themselves: the same pcapng read back raw and decoded."""
    value = b"x" * (2 << 20)
    set_, get = resp_command("SET", "big", value), resp_command("GET", "big")
    bulk = b"$%d\r\n%s\r\n" % (len(value), value)
    pcap = str(Path(tmp) / "cap.pcapng")
    with (
        start_redis(tmp) as sock,
        Usniff("--path", sock, "-w", pcap) as usniff,
        socket.socket(socket.AF_UNIX) as s,
    ):
        s.connect(sock)
        s.sendall(set_)
        assert s.recv(100) == b"+OK\r\n"
        s.sendall(get)
        got = b""
        while len(got) < len(bulk):  # read slowly: the reply is sent over a while
            got += s.recv(256 << 10)
            time.sleep(0.002)
        assert got == bulk
        usniff.stop()
    records = [json.loads(x) for x in run([USNIFF, "read", pcap, "--format", "json"]).stdout
               .splitlines()]  # fmt: skip
    decoded = run([USNIFF, "read", pcap, "--format", "json", "--protocol", "resp"]).stdout
    [tx] = [e for e in map(json.loads, decoded.splitlines()) if e.get("command") == "GET"]
    client = [r for r in records if r["direction"] == "client"]
    server = [r for r in records if r["direction"] == "server" and r["offset"] >= 5]
    request_end = len(set_) + len(get)
    last = next(r for r in client if r["offset"] < request_end <= r["offset"] + r["len"])
    first = min(server, key=lambda r: r["offset"])
    assert first["offset"] == 5 and len(server) > 10, server
    assert tx["ts_request"] == pytest.approx(last["ts"], abs=1e-6)
    assert tx["ts_reply"] == pytest.approx(first["ts"], abs=1e-6)
    assert max(r["ts"] for r in server) > first["ts"]  # so the last byte would differ


# --------------------------------------------------------------------------- item 5


@pytest.mark.parametrize(
    ("args", "unit"),
    [
        ((), "lines printed"),
        (
            ("--protocol", "raw", "--format", "json"),
            r"records printed \(data, loss and close records\)",
        ),
    ],
)
def test_count_stops_after_n_printed_items(tmp: str, args: tuple[str, ...], unit: str) -> None:
    with start_redis(tmp) as sock, Usniff("--path", sock, "-c", "3", *args) as usniff:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            for i in range(10):  # one connection, 10 transactions, 20 records
                s.sendall(resp_command("SET", f"k{i}", "v"))
                assert s.recv(100) == b"+OK\r\n"
        result = usniff.proc.wait(20), usniff.stop()
    rc, res = result
    lines = res.text.splitlines()
    assert rc == 0 and len(lines) == 3, (lines, res.stderr)
    if not args:
        assert [x.split("  ")[1:3] for x in lines] == [[f"SET k{i} v", "+OK"] for i in range(3)]
    assert re.search(rf"^usniff: 3 {unit}$", res.stderr, re.M), res.stderr


# --------------------------------------------------------------------------- item 8

HOSTILE = b"\x1b]0;owned-title\x07\x1b[2J\x1b[31mRED[bold]markup[/bold]"
HOSTILE_CLIENT = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"\x1b[31mevil\x07", 0, 0, 0)  # PR_SET_NAME
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(bytes.fromhex(sys.argv[2]))
got = b""
while not got.endswith(b"\r\n"):
    got += s.recv(4096)
sys.stdout.buffer.write(got)
"""


STATS_TEXT = ("--stats", "--format", "text")


@pytest.mark.parametrize(
    "args", [STATS_TEXT, ("--stats",), ("-A",), ("-X",), ("--protocol", "raw")]
)
def test_hostile_bytes_never_reach_the_terminal(tmp: str, args: tuple[str, ...]) -> None:
    request = resp_command(HOSTILE, "arg\x1b[0m")
    with start_redis(tmp) as sock, Usniff("--path", sock, *args) as usniff:
        client = subprocess.run([sys.executable, "-c", HOSTILE_CLIENT, sock, request.hex()],
                                capture_output=True, timeout=30, check=True)  # fmt: skip
        result = usniff.stop()
    assert client.stdout.startswith(b"-ERR unknown command '\x1b]0;owned-title\x07"), client
    out = result.stdout + result.stderr.encode()
    assert not CONTROL.search(out), out
    if "--stats" in args:
        if args == STATS_TEXT:
            line = next(x for x in result.text.splitlines() if "owned-title" in x)
            assert line.startswith(rf"{line[:15]} \x1b[31mevil\x07[") and (
                r"\x1b]0;owned-title\x07\x1b[2J\x1b[31mRED[bold]markup[/bold]" in line
            ), line
            assert r"-ERR unknown command '\x1b]0;owned-title\x07" in line, line
        else:
            assert not result.text, result.text  # --stats alone: the table only
        # the table shows the name escaped, and rich did not read it as markup
        name = r"\x1b]0;OWNED-TITLE\x07\x1b[2J\x1b[31MRED[BOLD]MARKUP[/BOLD]"  # upper-cased
        assert f"│ {name} │" in result.stderr, result.stderr
    else:
        assert r"\x1b[31mevil\x07[" in result.text, result.text
