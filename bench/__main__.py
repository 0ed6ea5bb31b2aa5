"""usniff benchmarks: ``python -m bench [WHAT] [--quick]`` (``make bench`` runs them all).

WHAT: all (default) | overhead | windows | capacity | kernel | decoders | pcapng-writer |
collector | soak (not in all: ~10 min for a million connections) | servers (not in all:
--stats on PostgreSQL, memcached, podman and php-fpm).
Needs root (eBPF), redis-server, redis-benchmark, mariadbd, mariadb-slap,
strace, socat, gcc, bpftool; servers: postgresql, pgbench, memcached, podman, nginx,
php-fpm.  Every figure is a median of alternating runs,
given as a ratio to the untraced run of the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import capacity, overhead, servers, soak, windows
from .common import machine, median

WHAT = (
    "all",
    "overhead",
    "windows",
    "capacity",
    "kernel",
    "decoders",
    "pcapng-writer",
    "collector",
    "soak",
    "servers",
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("what", nargs="?", default="all", choices=WHAT)
    ap.add_argument("--quick", action="store_true", help="shorter runs (3 s, fewer requests)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--seconds", type=float, help="length of each writer run (default 10, quick 3)")
    ap.add_argument(
        "--only",
        choices=("redis", "mariadb", "postgres"),
        help="overhead (redis, mariadb), windows: one server only",
    )
    ap.add_argument("--cycles", type=int, help="windows: alternations per configuration (40)")
    ap.add_argument("--window", type=float, default=0.5, help="windows: seconds per window")
    ap.add_argument("--connections", type=int, help="soak: short connections (1,000,000)")
    ap.add_argument(
        "--bpf-object", type=Path, help="kernel: also time this BPF object, alternating"
    )
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--plots", type=Path, help="write PNG plots into this directory")
    a = ap.parse_args()

    if a.what == "decoders":
        from . import decoders

        decoders.main()
        return
    if a.what in ("pcapng-writer", "collector"):
        sys.argv = [sys.argv[0]]
        from . import collector, pcapng_writer

        (collector if a.what == "collector" else pcapng_writer).main()
        return
    if os.geteuid() != 0:
        sys.exit("python -m bench: needs root (usniff loads eBPF programs)")
    seconds = a.seconds or (3.0 if a.quick else 10.0)
    info = machine()
    results: dict[str, Any] = {"machine": info, "quick": a.quick, "rounds": a.rounds,
                               "seconds": seconds}  # fmt: skip
    t0 = time.monotonic()
    out: list[str] = [
        f"usniff benchmark {info['date']}: {info['cores']} cores ({info['cpu']}), "
        f"kernel {info['kernel']}, python {info['python']}, rounds {a.rounds}"
    ]
    if a.what in ("all", "overhead"):
        res = []
        if a.only in (None, "redis"):
            res.append(overhead.run_redis(a.quick, a.rounds, log))
        if a.only in (None, "mariadb"):
            res.append(overhead.run_mariadb(a.quick, a.rounds, log))
        results["overhead"] = res
        out += ["", "1+2. overhead on the traced service, completeness", overhead.report(res)]
    if a.what in ("all", "windows"):
        res = windows.run(a.quick, a.cycles, a.window, a.only, log)
        results["windows"] = res
        out += ["", "1b. overhead in alternating windows of one continuous load",
                windows.report(res)]  # fmt: skip
    if a.what in ("all", "capacity"):
        steps = 4 if a.quick else 6
        rows = [capacity.capacity(size, seconds, steps, a.rounds, log) for size in (31, 65536)]
        results["capacity"] = rows
        out += ["", "3. collector capacity (usniff -w pcapng, zero loss)",
                capacity.report_capacity(rows)]  # fmt: skip
    if a.what == "soak":
        res = soak.run(a.quick, a.connections, log)
        results["soak"] = res
        out += ["", "5. memory over a long capture (short connections + steady load)",
                soak.report(res)]  # fmt: skip
    if a.what == "servers":
        res = servers.run(a.rounds, seconds, log)
        results["servers"] = res
        out += ["", "7. usniff --stats on real servers, alternating with untraced runs",
                servers.report(res)]  # fmt: skip
    if a.what in ("all", "kernel"):
        k = capacity.kernel_cost(seconds, a.rounds, log)
        results["kernel"] = k
        out += ["", "4. kernel cost per event", capacity.report_kernel(k)]
        send = capacity.send_cost(seconds, a.rounds, log, a.bpf_object)
        results["kernel_send"] = send
        out += ["", capacity.report_send_cost(send)]
    results["elapsed"] = time.monotonic() - t0
    out += ["", key_figures(results)]
    print("\n".join(out))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1, default=str))
    if a.plots:
        from .plots import plot

        plot(results, a.plots)


def key_figures(r: dict[str, Any]) -> str:
    parts = []
    for res in r.get("overhead", []):
        rows = {(x["workload"], x["config"]): x["ratio"] for x in res["rows"]}
        for load in dict.fromkeys(x["workload"] for x in res["rows"]):
            parts.append(
                f"{res['service']} {load}: pcapng {rows[(load, 'usniff -w pcapng')]:.2f} "
                f"filtered-out {rows[(load, 'usniff other path')]:.2f} "
                f"strace {rows[(load, 'strace -f')]:.2f} socat {rows[(load, 'socat -v')]:.2f}"
            )
        lost = max((c["max_lost_bytes"] for c in res["completeness"]), default=0)
        parts.append(f"{res['service']} lost {lost} B")
    if "windows" in r:
        parts += windows.key(r["windows"])
    for c in r.get("capacity", []):
        parts.append(f"capacity {c['size']}B {c['rate']:,.0f}/s {c['mbps']:,.0f} MB/s "
                     f"({c['ratio']:.2f} of untraced)")  # fmt: skip
    parts += servers.key(r.get("servers", []))
    if "kernel" in r:
        parts.append(f"filtered-out writer {r['kernel']['ratio']:.3f}")
    return "KEY: " + "; ".join(parts) + f" (elapsed {r['elapsed']:.0f} s)"


_ = median
if __name__ == "__main__":
    main()
