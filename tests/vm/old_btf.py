#!/usr/bin/env python3
"""Compile the BPF object against an older kernel's BTF (`make bpf-old-btf`).

A packager may build on any machine; CO-RE makes the object load everywhere only
if it compiles against whatever vmlinux.h the build host has.  This takes the
vmlinux of each kernel fetch_kernels.py cached (decompressed from the package's
bzImage), runs the project's own `make bpf VMLINUX_BTF=...` on a copy of the
sources, and fails if clang does.

    python tests/vm/old_btf.py 6.1
"""

from __future__ import annotations

import argparse
import lzma
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernels import REPO, load_index

XZ_MAGIC = b"\xfd7zXZ\x00"  # Debian's x86 kernels are xz-compressed inside the bzImage
SOURCES = ["Makefile", "tests/vm/Makefile.inc", "ebpf/usniff.bpf.c", "ebpf/usniff.h"]


def vmlinux(vmlinuz: Path, dest: Path) -> Path:
    image = vmlinuz.read_bytes()
    start = image.find(XZ_MAGIC)
    if start < 0:
        raise SystemExit(f"{vmlinuz}: no xz payload")
    dest.write_bytes(lzma.LZMADecompressor().decompress(image[start:]))
    return dest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("series", nargs="+", help="kernel series cached by fetch_kernels.py")
    args = parser.parse_args()
    index = load_index()
    for series in args.series:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for name in SOURCES:
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / name, work / name)
            btf = vmlinux(index[series].vmlinuz, work / "vmlinux")
            done = subprocess.run(
                ["make", "-C", str(work), "bpf", f"VMLINUX_BTF={btf}"],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(done.stdout + done.stderr, file=sys.stderr)
                print(f"{series}: the BPF object does not compile against its BTF")
                return 1
            print(f"{series}: compiles against {index[series].release}'s BTF")
    return 0


if __name__ == "__main__":
    sys.exit(main())
