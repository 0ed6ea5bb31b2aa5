"""The container image (Containerfile, `make image`) captures a process outside it (as root).

No image registry is reachable here, so the base image is the cached minimal Debian 12
root file system (rootfs.py) brought in with `podman import`.  The container gets
what docs/install.md says it needs and nothing more: the host's PID namespace,
CAP_BPF + CAP_PERFMON only, /sys/kernel/btf read-only.  The traffic comes from a
program on the host, and the captured bytes are compared with what it says it sent.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsoncapture import capture_sends
from rootfs import tarball
from wheelbuild import make

from tests.support.live import Workload

pytestmark = pytest.mark.root
BASE = "localhost/usniff-test-base:bookworm"
IMAGE = "localhost/usniff-test:latest"
# Debian 12's crun refuses hosts with hybrid cgroups (v1 + v2), such as this one; runc
# runs anywhere.  Podman's default rlimits (2^20 files, 2^22 processes) exceed this
# machine's hard limits, which makes the runtime fail: these are ample for usniff.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit=nofile=1024:1024", "--ulimit=nproc=4096:4096"]


@pytest.fixture(scope="module")
def image(clone: Path) -> Iterator[str]:
    subprocess.run([*PODMAN, "import", "-q", str(tarball("bookworm")), BASE], check=True)
    try:
        make(clone, "image", PODMAN=" ".join(PODMAN), IMAGE=IMAGE, IMAGE_BASE=BASE)
        yield IMAGE
    finally:  # each run builds anew: leave no images behind in the host's storage
        subprocess.run([*PODMAN, "rmi", "-f", IMAGE, BASE], check=False, capture_output=True)


def podman_run(image: str, *options: str) -> list[str]:
    """podman run with what docs/install.md says usniff needs (and ``options``)."""
    return [
        *PODMAN, "run", "--rm", *ULIMITS, "--pid=host", "--cap-drop=all",
        "--cap-add=BPF,PERFMON", "-v", "/sys/kernel/btf:/sys/kernel/btf:ro", *options, image,
    ]  # fmt: skip


def test_container_captures_a_host_process(image: str, tmp_path: Path) -> None:
    work = Workload.py("writev", tmp_path)
    done, got, pids = capture_sends(work, podman_run(image, "--security-opt=seccomp=unconfined"))
    assert got == Workload.sent(done)[int(work.ready["a"])]
    assert pids == {work.pid}  # the host's PID, seen from the container


def test_a_seccomp_refusal_is_named(image: str) -> None:
    """Podman's default seccomp profile (Debian 12) allows bpf() only with CAP_SYS_ADMIN."""
    done = subprocess.run(
        [*podman_run(image), "--duration", "1"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "seccomp=unconfined" in done.stderr, done.stderr
    assert "trampolines" not in done.stderr
