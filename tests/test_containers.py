"""Cgroup paths as each container runtime lays them out, and what usniff reads of them."""

from __future__ import annotations

import pytest

from usniff.containers import parse_path

CID = "0123456789abcdef" * 4
POD = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"


@pytest.mark.parametrize(
    ("path", "want"),
    [
        (f"/system.slice/docker-{CID}.scope", ("docker", CID, "")),  # systemd driver
        (f"/docker/{CID}", ("docker", CID, "")),  # cgroupfs driver
        (f"/machine.slice/libpod-{CID}.scope", ("podman", CID, "")),
        (f"/machine.slice/libpod-{CID}.scope/container", ("podman", CID, "")),  # --cgroupns
        (
            f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
            ("podman", CID, ""),
        ),  # rootless  # fmt: skip
        (f"/machine.slice/libpod-conmon-{CID}.scope", ("", "", "")),  # podman's monitor
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{POD.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
            ("containerd", CID, POD),
        ),
        (
            f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CID}.scope",
            ("cri-o", CID, POD),
        ),  # fmt: skip
        (f"/kubepods/besteffort/pod{POD}/{CID}", ("kubernetes", CID, POD)),  # kubelet cgroupfs
        ("/system.slice/redis-server.service", ("", "", "")),
        ("/", ("", "", "")),
    ],
)
def test_runtime_layouts(path: str, want: tuple[str, str, str]) -> None:
    assert parse_path(path) == want
