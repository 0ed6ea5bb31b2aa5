from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

PROGS = Path(__file__).resolve().parent / "progs"

# ci: every decoder sees >= 100k fuzz inputs (inputs are batched per example, see
# test_fuzz_decoders.py); nightly: 20x more.  Select with HYPOTHESIS_PROFILE=nightly.
_common = {"deadline": 10_000, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=250, **_common)
settings.register_profile("nightly", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
