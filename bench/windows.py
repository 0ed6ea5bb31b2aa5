"""Overhead of usniff on one continuous load, in alternating half-second windows.

    python -m bench windows [--quick] [--cycles N] [--window S]

Why: on the shared development VM the traced service's own speed changes by
15-20 % for seconds at a time, within one redis-benchmark run (its CPU time
per request goes from 7.7 to 12.4 us and back, measured in one-second
windows), so whole runs taken one after the other (bench/overhead.py) give
ratios that move by +-0.1 from run to run.  Here one redis-benchmark runs
throughout, and each usniff configuration is loaded once, in an agent
process that runs the CLI's own capture loop and outputs
(``cli.loop.run``, ``cli.main.make_outputs``); the agent only detaches and
re-attaches its BPF programs.  The windows go: untraced, configuration A,
untraced, configuration B, ... and each traced window is taken as a ratio to
the mean of the untraced windows on either side.  Reported per configuration:
the median of those ratios, their mean with its standard error, the
quartiles, and the CPU time per request of redis-server, redis-benchmark
and usniff (schedstat) in traced and untraced windows.

Configurations: ``redis-cli MONITOR`` (Redis's own command feed, read and
discarded: what an operator who only wants the commands pays),
``usniff --path SOCK -w FILE -C 1000 -W 2`` (pcapng on disk, rotated so that
a long run stays within 2 GB), ``usniff --path SOCK`` (decoded text, to
/dev/null), ``usniff --path SOCK --stats`` (the table only, as the CLI gives it: plain
RESP connections counted in C, outputs/fast.py),
``usniff --path SOCK --metrics S`` alone and beside ``-w`` (Prometheus
metrics served on a Unix socket, not scraped) and
``usniff --path OTHER -w FILE`` (filtered out: the kernel-side filter
alone).  redis-server and redis-benchmark are pinned as in bench/overhead.py.
The request rate is read from INFO (total_commands_processed) at the edges of
each window.
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
from pathlib import Path
from typing import Any

from .common import SUMMARY, median, table
from .overhead import CLIENT_CPU, SERVER_CPU, _pid_of, pin_process

CONFIGS = (
    "redis MONITOR",
    "usniff -w pcapng",
    "usniff -w --metrics",
    "usniff --metrics",
    "usniff text",
    "usniff --stats",
    "usniff other path",
)
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
    from usniff.capture.collector import Capture, CaptureOptions
    from usniff.cli.loop import run
    from usniff.cli.main import make_outputs, summary

    path, write = sock, None
    metrics = f"{work}/metrics-{CONFIGS.index(config)}.sock" if "--metrics" in config else None
    if config in ("usniff -w pcapng", "usniff -w --metrics"):
        write = f"{work}/windows.pcapng"
    elif config == "usniff other path":
        path, write = f"{work}/other.sock", f"{work}/other.pcapng"
    cap = Capture(CaptureOptions(paths=[path]))
    devnull = open(os.devnull, "w")  # noqa: SIM115 (the text output's stream, for the run)
    outputs = make_outputs(
        devnull, write=write, rotate_mb=1000 if write else None, rotate_count=2 if write else None,
        rotate_seconds=None, snaplen=0, ascii_=False, hexdump=False, fmt="text", protocol=None,
        stats=config == "usniff --stats", redact=False, metrics=metrics,
        sinks_only=config == "usniff --metrics", lines=config != "usniff --stats",
    )  # fmt: skip
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


@contextlib.contextmanager
def redis_load(sock: str, pipeline: int) -> Iterator[subprocess.Popen[bytes]]:
    """redis-benchmark SET/GET, 50 clients, in a loop until stopped (pinned)."""
    n = 3_000_000 if pipeline == 1 else 30_000_000  # ~25 s per SET or GET phase
    proc = subprocess.Popen(
        ["redis-benchmark", "-s", sock, "-t", "set,get", "-c", "50", "-P", str(pipeline),
         "-n", str(n), "-l", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, CLIENT_CPU),
    )  # fmt: skip
    try:
        time.sleep(1.5)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def measure(
    sock: str, server_pid: int, work: Path, pipeline: int, cycles: int, window: float,
    log: Callable[[str], None],
) -> dict[str, Any]:  # fmt: skip
    import redis

    client = redis.Redis(unix_socket_path=sock)
    agents = {c: Agent(c, sock, work) for c in CONFIGS}
    ratios: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu: dict[str, list[tuple[float, float, float]]] = {c: [] for c in ("untraced", *CONFIGS)}
    untraced: list[float] = []
    try:
        with redis_load(sock, pipeline) as load:
            pids = {"server": server_pid, "client": load.pid}

            def win(tag: str, collector: int) -> float:
                procs = (pids["server"], pids["client"], collector)
                c0 = client.info("stats")["total_commands_processed"]
                t0, n0 = time.monotonic(), [cpu_ns(p) for p in procs]
                time.sleep(window)
                c1 = client.info("stats")["total_commands_processed"]
                t1, n1 = time.monotonic(), [cpu_ns(p) for p in procs]
                req = max(1, c1 - c0)
                cpu[tag].append(tuple((b - a) / req for a, b in zip(n0, n1, strict=True)))  # type: ignore[arg-type]
                return req / (t1 - t0)

            before = win("untraced", agents[CONFIGS[0]].proc.pid)
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
                    log(f"  -P {pipeline}: {k + 1}/{cycles} cycles; " + ", ".join(
                        f"{c} {median(r):.3f}" for c, r in ratios.items()))  # fmt: skip
    finally:
        losses = {c: ag.stop() for c, ag in agents.items()}
    rows = []
    for config in CONFIGS:
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
        "workload": f"-P {pipeline}", "cycles": cycles, "window": window,
        "untraced_median": median(untraced), "rows": rows, "cpu_ns_per_request": per_req,
    }  # fmt: skip


def run(quick: bool, cycles: int | None, window: float, log: Callable[[str], None]) -> list[Any]:
    from tests.support.servers import start_redis

    cycles = cycles or (15 if quick else 40)
    out = []
    with tempfile.TemporaryDirectory(prefix="usniff-bench-") as tmp:
        work = Path(tmp)
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(work / "other.sock"))
        with start_redis(tmp, "--pidfile", str(work / "redis.pid")) as sock:
            pid = _pid_of(work / "redis.pid")
            pin_process(pid, SERVER_CPU)
            for pipeline in (1, 16):
                out.append(measure(sock, pid, work, pipeline, cycles, window, log))
        other.close()
    return out


def report(results: list[dict[str, Any]]) -> str:
    rows, cpu_rows = [], []
    for res in results:
        load = f"redis {res['workload']}"
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
        table(("load", "windows", "redis-server", "redis-benchmark", "usniff"), cpu_rows),
    ])  # fmt: skip


def key(results: list[dict[str, Any]]) -> list[str]:
    parts = []
    for res in results:
        r = {x["config"]: x for x in res["rows"]}
        parts.append(
            f"windows redis {res['workload']}: pcapng {r['usniff -w pcapng']['median']:.3f} "
            f"text {r['usniff text']['median']:.3f} stats {r['usniff --stats']['median']:.3f} "
            f"metrics {r['usniff --metrics']['median']:.3f} "
            f"filtered-out {r['usniff other path']['median']:.3f}"
        )
    return parts


if __name__ == "__main__":
    agent(*sys.argv[1:4])
