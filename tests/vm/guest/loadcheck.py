"""Does ``usniff --backend BACKEND`` load on this kernel?  Run inside the guest.

    python tests/vm/guest/loadcheck.py BACKEND [--json OUT]

Starts usniff capturing to a scratch pcapng file and waits for one of two things:
it exits by itself (refused: its last stderr line is the reason), or new BPF
programs appear in the kernel, their number settles and usniff announces that it
is capturing (loaded: the program types are reported).  Then it stops usniff with
SIGINT, as a user would, and checks that it exits with status 0.  Exit status 0 when usniff loaded
(whether or not it stopped cleanly: see the JSON), 1 when not.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAIT_LOAD = 180.0  # seconds; TCG is ~10x slower than hardware
WAIT_EXIT = 60.0
READY = "usniff: capturing with the"  # the CLI's announcement, once it handles SIGINT


def bpf_programs() -> dict[int, str]:
    """id -> type of every BPF program loaded in the kernel."""
    out = subprocess.run(
        ["bpftool", "--json", "prog", "show"], check=True, capture_output=True, text=True
    ).stdout
    return {p["id"]: p["type"] for p in json.loads(out or "[]")}


def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


def check(backend: str) -> dict[str, str | bool]:
    """{"loaded": bool, "detail": why not / program types, "traceback": whether a refusal
    came as a Python traceback rather than a message, "stop_problem": "" or what went
    wrong when stopping a loaded usniff with SIGINT}."""
    before = bpf_programs()
    with tempfile.TemporaryDirectory() as scratch:
        errors = Path(scratch) / "stderr"
        command = ["usniff", "--backend", backend, "-w", f"{scratch}/check.pcapng"]
        with errors.open("wb") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + WAIT_LOAD
        # loaded = usniff's programs are there, their number has stopped changing
        # for a second (they load one by one), and usniff says it is capturing
        programs: list[str] = []
        while time.monotonic() < deadline:
            seen = len(programs)
            programs = [t for i, t in bpf_programs().items() if i not in before]
            ready = READY in errors.read_text(errors="replace")
            if programs and len(programs) == seen and ready or wait_exit(proc, 1.0) is not None:
                break

        def last_error_line() -> str:
            lines = errors.read_text(errors="replace").strip().splitlines()
            return lines[-1] if lines else "(nothing on stderr)"

        if proc.poll() is not None:
            crashed = "Traceback (most recent call last)" in errors.read_text(errors="replace")
            detail = f"exit {proc.returncode}: {last_error_line()}"
            return {"loaded": False, "detail": detail, "traceback": crashed}
        if not programs:
            proc.kill()
            proc.wait()
            return {"loaded": False, "detail": f"no BPF program after {WAIT_LOAD:.0f} s"}
        kinds = ", ".join(f"{programs.count(t)} {t}" for t in sorted(set(programs)))
        proc.send_signal(signal.SIGINT)
        status = wait_exit(proc, WAIT_EXIT)
        problem = ""
        if status is None:
            proc.kill()
            proc.wait()
            problem = f"still running {WAIT_EXIT:.0f} s after SIGINT"
        elif status != 0:
            problem = f"exit {status} after SIGINT: {last_error_line()}"
        return {"loaded": True, "detail": kinds, "stop_problem": problem}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()
    result = check(args.backend)
    verdict = "loaded" if result["loaded"] else "NOT loaded"
    stop = result.get("stop_problem", "")
    print(f"loadcheck {args.backend}: {verdict}: {result['detail']} {stop}".rstrip())
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["loaded"] else 1


if __name__ == "__main__":
    sys.exit(main())
