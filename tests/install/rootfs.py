"""Minimal Debian root file systems for the install tests (tests/install/test_install.py).

``tarball(suite)`` gives ``tests/install/cache/<suite>-minimal-amd64.tar``: a
``debootstrap --variant=minbase`` tree with python3 and python3-venv only (no compiler,
no libbpf), made once from the Debian mirror the host's apt already uses and kept
(gitignored); ``tarball(suite, "build")`` one with what building the wheel needs.
``Chroot`` unpacks one into a temporary directory and mounts /proc, /sys (with
/sys/kernel/btf and tracefs under it) and /dev, so that usniff loads its programs
there on the host's kernel exactly as on a machine running that release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
sys.path.insert(0, str(HERE.parent / "vm"))
from fetch_kernels import host_mirrors  # noqa: E402  (tests/vm is not a package)

# what a user's host has (python3; venv brings pip), and what building the wheel needs
PACKAGES = {
    "minimal": "python3,python3-venv",
    "build": "python3-dev,python3-venv,gcc,libc6-dev,make,clang,llvm,libbpf-dev,bpftool,git",
    # what building CPython (cpython() below) needs: ctypes, ssl and zlib included
    "cpython": "gcc,libc6-dev,make,xz-utils,zlib1g-dev,libssl-dev,libffi-dev",
}
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def tarball(suite: str, kind: str = "minimal") -> Path:
    """The cached root file system of ``suite`` with PACKAGES[kind], debootstrapped on first use."""
    path = CACHE / f"{suite}-{kind}-amd64.tar"
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    mirror = host_mirrors()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES[kind]}", suite, root,
             mirror],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(["tar", "-C", root, "-cf", f"{path}.tmp", "."], check=True)
    Path(f"{path}.tmp").rename(path)
    print(f"debootstrap {suite} {kind}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


def cpython_prefix(version: str) -> str:
    """Where cpython() installs CPython ``version`` (bin/python<version> in it)."""
    return f"/opt/python{version}"


def cpython(suite: str, version: str, source_suite: str) -> Path:
    """``tests/install/cache/<suite>-cpython<version>-amd64.tar``: /opt/python<version>, the
    CPython that Debian ``source_suite``'s python<version> source package carries (its
    upstream tarball), built in ``suite``'s root file system as pyenv would build it on
    such a host; made once (~6 min on 2 cores) and kept."""
    path = CACHE / f"{suite}-cpython{version}-amd64.tar"
    if path.is_file():
        return path
    tarball(suite, "cpython")
    started = time.monotonic()
    prefix = cpython_prefix(version)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, Chroot(suite, Path(tmp), "cpython") as root:
        root.host_path("/etc/apt/sources.list.d/source.list").write_text(
            f"deb-src {host_mirrors()[0]} {source_suite} main\n"
        )
        script = (
            f"cd /tmp && apt-get -qq update"
            f" && apt-get -qq source --download-only python{version}/{source_suite}"
            f" && tar -xf python{version}_*.orig.tar.* && cd Python-{version}.*"
            f" && ./configure -q --prefix={prefix}"
            f" && make -s -j{os.cpu_count()} && make -s altinstall"
        )
        done = root.run("sh", "-c", script, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(
                f"building CPython {version}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
            )
        subprocess.run(
            ["tar", "-C", root.root, "-cf", f"{path}.tmp", prefix.lstrip("/")], check=True
        )
    Path(f"{path}.tmp").rename(path)
    print(f"CPython {version} in {suite}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


class Chroot:
    """A fresh copy of a cached root file system with /proc, /sys and /dev mounted."""

    def __init__(self, suite: str, workdir: Path, kind: str = "minimal") -> None:
        self.root = workdir / f"{suite}-{kind}"
        self.root.mkdir()
        subprocess.run(["tar", "-C", self.root, "-xf", tarball(suite, kind)], check=True)
        self._mounted: list[Path] = []

    def __enter__(self) -> Chroot:
        try:
            self._mount(["-t", "proc", "proc"], "proc")
            for tree in ("sys", "dev"):
                self._mount(["--rbind", f"/{tree}"], tree)
                # a slave: unmounting our copy later must not unmount the host's submounts
                subprocess.run(["mount", "--make-rslave", self.root / tree], check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _mount(self, how: list[str], where: str) -> None:
        subprocess.run(["mount", *how, self.root / where], check=True)
        self._mounted.append(self.root / where)

    def __exit__(self, *exc: object) -> None:
        for point in reversed(self._mounted):
            subprocess.run(["umount", "-R", point], check=False)
        self._mounted.clear()

    def argv(self, *args: str | Path) -> list[str]:
        """A command run inside, as root."""
        return ["chroot", str(self.root), *map(str, args)]

    def run(self, *args: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
        kw.setdefault("timeout", 600)
        kw.setdefault("env", ENV)
        return subprocess.run(self.argv(*args), capture_output=True, text=True, **kw)

    def copy_in(self, src: Path, dest: str) -> str:
        """Copy a host file to ``dest`` (a path inside); returns ``dest``."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, target)
        return dest

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")
