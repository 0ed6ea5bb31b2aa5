"""Load the BPF object, pick a backend, program the filters, yield Records.

Knows nothing about protocols or files: it drains the ring into a
:class:`~usniff.capture.records.RecordAssembler`, which turns ring-buffer
records into :class:`usniff.events.Record` batches (or, for a packed
assembler, also :class:`usniff._events.Packed` records).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import overload

from ..containers import subtree_ids
from ..events import (
    SOCK_TYPES,
    CaptureStats,
    Record,
)
from . import kprobes, libbpf, sockets
from ._records import CONFIG_SIZE, NAME_KEY_SIZE
from .records import CLOSE_CHECK, SOCK_STATE, R, RecordAssembler
from .ringbuf import RingBuffer

BACKENDS = ("fentry", "kprobe", "tracepoint")
_SECTION_BACKEND = {
    "fentry": "fentry",
    "fexit": "fentry",
    "kprobe": "kprobe",
    "kretprobe": "kprobe",
    "tracepoint": "tracepoint",
    "tp_btf": "tracepoint",
}
TYPE_BITS = {name: n for n, name in SOCK_TYPES.items()}  # --type -> the socket type number

# The fentry and kprobe programs come in two variants (ebpf/usniff.bpf.c, file head):
# with bpf_loop, task storage and atomic fetch-add, or, named *_bounded, without.
BOUNDED = "_bounded"
COPY_STEPS = 16 * 512  # the bounded variant's copy steps per send (COPY_STEPS in the BPF code)
# what the loop variant needs, checked by libbpf's probes (test loads); ids from uapi/linux/bpf.h
_PROG_KPROBE = 2
_LOOP_HELPERS = {"bpf_loop": 181, "bpf_get_current_task_btf": 158, "bpf_task_storage_get": 156}
_MAP_TASK_STORAGE, _MAP_RINGBUF = 29, 27
# the maps only the other variant uses are not created (no task storage maps before 5.11)
_NOT_CREATED = {False: ("stash_tid", "offset_locks", "cpu_ids"), True: ("stash", "task_sends")}

# struct usniff_config and struct usniff_name_key (ebpf/usniff.h, which _records.c includes)
_CONFIG = struct.Struct("<IIBBBBB3xII")
ADDR_MAX = 108
if (_CONFIG.size, 4 + ADDR_MAX) != (CONFIG_SIZE, NAME_KEY_SIZE):
    raise ImportError("capture._CONFIG/ADDR_MAX no longer match ebpf/usniff.h")
DEFAULT_BUFFER = 64 << 20
POLL = 0.1  # seconds between drains of the ring (the kernel wakes us early when it fills up)


class CaptureError(Exception):
    """A problem the user can fix; the message says how."""


@dataclass
class CaptureOptions:
    paths: list[str] = field(default_factory=list)  # filesystem paths and "@abstract" names
    pids: list[int] = field(default_factory=list)
    comms: list[str] = field(default_factory=list)
    # cgroup directories (containers.Containers.select): traffic of processes in them or below
    cgroups: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    snaplen: int = 0
    buffer_size: int = DEFAULT_BUFFER
    backend: str = "auto"
    log: Callable[[int, str], None] | None = None  # libbpf's messages (--verbose)
    copy_calls: int = 0  # bounded variant: copy calls of 16 steps per send (0: all); for tests
    kretprobe_maxactive: int = kprobes.MAXACTIVE  # kprobe backend; tests lower it to see misses


def bpf_object_path() -> str:
    env = os.environ.get("USNIFF_BPF_OBJECT")
    if env:
        return env
    return str(resources.files("usniff.capture") / "bpf" / "usniff.bpf.o")


def kernel_dev(st_dev: int) -> int:
    """User-space dev_t -> the kernel's internal encoding (major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def name_key(name: bytes) -> bytes:
    return struct.pack("<I", len(name)) + name.ljust(ADDR_MAX, b"\0")


def _ring_size(n: int) -> int:
    """Round up to a power of two, at least one page (the kernel requires both)."""
    size = 4096
    while size < n:
        size <<= 1
    return size


