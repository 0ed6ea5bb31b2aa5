"""Overhead of usniff on one continuous load, in alternating half-second windows.

    python -m bench windows [--quick] [--cycles N] [--window S] [--only redis|mariadb|postgres]

Why: on the shared development VM the traced service's own speed changes by
15-20 % for seconds at a time, within one redis-benchmark run (its CPU time
per request goes from 7.7 to 12.4 us and back, measured in one-second
windows), so whole runs taken one after the other (bench/overhead.py,
bench/servers.py) give ratios that move by +-0.1 from run to run.  Here one
client load runs throughout, and each usniff configuration is loaded once, in
an agent process that runs the CLI's own capture loop and outputs
(``cli.loop.run``, ``cli.main.make_outputs``); the agent only detaches and
re-attaches its BPF programs.  The windows go: untraced, configuration A,
untraced, configuration B, ... and each traced window is taken as a ratio to
the mean of the untraced windows on either side.  Reported per configuration:
the median of those ratios, their mean with its standard error, the
quartiles, and the CPU time per request of the server (with its child
processes), the client and usniff (schedstat) in traced and untraced windows.

Loads, the client pinned to the second CPU, the request rate read from the
server at the edges of each window:

* redis-benchmark SET/GET, 50 clients, -P 1 and -P 16, against a redis-server
  pinned to the first CPU (INFO's total_commands_processed);
* mariadb-slap, 4 clients sending ``SELECT 1`` (Com_select of SHOW GLOBAL STATUS);
* pgbench -S, 4 clients (the calls of its query in pg_stat_statements, which
  counts each statement as it ends).

Configurations: ``redis-cli MONITOR`` (Redis only: Redis's own command feed, read and
discarded: what an operator who only wants the commands pays),
``usniff --path SOCK -w FILE -C 1000 -W 2`` (pcapng on disk, rotated so that
a long run stays within 2 GB), ``usniff --path SOCK`` (decoded text, to
/dev/null), ``usniff --path SOCK --stats`` (the table only, as the CLI gives it:
plain RESP, MySQL and PostgreSQL connections counted in C, outputs/fast.py),
``usniff --path SOCK --metrics S`` alone and (Redis only) beside ``-w`` (Prometheus
metrics served on a Unix socket, not scraped) and
``usniff --path OTHER -w FILE`` (filtered out: the kernel-side filter alone) and
``usniff kernel only`` (the programs capture into the ring as always, and the
agent releases the records unread: the kernel's share of every usniff mode).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import SUMMARY, median, table
from .overhead import CLIENT_CPU, SERVER_CPU, SLAP, _pid_of, pin_process

CONFIGS = (
    "redis MONITOR",
    "usniff -w pcapng",
    "usniff -w --metrics",
    "usniff --metrics",
    "usniff text",
    "usniff --stats",
    "usniff other path",
    "usniff kernel only",
)
SQL_CONFIGS = tuple(c for c in CONFIGS if c not in ("redis MONITOR", "usniff -w --metrics"))
SETTLE = 0.05  # s after attaching, before the window opens
QUIET = 0.002  # CPU s per 50 ms under which a detached agent has caught up


# ------------------------------------------------------------------ agent side


def agent(config: str, sock: str, work: str) -> None:
    """``python -m bench.windows CONFIG SOCK WORKDIR``: a capture whose programs
    the controller detaches and attaches ("attach"/"detach" lines on stdin,
    "ok" on stdout); SIGTERM ends it with the CLI's summary on stderr."""
    if config == "redis MONITOR":
        monitor(sock)
        return
    from usniff.capture.collector import POLL, Capture, CaptureOptions
    from usniff.cli.loop import run
    from usniff.cli.main import make_outputs, summary

    path, write = sock, None
    metrics = f"{work}/metrics-{CONFIGS.index(config)}.sock" if "--metrics" in config else None
    if config in ("usniff -w pcapng", "usniff -w --metrics"):
        write = f"{work}/windows.pcapng"
    elif config == "usniff other path":
        path, write = f"{work}/other.sock", f"{work}/other.pcapng"
    cap = Capture(CaptureOptions(paths=[path]))
    # Capture has no public detach: bytes sent while detached are not counted,
    # so a stream would resume without a gap mark; only a measurement wants it.
    obj = cap._obj
    obj.detach()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "attach":
                obj.attach()
            elif line.strip() == "detach":
                obj.detach()
            print("ok", flush=True)

    threading.Thread(target=commands, daemon=True).start()
    if config == "usniff kernel only":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("ready", flush=True)
        while not stop.is_set():
            cap.discard(POLL)
        k, st = cap.kernel_stats(), cap.stats
        st.records, st.bytes, st.bytes_kept = k["records"], k["bytes"], k["bytes"]
        st.lost_records, st.lost_bytes = k["lost_records"], k["lost_bytes"]
        print(summary(st), file=sys.stderr, flush=True)
        return
    devnull = open(os.devnull, "w")  # noqa: SIM115 (the text output's stream, for the run)
    outputs = make_outputs(
        devnull, write=write, rotate_mb=1000 if write else None, rotate_count=2 if write else None,
        rotate_seconds=None, snaplen=0, ascii_=False, hexdump=False, fmt="text", protocol=None,
        stats=config == "usniff --stats", redact=False, metrics=metrics,
        sinks_only=config == "usniff --metrics", lines=config != "usniff --stats",
    )  # fmt: skip
    outcome = run(cap, outputs, on_ready=lambda: print("ready", flush=True))
    print(summary(outcome.stats), file=sys.stderr, flush=True)


