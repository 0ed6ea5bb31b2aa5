#!/usr/bin/env python3
"""Run one command as root in a QEMU guest booted with a stock Debian kernel.

    python tests/vm/run.py --kernel 6.1 -- bpftool prog list
    python tests/vm/run.py --kernel 6.12 --env USNIFF_BACKEND=fentry -- pytest -m root

The guest sees the host's root file system read-only through 9p, with a tmpfs
overlay on top (anything it writes is gone after the run), and starts the command
in /work/main with the project's venv first in PATH.  The guest console streams to
stdout.  The exit status is the command's, or 124 when the run timed out, or 125
when the guest stopped without reporting one (kernel panic, failed boot).

--out DIR is mounted writable at /mnt/out in the guest ($VM_OUT): the way to get
files (junit XML, logs) back to the host.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import initramfs
from kernels import REPO, find_kernel


class Console(Protocol):
    """Where the guest console goes: sys.stdout, a log file, or both."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


TIMEOUT_STATUS = 124
NO_STATUS = 125

GUEST_PATH = f"{REPO}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_CPUS = 2  # the live tests race a sender against a receiver on two CPUs
KERNEL_ARGS = (
    "console=ttyS0",
    "loglevel=4",  # errors, and warnings (WARN_ON splats) from BPF code under test
    "panic=-1",  # reboot at once on panic; -no-reboot then ends QEMU
    "oops=panic",
    "random.trust_cpu=on",
    "mitigations=off",  # fewer barriers to emulate under TCG
    "i8042.noaux",
    "i8042.nokbd",
)
PANIC_MARKERS = ("Kernel panic - not syncing", "BUG: kernel NULL pointer", "general protection")


def guest_script(command: Sequence[str], env: dict[str, str], cwd: str) -> str:
    exports = {
        "PATH": GUEST_PATH,
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "VM_OUT": "/mnt/out",
        **env,
    }
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += ["ulimit -l unlimited", f"cd {shlex.quote(cwd)} || exit 1", shlex.join(command)]
    return "\n".join(lines) + "\n"


def qemu_command(
    kernel_image: Path,
    initrd: Path,
    out_dir: Path,
    memory: str,
    cpus: int,
    accel: str,
    cwd: str,
) -> list[str]:
    if accel == "kvm":
        machine = ["-accel", "kvm", "-cpu", "host"]
    else:
        # la57=off: 4-level paging, cheaper page walks for the emulated MMU (~10-40% faster)
        machine = ["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"]
    return [
        "qemu-system-x86_64",
        *machine,
        "-machine", "pc",
        "-m", memory,
        "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none",
        "-serial", "stdio",
        "-kernel", str(kernel_image),
        "-initrd", str(initrd),
        "-append", " ".join((*KERNEL_ARGS, f"vm.cwd={cwd}")),  # init: a cwd under /tmp
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=vmout,path={out_dir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=vmout,mount_tag=vmout",
    ]  # fmt: skip


def stream(proc: subprocess.Popen[bytes], console: Console, deadline: float) -> tuple[bool, str]:
    """Copy the guest console to ``console`` until QEMU exits or ``deadline``.

    Returns (timed out, the console's last few KiB)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    tail = ""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True, tail
            if not sel.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return False, tail
            text = chunk.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
            console.write(text)
            console.flush()
            tail = (tail + text)[-8192:]


def run_qemu(argv: Sequence[str], console: Console, timeout: float) -> tuple[bool, str, int, float]:
    """Run QEMU, its console to ``console``, until it exits or ``timeout`` s have passed.

    Returns (timed out, the console's last few KiB, QEMU's exit status, seconds taken)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        timed_out, tail = stream(proc, console, started + timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        status = proc.wait()
    return timed_out, tail, status, time.monotonic() - started


def run_vm(
    series: str,
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str = str(REPO),
    out_dir: Path | None = None,
    memory: str = "2G",
    cpus: int = GUEST_CPUS,
    timeout: float = 600,
    accel: str = "tcg",
    console: Console = sys.stdout,
) -> int:
    """Boot kernel ``series``, run ``command`` in the guest, return its exit status."""
    kernel = find_kernel(series)
    initrd = initramfs.build(kernel)
    with tempfile.TemporaryDirectory(prefix="usniff-vm-") as scratch:
        out = out_dir or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        status_file = out / ".vm-exit-status"
        status_file.unlink(missing_ok=True)
        (out / ".vm-command").write_text(guest_script(command, env or {}, cwd))

        argv = qemu_command(kernel.vmlinuz, initrd, out, memory, cpus, accel, cwd)
        timed_out, tail, qemu_status, took = run_qemu(argv, console, timeout)

        def report(message: str) -> None:
            console.write(f"vm: {kernel.release}: {message} after {took:.1f} s\n")
            console.flush()

        if timed_out:
            report(f"TIMEOUT: no exit within {timeout:.0f} s, guest killed")
            return TIMEOUT_STATUS
        if not status_file.is_file():
            why = next((m for m in PANIC_MARKERS if m in tail), None)
            cause = f"kernel crash ({why})" if why else f"QEMU exit status {qemu_status}"
            report(f"FAILED: guest stopped without reporting an exit status: {cause}")
            return NO_STATUS
        status = int(status_file.read_text().strip())
        report(f"command exited with status {status}")
        return status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --kernel SERIES [options] -- COMMAND...",
    )
    parser.add_argument("--kernel", required=True, help="kernel series, e.g. 6.1")
    parser.add_argument("--memory", default="2G", help="guest memory (default 2G)")
    parser.add_argument(
        "--cpus", type=int, default=GUEST_CPUS, help="guest CPUs (default %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds (default 600)")
    parser.add_argument(
        "--accel",
        choices=("tcg", "kvm"),
        default="tcg",
        help="tcg (default; works everywhere) or kvm (only on hosts with hardware virtualisation)",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--cwd", default=str(REPO), help=f"guest working directory ({REPO})")
    parser.add_argument("--out", type=Path, help="host directory mounted at /mnt/out")
    parser.add_argument("command", nargs="+", help="command to run in the guest")
    args = parser.parse_args()
    env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return run_vm(
        args.kernel,
        args.command,
        env=env,
        cwd=args.cwd,
        out_dir=args.out,
        memory=args.memory,
        cpus=args.cpus,
        timeout=args.timeout,
        accel=args.accel,
    )


if __name__ == "__main__":
    sys.exit(main())
