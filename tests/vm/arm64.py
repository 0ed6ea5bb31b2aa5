#!/usr/bin/env python3
"""The arm64 BPF object: its kernel headers, and proof that it loads and captures on
stock Debian arm64 kernels booted in qemu-system-aarch64 (docs/kernel-matrix.md).

    python tests/vm/arm64.py fetch 6.1 6.12      # arm64 kernels + the guest's userspace
    python tests/vm/arm64.py btf 6.1 OUT.btf     # the kernel's BTF, for bpftool's vmlinux.h
    python tests/vm/arm64.py prove OBJECT 6.1 6.12

`make bpf-arm64` and `make test-arm64` run these.  Everything lands in
tests/vm/cache/arm64/: the newest kernel package of each series (its boot/ only), and a
sysroot of arm64 packages: busybox-static for the guest's shell, libbpf/libelf/zlib's
static libraries for tests/vm/guest/arm64_loader.c, which is cross-compiled statically, so
the guest is one initramfs with no root file system.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fetch_kernels import SERIES, apt_options, apt_update, newest_package
from initramfs import Cpio
from kernels import CACHE, VM_DIR
from run import PANIC_MARKERS, run_qemu

ARCH = "arm64"
HOME = CACHE / ARCH
SYSROOT = HOME / "sysroot"
LOADER_SRC = VM_DIR / "guest" / "arm64_loader.c"
LOADER = HOME / "loader"
# the guest's busybox, and what the loader links statically
USERSPACE = ("busybox-static", "libbpf-dev", "libelf-dev", "zlib1g-dev")
BACKENDS = ("fentry", "kprobe", "tracepoint", "fentry:bounded")
# What each backend does on each kernel (docs/kernel-matrix.md says why): "captures" is
# loaded, attached, and the marker sent by write, writev (stream) and sendmsg (datagram)
# came out of the ring all three times; "attach fails" passed the verifier, and the kernel
# refused the hook.
EXPECTED = {
    # no sock_send_length tracepoint before 6.3; arm64 attaches no fentry/fexit before 6.4
    "6.1": {"fentry": "attach fails", "kprobe": "captures", "tracepoint": "load fails",
            "fentry:bounded": "attach fails"},
    "6.12": dict.fromkeys(BACKENDS, "captures"),
}  # fmt: skip
LOADED = re.compile(
    r"loader: (\S+) (loop|bounded): loaded (\d+) programs, attached (\d+); "
    r"records \d+ \(marker found in (\d+)\)"
)
LOAD_FAILED = re.compile(r"loader: (\S+) (loop|bounded): load of \d+ programs FAILED")
TIMEOUT = 600.0
# struct btf_header's start: magic 0xeb9f, version 1, flags 0, hdr_len 24 (little endian)
BTF_START = b"\x9f\xeb\x01\x00\x18\x00\x00\x00"
BTF_HEADER = struct.Struct("<HBBIIIII")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
echo "arm64-guest: $(uname -r) $(uname -m), $(nproc) CPUs"
/loader /usniff.bpf.o {backends}
echo "arm64-guest: loader exit status $?"
poweroff -f
"""


def kernel_image(series: str) -> Path | None:
    found = sorted((HOME / series).glob("boot/vmlinuz-*"))
    return found[-1] if found else None


def fetch(series_list: list[str]) -> None:
    todo = [s for s in series_list if kernel_image(s) is None]
    if not todo and (SYSROOT / "bin" / "busybox").is_file():
        return
    apt_update({SERIES[s].suite for s in series_list} | {"bookworm"}, ARCH)
    debs = HOME / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for series in todo:
        package = newest_package(series, ARCH)
        started = time.monotonic()
        download = ["apt-get", *apt_options(ARCH), "-qq", "download", package]
        subprocess.run(download, cwd=debs, check=True)
        (deb,) = debs.glob(f"{package}_*.deb")
        target = HOME / series
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        # only the kernel image: the guest loads no modules
        _extract(deb, target, "./boot")
        deb.unlink()
        print(f"{series}: {package} ({time.monotonic() - started:.0f} s)", flush=True)
    if not (SYSROOT / "bin" / "busybox").is_file():
        names = [f"{p}:{ARCH}" for p in USERSPACE]
        download = ["apt-get", *apt_options(ARCH), "-qq", "download", *names]
        subprocess.run(download, cwd=debs, check=True)
        SYSROOT.mkdir(parents=True, exist_ok=True)
        for deb in debs.glob("*.deb"):
            _extract(deb, SYSROOT)
            deb.unlink()


def _extract(deb: Path, target: Path, *members: str) -> None:
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target), *members], stdin=tar.stdout, check=True)
    if tar.wait():
        raise SystemExit(f"dpkg-deb failed on {deb}")


