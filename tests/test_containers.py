"""Cgroup paths as each container runtime lays them out, and what usniff reads of them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from usniff import containers
from usniff.containers import Containers, Identity, parse_path
from usniff.decoders.base import Transaction
from usniff.outputs.otlp import span

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


def test_span_carries_the_semantic_conventions_container_attributes() -> None:
    names = Containers(root="")
    names.learn(Identity(7, f"/kubepods/pod{POD}/{CID}", "kubernetes", CID, "web", "shop/web-0"))
    names.learn(Identity(9, "/system.slice/redis.service"))
    tx = Transaction("resp", "GET", "GET k", "$1", False, 1.0, 1.001, 7, 8)
    tx.client_cgroup, tx.server_cgroup = 7, 9
    got = {kv.key: kv.value.string_value for kv in span(tx, random.Random(1), names).attributes}
    assert {k: got[k] for k in got if "container" in k or "k8s" in k} == {
        "container.id": CID,
        "container.name": "web",
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "web-0",
    }  # the server is in no container: no usniff.server.container.*


def test_no_cgroup_filter_needs_no_cgroup2_mount() -> None:
    # a container without /sys/fs/cgroup (the podman image's test) must still capture
    assert Containers(root="").select() == []
    with pytest.raises(ValueError, match="no cgroup v2 file system"):
        Containers(root="").select(containers=["web"])


def test_unknown_ids_are_cached_until_the_tree_may_be_walked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[str] = []
    real_walk = containers._walk

    def counting_walk(root: str) -> Iterator[tuple[int, str]]:
        walks.append(root)
        return real_walk(root)

    clock = [1000.0]
    monkeypatch.setattr(containers, "_walk", counting_walk)
    monkeypatch.setattr(containers, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tree = Containers(root=str(tmp_path))
    gone = 2**40 + 7  # an id in no tree: a removed cgroup, or one out of this mount's view
    for _ in range(1000):
        assert tree.identity(gone) == Identity(gone)
    assert len(walks) == 1, "an unknown id walked the tree more than once per RESCAN"
    (tmp_path / "system.slice" / "redis.service").mkdir(parents=True)
    new = (tmp_path / "system.slice" / "redis.service").stat().st_ino
    assert tree.identity(new).path == ""  # created after the walk, inside RESCAN
    clock[0] += containers.RESCAN
    assert tree.identity(new).path == "/system.slice/redis.service"
    assert tree.identity(gone) == Identity(gone)
    assert len(walks) == 2


def test_an_id_is_settled_once_no_later_walk_can_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settled(): the native text lines name a connection's ends once, so they take it
    only when label() can no longer change: an id in the tree, or one missing from a
    walk begun after the caller held its records (then no walk ever finds it)."""
    clock = [1000.0]
    monkeypatch.setattr(containers, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tree = Containers(root=str(tmp_path))
    assert tree.settled(0) and Containers(root="").settled(12345)
    gone = 2**40 + 7
    assert not tree.settled(gone)  # missing at a walk made when it was first asked about
    (tmp_path / "docker-1.scope").mkdir()
    new = (tmp_path / "docker-1.scope").stat().st_ino
    clock[0] += containers.RESCAN / 2
    assert not tree.settled(gone) and not tree.settled(new)  # no walk since: either may
    clock[0] += containers.RESCAN / 2
    assert tree.settled(new) and tree.identity(new).path == "/docker-1.scope"
    assert tree.settled(gone)  # the walk began after it was asked about
