"""The native --stats path of MySQL live: mariadb-slap against a real MariaDB.

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

from tests.support.servers import start_mariadb
from tests.support.usniff import USNIFF, Usniff, run
from tests.test_native_stats_live import COLUMNS, table

pytestmark = pytest.mark.root

N = 20_000  # SELECT 1 sent by mariadb-slap (5,000 per connection)
QUERY = b"SELECT 1"


def mysql_rows(stderr: str) -> dict[str, list[str]]:
    """command -> [count, errors, unanswered, bytes in, bytes out] of the mysql rows."""
    rows = {}
    for line in table(stderr):
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 11 and cells[0] == "mysql":
            rows[cells[1]] = cells[2:5] + cells[9:11]
    return rows


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
        row = mysql_rows(live.stderr)["SELECT ?"]
        assert row[:4] == [str(N), "0", "0", str(N * (4 + 1 + len(QUERY)))], row
        assert selects == N, selects
        native = run([USNIFF, "read", pcap, "--stats"], env=COLUMNS)
        engine = run([USNIFF, "read", pcap, "--stats", "--format", "json"], env=COLUMNS)
    assert native.returncode == 0 and engine.returncode == 0, native.stderr + engine.stderr
    assert mysql_rows(native.stderr)["SELECT ?"] == row, native.stderr
    assert table(native.stderr) == table(engine.stderr)
    assert mysql_rows(live.stderr) == mysql_rows(native.stderr)  # (latencies: ns in the file)
