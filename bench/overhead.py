"""Overhead on a traced service, and completeness of the capture (issue items 1 and 2).

    python -m bench overhead [--quick] [--rounds N] [--only redis|mariadb]

Runs redis-benchmark (SET/GET, 50 clients, -P 1 and -P 16) and mariadb-slap
against servers on Unix sockets in a temporary directory, under: no tracing;
usniff -w FILE (pcapng); usniff live text decoding to /dev/null; usniff
filtered on another socket's path (kernel-side filter only); strace -f on the
server; a socat -v proxy in front of the socket.  Configurations alternate
within each round; every figure is the median over the rounds, given as a
ratio to the untraced median of the same run.

redis-server runs on the first CPU and redis-benchmark on the second (the
tracers are not pinned): unpinned, the untraced -P 1 rate on the 2-core
development VM was bimodal from one invocation to the next (about 105k or
about 123k req/s), which swamped the ratios; pinned, 124-126k in 6 of 6.
mariadbd (a thread per connection) and mariadb-slap are not pinned.

Completeness: in the pcapng runs, payload bytes per direction in the file
versus the server's own counters (Redis INFO total_net_input/output_bytes,
MariaDB Bytes_received/Bytes_sent), plus what usniff reports lost.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .common import Usniff, background, median, pcapng_payload_by_port, table, wait_for_path

CONFIGS = (
    "untraced",
    "usniff -w pcapng",
    "usniff text",
    "usniff other path",
    "strace -f",
    "socat -v",
)
STRACE = ["strace", "-f", "-e", "trace=%network,write,read", "-s", "65535"]
_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU, CLIENT_CPU = ({_CPUS[0]}, {_CPUS[1]}) if len(_CPUS) >= 2 else (set(_CPUS), set(_CPUS))


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a running process to cpus."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def traced(config: str, sock: str, server_pid: int, work: Path) -> Iterator[dict[str, Any]]:
    """Yield {"sock": path the client should use}; afterwards holds usniff's result."""
    info: dict[str, Any] = {"sock": sock}
    if config == "untraced":
        yield info
    elif config.startswith("usniff"):
        args = ["--path", sock]
        out = None
        if config == "usniff -w pcapng":
            info["pcapng"] = work / "bench.pcapng"
            args += ["-w", str(info["pcapng"])]
        elif config == "usniff text":
            out = "/dev/null"
        else:
            other = work / "other.sock"
            if not other.exists():
                s = socket.socket(socket.AF_UNIX)
                s.bind(str(other))
                info["_keep"] = s
            args = ["--path", str(other), "-w", str(work / "other.pcapng")]
        with Usniff(args, work, stdout=out) as u:
            yield info
        info["usniff"] = u.result
    elif config == "strace -f":
        log = work / "strace.out"
        with background([*STRACE, "-o", str(log), "-p", str(server_pid)],
                        stderr_to=work / "strace.err") as proc:  # fmt: skip
            time.sleep(1.0)  # strace attaches to every thread
            if proc.poll() is not None:
                raise RuntimeError((work / "strace.err").read_text())
            yield info
        log.unlink(missing_ok=True)
    elif config == "socat -v":
        proxy = work / "proxy.sock"
        proxy.unlink(missing_ok=True)
        with background(["socat", "-v", f"UNIX-LISTEN:{proxy},fork,backlog=256,mode=777",
                         f"UNIX-CONNECT:{sock}"], stderr_to=work / "socat.log"):  # fmt: skip
            wait_for_path(proxy)
            info["sock"] = str(proxy)
            yield info
        (work / "socat.log").unlink(missing_ok=True)
    else:
        raise ValueError(config)


# ----------------------------------------------------------------- workloads


def redis_benchmark(sock: str, pipeline: int, requests: int) -> float:
    """Requests/s, mean of SET and GET."""
    out = subprocess.run(
        ["redis-benchmark", "-s", sock, "-t", "set,get", "-c", "50", "-P", str(pipeline),
         "-n", str(requests), "--csv"],
        check=True, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU),
    ).stdout  # fmt: skip
    rps = [float(m[1]) for m in re.finditer(r'^"(?:SET|GET)","([\d.]+)"', out, re.M)]
    if len(rps) != 2:
        raise RuntimeError(f"unexpected redis-benchmark output: {out!r}")
    return sum(rps) / 2


SLAP = shutil.which("mariadb-slap") or shutil.which("mysqlslap") or "mariadb-slap"