def monitor(sock: str) -> None:
    """The MONITOR agent: "attach" opens a MONITOR connection whose feed a thread
    reads and discards, "detach" closes it; SIGTERM ends it."""
    conn: socket.socket | None = None

    def drain(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while s.recv(1 << 20):
                pass

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "attach":
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(sock)
            conn.sendall(b"MONITOR\r\n")
            threading.Thread(target=drain, args=(conn,), daemon=True).start()
        elif line.strip() == "detach" and conn is not None:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            conn = None
        print("ok", flush=True)


# ------------------------------------------------------------- controller side


class Agent:
    def __init__(self, config: str, sock: str, work: Path) -> None:
        self.config = config
        self.err = work / f"agent-{CONFIGS.index(config)}.err"
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.windows", config, sock, str(work)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        if self._line() != "ready":
            raise RuntimeError(f"usniff agent did not start: {self.err.read_text()}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def wait_quiet(self, timeout: float = 30) -> None:
        """Until the agent has written out what it captured (a decoder may lag
        the window by most of a second): under QUIET CPU seconds per 50 ms."""
        deadline = time.monotonic() + timeout
        last = cpu_ns(self.proc.pid)
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = cpu_ns(self.proc.pid)
            if now - last < QUIET * 1e9:
                return
            last = now

    def command(self, what: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        if self._line() != "ok":
            raise RuntimeError(f"usniff agent: {self.err.read_text()}")

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        if not self.config.startswith("usniff"):
            return {"records": 0, "lost_bytes": 0, "lost_records": 0}
        m = SUMMARY.search(self.err.read_text(errors="replace"))
        if not m:
            raise RuntimeError(f"usniff agent: no summary: {self.err.read_text()}")
        return {"records": int(m[1]), "lost_bytes": int(m[4]), "lost_records": int(m[5])}


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid, in ns (schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def children(pid: int) -> list[int]:
    kids: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            kids += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return kids


@dataclass(frozen=True)
class Load:
    """One continuous client load and how the server counts what it completed."""

    name: str  # as the tables show it
    configs: tuple[str, ...]
    argv: list[str]  # the client, run pinned until stopped
    warmup: float  # s before the first window


@dataclass
class Server:
    sock: str
    pid: int  # its CPU is this process's and its children's (PostgreSQL's backends)
    done: Callable[[], int]  # requests completed so far, read from the server
    loads: list[Load]


@contextlib.contextmanager
def client_load(load: Load) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        load.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU),
    )  # fmt: skip
    try:
        time.sleep(load.warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"{load.name}: the client exited ({proc.returncode})")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def measure(
    server: Server, load: Load, work: Path, cycles: int, window: float, log: Callable[[str], None]
) -> dict[str, Any]:
    agents = {c: Agent(c, server.sock, work) for c in load.configs}
    ratios: dict[str, list[float]] = {c: [] for c in load.configs}
    cpu: dict[str, list[tuple[float, float, float]]] = {c: [] for c in ("untraced", *load.configs)}
    untraced: list[float] = []
    try:
        with client_load(load) as client:

            def server_cpu() -> int:
                return sum(cpu_ns(p) for p in (server.pid, *children(server.pid)))

            def win(tag: str, collector: int) -> float:
                c0, t0 = server.done(), time.monotonic()
                n0 = (server_cpu(), cpu_ns(client.pid), cpu_ns(collector))
                time.sleep(window)
                c1, t1 = server.done(), time.monotonic()
                n1 = (server_cpu(), cpu_ns(client.pid), cpu_ns(collector))
                req = max(1, c1 - c0)
                cpu[tag].append(tuple((b - a) / req for a, b in zip(n0, n1, strict=True)))  # type: ignore[arg-type]
                return req / (t1 - t0)

            before = win("untraced", agents[load.configs[0]].proc.pid)
            for k in range(cycles):
                for config, ag in agents.items():
                    ag.command("attach")
                    time.sleep(SETTLE)
                    rate = win(config, ag.proc.pid)
                    ag.command("detach")
                    ag.wait_quiet()
                    after = win("untraced", ag.proc.pid)
                    untraced.append(after)
                    ratios[config].append(rate / ((before + after) / 2))
                    before = after
                if (k + 1) % 10 == 0:
                    log(f"  {load.name}: {k + 1}/{cycles} cycles; " + ", ".join(
                        f"{c} {median(r):.3f}" for c, r in ratios.items()))  # fmt: skip
    finally:
        losses = {c: ag.stop() for c, ag in agents.items()}
    rows = []
    for config in load.configs:
        x = ratios[config]
        q = statistics.quantiles(x, n=4) if len(x) > 1 else [x[0]] * 3
        se = statistics.stdev(x) / len(x) ** 0.5 if len(x) > 1 else float("nan")
        rows.append({
            "config": config, "median": median(x), "mean": statistics.mean(x), "se": se,
            "q1": q[0], "q3": q[2], "ratios": x, "lost_bytes": losses[config]["lost_bytes"],
            "records": losses[config]["records"],
        })  # fmt: skip
    per_req = {
        tag: {k: median([v[i] for v in vals]) for i, k in enumerate(("server", "client", "usniff"))}
        for tag, vals in cpu.items()
    }
    return {
        "workload": load.name, "cycles": cycles, "window": window,
        "untraced_median": median(untraced), "rows": rows, "cpu_ns_per_request": per_req,
    }  # fmt: skip


@contextlib.contextmanager
def redis(work: Path) -> Iterator[Server]:
    """redis-server pinned to the first CPU; redis-benchmark SET/GET, 50 clients, -P 1 and
    -P 16 (~25 s per SET or GET phase, looped); INFO's total_commands_processed."""
    import redis as redis_py

    from tests.support.servers import start_redis

    with start_redis(work, "--pidfile", str(work / "redis.pid")) as sock:
        pid = _pid_of(work / "redis.pid")
        pin_process(pid, SERVER_CPU)
        client = redis_py.Redis(unix_socket_path=sock)

        def bench(pipeline: int) -> Load:
            n = 3_000_000 if pipeline == 1 else 30_000_000
            argv = ["redis-benchmark", "-s", sock, "-t", "set,get", "-c", "50",
                    "-P", str(pipeline), "-n", str(n), "-l", "-q"]  # fmt: skip
            return Load(f"redis -P {pipeline}", CONFIGS, argv, 1.5)

        def done() -> int:
            return int(client.info("stats")["total_commands_processed"])

        yield Server(sock, pid, done, [bench(1), bench(16)])


@contextlib.contextmanager
def mariadb(work: Path) -> Iterator[Server]:
    """mariadbd (not pinned: a thread per connection); mariadb-slap, 4 clients sending
    SELECT 1 (bench/servers.py's load, one long run); Com_select from SHOW GLOBAL STATUS."""
    import pymysql

    from tests.support.servers import start_mariadb

    with start_mariadb(work) as sock:
        conn = pymysql.connect(unix_socket=sock, user="root", autocommit=True)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE slap")

        def done() -> int:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
                return int(cur.fetchone()[1])  # type: ignore[index]

        argv = [SLAP, f"--socket={sock}", "--user=root", "--concurrency=4", "--iterations=1",
                "--query=SELECT 1", "--number-of-queries=1000000000", "--create-schema=slap",
                "--no-drop"]  # fmt: skip
        load = Load("mariadb-slap -c 4", SQL_CONFIGS, argv, 1.5)
        try:
            yield Server(sock, _pid_of(work / "mysqld.pid"), done, [load])
        finally:
            conn.close()


@contextlib.contextmanager
def postgres(work: Path) -> Iterator[Server]:
    """postgres (not pinned: a process per connection); pgbench -S, 4 clients, after
    pgbench -i -s 1; its query's calls from pg_stat_statements (counted as each ends)."""
    import psycopg

    from tests.support.servers import start_postgres

    with start_postgres(work) as sock:
        host = ["-h", os.path.dirname(sock), "-U", "postgres"]
        subprocess.run(["pgbench", *host, "-i", "-s", "1", "-q", "postgres"],
                       check=True, capture_output=True)  # fmt: skip
        conn = psycopg.connect(host=os.path.dirname(sock), user="postgres", dbname="postgres",
                               autocommit=True)  # fmt: skip

        def done() -> int:
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE query LIKE 'SELECT abalance FROM pgbench_accounts%'"
            ).fetchone()
            return int(row[0]) if row else 0

        argv = ["pgbench", *host, "-S", "-n", "-c", "4", "-j", "1", "-T", "100000", "postgres"]
        load = Load("pgbench -S -c 4", SQL_CONFIGS, argv, 1.5)
        try:
            yield Server(sock, _pid_of(work / "pg/data/postmaster.pid"), done, [load])
        finally:
            conn.close()


SERVERS = {"redis": redis, "mariadb": mariadb, "postgres": postgres}


def run(
    quick: bool, cycles: int | None, window: float, only: str | None, log: Callable[[str], None]
) -> list[Any]:
    cycles = cycles or (15 if quick else 40)
    out = []
    for name, start in SERVERS.items():
        if only not in (None, name):
            continue
        with tempfile.TemporaryDirectory(prefix="usb-", dir="/tmp") as tmp:
            work = Path(tmp)
            other = socket.socket(socket.AF_UNIX)
            other.bind(str(work / "other.sock"))
            with start(work) as server:
                for load in server.loads:
                    out.append(measure(server, load, work, cycles, window, log))
            other.close()
    return out


def report(results: list[dict[str, Any]]) -> str:
    rows, cpu_rows = [], []
    for res in results:
        load = res["workload"]
        for r in res["rows"]:
            quartiles = f"{r['q1']:.3f}-{r['q3']:.3f}"
            rows.append((load, r["config"], r["median"], r["mean"], r["se"], quartiles,
                         len(r["ratios"]), r["lost_bytes"]))  # fmt: skip
        for tag, v in res["cpu_ns_per_request"].items():
            cpu_rows.append((load, tag, v["server"], v["client"], v["usniff"]))
    return "\n".join([
        table(("load", "tracing", "median ratio", "mean", "+- se", "quartiles", "windows",
               "lost B"), rows),
        "",
        "CPU time per request, ns (medians over windows)",
        table(("load", "windows", "server", "client", "usniff"), cpu_rows),
    ])  # fmt: skip


def key(results: list[dict[str, Any]]) -> list[str]:
    parts = []
    for res in results:
        medians = ", ".join(
            f"{r['config'].removeprefix('usniff ')} {r['median']:.3f}"
            for r in res["rows"]
            if r["config"] != "usniff -w --metrics"
        )
        parts.append(f"windows {res['workload']}: {medians}")
    return parts


if __name__ == "__main__":
    agent(*sys.argv[1:4])
