"""Fixtures of the install tests: the clone, its wheel and wheelhouse (wheelbuild.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheelbuild import build_in_chroot, clone_and_build, make, manylinux_wheel  # noqa: E402


@pytest.fixture(scope="session")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_and_build(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def wheel(clone: Path) -> Path:
    return manylinux_wheel(clone)


@pytest.fixture(scope="session")
def wheelhouse(clone: Path) -> Path:
    """dist/wheels (`make wheelhouse`): the wheel and its dependencies, for an offline pip."""
    make(clone, "wheelhouse")
    return clone / "dist" / "wheels"


@pytest.fixture(scope="session")
def trixie_wheelhouse(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPython 3.13 wheel of the same commit and its dependencies, built in Debian 13."""
    return build_in_chroot("trixie", tmp_path_factory.mktemp("trixie"), clone) / "wheels"
