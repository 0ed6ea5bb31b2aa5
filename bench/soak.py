"""Memory over a long capture: many short connections beside a steady load.

    python -m bench soak [--connections N] [--quick]

One redis-server; for each usniff configuration (decoded text to /dev/null,
and ``-w`` pcapng), usniff captures while redis-benchmark opens N short
connections (``-k 0``: one request per connection) and a second
redis-benchmark keeps a steady pipelined load (``-P 4``) on one long
connection (a load the decoded text output keeps up with on 2 cores: the
subject is memory, not decoding speed).  usniff's resident set size (VmRSS) is sampled every second.
Completeness: the bytes usniff captured plus those it reports lost equal
Redis' own counters (INFO total_net_input_bytes + total_net_output_bytes,
less the INFO exchanges of the measurement itself).

Prints per configuration: RSS at start, at the end, its maximum, and the
growth per 1,000 connections between the first and the last quarter of the
run (flat memory: ~0).  Results: docs/performance.md ("Memory over a long
capture").
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import Usniff, table

CONFIGS = ("usniff text", "usniff -w pcapng")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def redis_bytes(sock: str) -> int:
    out = subprocess.run(["redis-cli", "-s", sock, "INFO", "stats"], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    stats = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])


def soak(
    config: str, sock: str, work: Path, connections: int, log: Callable[[str], None]
) -> dict[str, Any]:
    args = ["--path", sock]
    stdout = None
    if config == "usniff -w pcapng":
        args += ["-w", str(work / "soak.pcapng"), "-C", "500", "-W", "2"]
    else:
        stdout = "/dev/null"
    with Usniff(args, work, stdout=stdout) as u:
        before = redis_bytes(sock)
        samples: list[tuple[float, int]] = []
        done = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not done.wait(1.0):
                samples.append((time.monotonic() - t0, rss_kib(u.proc.pid)))

        start_rss = rss_kib(u.proc.pid)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        steady = subprocess.Popen(
            ["redis-benchmark", "-s", sock, "-P", "4", "-c", "1", "-n", "100000000", "-t", "set",
             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        t0 = time.monotonic()
        subprocess.run(["redis-benchmark", "-s", sock, "-k", "0", "-c", "4", "-n",
                        str(connections), "-t", "ping", "-q"], capture_output=True,
                       check=True, timeout=3600)  # fmt: skip
        elapsed = time.monotonic() - t0
        steady.terminate()
        steady.wait()
        time.sleep(2.5)  # close checks run every second: the last connections' state goes
        done.set()
        sampler.join()
        end_rss = rss_kib(u.proc.pid)
        after = redis_bytes(sock)
    r = u.result
    info_bytes = after - before
    quarter = max(1, len(samples) // 4)
    first = sum(s for _, s in samples[:quarter]) / quarter
    last = sum(s for _, s in samples[-quarter:]) / quarter
    per_k = (last - first) / (connections * 0.5 / 1000)  # the quarters' midpoints are half apart
    log(f"soak {config}: {connections} connections in {elapsed:.0f} s, RSS {start_rss} -> "
        f"{end_rss} KiB (max {max(s for _, s in samples)}), captured {r.bytes} + lost "
        f"{r.lost_bytes}, Redis counted {info_bytes}")  # fmt: skip
    return {
        "config": config, "connections": connections, "seconds": elapsed,
        "rss_start_kib": start_rss, "rss_end_kib": end_rss,
        "rss_max_kib": max(s for _, s in samples), "kib_per_1000_connections": per_k,
        "captured": r.bytes, "lost": r.lost_bytes, "redis_bytes": info_bytes,
        "samples": samples,
    }  # fmt: skip


def run(quick: bool, connections: int | None, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from tests.support.servers import start_redis

    n = connections or (100_000 if quick else 1_000_000)
    with tempfile.TemporaryDirectory(prefix="usniff-soak-") as tmp, start_redis(tmp) as sock:
        return [soak(config, sock, Path(tmp), n, log) for config in CONFIGS]


def report(rows: list[dict[str, Any]]) -> str:
    """The table; the INFO exchanges themselves (two replies of ~1.5 KB) are
    counted by Redis but sent before and after the capture: `redis - (captured
    + lost)` is that much, never negative."""
    return table(
        ["config", "connections", "s", "RSS start MiB", "RSS end MiB", "RSS max MiB",
         "KiB / 1000 conns", "captured + lost", "Redis counted"],
        [[r["config"], r["connections"], round(r["seconds"]), r["rss_start_kib"] / 1024,
          r["rss_end_kib"] / 1024, r["rss_max_kib"] / 1024, r["kib_per_1000_connections"],
          r["captured"] + r["lost"], r["redis_bytes"]] for r in rows],
    )  # fmt: skip
