"""Live decoding end to end (issue 3): the real `usniff` CLI, real kernel, real servers.

usniff starts first (ready when it prints ``usniff: capturing with the``),
then redis-cli / redis-benchmark / mariadb / pymysql run a scripted session
(tests/support/live_helpers.py), then SIGTERM stops usniff.  Every request must come
out decoded, with the right values and a latency, and ``--stats`` must print
the per-command table at exit.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.live_helpers import (
    MYSQL_CLI_SQL,
    MYSQL_PASSWORD,
    PIPE_N,
    REDIS_PASSWORD,
    SUBSCRIBE_MESSAGE,
    Usniff,
    create_redis_user,
    mysql_session,
    redis_session,
)
from tests.support.servers import start_mariadb, start_redis
from usniff.decoders.registry import DECODABLE

pytestmark = pytest.mark.root

BENCH_N = 200  # redis-benchmark -n: that many SETs and that many GETs
# the Python clients run in this test process: its name is "python" or "pytest"
SELF_COMM = Path("/proc/self/comm").read_text().strip()


@dataclass
class Run:
    sock: str
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]

    @property
    def txs(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "transaction"]

    def by_request(self, request: str) -> list[dict[str, Any]]:
        return [t for t in self.txs if t["request"] == request]

    def one(self, request: str) -> dict[str, Any]:
        found = self.by_request(request)
        assert len(found) == 1, (request, found, sorted({t["request"] for t in self.txs}))
        return found[0]

    def notices(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "notice" and e["kind"] == kind]


def _capture(sock: str, protocol: str, session: Any) -> Run:
    args = ["--path", sock, "--format", "json", "--protocol", protocol, "--stats", "--redact"]
    with Usniff(*args) as usniff:
        session(sock)
        result = usniff.stop()
    events = [json.loads(line) for line in result.text.splitlines()]
    return Run(sock, result.returncode, result.text, result.stderr, events)


@pytest.fixture(scope="module")
def redis_run() -> Iterator[Run]:
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_redis(tmp) as sock:
        create_redis_user(sock)
        yield _capture(sock, "resp", lambda s: redis_session(s, benchmark_requests=BENCH_N))


@pytest.fixture(scope="module")
def mysql_run() -> Iterator[Run]:
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_mariadb(tmp) as sock:
        yield _capture(sock, "mysql", mysql_session)


def stats_table(stderr: str) -> dict[tuple[str, str], int]:
    """(protocol, command) -> count from the rich table ``--stats`` prints at exit."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 11 and cells[0] in DECODABLE:
            rows[(cells[0], cells[1])] = int(cells[2])
    return rows


def assert_clean_exit(run: Run) -> None:
    assert run.returncode == 0, run.stderr
    summary = re.search(
        r"usniff: (\d+) records, (\d+) bytes captured .* (\d+) bytes lost", run.stderr
    )
    assert summary, run.stderr
    assert int(summary[1]) > 0 and int(summary[2]) > 0 and int(summary[3]) == 0, summary[0]
    assert "Traceback" not in run.stderr


# --------------------------------------------------------------------------- Redis


def test_redis_capture_stops_cleanly_on_sigterm(redis_run: Run) -> None:
    assert_clean_exit(redis_run)


def test_redis_every_request_is_paired_with_a_reply_and_latency(redis_run: Run) -> None:
    assert len(redis_run.txs) > 2 * BENCH_N + 2 * PIPE_N
    for tx in redis_run.txs:
        assert tx["protocol"] == "resp" and tx["path"] == redis_run.sock, tx
        assert tx["reply"] and tx["ts_reply"] is not None, tx
        assert tx["latency"] is not None and 0 < tx["latency"] < 5, tx
        assert tx["bytes_in"] > 0 and tx["bytes_out"] > 0, tx
        assert tx["server_comm"] == "redis-server", tx
        assert tx["client_comm"] in ("redis-cli", "redis-benchmark", SELF_COMM), tx
    assert not redis_run.notices("undecodable") and not redis_run.notices("unpaired")


