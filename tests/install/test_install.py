"""The wheel a production user installs, tried as they would (`make test-install`, as root).

A clean clone of this repository builds the wheel with the documented command
(`make wheel`); the wheel is installed with pip into minimal Debian root file
systems that have python3 and nothing else (no compiler, no libbpf), and captures
a socketpair's bytes there, compared with what the sending program itself says
it sent (tests/progs/uxwork.py).  Slow (debootstrap on first use: ~2.5 min per
release; tests/install/cache keeps the result), so not part of `make test`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsoncapture import capture_sends
from rootfs import Chroot, cpython, cpython_prefix
from wheelbuild import clone_and_build, manylinux_wheel

from tests.support.live import UXWORK, Workload

VENV = "/opt/usniff"  # where the tests install usniff inside a root file system
pytestmark = pytest.mark.root


def readelf(*args: str | Path) -> str:
    return subprocess.run(
        ["readelf", *map(str, args)], check=True, capture_output=True, text=True
    ).stdout


def test_wheel_is_reproducible_and_self_contained(
    clone: Path, wheel: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # the same commit (a clone of the first clone), built again at another path
    again = manylinux_wheel(clone_and_build(tmp_path_factory.mktemp("build-again"), clone))
    assert again.name == wheel.name
    assert again.read_bytes() == wheel.read_bytes(), "two builds of one commit differ"
    subprocess.run([sys.executable, "-m", "zipfile", "-e", str(wheel), str(tmp_path)], check=True)
    obj = tmp_path / "usniff" / "capture" / "bpf" / "usniff.bpf.o"
    sections = set(re.findall(r"\] (\.\S+)", readelf("-SW", obj)))
    assert {".BTF", ".BTF.ext"} <= sections, "CO-RE needs the BTF kept"
    assert not {s for s in sections if s.startswith(".debug")}, "DWARF not stripped"
    libs = {p.name.split("-")[0] for p in (tmp_path / "usniff.libs").iterdir()}
    assert {"libbpf", "libelf"} <= libs
    for so in [*tmp_path.glob("usniff/**/*.so"), *(tmp_path / "usniff.libs").iterdir()]:
        for path in re.findall(r"R(?:UN)?PATH.*\[(.*)\]", readelf("-d", so)):
            assert path.startswith("$ORIGIN"), f"{so.name}: build-host search path {path}"


@dataclass(frozen=True)
class Release:
    suite: str
    wheels: str  # the fixture of the wheelhouse installed
    cpython: str = ""  # CPython built from source first (rootfs.cpython): its version

    @property
    def python(self) -> str:
        """The interpreter the venv is made with."""
        v = self.cpython
        return f"{cpython_prefix(v)}/bin/python{v}" if v else "python3"


# Debian 12 has Python 3.11 (the wheel `make wheel` built here); Debian 13 has 3.13 (the
# wheel built in a Debian 13 root file system); Debian 11 has glibc 2.31 and Python 3.9,
# too old for usniff, so it gets the manylinux_2_28 wheel of Debian 12 and a CPython 3.11
# built from source, as pyenv gives a user there
RELEASES = {
    "debian12-py3.11": Release("bookworm", "wheelhouse"),
    "debian13-py3.13": Release("trixie", "trixie_wheelhouse"),
    "debian11-py3.11-source": Release("bullseye", "wheelhouse", cpython="3.11"),
}


@pytest.fixture(scope="module", params=list(RELEASES.values()), ids=list(RELEASES))
def installed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    """A minimal root file system of one Debian release with the wheel installed by pip."""
    release: Release = request.param
    wheelhouse: Path = request.getfixturevalue(release.wheels)
    with Chroot(release.suite, tmp_path_factory.mktemp("rootfs")) as rootfs:
        for tool in ("cc", "gcc", "clang"):
            assert rootfs.run("sh", "-c", f"command -v {tool}").returncode != 0, tool
        assert not list(rootfs.root.glob("usr/lib/*/libbpf.so*")), "the system has a libbpf"
        if release.cpython:
            built = cpython(release.suite, release.cpython, source_suite="bookworm")
            subprocess.run(["tar", "-C", rootfs.root, "-xf", built], check=True)
        for f in wheelhouse.iterdir():
            rootfs.copy_in(f, f"/tmp/wheels/{f.name}")
        for argv in (
            [release.python, "-m", "venv", VENV],
            [f"{VENV}/bin/pip", "install", "-q", "--no-index", "--find-links", "/tmp/wheels",
             "usniff"],
        ):  # fmt: skip
            done = rootfs.run(*argv)
            assert done.returncode == 0, f"{argv}: {done.stderr}"
        rootfs.copy_in(UXWORK, "/tmp/uxwork.py")
        yield rootfs


def capture_socketpair(rootfs: Chroot, *as_user: str) -> None:
    """usniff --pid (run inside as ``as_user``: a setpriv prefix) captures every byte sent."""
    work = Workload(rootfs.argv(f"{VENV}/bin/python", "/tmp/uxwork.py", "writev", "/tmp"))
    done, got, _ = capture_sends(work, rootfs.argv(*as_user, f"{VENV}/bin/usniff"))
    assert got == rootfs.host_path(done["sent"][str(work.ready["a"])]).read_bytes()


def test_wheel_captures_in_minimal_debian(installed: Chroot) -> None:
    capture_socketpair(installed)


CAP_NUMBERS = {"bpf": 39, "perfmon": 38}  # Debian 11's setpriv knows them by number only


def unprivileged(*caps: str) -> list[str]:
    """setpriv: the user nobody holding exactly ``caps`` (ambient, so they survive exec)."""
    want = ",".join(f"+cap_{CAP_NUMBERS[c]}" for c in caps)
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            f"--inh-caps=-all,{want}", f"--ambient-caps={want}"]  # fmt: skip


def test_unprivileged_user_with_cap_bpf_and_cap_perfmon_captures(installed: Chroot) -> None:
    status = installed.run(*unprivileged("bpf", "perfmon"), "grep", "^Cap[EA]", "/proc/self/status")
    # CAP_BPF (39) and CAP_PERFMON (38), effective and ambient, and nothing else
    assert status.stdout.split() == ["CapEff:", "000000c000000000", "CapAmb:", "000000c000000000"]
    capture_socketpair(installed, *unprivileged("bpf", "perfmon"))


@pytest.mark.parametrize(("held", "missing"), [("bpf", "CAP_PERFMON"), ("perfmon", "CAP_BPF")])
def test_a_missing_capability_is_named(installed: Chroot, held: str, missing: str) -> None:
    done = installed.run(*unprivileged(held), f"{VENV}/bin/usniff", "--duration", "1")
    assert done.returncode != 0
    assert f"usniff lacks {missing} " in done.stderr, done.stderr
    assert "trampolines" not in done.stderr


def test_pid_inside_a_pid_namespace_is_refused(installed: Chroot) -> None:
    """BPF filters on the host's PIDs: a PID namespace's own would match nothing, silently."""
    done = installed.run("unshare", "--pid", "--fork", "--mount-proc", "--propagation=unchanged",
                         f"{VENV}/bin/usniff", "--pid", "1", "--duration", "1")  # fmt: skip
    assert done.returncode != 0
    assert "--pid: usniff runs in a PID namespace" in done.stderr, done.stderr
    assert "hostPID: true" in done.stderr