# capability numbers (linux/capability.h) and the init namespaces' fixed inode numbers
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
_CAP_NAMES = {CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_PERFMON: "CAP_PERFMON", CAP_BPF: "CAP_BPF"}
_INIT_NS = {"pid": "pid:[4026531836]", "user": "user:[4026531837]"}
_GRANT = (
    "run it as root (sudo), or grant the capabilities: "
    "`setpriv --inh-caps=+bpf,+perfmon --ambient-caps=+bpf,+perfmon usniff ...`, "
    "systemd AmbientCapabilities=CAP_BPF CAP_PERFMON (docs/install.md)"
)


def _status(field: str) -> str:
    """A field of /proc/self/status ("" when absent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    return ""


def effective_capabilities() -> int:
    """This process' effective capability set (CapEff in /proc/self/status), as a bit mask."""
    caps = _status("CapEff")
    if not caps:
        raise CaptureError("/proc/self/status has no CapEff line: is /proc mounted?")
    return int(caps, 16)


def missing_capabilities(caps: int | None = None) -> list[str]:
    """The capabilities loading and attaching usniff's programs needs that ``caps`` lacks.

    CAP_BPF + CAP_PERFMON from kernel 5.8 on (it has CAP_BPF when cap_last_cap
    reaches it); CAP_SYS_ADMIN, which implies both, before that and instead.
    """
    caps = effective_capabilities() if caps is None else caps
    if caps >> CAP_SYS_ADMIN & 1:
        return []
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    needed = (CAP_BPF, CAP_PERFMON) if last >= CAP_BPF else (CAP_SYS_ADMIN,)
    return [_CAP_NAMES[c] for c in needed if not caps >> c & 1]


def in_init_namespace(kind: str) -> bool:
    """Whether this process is in the host's (the kernel's initial) ``kind`` namespace."""
    try:
        return os.readlink(f"/proc/self/ns/{kind}") == _INIT_NS[kind]
    except OSError:
        return True  # no namespace support: there is only the initial one


def check_pids(pids: list[int]) -> None:
    """Refuse --pid in a PID namespace: BPF sees the host's PIDs, which are not knowable here."""
    if pids and not in_init_namespace("pid"):
        raise CaptureError(
            "--pid: usniff runs in a PID namespace (a container without the host's PIDs), "
            "but the kernel filters and reports the host's PIDs, which cannot be learnt "
            "from in here: run usniff in the host's PID namespace (podman/docker --pid=host, "
            "Kubernetes hostPID: true), or filter with --path or --comm instead"
        )


def check_environment(pids: list[int] | None = None) -> None:
    missing = missing_capabilities()
    if missing:
        raise CaptureError(
            f"usniff lacks {' and '.join(missing)} to load its eBPF programs "
            f"(it needs CAP_BPF + CAP_PERFMON, or root): {_GRANT}"
        )
    if not in_init_namespace("user"):
        raise CaptureError(
            "usniff runs in a user namespace (rootless container), whose capabilities "
            "do not extend to loading eBPF programs: run it in the host's user namespace "
            "(a rootful container, or directly on the host)"
        )
    check_pids(pids or [])
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise CaptureError(
            "this kernel has no BTF (/sys/kernel/btf/vmlinux missing): usniff needs a kernel "
            "built with CONFIG_DEBUG_INFO_BTF=y (every current Debian/Ubuntu/RHEL kernel is)"
        )
    try:
        libbpf.lib()
    except OSError as e:
        raise CaptureError(str(e)) from None
    obj = bpf_object_path()
    if not Path(obj).exists():
        raise CaptureError(f"BPF object {obj} is missing: build it with `make bpf`")


@dataclass
class _Filters:
    paths: list[tuple[int, int]] = field(default_factory=list)
    names: list[bytes] = field(default_factory=list)