def test_redis_cli_commands_and_replies(redis_run: Run) -> None:
    expected = {
        "SET user:1 ann": "+OK",
        "GET user:1": "ann",
        "HSET h f1 v1 f2 v2": ":2",
        "HGETALL h": "*4 [f1, v1, f2, v2]",
        "LPUSH list a b c": ":3",
        "LRANGE list 0 -1": "*3 [c, b, a]",
        "INCR counter": ":1",
        "GET missing": "(nil)",
        "PUBLISH news " + SUBSCRIBE_MESSAGE: ":1",
        "RPUSH jobs job1": ":1",
    }
    for request, reply in expected.items():
        tx = redis_run.one(request)
        assert (tx["command"], tx["reply"], tx["error"]) == (
            request.split()[0],
            reply,
            False,
        ), tx
        assert tx["client_comm"] == "redis-cli"


def test_redis_error_replies(redis_run: Run) -> None:
    wrong = redis_run.one("LPUSH user:1 x")
    assert wrong["error"] and wrong["reply"].startswith("-WRONGTYPE"), wrong
    unknown = redis_run.one("NOSUCHCMD arg")
    assert unknown["error"] and unknown["reply"].startswith("-ERR unknown command"), unknown
    assert sum(t["error"] for t in redis_run.txs) == 2


def test_redis_multi_exec(redis_run: Run) -> None:
    exec_ = redis_run.one("EXEC")
    conn = [t for t in redis_run.txs if t["conn"] == exec_["conn"]]
    assert [(t["request"], t["reply"]) for t in conn] == [
        ("MULTI", "+OK"),
        ("SET tx 10", "+QUEUED"),
        ("INCR tx", "+QUEUED"),
        ("EXEC", "*2 [+OK, :11]"),
    ]


def test_redis_cli_pipe_pipeline(redis_run: Run) -> None:
    first = redis_run.one("SET pipe:0 v0")
    conn = [t for t in redis_run.txs if t["conn"] == first["conn"]]
    sets = [(t["request"], t["reply"]) for t in conn if t["command"] == "SET"]
    gets = [(t["request"], t["reply"]) for t in conn if t["command"] == "GET"]
    assert sets == [(f"SET pipe:{i} v{i}", "+OK") for i in range(PIPE_N)]
    assert gets == [(f"GET pipe:{i}", f"v{i}") for i in range(PIPE_N)]
    echo = conn[-1]  # redis-cli --pipe ends with ECHO <20 random bytes> and waits for it
    assert echo["command"] == "ECHO" and echo["reply"] == echo["request"].split(" ", 1)[1], echo


def test_redis_subscribe_and_published_push(redis_run: Run) -> None:
    sub = redis_run.one("SUBSCRIBE news")
    assert sub["reply"] == "*3 [subscribe, news, :1]", sub
    pushes = [n for n in redis_run.notices("push") if n["conn"] == sub["conn"]]
    assert len(pushes) == 1 and SUBSCRIBE_MESSAGE in pushes[0]["summary"], pushes
    assert "message" in pushes[0]["summary"] and "news" in pushes[0]["summary"]
    publish = redis_run.one(f"PUBLISH news {SUBSCRIBE_MESSAGE}")
    assert publish["ts_request"] <= pushes[0]["ts"]


def test_redis_blocking_blpop_served_by_another_client(redis_run: Run) -> None:
    blpop = redis_run.one("BLPOP jobs 10")
    rpush = redis_run.one("RPUSH jobs job1")
    assert blpop["reply"] == "*2 [jobs, job1]", blpop
    assert blpop["conn"] != rpush["conn"]
    # the reply came only after the other client's push
    assert blpop["ts_request"] < rpush["ts_request"] <= blpop["ts_reply"]
    assert blpop["latency"] >= rpush["ts_request"] - blpop["ts_request"]


