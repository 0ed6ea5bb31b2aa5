"""Who a cgroup is: cgroup v2 ids (what the BPF programs record of each sender
and peer) to cgroup paths, and paths to containers and Kubernetes pods.

A cgroup v2 id is the inode number of the cgroup's directory in the cgroup2
file system, so the id of every cgroup is one ``stat`` away and an unknown id
is found by walking the tree again.  Container runtimes name their cgroups
after the container's id (docker ``docker-<id>.scope`` or ``/docker/<id>``,
podman ``libpod-<id>``, containerd under Kubernetes ``cri-containerd-<id>``,
CRI-O ``crio-<id>``, the kubelet's cgroupfs driver ``.../pod<uid>/<id>``);
the container's name and pod come from the runtimes' own files: podman's
``containers.json``, docker's ``config.v2.json``, the kubelet's
``/var/log/containers/<pod>_<namespace>_<container>-<id>.log`` links.  A
leaf of the layout: the capture stage resolves ``--cgroup``/``--container``
with it, the outputs name the ids of records with it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

RESCAN = 1.0  # seconds between walks of the cgroup tree for an unknown id
PODMAN_STORES = (
    "/var/lib/containers/storage/overlay-containers/containers.json",
    "/var/lib/containers/storage/vfs-containers/containers.json",
)
DOCKER_ROOT = "/var/lib/docker/containers"
KUBELET_LOGS = "/var/log/containers"

# the runtime's name for one cgroup path component holding a container id
_COMPONENT = re.compile(r"^(?:(docker|libpod|cri-containerd|crio)-)?([0-9a-f]{64})(?:\.scope)?$")
_RUNTIMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd",
             "crio": "cri-o"}  # fmt: skip
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_KUBELET_LOG = re.compile(r"^(.+)_(.+)_(.+)-([0-9a-f]{64})\.log$")


@dataclass(frozen=True, slots=True)
class Identity:
    """What a cgroup id names; empty strings where it is not known."""

    cgroup: int
    path: str = ""  # in the cgroup2 tree, "/" for its root
    runtime: str = ""  # docker, podman, containerd, cri-o, or kubernetes (cgroupfs driver)
    container_id: str = ""  # 64 hex digits
    name: str = ""  # the runtime's name of the container
    pod: str = ""  # Kubernetes "namespace/pod", or the pod's uid when its name is not known

    @property
    def label(self) -> str:
        """How outputs name it: the container's name, else its short id, else ""."""
        return self.name or self.container_id[:12]


