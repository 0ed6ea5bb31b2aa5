from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recorder import load_records  # noqa: E402

from usniff.cli.read import read_records  # noqa: E402
from usniff.events import Record  # noqa: E402

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
PROGS = Path(__file__).resolve().parent / "progs"

# ci: every decoder sees >= 100k fuzz inputs (inputs are batched per example, see
# test_fuzz_decoders.py); nightly: 20x more.  Select with HYPOTHESIS_PROFILE=nightly.
_common = {"deadline": 10_000, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=250, **_common)
settings.register_profile("nightly", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.cache
def capture(name: str) -> tuple[Record, ...]:
    """Records of captures/<name>.jsonl.gz (recorded from real servers by captures/record.py),
    else of captures/<name>.pcapng (written by usniff, captures/record_live.py)."""
    jsonl = CAPTURES / f"{name}.jsonl.gz"
    if jsonl.exists():
        return tuple(load_records(jsonl))
    return tuple(read_records(str(CAPTURES / f"{name}.pcapng")))


@pytest.fixture(scope="session")
def c_prog(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """c_prog(name) -> the path of tests/progs/<name>.c, compiled once per session."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "the live tests need a C compiler for tests/progs/*.c (setup.sh installs gcc)"
    outdir = tmp_path_factory.mktemp("progs")

    def _build(name: str) -> str:
        out = outdir / name
        if not out.exists():
            subprocess.run([gcc, "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out),
                            str(PROGS / f"{name}.c")], check=True)  # fmt: skip
        return str(out)

    return _build
