"""The native --stats path live: redis-benchmark against a real redis-server.

``usniff --path SOCK -w FILE --stats`` (the table only: plain RESP connections
counted in C, outputs/fast.py) while redis-benchmark -c 50 runs SET and GET,
unpipelined and -P 16: the table's counts must equal what redis-benchmark sent
and Redis's own counters (INFO commandstats), with no error and nothing
unanswered; and the file read back gives the same table whole (every column, the
percentiles and the slowest requests included) through the native path
(``usniff read FILE --stats``) and through the Python engine (with ``--format
json``, whose decoded lines keep every transaction in Python).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import start_redis
from tests.support.usniff import USNIFF, Usniff, run
from tests.test_pairing_live import commandstats

pytestmark = pytest.mark.root

N = 20_000  # redis-benchmark -n: that many SETs and that many GETs
COLUMNS = {"COLUMNS": "300"}


@pytest.fixture(scope="module")
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-native-") as d:
        yield d


def table(stderr: str) -> list[str]:
    """The rows of the --stats tables (per command, then the slowest requests)."""
    return [x for x in stderr.splitlines() if x.startswith("│")]


def counts(stderr: str) -> dict[str, list[str]]:
    """command -> [count, errors, unanswered] of the resp rows."""
    rows = {}
    for line in table(stderr):
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 11 and cells[0] == "resp":
            rows[cells[1]] = cells[2:5]
    return rows


@pytest.mark.parametrize("pipeline", [1, 16])
def test_stats_counts_equal_the_servers(tmp: str, pipeline: int) -> None:
    pcap = str(Path(tmp) / f"bench-{pipeline}.pcapng")
    with start_redis(tmp) as sock:
        run(["redis-cli", "-s", sock, "CONFIG", "RESETSTAT"])
        with Usniff("--path", sock, "-w", pcap, "--stats", env=COLUMNS) as usniff:
            got = run(["redis-benchmark", "-s", sock, "-P", str(pipeline), "-n", str(N),
                       "-c", "50", "-t", "set,get", "-q"], timeout=300)  # fmt: skip
            assert got.returncode == 0, got.stderr
            server = commandstats(sock)
            live = usniff.stop()
    assert live.returncode == 0 and " 0 bytes lost" in live.stderr, live.stderr
    rows = counts(live.stderr)
    assert rows["SET"] == [str(N), "0", "0"] and server["SET"] == N, (rows, server)
    assert rows["GET"] == [str(N), "0", "0"] and server["GET"] == N, (rows, server)
    assert "not in the table" not in live.stderr, live.stderr
    native = run([USNIFF, "read", pcap, "--stats"], env=COLUMNS)
    engine = run([USNIFF, "read", pcap, "--stats", "--format", "json"], env=COLUMNS)
    assert native.returncode == 0 and engine.returncode == 0, native.stderr + engine.stderr
    assert counts(native.stderr)["SET"] == [str(N), "0", "0"], native.stderr
    assert table(native.stderr) == table(engine.stderr)
    assert len(re.findall(r"redis-benchmark", native.stderr)) == 10  # the slowest list
