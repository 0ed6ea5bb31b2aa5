"""Collector capacity and kernel cost per event (issue items 3 and 4).

    python -m bench capacity [--quick]
    python -m bench kernel [--quick]

A small C program (bench/uwriter.c, compiled with gcc into a temp dir) writes
fixed-size messages over an AF_UNIX socketpair at a target rate; a child
reads and discards them.

capacity: the highest rate of 31-byte writes, and of 64 KiB writes, that
``usniff --comm ubench-wr -w FILE -C 200 -W 2`` (FILE on /dev/shm) captures
with zero loss (bisection over target rates; the figure is the rate the writer
achieved; a confirmation set of runs, alternated with untraced runs, gives the
medians).  A rate the bisection found loss-free once may lose data when run
again: if any confirmation run loses bytes, the target steps down by 10 % and
the set runs again (up to BACKOFFS times), so the figure reported is a rate
at which every confirmation run was loss-free, or says how many were not.

kernel: the writer flat out with the BPF programs attached but filtered to
another socket's path, versus not attached (alternating), plus the BPF
programs' own run time per call from ``kernel.bpf_stats_enabled``.  Then the
programs' run time per call when they capture: 64-byte writes at 100,000/s
under ``usniff --comm ubench-wr -w /dev/null``.  With ``--bpf-object OBJ`` that
second part alternates the installed object with OBJ (a variant to judge).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .common import Usniff, median, table

HERE = Path(__file__).resolve().parent
COMM = "ubench-wr"
TMPFS = "/dev/shm" if Path("/dev/shm").is_dir() else None
BACKOFFS = 3


def build(work: Path) -> Path:
    exe = work / "uwriter"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "uwriter.c")], check=True)
    return exe


def write(exe: Path, size: int, rate: float, seconds: float) -> tuple[int, int, float]:
    out = subprocess.run([str(exe), str(size), str(int(rate)), str(seconds)],
                         check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    return int(out[0]), int(out[1]), float(out[2])


def captured(exe: Path, work: Path, size: int, rate: float, seconds: float) -> dict[str, Any]:
    """One capture run at a target rate: achieved rate and what usniff lost."""
    args = ["--comm", COMM, "-w", str(work / "cap.pcapng"), "-C", "200", "-W", "2"]
    with Usniff(args, work) as u:
        writes, nbytes, elapsed = write(exe, size, rate, seconds)
    for f in work.glob("cap.pcapng*"):
        f.unlink()
    r = u.result
    ok = r.lost_bytes == 0 and r.bytes == nbytes
    return {
        "target": rate,
        "rate": writes / elapsed,
        "mbps": nbytes / elapsed / 1e6,
        "lost_bytes": r.lost_bytes,
        "captured": r.bytes,
        "written": nbytes,
        "ok": ok,
    }


def capacity(size: int, seconds: float, steps: int, confirm: int,
             log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    # the pcapng files go to tmpfs: this measures the collector, not the disk
    # (a VM disk throttles GB/s of dirty pages long before usniff is the limit)
    with tempfile.TemporaryDirectory(prefix="usniff-bench-", dir=TMPFS) as tmp:
        work = Path(tmp)
        exe = build(work)
        flat = captured(exe, work, size, 0, seconds)
        log(f"  {size}-byte writes, unlimited: {flat['rate']:,.0f}/s lost {flat['lost_bytes']:,} B")
        runs = [flat]
        if flat["ok"]:
            best = flat["rate"]
            target = 0.0
        else:  # bisection on the target rate, between 0 and what the traced writer reached
            lo, hi = 0.0, flat["rate"]
            best = target = 0.0
            for _ in range(steps):
                mid = (lo + hi) / 2 if lo else hi / 2
                r = captured(exe, work, size, mid, seconds)
                runs.append(r)
                log(f"  {size}-byte writes, target {mid:,.0f}/s: {r['rate']:,.0f}/s "
                    f"lost {r['lost_bytes']:,} B")  # fmt: skip
                if r["ok"]:
                    lo, best, target = mid, r["rate"], mid
                else:
                    hi = mid
        untraced: list[float] = []
        failed: list[dict[str, Any]] = []  # confirmation runs of the targets given up
        for attempt in range(BACKOFFS + 1):
            confirmed = []
            for _ in range(confirm):  # alternating: untraced flat out, capture at the target
                w, b, t = write(exe, size, 0, seconds)
                untraced.append(w / t)
                c = captured(exe, work, size, target, seconds)
                confirmed.append(c)
                at = f"{target:,.0f}/s" if target else "unlimited"
                log(f"  {size}-byte writes: untraced {untraced[-1]:,.0f}/s; capture at {at}: "
                    f"{c['rate']:,.0f}/s lost {c['lost_bytes']:,} B")  # fmt: skip
            if all(c["ok"] for c in confirmed) or attempt == BACKOFFS:
                break
            failed += confirmed
            target = 0.9 * median([c["rate"] for c in confirmed])
        zero = [c for c in confirmed if c["ok"]]
        rate = median([c["rate"] for c in confirmed])
        base = median(untraced)
        return {"size": size, "target": target, "rate": rate, "mbps": rate * size / 1e6,
                "untraced": base, "untraced_mbps": base * size / 1e6, "ratio": rate / base,
                "zero_loss_runs": len(zero), "runs": len(confirmed),
                "search": runs, "confirm": confirmed, "bisection_best": best,
                "failed_confirm": failed}  # fmt: skip


@contextlib.contextmanager
def bpf_stats() -> Iterator[None]:
    """The kernel's run time per BPF program (bpf_stats) on, as it was afterwards."""
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    try:
        yield
    finally:
        knob.write_text(old)


