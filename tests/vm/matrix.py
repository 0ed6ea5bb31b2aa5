#!/usr/bin/env python3
"""Run usniff's live capture tests on every kernel x backend, each in a fresh guest.

    python tests/vm/matrix.py                     # all fetched kernels, all backends
    python tests/vm/matrix.py --kernels 6.1 --backends fentry -v
    python tests/vm/matrix.py --jobs 2            # two guests at a time (4+ host cores)

For each cell the guest (tests/vm/run.py) runs, with USNIFF_BACKEND forced:
  1. guest/probe.py: can this kernel attach what the backend needs at all?
     (an independent libbpf program: fexit, kretprobe, tp_btf/sock_send_length,
     tp_btf/skb_copy_datagram_iovec)
  2. guest/loadcheck.py: does `usniff --backend B` load, and stop on SIGINT?
  3. if it loaded: pytest on the live tests (default: `tests -m root`).
A cell passes when usniff loads exactly where the kernel can attach the backend's
hooks (a clear refusal elsewhere is the expected result), stops cleanly, and its
tests ran and passed.  The table goes to stdout and into docs/kernel-matrix.md;
guest console logs go to tests/vm/cache/logs/.  Exit status 1 if any cell failed.

Each guest needs host cores for its 2 vCPUs: tests that spin on two CPUs at once
(test_answer_never_stamped_before_its_request) starve when two guests share 2 host
cores (200,000 rounds: 17-26 s alone, over 300 s side by side), so ``--jobs`` is
refused beyond one guest per two host cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import initramfs
from kernels import CACHE, REPO, VM_DIR, Kernel, find_kernel, load_index
from run import GUEST_CPUS, NO_STATUS, TIMEOUT_STATUS, Console, run_vm

BACKENDS = ("fentry", "kprobe", "tracepoint")
# probe.py kinds each backend's hooks need
NEEDS = {
    "fentry": ("fentry",),
    "kprobe": ("kprobe",),
    "tracepoint": ("tp_btf", "skb_read"),
}
# Refusals usniff gives, on purpose, where the kernel can attach the hooks: its own
# gaps (docs/capture.md).  The table shows them as such; they do not fail the run.
KNOWN_GAPS: dict[str, str] = {}  # none today
PROBE_SRC = VM_DIR / "guest" / "probe.bpf.c"
PROBE_OBJ = CACHE / "probe.bpf.o"
LOGS = CACHE / "logs"
DOC = REPO / "docs" / "kernel-matrix.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
SAY = threading.Lock()


@dataclass
class Cell:
    kernel: Kernel
    backend: str
    kernel_can: str = "?"  # "yes" or why not
    usniff: str = "?"  # "loaded (...)" / "refused: ..."
    tests: str = "-"  # "12 passed, 0 failed, 1 skipped"
    problem: str = ""  # empty when the cell passed
    gap: str = ""  # a refusal listed in KNOWN_GAPS
    seconds: float = 0.0
    earlier: list[str] = field(default_factory=list)  # problems of failed tries before the last


class Tee:
    def __init__(self, *streams: Console) -> None:
        self.streams = streams

    def write(self, text: str, /) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def build_probe() -> None:
    if PROBE_OBJ.is_file() and PROBE_OBJ.stat().st_mtime >= PROBE_SRC.stat().st_mtime:
        return
    if not shutil.which("clang"):
        raise SystemExit("clang is missing: apt-get install clang libbpf-dev")
    CACHE.mkdir(parents=True, exist_ok=True)
    flags = ["-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu"]
    subprocess.run(["clang", *flags, "-c", str(PROBE_SRC), "-o", str(PROBE_OBJ)], check=True)


TIMEOUT_SCALE = 5  # tests/support/live.py: the live tests' deadlines, scaled for emulation


def guest_command(backend: str, pytest_args: list[str]) -> list[str]:
    out = "/mnt/out"  # run.py's result share in the guest
    pytest = ["python", "-m", "pytest", *pytest_args, "-p", "no:cacheprovider"]
    pytest.append(f"--junitxml={out}/junit.xml")
    probe = ["python", "tests/vm/guest/probe.py", str(PROBE_OBJ.relative_to(REPO))]
    probe += ["--json", f"{out}/probe.json", *NEEDS[backend]]
    load = ["python", "tests/vm/guest/loadcheck.py", backend, "--json", f"{out}/load.json"]
    # deadlines only matter when a test fails; under TCG everything is ~10x slower
    env = f"USNIFF_BACKEND={backend} USNIFF_TEST_TIMEOUT_SCALE={TIMEOUT_SCALE}"
    script = f"{shlex.join(probe)}; {shlex.join(load)} && {env} {shlex.join(pytest)}"
    return ["sh", "-c", script]


def junit_counts(path: Path) -> tuple[int, int, int]:
    """(passed, failed incl. errors, skipped) from pytest's junit XML."""
    suites = ET.parse(path).getroot().iter("testsuite")
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return total - failed - skipped, failed, skipped