def btf(series: str, out: Path) -> None:
    """Copy the kernel's BTF out of its vmlinuz.

    Debian's arm64 vmlinuz is a raw Image (some distributions gzip it): no ELF section
    headers to find .BTF by, so the BTF blob is found by its header (magic, version,
    header length) and checked for the shape pahole writes (types first, then strings,
    starting with ""); the largest such blob is the kernel's."""
    image = kernel_image(series)
    if image is None:
        raise SystemExit(f"no arm64 {series} kernel: run `python tests/vm/arm64.py fetch {series}`")
    data = image.read_bytes()
    if data.startswith(b"\x1f\x8b"):
        data = gzip.decompress(data)
    best = b""
    at = data.find(BTF_START)
    while at >= 0:
        _, _, _, hdr_len, type_off, type_len, str_off, str_len = BTF_HEADER.unpack_from(data, at)
        end = at + hdr_len + str_off + str_len
        shaped = type_off == 0 and str_off == type_len and end <= len(data)
        if shaped and data[at + hdr_len + str_off] == 0 and end - at > len(best):
            best = data[at:end]
        at = data.find(BTF_START, at + 1)
    if not best:
        raise SystemExit(f"{image}: no BTF found (a kernel built without CONFIG_DEBUG_INFO_BTF?)")
    out.write_bytes(best)
    print(f"{image.name}: {len(best) / 1e6:.1f} MB of BTF -> {out}")


def build_loader() -> Path:
    lib = SYSROOT / "usr" / "lib" / "aarch64-linux-gnu"
    if LOADER.is_file() and LOADER.stat().st_mtime >= LOADER_SRC.stat().st_mtime:
        return LOADER
    subprocess.run(
        [
            "aarch64-linux-gnu-gcc", "-O2", "-Wall", "-static",
            "-I", str(SYSROOT / "usr" / "include"),
            "-o", str(LOADER), str(LOADER_SRC),
            str(lib / "libbpf.a"), str(lib / "libelf.a"), str(lib / "libz.a"),
        ],
        check=True,
    )  # fmt: skip
    return LOADER


def initramfs(obj: Path, loader: Path, target: Path) -> None:
    cpio = Cpio()
    for directory in ("bin", "dev", "proc", "sys"):
        cpio.add(directory, 0o040755)
    cpio.add("dev/console", 0o020600, rdev=(5, 1))
    cpio.add("bin/busybox", 0o100755, (SYSROOT / "bin" / "busybox").read_bytes())
    cpio.add("init", 0o100755, INIT.format(backends=" ".join(BACKENDS)).encode())
    cpio.add("loader", 0o100755, loader.read_bytes())
    cpio.add("usniff.bpf.o", 0o100644, obj.read_bytes())
    target.write_bytes(cpio.finish())


class Tee:
    """The guest console to stdout, and all of it kept (verifier logs can be long)."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, text: str, /) -> int:
        self.text.append(text)
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def boot(series: str, initrd: Path) -> bool:
    image = kernel_image(series)
    if image is None:
        raise SystemExit(f"no arm64 {series} kernel: run `python tests/vm/arm64.py fetch {series}`")
    argv = [
        "qemu-system-aarch64",
        "-M", "virt", "-accel", "tcg,thread=multi",
        # pauth-impdef: QEMU's own pointer-authentication hash, much cheaper to emulate
        "-cpu", "max,pauth-impdef=on",
        "-m", "1G", "-smp", "2",
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-serial", "stdio",
        "-kernel", str(image), "-initrd", str(initrd),
        "-append", "console=ttyAMA0 loglevel=4 panic=-1 oops=panic mitigations=off",
    ]  # fmt: skip
    console = Tee()
    timed_out, tail, _, took = run_qemu(argv, console, TIMEOUT)
    seen = outcomes("".join(console.text))
    expected = EXPECTED[series]
    for backend, outcome in seen.items():
        want = expected.get(backend)
        mark = "as expected" if want == outcome else f"EXPECTED {want}"
        print(f"arm64 {series}: {backend:<15} {outcome:<13} {mark}")
    ok = seen == expected
    why = "timed out" if timed_out else next((m for m in PANIC_MARKERS if m in tail), "")
    verdict = "PASSED" if ok else f"FAILED {why}".rstrip()
    print(f"arm64 {series} ({image.name}): {verdict} after {took:.0f} s", flush=True)
    return ok


def outcomes(console: str) -> dict[str, str]:
    """Each backend's outcome, from the loader's lines."""
    found = {}
    for line in console.splitlines():
        if m := LOADED.match(line):
            backend = m[1] if m[2] == "loop" else f"{m[1]}:bounded"
            if m[3] != m[4]:
                found[backend] = "attach fails"
            else:
                found[backend] = "captures" if int(m[5]) >= 3 else "no capture"
        elif m := LOAD_FAILED.match(line):
            found[m[1] if m[2] == "loop" else f"{m[1]}:bounded"] = "load fails"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download arm64 kernels and the guest's userspace")
    p.add_argument("series", nargs="+", choices=list(EXPECTED))
    p = sub.add_parser("btf", help="write a kernel's BTF (for bpftool btf dump ... format c)")
    p.add_argument("series", choices=list(EXPECTED))
    p.add_argument("out", type=Path)
    p = sub.add_parser("prove", help="load the arm64 object's backends in arm64 guests")
    p.add_argument("object", type=Path)
    p.add_argument("series", nargs="+", choices=list(EXPECTED))
    args = parser.parse_args()
    if args.command == "fetch":
        fetch(args.series)
    elif args.command == "btf":
        btf(args.series, args.out)
    else:
        fetch(args.series)
        loader = build_loader()
        results = {}
        with tempfile.TemporaryDirectory(prefix="usniff-arm64-") as scratch:
            initrd = Path(scratch) / "initramfs.cpio"
            initramfs(args.object, loader, initrd)
            for series in args.series:
                results[series] = boot(series, initrd)
        return 0 if all(results.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
