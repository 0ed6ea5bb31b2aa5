"""Live pcapng end to end (issue 4): `usniff -w` on the real kernel, read by real tshark and scapy.

The byte totals are checked against the servers' own counters (Redis INFO
total_net_input_bytes/total_net_output_bytes, MariaDB Bytes_received/
Bytes_sent), read on one connection opened before the capture so that the
only uncaptured bytes are the first counter reply and the second counter
request (tests/support/live_helpers.py: RedisCounters, MysqlCounters).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.live_helpers import (
    MYSQL_CLI_SQL,
    MYSQL_PASSWORD,
    PIPE_N,
    SUBSCRIBE_MESSAGE,
    MysqlCounters,
    RedisCounters,
    Usniff,
    create_redis_user,
    follow_all,
    free_port,
    mysql_session,
    redis_session,
    resp_command,
    run,
    tcp_bytes_by_port,
    wait_until,
)
from tests.support.pcap_helpers import TSHARK, tshark
from tests.support.servers import start_mariadb, start_redis

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed"),
]

USNIFF_READ = [str(Path(os.sys.executable).with_name("usniff")), "read"]  # type: ignore[attr-defined]
PORTS = {"redis": 6379, "mysql": 3306}
MULTI = b"".join(
    resp_command(*c) for c in (["MULTI"], ["SET", "tx", "10"], ["INCR", "tx"], ["EXEC"])
)


@dataclass
class Live:
    kind: str  # "redis" | "mysql"
    file: str
    sock: str
    to_server: int  # bytes the server counted, stats queries excluded
    from_server: int
    returncode: int
    stderr: str

    @property
    def port(self) -> int:
        return PORTS[self.kind]


def _capture(kind: str, tmp: str, sock: str, counters: Any, session: Any) -> Live:
    path = os.path.join(tmp, f"{kind}.pcapng")
    counters.read()
    old = os.umask(0)  # the file must be 0600 whatever the umask says
    try:
        usniff = Usniff("--path", sock, "-w", path)
    finally:
        os.umask(old)
    with usniff:
        session(sock)
        result = usniff.stop()
    counters.read()
    counters.close()
    to_server, from_server = counters.delta()
    return Live(kind, path, sock, to_server, from_server, result.returncode, result.stderr)


@pytest.fixture(scope="module")
def redis_live() -> Iterator[Live]:
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_redis(tmp) as sock:
        create_redis_user(sock)
        yield _capture("redis", tmp, sock, RedisCounters(sock), redis_session)


@pytest.fixture(scope="module")
def mysql_live() -> Iterator[Live]:
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_mariadb(tmp) as sock:
        yield _capture("mysql", tmp, sock, MysqlCounters(sock), mysql_session)


@pytest.fixture(params=["redis", "mysql"])
def live(request: pytest.FixtureRequest) -> Live:
    return request.getfixturevalue(f"{request.param}_live")  # type: ignore[no-any-return]


def hexfields(text: str) -> list[list[str]]:
    """tshark -T fields output of byte fields (hex, comma separated) -> text, per packet."""
    return [
        [bytes.fromhex(v).decode(errors="replace") for v in line.split(",") if v]
        for line in text.splitlines()
    ]


def contains_run(tokens: list[str], run_: list[str]) -> bool:
    n = len(run_)
    return any(tokens[i : i + n] == run_ for i in range(len(tokens) - n + 1))


def decode_file(path: str, protocol: str) -> list[dict[str, Any]]:
    out = run([*USNIFF_READ, path, "--protocol", protocol, "--format", "json"], timeout=120)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


# --------------------------------------------------------------------------- both servers


def test_capture_exits_cleanly_and_file_is_private(live: Live) -> None:
    assert live.returncode == 0, live.stderr
    assert "0 bytes lost" in live.stderr and "Traceback" not in live.stderr, live.stderr
    mode = os.stat(live.file).st_mode & 0o777
    assert mode == 0o600, oct(mode)


def expert_warnings(path: str) -> list[str]:
    """Expert entries of severity error or warning, except Wireshark's own "dissector is
    incomplete" (its MySQL dissector does not parse the session-state part of an OK packet,
    e.g. after COM_INIT_DB): that is a gap in Wireshark, not a malformed frame."""
    out = tshark("-r", path, "-q", "-z", "expert,warn")
    assert "Malformed" not in out, out
    problems, section = [], ""
    for line in out.splitlines():
        if line.startswith(("Errors", "Warns", "Notes", "Chats", "Comments")):
            section = line.split()[0]
        elif (
            section in ("Errors", "Warns")
            and line.strip()
            and not line.startswith(("=", "   Frequency"))
            and not ("Undecoded" in line and "dissector is incomplete" in line)
        ):
            problems.append(line)
    return problems


def test_no_malformed_packets_or_expert_warnings(live: Live) -> None:
    assert expert_warnings(live.file) == []
    assert "Malformed" not in tshark("-r", live.file, "-q", "-z", "expert")


def test_follow_stream_bytes_equal_what_the_server_counted(live: Live) -> None:
    streams = follow_all(tshark, live.file)
    assert len(streams) >= (20 if live.kind == "redis" else 2)  # one per client connection
    assert tcp_bytes_by_port(streams, live.port) == (live.to_server, live.from_server)


def test_scapy_reads_the_same_bytes(live: Live) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.utils import PcapNgReader

    packets = to_server = from_server = 0
    with PcapNgReader(live.file) as reader:
        for pkt in reader:
            packets += 1
            if TCP not in pkt:
                continue
            ip, tcp = pkt[IP], pkt[TCP]
            payload = ip.len - 4 * ip.ihl - 4 * tcp.dataofs
            assert payload == len(bytes(tcp.payload)), pkt.summary()
            if tcp.dport == live.port:
                to_server += payload
            else:
                assert tcp.sport == live.port, pkt.summary()
                from_server += payload
    assert packets > 0
    assert (to_server, from_server) == (live.to_server, live.from_server)


def test_usniff_read_decodes_the_live_file(live: Live) -> None:
    events = decode_file(live.file, "resp" if live.kind == "redis" else "mysql")
    txs = [e for e in events if e["type"] == "transaction"]
    assert not [e for e in events if e["type"] == "notice" and e["kind"] == "undecodable"]
    for tx in txs:
        if tx["command"] == "COM_QUIT" or tx["request"].startswith("CLOSE "):
            continue
        assert tx["latency"] is not None and tx["latency"] > 0, tx
    # every request byte belongs to a transaction, except the empty line ("\r\n") that
    # redis-cli --pipe sends before its final ECHO (not a command for Redis either)
    unattributed = live.to_server - sum(t["bytes_in"] for t in txs)
    assert unattributed == (2 if live.kind == "redis" else 0), unattributed
    by_request = {t["request"]: t for t in txs}
    if live.kind == "redis":
        assert by_request["GET user:1"]["reply"] == "ann"
        assert by_request["LRANGE list 0 -1"]["reply"] == "*3 [c, b, a]"
        assert by_request["BLPOP jobs 10"]["reply"] == "*2 [jobs, job1]"
        assert by_request["EXEC"]["reply"] == "*2 [+OK, :11]"
        assert sum(t["client_comm"] == "redis-benchmark" for t in txs) >= 200
    else:
        select = by_request["SELECT customer, total FROM orders ORDER BY id"]
        assert select["reply"] == "3 rows" and select["client_comm"] == "mariadb"
        assert by_request["SELECT * FROM no_such_table"]["details"]["error_code"] == 1146
        assert by_request["SELEC broken syntax"]["details"]["error_code"] == 1064


# --------------------------------------------------------------------------- Redis


def test_tshark_dissects_the_redis_commands(redis_live: Live) -> None:
    out = tshark("-r", redis_live.file, "-Y", "resp && tcp.dstport == 6379",
                 "-T", "fields", "-e", "resp.bulk_string.value")  # fmt: skip
    tokens = [t for packet in hexfields(out) for t in packet]
    for command in (
        ["SET", "user:1", "ann"],
        ["GET", "user:1"],
        ["HSET", "h", "f1", "v1", "f2", "v2"],
        ["LPUSH", "list", "a", "b", "c"],
        ["LRANGE", "list", "0", "-1"],
        ["MULTI", "SET", "tx", "10", "INCR", "tx", "EXEC"],
        ["SUBSCRIBE", "news"],
        ["PUBLISH", "news", SUBSCRIBE_MESSAGE],
        ["BLPOP", "jobs", "10"],
        ["RPUSH", "jobs", "job1"],
        ["AUTH", "app"],
        ["SET", f"pipe:{PIPE_N - 1}", f"v{PIPE_N - 1}"],
    ):
        assert contains_run(tokens, command), command
    replies = tshark("-r", redis_live.file, "-Y", "resp && tcp.srcport == 6379",
                     "-T", "fields", "-e", "resp.bulk_string.value")  # fmt: skip
    reply_tokens = [t for packet in hexfields(replies) for t in packet]
    assert contains_run(reply_tokens, ["message", "news", SUBSCRIBE_MESSAGE])
    assert contains_run(reply_tokens, ["jobs", "job1"])
    errors = tshark("-r", redis_live.file, "-Y", "resp.error", "-T", "fields", "-e", "resp.error")
    assert "WRONGTYPE" in errors and "unknown command" in errors, errors


def test_follow_reproduces_exact_bytes_of_one_connection(redis_live: Live) -> None:
    streams = follow_all(tshark, redis_live.file)
    multi = [s for s in streams.values() if s[2] == MULTI]
    assert len(multi) == 1, [s[2][:40] for s in streams.values()]
    assert multi[0][1].endswith(":6379")
    assert multi[0][3] == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:11\r\n"


# --------------------------------------------------------------------------- MySQL


def test_tshark_dissects_the_mysql_queries(mysql_live: Live) -> None:
    queries = tshark("-r", mysql_live.file, "-Y", "mysql.query",
                     "-T", "fields", "-e", "mysql.query").splitlines()  # fmt: skip
    for statement in MYSQL_CLI_SQL.split(";"):
        if statement.strip() != "USE shop":  # the mariadb client sends COM_INIT_DB
            assert statement.strip() in queries, statement
    init_db = tshark("-r", mysql_live.file, "-Y", "mysql.command == 2",
                     "-T", "fields", "-e", "mysql.schema")  # fmt: skip
    assert init_db.split() == ["shop"], init_db
    for sql in (
        "SELECT customer FROM orders WHERE id = 2",
        "SELECT 1 AS one; SELECT 'two' AS two; DELETE FROM orders WHERE id = 3",
        "SELEC broken syntax",
        "SELECT id, customer FROM orders WHERE id >= ?",  # COM_STMT_PREPARE
    ):
        assert sql in queries, (sql, queries)
    assert any(MYSQL_PASSWORD in q for q in queries)  # pcapng keeps the real bytes
    codes = tshark("-r", mysql_live.file, "-Y", "mysql.error_code",
                   "-T", "fields", "-e", "mysql.error_code").split()  # fmt: skip
    assert sorted(codes) == ["1064", "1146"]
    users = tshark("-r", mysql_live.file, "-Y", "mysql.user", "-T", "fields", "-e", "mysql.user")
    assert users.split() == ["root", "app"]


# --------------------------------------------------------------------------- lifecycle


def _redis_cli(sock: str, *args: str) -> None:
    out = run(["redis-cli", "-s", sock, *args])
    assert out.returncode == 0 and "ERR" not in out.stdout, out


@pytest.fixture(scope="module")
def redis_sock() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_redis(tmp) as sock:
        yield sock


def test_sigkill_leaves_a_readable_file(redis_sock: str, tmp_path: Path) -> None:
    path = tmp_path / "killed.pcapng"
    with Usniff("--path", redis_sock, "-w", str(path)) as usniff:
        _redis_cli(redis_sock, "SET", "before-kill", "flushed-value")
        # usniff flushes at least every second: the bytes reach the file without a stop
        wait_until(lambda: path.exists() and b"flushed-value" in path.read_bytes(), 2.5,
                   "the periodic flush")  # fmt: skip
        busy = subprocess.Popen(
            ["redis-benchmark", "-s", redis_sock, "-n", "100000", "-t", "set", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: path.stat().st_size > 200_000, 20, "busy capture")
            usniff.proc.send_signal(signal.SIGKILL)  # mid-capture, while writing
            assert usniff.proc.wait(10) == -signal.SIGKILL
        finally:
            busy.kill()
            busy.wait()
    # A write() cut by SIGKILL may leave a partial last block (the kernel stops a large
    # regular-file write at a page boundary for a fatal signal): tshark then says so and
    # still reads every packet before it.  Nothing else may be wrong with the file.
    proc = subprocess.run(
        [TSHARK or "tshark", "-r", str(path), "-Y", "resp", "-T", "fields",
         "-e", "resp.bulk_string.value"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    errors = [
        line
        for line in proc.stderr.splitlines()
        if line and not line.startswith("Running as") and "cut short in the middle" not in line
    ]
    assert not errors, proc.stderr
    tokens = [t for packet in hexfields(proc.stdout) for t in packet]
    assert contains_run(tokens, ["SET", "before-kill", "flushed-value"])
    assert tokens.count("SET") > 100


def test_rotation_keeps_at_most_three_readable_files(redis_sock: str, tmp_path: Path) -> None:
    base = tmp_path / "rot.pcapng"
    with Usniff("--path", redis_sock, "-w", str(base), "-C", "0.05", "-W", "3") as usniff:
        out = run(["redis-benchmark", "-s", redis_sock, "-n", "4000", "-P", "10", "-d", "64",
                   "-t", "set", "-q"])  # fmt: skip
        assert out.returncode == 0, out
        result = usniff.stop()
    assert result.returncode == 0, result.stderr
    captured = int(result.stderr.split(" bytes captured")[0].rsplit(" ", 1)[1])
    assert captured > 3 * 50_000  # the names went round at least once
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["rot.pcapng0", "rot.pcapng1", "rot.pcapng2"]
    resp_packets = []
    for f in files:
        assert f.stat().st_size < 50_000 + 20_000, (f, f.stat().st_size)
        assert f.stat().st_mode & 0o777 == 0o600
        values = tshark("-r", str(f), "-Y", "resp", "-T", "fields",
                        "-e", "resp.bulk_string.value")  # fmt: skip
        resp_packets.append(len(hexfields(values)))
        assert expert_warnings(str(f)) == [], f
    # the newest file may hold only the ends of the connections (each file
    # starts with a handshake per open connection, and the FINs come last)
    assert sorted(resp_packets)[1] > 10, resp_packets


def test_write_to_stdout_piped_into_tshark(redis_sock: str) -> None:
    reader = subprocess.Popen(
        [TSHARK or "tshark", "-r", "-", "-Y", "resp", "-T", "fields",
         "-e", "resp.bulk_string.value"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert reader.stdin is not None
    try:
        with Usniff("--path", redis_sock, "-w", "-", stdout=reader.stdin) as usniff:
            reader.stdin.close()  # usniff holds the only write end now
            reader.stdin = None
            _redis_cli(redis_sock, "SET", "piped", "through-stdout")
            _redis_cli(redis_sock, "GET", "piped")
            result = usniff.stop()
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert result.returncode == 0, result.stderr
    assert reader.returncode == 0, err
    tokens = [t for packet in hexfields(out.decode()) for t in packet]
    assert contains_run(tokens, ["SET", "piped", "through-stdout"]), tokens
    assert contains_run(tokens, ["GET", "piped"]) and tokens[-1] == "through-stdout", tokens


def test_usniff_reads_a_tcpdump_style_tcp_capture(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "tcp.pcapng"
    with (
        tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp,
        start_redis(tmp, "--port", str(port), "--bind", "127.0.0.1"),
    ):
        dumper = subprocess.Popen(
            [TSHARK or "tshark", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            err = dumper.stderr
            assert err is not None
            wait_until(lambda: "Capturing on" in err.readline(), 30, "tshark")
            wait_until(path.exists, 10, "dumpcap to create the file")
            cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(port)]
            for args in (["SET", "tcp:key", "over-tcp"], ["GET", "tcp:key"],
                         ["RPUSH", "tcp:list", "x", "y"], ["LRANGE", "tcp:list", "0", "-1"],
                         ["INCR", "tcp:key"]):  # fmt: skip
                assert run(cli + args).returncode == 0
            wait_until(lambda: b"INCR" in path.read_bytes(), 10, "dumpcap to write")
        finally:
            dumper.send_signal(signal.SIGINT)
            dumper.communicate(timeout=30)
    events = decode_file(str(path), "resp")
    txs = {e["request"]: e for e in events if e["type"] == "transaction"}
    assert txs["SET tcp:key over-tcp"]["reply"] == "+OK"
    assert txs["GET tcp:key"]["reply"] == "over-tcp"
    assert txs["RPUSH tcp:list x y"]["reply"] == ":2"
    assert txs["LRANGE tcp:list 0 -1"]["reply"] == "*2 [x, y]"
    assert txs["INCR tcp:key"]["error"] and txs["INCR tcp:key"]["reply"].startswith("-ERR")
    for tx in txs.values():
        assert tx["latency"] is not None and tx["latency"] > 0, tx
        assert tx["path"] == f"127.0.0.1:{port}", tx
