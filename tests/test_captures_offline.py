"""Offline: `usniff read` decodes the usniff-made captures in captures/*.pcapng (no root).

The files were written by ``usniff -w`` from real redis-server and mariadbd
sessions (captures/record_live.py, sessions in tests/support/live_helpers.py).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.captures import CAPTURES
from tests.support.live_helpers import (
    MEMCACHED_EXPECTED,
    MEMCACHED_STEPS,
    MYSQL_PASSWORD,
    PIPE_N,
    REDIS_PASSWORD,
    SUBSCRIBE_MESSAGE,
)

USNIFF = str(Path(sys.executable).with_name("usniff"))
BENCH_N = 64  # captures/record_live.py BENCHMARK_REQUESTS


@functools.cache
def read(name: str, protocol: str, *extra: str) -> tuple[dict[str, Any], ...]:
    path = CAPTURES / f"{name}.pcapng"
    out = subprocess.run(
        [USNIFF, "read", str(path), "--protocol", protocol, "--format", "json", *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr
    return tuple(json.loads(line) for line in out.stdout.splitlines())


def txs(events: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transaction"]


def one(events: tuple[dict[str, Any], ...], request: str) -> dict[str, Any]:
    found = [t for t in txs(events) if t["request"] == request]
    assert len(found) == 1, (request, found)
    return found[0]


@pytest.mark.parametrize("name", ["redis", "mysql", "memcached"])
def test_captures_are_small_usniff_pcapng(name: str) -> None:
    data = (CAPTURES / f"{name}.pcapng").read_bytes()
    assert len(data) < 300_000
    assert data[:4] == b"\x0a\x0d\x0d\x0a"  # pcapng section header block
    assert b"usniff" in data[:4096]


@pytest.mark.parametrize(("name", "protocol"), [("redis", "resp"), ("mysql", "mysql")])
def test_every_request_decodes_with_a_latency(name: str, protocol: str) -> None:
    events = read(name, protocol)
    assert not [e for e in events if e["type"] == "notice" and e["kind"] in ("undecodable",
                                                                          "unpaired")]  # fmt: skip
    for tx in txs(events):
        assert tx["protocol"] == protocol and tx["path"].endswith(".sock"), tx
        assert tx["client_pid"] > 0 and tx["server_pid"] > 0, tx
        if tx["command"] == "COM_QUIT" or tx["request"].startswith("CLOSE "):
            assert tx["ts_reply"] is None
            continue
        assert tx["reply"] and tx["latency"] is not None and 0 < tx["latency"] < 5, tx


def test_redis_capture_values() -> None:
    events = read("redis", "resp")
    for request, reply in {
        "SET user:1 ann": "+OK",
        "GET user:1": "ann",
        "HSET h f1 v1 f2 v2": ":2",
        "HGETALL h": "*4 [f1, v1, f2, v2]",
        "LRANGE list 0 -1": "*3 [c, b, a]",
        "GET missing": "(nil)",
        "EXEC": "*2 [+OK, :11]",
        "SUBSCRIBE news": "*3 [subscribe, news, :1]",
        f"PUBLISH news {SUBSCRIBE_MESSAGE}": ":1",
        "BLPOP jobs 10": "*2 [jobs, job1]",
        f"AUTH app {REDIS_PASSWORD}": "+OK",  # not redacted: --redact was not given
    }.items():
        assert one(events, request)["reply"] == reply, request
    assert one(events, "LPUSH user:1 x")["reply"].startswith("-WRONGTYPE")
    assert one(events, "NOSUCHCMD arg")["error"]
    assert one(events, f"GET pipe:{PIPE_N - 1}")["reply"] == f"v{PIPE_N - 1}"
    pushes = [e for e in events if e["type"] == "notice" and e["kind"] == "push"]
    assert len(pushes) == 1 and SUBSCRIBE_MESSAGE in pushes[0]["summary"]
    bench = Counter(t["command"] for t in txs(events) if t["client_comm"] == "redis-benchmark")
    assert bench["SET"] == BENCH_N and bench["GET"] == BENCH_N


def test_redis_capture_redacted() -> None:
    events = read("redis", "resp", "--redact")
    assert one(events, "AUTH app ***")["reply"] == "+OK"
    assert REDIS_PASSWORD not in json.dumps(events)


def test_mysql_capture_values() -> None:
    events = read("mysql", "mysql")
    select = one(events, "SELECT customer, total FROM orders ORDER BY id")
    assert select["reply"] == "3 rows" and select["client_comm"] == "mariadb"
    assert select["details"]["resultsets"][0]["sample"] == [
        "('ann', '10')", "('bob', '20')", "('cid', '30')",
    ]  # fmt: skip
    assert one(events, "CREATE DATABASE shop")["reply"] == "OK, 1 row affected"
    failed = one(events, "SELECT * FROM no_such_table")
    assert failed["error"] and failed["details"]["error_code"] == 1146
    assert one(events, "SELEC broken syntax")["details"]["error_code"] == 1064
    upd = one(events, "UPDATE orders SET total = total + 1 WHERE customer IN ('ann', 'bob')")
    assert upd["details"]["affected_rows"] == 2
    multi = one(events, "SELECT 1 AS one; SELECT 'two' AS two; DELETE FROM orders WHERE id = 3")
    assert multi["reply"] == "1 row; 1 row; OK, 1 row affected"
    sql = "SELECT id, customer FROM orders WHERE id >= ?"
    assert one(events, f"PREPARE {sql}")["reply"] == "stmt 1: 1 params, 2 columns"
    execute = [t for t in txs(events) if t["request"].startswith(f"EXECUTE {sql}")]
    assert len(execute) == 1 and execute[0]["reply"] == "2 rows"
    assert execute[0]["details"]["resultsets"][0]["sample"] == ["(1, 'ann')", "(2, 'bob')"]
    logins = [t["request"] for t in txs(events) if t["command"] == "LOGIN"]
    assert logins == ["login user=root", "login user=app db=shop"]


def test_mysql_capture_redacted() -> None:
    events = read("mysql", "mysql", "--redact")
    assert MYSQL_PASSWORD not in json.dumps(events)
    assert one(events, "CREATE USER app@localhost IDENTIFIED BY '***'")["reply"] == "OK"


def test_memcached_capture_values() -> None:
    """Text and meta commands, one pipelined meta batch with quiet flags: every
    request in order with its reply; bytes equal to what the client sent."""
    events = read("memcached", "auto")
    assert {e["type"] for e in events} == {"transaction"}
    got = txs(events)
    assert len(got) == len(MEMCACHED_EXPECTED)
    for tx, (request, reply) in zip(got, MEMCACHED_EXPECTED, strict=True):
        assert tx["protocol"] == "memcached" and tx["request"].startswith(request), tx
        assert tx["reply"].startswith(reply) if reply else tx["reply"] == "", tx
        answered = not tx["details"].get("reply_suppressed") and not tx["reply"].startswith("(")
        assert (tx["latency"] is not None) == answered and not tx["unanswered"], tx
    sent = sum(len(b"".join(requests)) for requests, _ in MEMCACHED_STEPS)
    assert sum(t["bytes_in"] for t in got) == sent
