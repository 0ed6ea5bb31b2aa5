#!/usr/bin/env python3
"""Debian 11's libelf for the wheel: ``python tests/vm/fetch_libelf.py DIR`` puts the
libelf.so.1 of Debian 11's libelf1 package (elfutils 0.183) into DIR.

`make wheel` has auditwheel bundle this libelf rather than the build host's: Debian 12's
(0.188) calls fstat@GLIBC_2.33, which made the wheel manylinux_2_34 and kept it off
hosts with glibc 2.28 to 2.33 (RHEL 8, Debian 11, Ubuntu 20.04).  0.183 needs glibc 2.14
and has every ELFUTILS_1.x symbol version that libbpf 1.x links against; libbpf itself
needs glibc 2.28, so the wheel is manylinux_2_28.  The package comes from the Debian
mirror the host's apt uses (fetch_kernels.py's apt state under tests/vm/cache).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fetch_kernels import apt_options, apt_update

SUITE = "bullseye"


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {sys.argv[0]} DIR")
    target = Path(sys.argv[1])
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    apt_update({SUITE}, arch)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", *apt_options(arch), "-qq", "download", f"libelf1/{SUITE}"],
                       cwd=tmp, check=True)  # fmt: skip
        (deb,) = Path(tmp).glob("libelf1_*.deb")
        subprocess.run(["dpkg-deb", "--extract", str(deb), f"{tmp}/x"], check=True)
        (lib,) = Path(tmp).glob("x/usr/lib/*/libelf.so.1")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, target / "libelf.so.1")  # follows the link to libelf-0.183.so
    print(f"{target / 'libelf.so.1'}: {deb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