def run_cell(cell: Cell, pytest_args: list[str], args: argparse.Namespace) -> None:
    out = CACHE / "out" / f"{cell.kernel.release}-{cell.backend}"
    shutil.rmtree(out, ignore_errors=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{cell.kernel.release}-{cell.backend}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        console = Tee(log, sys.stdout) if args.verbose else log
        status = run_vm(
            cell.kernel.series,
            guest_command(cell.backend, pytest_args),
            out_dir=out,
            timeout=args.timeout,
            accel=args.accel,
            console=console,
        )
    cell.seconds = time.monotonic() - started
    judge(cell, status, out)
    if cell.problem and not args.verbose:
        lines = log_path.read_text(errors="replace").splitlines()
        say("\n".join([f"--- last 40 lines of {log_path}", *lines[-40:], "---"]))


def say(line: str) -> None:
    """A whole line on stdout (cells run side by side on threads)."""
    with SAY:
        print(line, flush=True)


def run_tries(cell: Cell, args: argparse.Namespace) -> None:
    """Run a cell, and again while it fails, up to ``--retries`` more times."""
    say(f"== {cell.kernel.release} {cell.backend}")
    run_cell(cell, shlex.split(args.pytest_args), args)
    while cell.problem and len(cell.earlier) < args.retries:
        keep = LOGS / f"{cell.kernel.release}-{cell.backend}.try{len(cell.earlier) + 1}.log"
        (LOGS / f"{cell.kernel.release}-{cell.backend}.log").replace(keep)
        say(f"== {cell.kernel.release} {cell.backend}: {cell.problem}; again")
        cell.earlier.append(cell.problem)
        cell.problem = ""
        run_cell(cell, shlex.split(args.pytest_args), args)
    verdict = f"FAIL: {cell.problem}" if cell.problem else "ok"
    say(
        f"== {cell.kernel.release} {cell.backend}: {verdict} "
        f"({cell.usniff}; {cell.tests}) in {cell.seconds:.0f} s"
    )


def judge(cell: Cell, status: int, out: Path) -> None:
    if status in (TIMEOUT_STATUS, NO_STATUS):
        cell.problem = "guest timed out" if status == TIMEOUT_STATUS else "guest crashed"
    probe_file, load_file, junit = out / "probe.json", out / "load.json", out / "junit.xml"
    if not probe_file.is_file():
        cell.problem = cell.problem or "the kernel probe did not run"
        return
    probe: dict[str, str] = json.loads(probe_file.read_text())
    missing = [f"no {k}: {v.removeprefix('error: ')}" for k, v in probe.items() if v != "ok"]
    cell.kernel_can = "; ".join(missing) if missing else "yes"
    if not load_file.is_file():
        cell.problem = cell.problem or "the load check did not run"
        return
    load: dict[str, str | bool] = json.loads(load_file.read_text())
    loaded, detail = bool(load["loaded"]), str(load["detail"])
    cell.usniff = f"loaded ({detail})" if loaded else f"refused: {detail}"
    if not loaded and not missing and KNOWN_GAPS.get(cell.backend, "\0") in detail:
        cell.gap = f"{cell.backend} {KNOWN_GAPS[cell.backend]} (docs/capture.md)"
        return
    if loaded != (not missing):
        cell.problem = cell.problem or (
            "usniff loaded where the kernel lacks the hooks"
            if loaded
            else "usniff refused although the kernel has the hooks"
        )
        return
    if not loaded:
        if load.get("traceback"):
            cell.problem = cell.problem or "usniff died with a traceback instead of refusing"
        return  # the expected refusal
    if load.get("stop_problem"):
        cell.problem = cell.problem or f"usniff {load['stop_problem']}"
    if not junit.is_file():
        cell.problem = cell.problem or f"pytest wrote no report (guest exit status {status})"
        return
    passed, failed, skipped = junit_counts(junit)
    cell.tests = f"{passed} passed, {failed} failed, {skipped} skipped"
    if failed:
        cell.problem = cell.problem or f"{failed} tests failed"
    elif not passed:
        cell.problem = cell.problem or "no live test passed"
    elif status != 0:
        cell.problem = cell.problem or f"pytest exit status {status}"


def table(cells: list[Cell]) -> str:
    rows = [
        "| kernel | Debian package | backend | kernel can attach its hooks | usniff "
        "| live tests | result | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        result = f"FAIL: {c.problem}" if c.problem else f"KNOWN GAP: {c.gap}" if c.gap else "ok"
        if c.earlier:  # a flaky cell stays visible in the report
            result += f" (try {len(c.earlier) + 1}; before: {'; '.join(c.earlier)})"
        cols = [c.kernel.release, c.kernel.version, c.backend, c.kernel_can, c.usniff, c.tests]
        cols += [result, f"{c.seconds:.0f} s"]
        rows.append("| " + " | ".join(col.replace("|", "\\|") for col in cols) + " |")
    return "\n".join(rows) + "\n"


def write_doc(report: str) -> None:
    text = DOC.read_text() if DOC.is_file() else f"# Kernel matrix\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the {BEGIN} ... {END} markers the table goes between")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{report}{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kernels", help="comma-separated series (default: all fetched)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds per guest")
    parser.add_argument(
        "--pytest-args",
        default="tests -m root -q -rfEs",
        help="what the guest passes to pytest (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="run a failing cell again up to N times; the report keeps every failure",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells run side by side, each in its own guest"
    )
    parser.add_argument("--no-doc", action="store_true", help=f"do not update {DOC.name}")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream guest consoles")
    args = parser.parse_args()
    if args.verbose and args.jobs > 1:
        parser.error("-v streams one guest's console: use it with --jobs 1")
    if args.jobs > 1 and args.jobs * GUEST_CPUS > (os.cpu_count() or 1):
        parser.error(
            f"--jobs {args.jobs}: each guest's {GUEST_CPUS} vCPUs need host cores of their own"
            f" ({os.cpu_count()} here); guests sharing cores starve tests that spin on two CPUs"
        )

    series = args.kernels.split(",") if args.kernels else list(load_index())
    if not series:
        raise SystemExit("no kernels fetched: run `python tests/vm/fetch_kernels.py`")
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends {', '.join(sorted(unknown))}")
    kernels = [find_kernel(s) for s in series]
    build_probe()

    for kernel in kernels:
        initramfs.build(kernel)  # once, before guests of the same kernel boot side by side
    started = time.monotonic()
    cells = [Cell(k, b) for k in kernels for b in backends]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for _ in pool.map(lambda cell: run_tries(cell, args), cells):
            pass
    took = time.monotonic() - started

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"Last run: {when}, {args.accel.upper()}, {took / 60:.1f} min in all"
        f"{f' ({args.jobs} guests at a time)' if args.jobs > 1 else ''}, "
        f"pytest `{args.pytest_args}`.\n\n{table(cells)}"
    )
    print("\n" + report)
    if not args.no_doc:
        write_doc(report)
    failed = sum(bool(c.problem) for c in cells)
    flaky = sum(bool(c.earlier) and not c.problem for c in cells)
    print(f"matrix: {len(cells) - failed} passed ({flaky} only on a retry), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