def test_redis_auth_is_redacted(redis_run: Run) -> None:
    auth = redis_run.one("AUTH app ***")
    assert auth["reply"] == "+OK" and auth["command"] == "AUTH"
    ping = [t for t in redis_run.txs if t["conn"] == auth["conn"] and t["request"] == "PING"]
    assert [t["reply"] for t in ping] == ["+PONG"]
    assert REDIS_PASSWORD not in redis_run.stdout
    assert REDIS_PASSWORD not in redis_run.stderr


def test_redis_benchmark(redis_run: Run) -> None:
    bench = [t for t in redis_run.txs if t["client_comm"] == "redis-benchmark"]
    counts = Counter(t["command"] for t in bench if t["command"] in ("SET", "GET"))
    assert counts == {"SET": BENCH_N, "GET": BENCH_N}
    for t in bench:
        if t["command"] == "SET":
            assert t["reply"] == "+OK", t
        elif t["command"] == "GET":
            assert t["reply"] == "VXK", t  # redis-benchmark's default 3-byte value


def test_redis_stats_table_at_exit(redis_run: Run) -> None:
    table = stats_table(redis_run.stderr)
    counts = Counter(("resp", t["command"]) for t in redis_run.txs)
    assert table == dict(counts), (table, counts)
    assert table[("resp", "SET")] >= BENCH_N + PIPE_N + 1
    assert table[("resp", "GET")] >= BENCH_N + PIPE_N + 2
    for command in ("HSET", "LRANGE", "MULTI", "EXEC", "BLPOP", "SUBSCRIBE", "AUTH"):
        assert table[("resp", command)] == 1, command
    assert "usniff: per command" in redis_run.stderr and "slowest requests" in redis_run.stderr


# --------------------------------------------------------------------------- MySQL


def test_mysql_capture_stops_cleanly_on_sigterm(mysql_run: Run) -> None:
    assert_clean_exit(mysql_run)


def test_mysql_every_request_is_paired_with_a_reply_and_latency(mysql_run: Run) -> None:
    assert len(mysql_run.txs) >= 20
    for tx in mysql_run.txs:
        assert tx["protocol"] == "mysql" and tx["path"] == mysql_run.sock, tx
        assert tx["server_comm"] == "mariadbd" and tx["client_comm"] in ("mariadb", SELF_COMM), tx
        if tx["command"] == "COM_QUIT" or tx["request"].startswith("CLOSE "):
            assert tx["ts_reply"] is None and tx["reply"] == "", tx  # no reply by design
            continue
        assert tx["reply"] and tx["latency"] is not None and 0 < tx["latency"] < 5, tx
        assert "(incomplete)" not in tx["reply"] and "(no reply)" not in tx["reply"], tx
    assert not mysql_run.notices("undecodable") and not mysql_run.notices("unpaired")
    greetings = mysql_run.notices("greeting")
    assert len(greetings) == 2 and "MariaDB" in greetings[0]["details"]["server_version"]


def test_mysql_cli_session(mysql_run: Run) -> None:
    cli = [t for t in mysql_run.txs if t["client_comm"] == "mariadb"]
    requests = [t["request"] for t in cli]
    statements = [s.strip() for s in MYSQL_CLI_SQL.split(";")]
    statements = [s.replace(MYSQL_PASSWORD, "***") for s in statements]  # --redact
    # login, the mariadb client's own SELECT DATABASE()/USE, then every statement in order
    wanted = [r for r in requests if r in statements or r in ("USE shop", "login user=root")]
    assert wanted == ["login user=root", *statements], requests
    assert cli[-1]["request"] == "COM_QUIT"
    replies = {t["request"]: t for t in cli}
    assert replies["CREATE DATABASE shop"]["reply"] == "OK, 1 row affected"
    assert replies["USE shop"]["command"] == "COM_INIT_DB"
    insert = replies[statements[3]]
    assert (
        insert["reply"] == "OK, 3 rows affected, insert id 1"
        and insert["details"]["affected_rows"] == 3
    )
    select = replies["SELECT customer, total FROM orders ORDER BY id"]
    assert select["reply"] == "3 rows"
    [resultset] = select["details"]["resultsets"]
    assert resultset["columns"] == ["customer", "total"] and resultset["rows"] == 3
    assert resultset["sample"] == ["('ann', '10')", "('bob', '20')", "('cid', '30')"]
    failed = replies["SELECT * FROM no_such_table"]
    assert failed["error"] and failed["details"]["error_code"] == 1146, failed
    assert failed["details"]["sqlstate"] == "42S02"
    assert failed["reply"] == "ERR 1146 (42S02): Table 'shop.no_such_table' doesn't exist"