def mariadb_slap(sock: str, queries: int) -> float:
    """Queries/s of mariadb-slap (50 clients, auto-generated mixed load)."""
    out = subprocess.run(
        [SLAP, f"--socket={sock}", "--user=root", "--concurrency=50", "--iterations=1",
         "--auto-generate-sql", "--auto-generate-sql-load-type=mixed",
         f"--number-of-queries={queries}"],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout  # fmt: skip
    m = re.search(r"Average number of seconds to run all queries: ([\d.]+)", out)
    if not m:
        raise RuntimeError(f"unexpected {SLAP} output: {out!r}")
    return queries / float(m[1])


# ----------------------------------------------------------------- driver


def _pid_of(pidfile: Path) -> int:
    wait_for_path(pidfile)
    for _ in range(100):
        text = pidfile.read_text().split()
        if text:
            return int(text[0])  # PostgreSQL's postmaster.pid: the pid, then more lines
        time.sleep(0.05)
    raise RuntimeError(f"{pidfile} stays empty")


def _calibrate(counters: Callable[[], tuple[int, int]]) -> tuple[int, int]:
    """What one counter read adds to the counters themselves."""
    a, b = counters(), counters()
    return b[0] - a[0], b[1] - a[1]


def measure(
    service: str,
    sock: str,
    pid: int,
    work: Path,
    workloads: list[tuple[str, Callable[[str], float]]],
    counters: Callable[[], tuple[int, int]],
    port: int,
    rounds: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    extra = _calibrate(counters)
    rates: dict[tuple[str, str], list[float]] = {}
    complete: dict[str, list[dict[str, int]]] = {}
    for rnd in range(rounds):
        for name, run in workloads:
            for config in CONFIGS:
                before = counters()
                with traced(config, sock, pid, work) as info:
                    rate = run(info["sock"])
                after = counters()
                rates.setdefault((name, config), []).append(rate)
                log(f"  round {rnd + 1}/{rounds} {service} {name:>5} {config:<18} {rate:>12,.0f}/s")
                if "pcapng" in info:
                    to_srv, from_srv = pcapng_payload_by_port(info["pcapng"], port)
                    res = info["usniff"]
                    complete.setdefault(name, []).append({
                        "server_in": after[0] - before[0] - extra[0],
                        "server_out": after[1] - before[1] - extra[1],
                        "captured_in": to_srv,
                        "captured_out": from_srv,
                        "lost_bytes": res.lost_bytes,
                        "lost_records": res.lost_records,
                        "records": res.records,
                    })  # fmt: skip
                    info["pcapng"].unlink()
    result: dict[str, Any] = {"service": service, "rows": [], "completeness": []}
    for name, _ in workloads:
        base = median(rates[(name, "untraced")])
        for config in CONFIGS:
            med = median(rates[(name, config)])
            result["rows"].append({
                "workload": name, "config": config, "rate": med, "ratio": med / base,
                "runs": rates[(name, config)],
            })  # fmt: skip
        runs = complete.get(name, [])
        if runs:
            row = {k: median([r[k] for r in runs]) for k in runs[0]}
            row["workload"] = name
            row["max_lost_bytes"] = max(r["lost_bytes"] for r in runs)
            row["ratio_in"] = _ratio(runs, "captured_in", "server_in")
            row["ratio_out"] = _ratio(runs, "captured_out", "server_out")
            result["completeness"].append(row)
    return result


def _ratio(runs: list[dict[str, int]], num: str, den: str) -> float:
    return median([r[num] / r[den] for r in runs if r[den]])


def run_redis(quick: bool, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from tests.support.servers import redis_net_bytes, start_redis

    n1, n16 = (60_000, 600_000) if quick else (150_000, 1_500_000)
    with tempfile.TemporaryDirectory(prefix="usniff-bench-") as tmp:
        work = Path(tmp)
        with start_redis(tmp, "--pidfile", str(work / "redis.pid")) as sock:
            pid = _pid_of(work / "redis.pid")
            pin_process(pid, SERVER_CPU)
            workloads = [
                ("-P 1", lambda s: redis_benchmark(s, 1, n1)),
                ("-P 16", lambda s: redis_benchmark(s, 16, n16)),
            ]
            return measure("redis", sock, pid, work, workloads,
                           lambda: redis_net_bytes(sock), 6379, rounds, log)  # fmt: skip


def run_mariadb(quick: bool, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    from tests.support.servers import mariadb_bytes, start_mariadb

    queries = 1_000 if quick else 2_000
    with tempfile.TemporaryDirectory(prefix="usniff-bench-") as tmp:
        work = Path(tmp)
        with start_mariadb(tmp, "--innodb-flush-log-at-trx-commit=0") as sock:
            pid = _pid_of(work / "mysqld.pid")
            workloads = [("slap", lambda s: mariadb_slap(s, queries))]
            return measure("mariadb", sock, pid, work, workloads,
                           lambda: mariadb_bytes(sock), 3306, rounds, log)  # fmt: skip


def report(results: list[dict[str, Any]]) -> str:
    lines = []
    rows = []
    for res in results:
        for r in res["rows"]:
            rows.append((res["service"], r["workload"], r["config"], r["rate"], r["ratio"]))
    lines.append(table(("service", "load", "tracing", "median req/s", "ratio"), rows))
    lines.append("")
    crow = []
    for res in results:
        for c in res["completeness"]:
            crow.append((res["service"], c["workload"], c["server_in"], c["captured_in"],
                         c["ratio_in"], c["server_out"], c["captured_out"], c["ratio_out"],
                         c["max_lost_bytes"]))  # fmt: skip
    lines.append("completeness (usniff -w pcapng runs; medians; ratio = captured / server counter)")
    lines.append(table(("service", "load", "server in", "captured", "ratio", "server out",
                        "captured", "ratio", "max lost B"), crow))  # fmt: skip
    return "\n".join(lines)