def _bpf_progs() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    return {p["id"]: p for p in json.loads(out.stdout or "[]")}


def kernel_cost(seconds: float, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="usniff-bench-") as tmp:
        work = Path(tmp)
        exe = build(work)
        plain, attached, per_call = [], [], []
        with socket.socket(socket.AF_UNIX) as other, bpf_stats():
            other.bind(str(work / "other.sock"))
            for _ in range(rounds):
                w, _b, t = write(exe, 31, 0, seconds)
                plain.append(w / t)
                before = set(_bpf_progs())
                with Usniff(["--path", str(work / "other.sock")], work):
                    ours = {i: p for i, p in _bpf_progs().items() if i not in before}
                    w, _b, t = write(exe, 31, 0, seconds)
                    attached.append(w / t)
                    after = _bpf_progs()
                ns = sum(after[i].get("run_time_ns", 0) - p.get("run_time_ns", 0)
                         for i, p in ours.items() if i in after)  # fmt: skip
                per_call.append(ns / w if w else 0.0)
                log(f"  31-byte writes: untraced {plain[-1]:,.0f}/s, attached+filtered out "
                    f"{attached[-1]:,.0f}/s, BPF {per_call[-1]:.0f} ns per write")  # fmt: skip
        base, att = median(plain), median(attached)
        return {"untraced": base, "attached": att, "ratio": att / base,
                "ns_per_write_bpf": median(per_call),
                "ns_per_write_wall": (1 / att - 1 / base) * 1e9}  # fmt: skip


SEND_SIZE, SEND_RATE = 64, 100_000


def send_cost(seconds: float, rounds: int, log: Callable[[str], None],
              against: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """ns per run of each attached program while it captures; per object, alternating."""
    objects: dict[str, dict[str, str]] = {"installed": {}}
    if against:
        objects[str(against)] = {"USNIFF_BPF_OBJECT": str(against.resolve())}
    runs: dict[str, dict[str, list[float]]] = {name: {} for name in objects}
    with tempfile.TemporaryDirectory(prefix="usniff-bench-") as tmp:
        work = Path(tmp)
        exe = build(work)
        with bpf_stats():
            for _ in range(rounds):
                for name, env in objects.items():
                    before = set(_bpf_progs())
                    with Usniff(["--comm", COMM, "-w", "/dev/null"], work, env=env) as u:
                        ours = {i: p for i, p in _bpf_progs().items() if i not in before}
                        write(exe, SEND_SIZE, SEND_RATE, seconds)
                        after = _bpf_progs()
                    if u.result.lost_bytes:
                        log(f"  {name}: {u.result.lost_bytes} bytes lost (the figures stand)")
                    for i, p in ours.items():
                        n = after[i].get("run_cnt", 0) - p.get("run_cnt", 0)
                        if n:
                            ns = after[i].get("run_time_ns", 0) - p.get("run_time_ns", 0)
                            runs[name].setdefault(p["name"], []).append(ns / n)
                    log(f"  {name}: " + ", ".join(f"{prog} {v[-1]:.0f} ns"
                                                  for prog, v in runs[name].items()))  # fmt: skip
    return {name: {prog: median(v) for prog, v in progs.items()} for name, progs in runs.items()}


def report_send_cost(cost: dict[str, Any]) -> str:
    names = list(cost)
    progs = sorted({prog for per in cost.values() for prog in per})
    header = ("program, ns per run (median)", *names, *(["ratio"] if len(names) == 2 else []))
    rows = []
    for prog in progs:
        figures = [cost[n].get(prog, 0.0) for n in names]
        ratio = [figures[1] / figures[0]] if len(names) == 2 and figures[0] else []
        rows.append((prog, *figures, *ratio))
    return (
        f"{SEND_SIZE}-byte writes at {SEND_RATE:,}/s, captured (usniff --comm {COMM} "
        f"-w /dev/null)\n" + table(header, rows)
    )


def report_capacity(rows: list[dict[str, Any]]) -> str:
    return table(
        ("writes", "zero-loss rate/s", "MB/s", "untraced/s", "untraced MB/s", "ratio",
         "zero-loss runs"),
        [(f"{r['size']} B", r["rate"], r["mbps"], r["untraced"], r["untraced_mbps"], r["ratio"],
          f"{r['zero_loss_runs']}/{r['runs']}") for r in rows],
    )  # fmt: skip


def report_kernel(k: dict[str, Any]) -> str:
    return table(
        ("31-byte writes", "writes/s", "ratio"),
        [("BPF not attached", k["untraced"], 1.0),
         ("attached, filtered out (--path other)", k["attached"], k["ratio"])],
    ) + (f"\nBPF programs' own run time: {k['ns_per_write_bpf']:.0f} ns per write "
         f"(bpf_stats); wall-clock cost per write {k['ns_per_write_wall']:.0f} ns")  # fmt: skip