def test_mysql_pymysql_session(mysql_run: Run) -> None:
    py = [t for t in mysql_run.txs if t["client_comm"] == SELF_COMM]
    login = py[0]
    assert login["request"] == "login user=app db=shop" and login["reply"] == "OK", login
    assert login["details"]["auth_response"] == "***"  # --redact
    by = {t["request"]: t for t in py}
    sel = by["SELECT customer FROM orders WHERE id = 2"]
    assert sel["reply"] == "1 row" and sel["details"]["resultsets"][0]["sample"] == ["('bob')"]
    assert sel["command"] == "SELECT customer FROM orders WHERE id = ?"
    upd = by["UPDATE orders SET total = total + 1 WHERE customer IN ('ann', 'bob')"]
    assert upd["reply"] == "OK, 2 rows affected" and upd["details"]["affected_rows"] == 2
    multi = by["SELECT 1 AS one; SELECT 'two' AS two; DELETE FROM orders WHERE id = 3"]
    assert multi["reply"] == "1 row; 1 row; OK, 1 row affected", multi
    assert [r["columns"] for r in multi["details"]["resultsets"]] == [["one"], ["two"]]
    syntax = by["SELEC broken syntax"]
    assert syntax["error"] and syntax["details"]["error_code"] == 1064, syntax
    assert by["COMMIT"]["reply"] == "OK"
    assert py[-1]["request"] == "COM_QUIT"


def test_mysql_prepared_statements(mysql_run: Run) -> None:
    sql = "SELECT id, customer FROM orders WHERE id >= ?"
    prepare = mysql_run.one(f"PREPARE {sql}")
    assert prepare["reply"] == "stmt 1: 1 params, 2 columns", prepare
    execute = mysql_run.one(f"EXECUTE {sql} ***")  # parameters masked by --redact
    assert execute["reply"] == "2 rows", execute
    [resultset] = execute["details"]["resultsets"]
    assert resultset["columns"] == ["id", "customer"]
    assert resultset["sample"] == ["(1, 'ann')", "(2, 'bob')"]  # binary protocol: ints
    close = [t for t in mysql_run.txs if t["request"].startswith("CLOSE ")]
    assert len(close) == 1 and close[0]["ts_reply"] is None


def test_mysql_passwords_are_redacted(mysql_run: Run) -> None:
    assert MYSQL_PASSWORD not in mysql_run.stdout and MYSQL_PASSWORD not in mysql_run.stderr
    create = [t for t in mysql_run.txs if t["request"].startswith("CREATE USER")]
    assert [t["request"] for t in create] == ["CREATE USER app@localhost IDENTIFIED BY '***'"]


def test_mysql_stats_table_at_exit(mysql_run: Run) -> None:
    table = stats_table(mysql_run.stderr)
    counts = Counter(("mysql", t["command"]) for t in mysql_run.txs)
    short = {k: v for k, v in counts.items() if len(k[1]) <= 30}  # long shapes wrap in the table
    assert short and all(table.get(k) == v for k, v in short.items()), (table, counts)
    assert table[("mysql", "LOGIN")] == 2 and table[("mysql", "COM_QUIT")] == 2
    assert sum(table.values()) <= len(mysql_run.txs)
