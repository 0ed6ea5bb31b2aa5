"""The native --stats path of MySQL and PostgreSQL live: mariadb-slap against a real
MariaDB, pgbench -S against a real PostgreSQL.

``usniff --path SOCK -w FILE --stats`` (the table only: plain MySQL connections
counted in C, outputs/fast.py) while mariadb-slap -c 4 sends N ``SELECT 1``: the
table's row for that shape must count the N queries the client sent (and the
server's Com_select counted), no error, nothing unanswered, the bytes in being the
client's own (N COM_QUERY packets of 13 bytes); and the file read back gives the same
table whole (every column, the percentiles and the slowest requests included)
through the native path (``usniff read FILE --stats``) and through the Python engine
(``--format json``, whose decoded lines keep every transaction in Python).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.support.servers import start_mariadb, start_postgres
from tests.support.usniff import USNIFF, Usniff, run
from tests.test_native_stats_live import COLUMNS, table

pytestmark = pytest.mark.root

N = 20_000  # SELECT 1 sent by mariadb-slap (5,000 per connection)
QUERY = b"SELECT 1"


def rows(stderr: str, protocol: str) -> dict[str, list[str]]:
    """command -> [count, errors, unanswered, bytes in, bytes out] of the protocol's rows."""
    out = {}
    for line in table(stderr):
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 11 and cells[0] == protocol:
            out[cells[1]] = cells[2:5] + cells[9:11]
    return out


def com_select(sock: str) -> int:
    out = run(["mariadb", f"--socket={sock}", "--user=root", "-N", "-B", "-e",
               "SHOW GLOBAL STATUS LIKE 'Com_select'"])  # fmt: skip
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[1])


def test_stats_counts_equal_the_clients() -> None:
    with tempfile.TemporaryDirectory(prefix="usniff-nsql-") as tmp, start_mariadb(tmp) as sock:
        made = run(["mariadb", f"--socket={sock}", "--user=root", "-e", "CREATE SCHEMA slap"])
        assert made.returncode == 0, made.stderr
        before = com_select(sock)
        pcap = str(Path(tmp) / "slap.pcapng")
        with Usniff("--path", sock, "-w", pcap, "--stats", env=COLUMNS) as usniff:
            slap = run(["mariadb-slap", f"--socket={sock}", "--user=root", "--concurrency=4",
                        "--iterations=1", f"--query={QUERY.decode()}",
                        f"--number-of-queries={N}", "--create-schema=slap"],
                       timeout=300)  # fmt: skip
            assert slap.returncode == 0, slap.stderr
            live = usniff.stop()
        selects = com_select(sock) - before  # a reading's own SHOW is no SELECT
        assert live.returncode == 0 and " 0 bytes lost" in live.stderr, live.stderr
        row = rows(live.stderr, "mysql")["SELECT ?"]
        assert row[:4] == [str(N), "0", "0", str(N * (4 + 1 + len(QUERY)))], row
        assert selects == N, selects
        native = run([USNIFF, "read", pcap, "--stats"], env=COLUMNS)
        engine = run([USNIFF, "read", pcap, "--stats", "--format", "json"], env=COLUMNS)
    assert native.returncode == 0 and engine.returncode == 0, native.stderr + engine.stderr
    assert rows(native.stderr, "mysql")["SELECT ?"] == row, native.stderr
    assert table(native.stderr) == table(engine.stderr)
    assert rows(live.stderr, "mysql") == rows(native.stderr, "mysql")  # (latencies: ns in the file)


PG_N = 10_000  # pgbench -S -c 4 -t 2,500: SELECTs of the simple query protocol
PGBENCH_SHAPE = "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"


def pg_calls(sock: str) -> int:
    """pg_stat_statements' count of pgbench -S's SELECT."""
    sql = ("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
           " WHERE query LIKE 'SELECT abalance FROM pgbench_accounts%'")  # fmt: skip
    out = run(["psql", "-h", str(Path(sock).parent), "-U", "postgres", "-tA", "-c", sql])
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_postgres_stats_counts_equal_the_servers() -> None:
    """The same with pgbench -S -c 4 against PostgreSQL: the count equals pgbench's
    transactions and pg_stat_statements' calls."""
    with tempfile.TemporaryDirectory(prefix="usniff-nsql-") as tmp, start_postgres(tmp) as sock:
        host = ["-h", str(Path(sock).parent), "-U", "postgres"]
        made = run(["pgbench", *host, "-i", "-s", "1", "-q", "postgres"], timeout=120)
        assert made.returncode == 0, made.stderr
        before = pg_calls(sock)
        pcap = str(Path(tmp) / "pgbench.pcapng")
        with Usniff("--path", sock, "-w", pcap, "--stats", env=COLUMNS) as usniff:
            bench = run(["pgbench", *host, "-S", "-c", "4", "-t", str(PG_N // 4), "-n",
                         "postgres"], timeout=300)  # fmt: skip
            assert bench.returncode == 0, bench.stderr
            live = usniff.stop()
        calls = pg_calls(sock) - before
        assert live.returncode == 0 and " 0 bytes lost" in live.stderr, live.stderr
        row = rows(live.stderr, "postgres")[PGBENCH_SHAPE]
        assert row[:3] == [str(PG_N), "0", "0"] and calls == PG_N, (row, calls)
        native = run([USNIFF, "read", pcap, "--stats"], env=COLUMNS)
        engine = run([USNIFF, "read", pcap, "--stats", "--format", "json"], env=COLUMNS)
    assert native.returncode == 0 and engine.returncode == 0, native.stderr + engine.stderr
    assert rows(native.stderr, "postgres")[PGBENCH_SHAPE] == row, native.stderr
    assert table(native.stderr) == table(engine.stderr)