def resolve_filters(specs: list[str]) -> _Filters:
    f = _Filters()
    for spec in specs:
        if spec.startswith("@"):
            f.names.append(b"\0" + spec[1:].encode())
            continue
        try:
            st = os.stat(spec)
        except FileNotFoundError:
            raise CaptureError(f"--path {spec}: no such file") from None
        except OSError as e:
            raise CaptureError(f"--path {spec}: {e.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise CaptureError(f"--path {spec}: not a Unix socket (it is a {_kind(st.st_mode)})")
        f.paths.append((kernel_dev(st.st_dev), st.st_ino))
        # datagrams sent to an address by name (sendto) are matched by the name
        for name in {spec, os.path.abspath(spec), os.path.realpath(spec)}:
            f.names.append(name.encode())
    return f


def filter_warnings(paths: list[str], pids: list[int]) -> list[str]:
    """Filters that match nothing alive now, each said in a sentence: a socket
    file nobody is bound to (left behind by a server that died), an @name no
    socket has, a pid no process has.  The capture still runs (a server may
    bind the name later), but an operator watching a silent capture must know
    why.  Paths that are no socket file are resolve_filters' errors, not here."""
    alive = sockets.bound()
    files, names = alive or (set(), set())
    out = []
    for spec in paths if alive else []:
        if spec.startswith("@"):
            if b"\0" + os.fsencode(spec[1:]) not in names:
                out.append(f"--path {spec}: no socket has this abstract name")
            continue
        try:
            st = os.stat(spec)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and (kernel_dev(st.st_dev), st.st_ino) not in files:
            out.append(f"--path {spec}: no socket is bound to this file (stale socket file?)")
    for pid in pids:
        if not os.path.exists(f"/proc/{pid}"):
            out.append(f"--pid {pid}: no such process")
    return [f"{w}; capturing anyway" for w in out]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return "special file"


def _backend_of(section: str) -> str:
    return _SECTION_BACKEND.get(section.split("/", 1)[0], "")


class Capture:
    """One loaded backend: ``poll()`` returns batches of Records, ``finish()`` the rest.

    The ring's records are assembled by :attr:`records`, or by the
    :class:`RecordAssembler` given to ``poll`` and ``finish`` (the capture loop
    gives a packed one when every output frames pcapng).  ``poll()`` and
    ``finish()`` hand the assembler's C core to ``RingBuffer.drain``, whose
    walk (C, ``_records.drain``) runs it directly.
    """

    def __init__(self, opts: CaptureOptions) -> None:
        self.opts = opts
        self.reasons: dict[str, str] = {}
        self.bounded = False  # the loaded programs are the bounded variant
        self.bounded_because: list[str] = []  # what the kernel lacks for the loop variant
        self._kprobes: kprobes.KprobeEvents | None = None  # the kprobe backend's probes
        self.stats = CaptureStats()
        self._filters = resolve_filters(opts.paths)
        self._cgroup_ids: set[int] = set()  # in the loaded object's cgroup_filter
        for t in opts.types:
            if t not in TYPE_BITS:
                raise CaptureError(f"--type {t}: choose stream, dgram or seqpacket")
        check_environment(opts.pids)
        libbpf.set_log(opts.log)
        self._obj = self._load_backend()
        self._ring = RingBuffer(self._obj.map("events").fd, self._ring_bytes)
        self.records = RecordAssembler(self.stats)
        self._next_close_check = time.monotonic() + CLOSE_CHECK

    def _add_cgroups(self, obj: libbpf.Object) -> None:
        """Put the ids of the --cgroup/--container cgroups and their descendants
        in the kernel's filter: at load, then every CLOSE_CHECK seconds for
        cgroups made since (a container's processes may start in new ones)."""
        if not self.opts.cgroups:
            return
        new = subtree_ids(self.opts.cgroups) - self._cgroup_ids
        for cg in new:
            obj.map("cgroup_filter").update(struct.pack("<Q", cg), b"\1")
        self._cgroup_ids |= new

    # ------------------------------------------------------------------ load
    def _load_backend(self) -> libbpf.Object:
        wanted = BACKENDS if self.opts.backend == "auto" else (self.opts.backend,)
        if self.opts.backend not in ("auto", *BACKENDS):
            raise CaptureError(f"--backend {self.opts.backend}: choose auto, {', '.join(BACKENDS)}")
        self._ring_bytes = _ring_size(self.opts.buffer_size)
        self.bounded_because = loop_variant_missing()
        for name in wanted:
            try:
                obj = self._try(name)
            except libbpf.LibbpfError as e:
                self.reasons[name] = _explain(name, e)
                continue
            self.stats.backend = name
            return obj
        detail = "; ".join(f"{b}: {r}" for b, r in self.reasons.items())
        raise CaptureError(f"no capture backend could be loaded ({detail})")

    def _try(self, backend: str) -> libbpf.Object:
        # the tracepoint backend has no bounded variant: it needs >= 6.3 anyway
        bounded = bool(self.bounded_because) and backend != "tracepoint"
        obj = libbpf.Object(bpf_object_path())
        events = None
        try:
            for prog in obj.programs():
                ours = _backend_of(prog.section) == backend
                prog.set_autoload(ours and prog.name.endswith(BOUNDED) == bounded)
            for name in _NOT_CREATED[bounded]:
                obj.map(name).set_autocreate(False)
            obj.map("events").set_max_entries(self._ring_bytes)
            obj.map("scratch_map").set_max_entries(libbpf.num_possible_cpus())
            obj.load()
            self._program(obj)
            if backend == "kprobe":
                events = kprobes.KprobeEvents(self.opts.kretprobe_maxactive)
                obj.attach(lambda prog: _kprobe_event(events, prog))
            else:
                obj.attach()
        except BaseException as e:
            obj.close()
            if events:
                events.close()
            if isinstance(e, OSError):  # from kprobes (a LibbpfError is no OSError)
                raise libbpf.LibbpfError(f"kprobe event: {e.strerror}", e.errno or 22) from e
            raise
        self.bounded = bounded
        self._kprobes = events
        return obj

    def copy_note(self) -> str:
        """How the loaded programs copy, when it is not the usual way (for --verbose)."""
        if not self.bounded:
            return ""
        return (
            f"this kernel lacks {', '.join(self.bounded_because)}: the {self.stats.backend} "
            f"programs copy with bounded loops, {COPY_STEPS} steps per send (a step copies "
            "32 KiB or opens an iovec); the rest of a larger send is reported as lost"
        )

    def _program(self, obj: libbpf.Object) -> None:
        o, f = self.opts, self._filters
        for dev, ino in f.paths:
            obj.map("path_filter").update(struct.pack("<QQ", dev, ino), b"\1")
        for name in f.names:
            obj.map("name_filter").update(name_key(name), b"\1")
        for pid in o.pids:
            obj.map("pid_filter").update(struct.pack("<I", pid), b"\1")
        for comm in o.comms:
            obj.map("comm_filter").update(comm.encode()[:15].ljust(16, b"\0"), b"\1")
        self._cgroup_ids = set()  # obj's map is new (an earlier backend's may have failed)
        self._add_cgroups(obj)
        mask = 0
        for t in o.types:
            mask |= 1 << TYPE_BITS[t]
        cfg = _CONFIG.pack(
            os.getpid(),
            o.snaplen,
            int(bool(f.paths or f.names)),
            int(bool(o.pids)),
            int(bool(o.comms)),
            mask,
            int(bool(o.cgroups)),
            max(4096, self._ring_bytes // (8 * libbpf.num_possible_cpus())),
            o.copy_calls,
        )
        obj.map("cfg_map").update(b"\0\0\0\0", cfg)

    # --------------------------------------------------------------- records
    @overload
    def poll(self, timeout: float) -> list[Record]: ...
    @overload
    def poll(self, timeout: float, records: RecordAssembler[R]) -> list[R]: ...
    def poll(
        self, timeout: float, records: RecordAssembler[R] | None = None
    ) -> list[R] | list[Record]:
        """Wait up to ``timeout`` s for data; return what the ring holds (maybe [])."""
        assembler = self.records if records is None else records
        self._wait(timeout)
        self._ring.drain(assembler.core, limit=self._ring_bytes // 2)
        if time.monotonic() >= self._next_close_check:
            self._add_cgroups(self._obj)
            try:
                alive = sockets.inodes()
            except OSError:
                alive = None
            if alive is not None:
                assembler.close_gone(alive)
            self._next_close_check = time.monotonic() + CLOSE_CHECK
        return assembler.ripe()

    def discard(self, timeout: float) -> int:
        """Wait as ``poll()`` does, then release unread what the kernel had written
        by the last call (``RingBuffer.skip``); returns the bytes released.  What
        the programs cost on their own: ``bench windows``' "kernel only"."""
        self._wait(timeout)
        return self._ring.skip()

    def _wait(self, timeout: float) -> None:
        """Up to ``timeout`` (at most POLL) s for the kernel's wakeup, unless an
        eighth of the ring is already waiting."""
        if self._ring.pending() < self._ring_bytes // 8:
            self._ring.wait(min(timeout, POLL))

    @overload
    def finish(self) -> list[Record]: ...
    @overload
    def finish(self, records: RecordAssembler[R]) -> list[R]: ...
    def finish(self, records: RecordAssembler[R] | None = None) -> list[R] | list[Record]:
        """Drain what is left and report losses still pending in the kernel."""
        assembler = self.records if records is None else records
        self._ring.drain(assembler.core)
        sockets_map = self._obj.map("sockets")
        now = time.time()
        for key in list(sockets_map.keys(8)):
            try:
                state = SOCK_STATE.unpack(sockets_map.lookup(key, SOCK_STATE.size))
            except libbpf.LibbpfError:
                continue
            sock_id, ino, _, lost_off, lost_len, _, peer_id, peer_ino = state[:8]
            if lost_len:
                assembler.pending_loss(now, sock_id, ino, peer_id, peer_ino, lost_off, lost_len)
        # A loss is reported with the socket's next record, or from its map entry
        # here; a socket that closed first had its entry reused or evicted: the
        # kernel's total still counts those bytes.
        unattributed = self.kernel_stats()["lost_bytes"] - assembler.ring_lost
        if self._kprobes:
            self.stats.missed_sends = self._kprobes.misses()
        if unattributed > 0:
            st = self.stats
            st.unattributed_lost, st.lost_bytes = unattributed, st.lost_bytes + unattributed
        return assembler.release(float("inf"))

    def kernel_stats(self) -> dict[str, int]:
        """Counters kept by the BPF programs (summed over CPUs)."""
        ncpu = libbpf.num_possible_cpus()
        out = {}
        stats_map = self._obj.map("stats")
        for i, name in enumerate(("records", "bytes", "lost_records", "lost_bytes")):
            raw = stats_map.lookup(struct.pack("<I", i), 8 * ncpu)
            out[name] = sum(struct.unpack(f"<{ncpu}Q", raw))
        return out

    def close(self) -> None:
        self._ring.close()
        self._obj.close()
        if self._kprobes:
            self._kprobes.close()


def loop_variant_missing() -> list[str]:
    """What the loop variant of the programs needs that this kernel lacks (libbpf's
    probes: test loads).  A probe that cannot run (None) does not count as missing:
    the load then says what is wrong."""
    missing = [
        name
        for name, helper in _LOOP_HELPERS.items()
        if libbpf.has_helper(_PROG_KPROBE, helper) is False
    ]
    if libbpf.has_map_type(_MAP_TASK_STORAGE) is False:
        missing.append("task storage maps")
    return missing


def _kprobe_event(events: kprobes.KprobeEvents, prog: libbpf.Program) -> int:
    """The perf event fd of the tracefs kprobe event ``prog`` (kprobe/FN, kretprobe/FN) runs on."""
    kind, func = prog.section.split("/", 1)
    return events.open(func, retprobe=kind == "kretprobe")


def _has_btf_type(name: bytes) -> bool:
    """Whether the kernel's BTF names ``name`` (its string section holds every type name)."""
    try:
        return name in Path("/sys/kernel/btf/vmlinux").read_bytes()
    except OSError:
        return False


def _explain(backend: str, e: libbpf.LibbpfError) -> str:
    if e.errno == errno.EPERM and _status("Seccomp") == "2":  # filter mode
        return (
            f"the kernel refused under this process' seccomp filter ({e}): container "
            "runtimes' default profiles may allow bpf() and perf_event_open() only with "
            "CAP_SYS_ADMIN; run the container with --security-opt seccomp=unconfined, or a "
            "profile that allows both (docs/install.md)"
        )
    if libbpf.has_map_type(_MAP_RINGBUF) is False:
        return f"this kernel has no BPF ring buffers (BPF_MAP_TYPE_RINGBUF, Linux 5.8) ({e})"
    if backend == "fentry" and e.errno in (errno.EPERM, errno.EOPNOTSUPP, 524):
        return f"BPF trampolines unavailable on this kernel ({e})"
    if backend == "kprobe" and e.errno in (errno.EPERM, errno.ENOENT, errno.EOPNOTSUPP, 524):
        return f"kprobes unavailable on this kernel ({e})"
    if backend == "tracepoint":
        for tp in ("sock_send_length", "skb_copy_datagram_iovec"):
            if not _has_btf_type(f"btf_trace_{tp}".encode()):
                return f"no {tp} tracepoint (needs kernel >= 6.3) ({e})"
        if libbpf.has_helper(_PROG_KPROBE, _LOOP_HELPERS["bpf_loop"]) is False:
            return (
                f"this kernel has no bpf_loop helper, which the tracepoint backend's copy "
                f"needs (fentry and kprobe do without) ({e})"
            )
    return str(e)
