"""PostgreSQL decoded live (the real `usniff` CLI, kernel and server): psql, pgbench and
psycopg 3 (tests/support/pg_session.py) against a postgres started on a private socket.

Ground truth: the clients' own counts (pgbench -t, the session's loops) and the
server's pg_stat_statements calls."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.decoded import Run, assert_clean_exit, capture_decoded, stats_table
from tests.support.pg_session import (
    PGBENCH_SELECTS,
    PIPELINE_INSERTS,
    PREPARED_RUNS,
    postgres_session,
)
from tests.support.servers import PG_PASSWORD, start_postgres
from tests.support.tshark import TSHARK, follow_all, tcp_bytes_by_port, tshark
from tests.support.usniff import USNIFF, Usniff
from usniff.decoders.registry import BY_NAME

pytestmark = pytest.mark.root

PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
PREPARED = "SELECT id, v FROM t WHERE id = $1"
PgRun = tuple[Run, dict[str, int]]  # the decoded run and pg_stat_statements calls


def _server_calls(sock: str) -> dict[str, int]:
    """pg_stat_statements: query text (as the server normalises it) -> calls."""
    out = subprocess.run(
        ["psql", "-h", sock.rsplit("/", 1)[0], "-U", "postgres", "-X", "-A", "-t", "-F", "\t",
         "-c", "SELECT query, calls FROM pg_stat_statements", "postgres"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    calls: Counter[str] = Counter()
    for line in out.stdout.splitlines():
        query, _, n = line.rpartition("\t")
        calls[query] += int(n)
    return calls


@pytest.fixture(scope="module")
def pg_run() -> Iterator[PgRun]:
    """The session decoded live, while a second usniff writes it to ``pg.pcapng``."""
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_postgres(tmp) as sock:
        with Usniff("--path", sock, "-w", f"{tmp}/pg.pcapng") as writer:
            run = capture_decoded(sock, "postgres", postgres_session)
            assert writer.stop().returncode == 0
        offline = subprocess.run(
            [USNIFF, "read", f"{tmp}/pg.pcapng", "--protocol", "postgres", "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        run.events.append(
            {
                "type": "offline",
                "events": [json.loads(line) for line in offline.stdout.splitlines()],
                "pcapng": f"{tmp}/pg.pcapng",
            }
        )
        yield run, _server_calls(sock)


def test_postgres_capture_stops_cleanly(pg_run: PgRun) -> None:
    assert_clean_exit(pg_run[0])


def test_pcapng_read_back_decodes_like_live(pg_run: PgRun) -> None:
    run = pg_run[0]
    (offline,) = [e["events"] for e in run.events if e["type"] == "offline"]

    def lines(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int, int]]:
        return sorted((e["conn"], e["request"], e["reply"], e["bytes_in"], e["bytes_out"])
                      for e in events if e["type"] == "transaction")  # fmt: skip

    live = lines(run.events)
    assert len(live) > 100 and lines(offline) == live


@pytest.mark.skipif(TSHARK is None, reason="setup.sh installs tshark")
def test_tshark_dissects_the_pcapng_as_pgsql(pg_run: PgRun) -> None:
    """Stock tshark: no malformed packet, every pgbench SELECT a Simple query, and the
    followed TCP streams carry exactly the bytes the transactions count."""
    (offline,) = [e for e in pg_run[0].events if e["type"] == "offline"]
    path = offline["pcapng"]
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    queries = tshark("-r", path, "-Y", 'pgsql.type == "Simple query"', "-T", "fields",
                     "-e", "pgsql.query").splitlines()  # fmt: skip
    assert sum(q.startswith("SELECT abalance FROM pgbench_accounts") for q in queries) == (
        PGBENCH_SELECTS
    )
    # the server's asynchronous messages (pgbench's "table does not exist, skipping"
    # notices, the NOTIFY) are no request's: their sizes as Wireshark dissects them
    fields = tshark("-r", path, "-Y", "pgsql", "-T", "fields", "-E", "occurrence=a",
                    "-e", "pgsql.type", "-e", "pgsql.length")  # fmt: skip
    unasked = sum(
        int(n) + 1  # the type byte
        for line in fields.splitlines()
        for kind, n in zip(*(col.split(",") for col in line.split("\t")), strict=True)
        if kind.startswith("Notice") or kind == "Notification"
    )
    assert unasked > 0
    txs = [e for e in offline["events"] if e["type"] == "transaction"]
    assert tcp_bytes_by_port(follow_all(path), BY_NAME["postgres"].port) == (
        sum(t["bytes_in"] for t in txs), sum(t["bytes_out"] for t in txs) + unasked
    )  # fmt: skip


def test_every_request_paired_with_processes_and_latency(pg_run: PgRun) -> None:
    run = pg_run[0]
    assert not run.notices("undecodable") and not run.notices("unpaired")
    for tx in run.txs:
        assert tx["protocol"] == "postgres" and tx["path"] == run.sock, tx
        assert tx["client_pid"] and tx["server_comm"] == "postgres", tx
        if tx["command"] in ("TERMINATE", "CANCEL"):
            assert tx["ts_reply"] is None and not tx["unanswered"], tx
            continue
        assert tx["reply"] and 0 <= tx["latency"] < 5, tx
    comms = {tx["client_comm"] for tx in run.txs}
    assert {"psql", "pgbench"} <= comms


def test_pgbench_selects_counted_like_client_and_server(pg_run: PgRun) -> None:
    run, calls = pg_run
    selects = [tx for tx in run.txs if tx["command"] == PGBENCH_SELECT]
    assert len(selects) == PGBENCH_SELECTS
    assert calls["SELECT abalance FROM pgbench_accounts WHERE aid = $1"] == PGBENCH_SELECTS
    assert all(tx["reply"].startswith("SELECT 1; 1 rows;") for tx in selects)
    table = stats_table(run.stderr)
    assert table[("postgres", PGBENCH_SELECT)] == PGBENCH_SELECTS


def test_extended_protocol_counts_match_the_server(pg_run: PgRun) -> None:
    run, calls = pg_run
    prepared = [tx for tx in run.txs if tx["command"] == PREPARED]
    assert len(prepared) == PREPARED_RUNS == calls[PREPARED]
    inserts = [tx for tx in run.txs if tx["command"] == "INSERT INTO t VALUES ($1, $2)"]
    ok = [tx for tx in inserts if tx["reply"] == "INSERT 0 1"]
    assert len(ok) == PIPELINE_INSERTS + 1 == calls["INSERT INTO t VALUES ($1, $2)"]
    assert [tx["error"] for tx in inserts[-2:]] == [False, True]  # the one after 1/0 skipped
    assert table_count(run, "SELECT ?/?") == 1


def table_count(run: Run, command: str) -> int:
    return stats_table(run.stderr)[("postgres", command)]


def test_copy_in_sizes(pg_run: PgRun) -> None:
    run = pg_run[0]
    copy = [tx for tx in run.txs if tx["request"].startswith("copy pgbench_accounts")]
    assert len(copy) == 1 and copy[0]["reply"].startswith("COPY 100000; COPY IN ")
    assert copy[0]["bytes_in"] > copy[0]["details"]["copy_bytes"] > 100000 * 8


def test_redact_masks_passwords_and_scram_proofs(pg_run: PgRun) -> None:
    run = pg_run[0]
    assert PG_PASSWORD not in run.stdout and PG_PASSWORD not in run.stderr
    logins = {tx["details"]["user"]: tx["details"]["auth"] for tx in run.txs
              if tx["command"] == "STARTUP" and "auth" in tx["details"]}  # fmt: skip
    assert logins["plain"] == ["cleartext password", "password ***", "ok"]
    scram = logins["app"]
    assert scram[0] == "SASL SCRAM-SHA-256"
    assert any(step.startswith("client-final ") and step.endswith(",p=***") for step in scram)
    assert any(step == "server-final v=***" for step in scram)


def test_connections_open_before_the_capture_are_decoded() -> None:
    """An operator attaches to a server whose clients are connected already (a pool): the
    first Query after the capture starts syncs each connection, and --stats counts every
    query sent after it, as the server does."""
    import psycopg

    queries = 200
    with tempfile.TemporaryDirectory(prefix="usniff-live-") as tmp, start_postgres(tmp) as sock:
        host = sock.rsplit("/", 1)[0]
        conns = [psycopg.connect(host=host, user="postgres", dbname="postgres") for _ in range(3)]
        for conn in conns:
            conn.execute("SELECT now()").fetchall()  # before usniff: never seen
        before = _server_calls(sock)
        with Usniff("--path", sock, "--stats") as u:
            for i in range(queries):
                conns[i % 3].execute(f"SELECT {i} AS n").fetchall()
            result = u.stop(signal.SIGINT)
        for conn in conns:
            conn.close()
        after = _server_calls(sock)
    assert result.returncode == 0, result.stderr
    table = stats_table(result.stderr)
    server = after["SELECT $1 AS n"] - before["SELECT $1 AS n"]
    assert server == queries, after
    assert table[("postgres", "SELECT ? AS n")] == server, result.stderr
    assert "protocol not recognised" not in result.stderr
