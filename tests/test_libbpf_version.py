"""usniff.capture.libbpf refuses a libbpf older than 1.0 and names the version it found.

The libraries are tiny shared objects compiled here that export what an old
libbpf exports (libbpf_major_version/minor from 0.6 on; nothing of the sort
before, where the version is in the file name, as in Debian 11's libbpf.so.0.3.0).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from usniff.capture import libbpf


def shared_object(path: Path, source: str) -> str:
    c = path.with_suffix(".c")
    c.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(c)], check=True)
    return str(path)


def test_a_libbpf_older_than_1_0_is_refused_with_its_version(tmp_path: Path) -> None:
    lib = shared_object(
        tmp_path / "libbpf.so.0",
        "unsigned libbpf_major_version(void) { return 0; }\n"
        "unsigned libbpf_minor_version(void) { return 7; }\n",
    )
    with pytest.raises(OSError, match=r"libbpf 0\.7 \(.*\) is too old: usniff needs libbpf 1\.0"):
        libbpf.checked(lib)


def test_a_libbpf_without_version_functions_is_named_by_its_file(tmp_path: Path) -> None:
    libbpf.lib()  # the bundled libbpf 1.x mapped too: its version must not be the one named
    lib = shared_object(tmp_path / "libbpf.so.0.3.0", "int bpf_object__open(void) { return 0; }\n")
    with pytest.raises(OSError, match=r"libbpf 0\.3\.0 \(.*\) is too old"):
        libbpf.checked(lib)


def test_libbpf_1_x_is_accepted(tmp_path: Path) -> None:
    lib = shared_object(
        tmp_path / "libbpf.so.1",
        "unsigned libbpf_major_version(void) { return 1; }\n"
        "unsigned libbpf_minor_version(void) { return 0; }\n",
    )
    assert libbpf.checked(lib).libbpf_minor_version() == 0


def test_the_bundled_libbpf_is_the_one_loaded() -> None:
    assert Path(libbpf.lib()._name).name.startswith("_libbpf.")
