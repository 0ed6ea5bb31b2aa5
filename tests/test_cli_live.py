"""The CLI as a user runs it (root, real kernel): refusals and warnings that
need the capture or the machine's sockets to be judged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from live_helpers import USNIFF, run

pytestmark = pytest.mark.root

QUIET = ["--comm", "usniff-nobody", "--duration", "0.5"]  # loads, captures nothing


def test_the_largest_ring_loads() -> None:
    # 2G is what --buffer-size says is the kernel's maximum: it must load
    out = run([USNIFF, "--buffer-size", "2G", *QUIET])
    assert out.returncode == 0, out.stderr
    assert "usniff: capturing with the" in out.stderr


def test_time_rotation_without_a_time_in_the_name_is_refused(tmp_path: Path) -> None:
    out = run([USNIFF, "-w", str(tmp_path / "q.pcapng"), "-G", "1", *QUIET])
    assert out.returncode == 2, out.stderr
    assert "-G 1 needs a time in the -w name" in out.stderr
    assert os.listdir(tmp_path) == []