def parse_path(path: str) -> tuple[str, str, str]:
    """(runtime, container id, pod uid) a cgroup path names (innermost container wins)."""
    runtime = container = pod = ""
    parts = path.strip("/").split("/")
    for i, part in enumerate(parts):
        if m := _POD.search(part):
            pod = m.group(1).replace("_", "-")
        m = _COMPONENT.match(part)
        if m is None:
            continue
        if m.group(1):
            runtime, container = _RUNTIMES[m.group(1)], m.group(2)
        elif i and (parts[i - 1] == "docker" or _POD.search(parts[i - 1])):
            runtime = "docker" if parts[i - 1] == "docker" else "kubernetes"
            container = m.group(2)
    return runtime, container, pod


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the cgroup v2 hierarchy is mounted ("" if nowhere): /sys/fs/cgroup on
    unified hosts, /sys/fs/cgroup/unified on hybrid ones."""
    try:
        with open(mountinfo) as f:
            for line in f:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    return before.split()[4]
    except OSError:
        pass
    return ""


def _walk(top: str) -> Iterator[tuple[int, str]]:
    """(id, absolute path) of ``top`` and every cgroup below it."""
    try:
        yield os.stat(top).st_ino, top
    except OSError:
        return
    for dirpath, dirnames, _ in os.walk(top):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            try:
                yield os.stat(full).st_ino, full
            except OSError:
                continue


class Containers:
    """cgroup id -> :class:`Identity`, cached; the tree is walked again for an
    unknown id at most once per RESCAN seconds."""

    def __init__(self, root: str | None = None) -> None:
        self.root = cgroup2_root() if root is None else root
        self._paths: dict[int, str] = {}
        self._known: dict[int, Identity] = {}
        self._unknown: dict[int, Identity] = {}  # ids not in the tree at the last walk
        self._names: dict[str, tuple[str, str]] = {}  # container id -> (name, pod)
        self._asked: dict[int, float] = {}  # unknown id -> when settled() first asked of it
        self._walked = -RESCAN

    def identity(self, cgroup: int) -> Identity:
        """What ``cgroup`` names (only its id when it is not in the tree)."""
        known = self._known.get(cgroup)
        if known is not None:
            return known
        unknown = self._unknown.get(cgroup)
        if unknown is not None and time.monotonic() - self._walked < RESCAN:
            return unknown
        path = self._path(cgroup)
        if path is None:
            unknown = self._unknown[cgroup] = Identity(cgroup)
            return unknown
        runtime, cid, pod_uid = parse_path(path)
        name, pod = self._name(cid) if cid else ("", "")
        ident = Identity(cgroup, path, runtime, cid, name, pod or pod_uid)
        self._known[cgroup] = ident
        return ident

    def of_pid(self, pid: int) -> Identity:
        """The cgroup v2 of process ``pid`` now (``/proc/PID/cgroup``); only an id of 0
        when the process is gone or its cgroup is not in this mount's tree."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                path = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), "")
            ino = os.stat(os.path.join(self.root, path.lstrip("/"))).st_ino if self.root else 0
        except OSError:
            return Identity(0)
        return self.identity(ino) if ino else Identity(0)

    def label(self, cgroup: int) -> str:
        """:attr:`Identity.label` of ``cgroup`` ("" for 0 or an unknown id)."""
        return self.identity(cgroup).label if cgroup else ""

    def settled(self, cgroup: int) -> bool:
        """Whether :meth:`label` of ``cgroup`` can no longer change, for a cgroup whose
        processes have sent what the caller holds: 0, no tree, an id in the tree, or
        one missing from a walk begun after it was first asked about here (a process's
        cgroup exists before the process runs in it).  An id asked about too early is
        not settled until the next walk (at most RESCAN seconds later)."""
        if not cgroup or not self.root:
            return True
        self.identity(cgroup)  # walks the tree again when RESCAN has passed
        if cgroup in self._known:
            return True
        return self._walked > self._asked.setdefault(cgroup, time.monotonic())

    def learn(self, ident: Identity) -> None:
        """Take ``ident`` as what its id names (a file read back: the writer's host)."""
        self._known[ident.cgroup] = ident

    def _path(self, cgroup: int) -> str | None:
        if cgroup not in self._paths and self.root:
            now = time.monotonic()
            if now - self._walked >= RESCAN:
                self._walked = now
                self._paths = {i: p for i, p in _walk(self.root)}
                self._unknown.clear()
        full = self._paths.get(cgroup)
        if full is None:
            return None
        return "/" + os.path.relpath(full, self.root).removeprefix(".")

    def _name(self, cid: str) -> tuple[str, str]:
        """(name, "namespace/pod") of container ``cid`` from the runtimes' files."""
        if cid not in self._names:
            self._names.update(_runtime_names())
        return self._names.get(cid, ("", ""))

    # --------------------------------------------------------------- filters
    def select(self, cgroups: Iterable[str] = (), containers: Iterable[str] = ()) -> list[str]:
        """The cgroup directories of ``--cgroup`` paths (absolute, or relative to
        the cgroup2 root) and ``--container`` ids (a prefix of at least 4 hex
        digits) or names; ValueError saying what was not found."""
        given_paths, wanted = list(cgroups), list(containers)
        if not (given_paths or wanted):
            return []
        if not self.root:
            raise ValueError("no cgroup v2 file system is mounted (see /proc/self/mountinfo)")
        dirs = []
        for given in given_paths:
            full = (
                given
                if given.startswith(self.root + "/") or given == self.root
                else (os.path.join(self.root, given.lstrip("/")))
            )
            if not os.path.isdir(full):
                raise ValueError(f"cgroup {given!r}: no such cgroup under {self.root}")
            dirs.append(full)
        if wanted:
            found = self._container_dirs()
            for want in wanted:
                hits = [d for (cid, name), d in found.items() if want == name or (
                    len(want) >= 4 and cid.startswith(want.lower()))]  # fmt: skip
                if not hits:
                    raise ValueError(
                        f"container {want!r}: no running container has that id or name (looked"
                        f" for docker, podman, containerd and CRI-O cgroups under {self.root})"
                    )
                dirs += hits
        return dirs

    def _container_dirs(self) -> dict[tuple[str, str], str]:
        """(container id, name) -> its outermost cgroup directory, for every container."""
        names = _runtime_names()
        self._names.update(names)
        found: dict[tuple[str, str], str] = {}
        for _, full in _walk(self.root):
            _, cid, _ = parse_path(full[len(self.root) :])
            if cid:
                key = (cid, names.get(cid, ("", ""))[0])
                if key not in found or len(full) < len(found[key]):
                    found[key] = full
        return found


def subtree_ids(dirs: Iterable[str]) -> set[int]:
    """The cgroup ids of ``dirs`` and every cgroup below them."""
    return {i for d in dirs for i, _ in _walk(d)}


def _runtime_names() -> dict[str, tuple[str, str]]:
    """container id -> (name, "namespace/pod") from every runtime's files found."""
    names: dict[str, tuple[str, str]] = {}
    for store in PODMAN_STORES:
        try:
            entries = json.loads(Path(store).read_text())
        except (OSError, ValueError):
            continue
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and e.get("id") and e.get("names"):
                names[str(e["id"])] = (str(e["names"][0]), "")
    try:
        docker = os.listdir(DOCKER_ROOT)
    except OSError:
        docker = []
    for cid in docker:
        try:
            conf = json.loads(Path(DOCKER_ROOT, cid, "config.v2.json").read_text())
            names[cid] = (str(conf.get("Name", "")).lstrip("/"), "")
        except (OSError, ValueError, AttributeError):
            continue
    try:
        logs = os.listdir(KUBELET_LOGS)
    except OSError:
        logs = []
    for log in logs:
        if m := _KUBELET_LOG.match(log):
            pod, namespace, container, cid = m.groups()
            names[cid] = (container, f"{namespace}/{pod}")
    return names
