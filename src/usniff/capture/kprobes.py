"""The kprobe backend's probes, made as tracefs kprobe events.

A kretprobe catches a function's return through one of a fixed number of
instances, taken at entry and given back at return (``maxactive``).  Tasks
*inside* the function hold one each, and a sender blocked on a full socket
stays inside ``unix_stream_sendmsg``.  When all are taken, the return is not
seen: the kernel adds one to the probe's miss count and the BPF program does
not run, so the send would be lost uncounted.  The default is the number of
possible CPUs on a kernel built without CONFIG_PREEMPTION (Debian 11's 5.10:
2 in a 2-CPU guest, where 8 threads sending on one socket lost a third of
their bytes), at least 10 with it; the perf_event_open interface libbpf uses
cannot change it.  A tracefs kprobe event can (``r<N>:``), up to
KRETPROBE_MAXACTIVE_MAX, and its misses, entry or return, are in
``kprobe_profile``: the collector reads them at stop and reports them as
lost sends (docs/capture.md, "kprobe backend").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
from pathlib import Path

MAXACTIVE = 4096  # KRETPROBE_MAXACTIVE_MAX: the most kprobe_events accepts
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
GROUP = "usniff"
_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 8
# struct perf_event_attr, first version (PERF_ATTR_SIZE_VER0): type, size,
# config, sample_period, sample_type, read_format, flag bits, wakeup_events, bp_type, config1
_ATTR = struct.Struct("<IIQQQQQIIQ")


def tracefs() -> Path:
    """The tracefs mount whose kprobe_events this process may write; else OSError saying why."""
    mounted = [root for root in TRACEFS if (root / "trace").exists()]
    if not mounted:
        raise OSError(
            errno.ENOENT,
            "no tracefs, where the kprobe backend makes its probes (to size its "
            "kretprobes): mount it with `mount -t tracefs nodev /sys/kernel/tracing`",
        )
    for root in mounted:
        if (root / "kprobe_events").exists():
            if not os.access(root / "kprobe_events", os.W_OK):
                raise OSError(
                    errno.EACCES,
                    f"{root / 'kprobe_events'} is not writable: the kprobe backend makes its "
                    "probes there (to size its kretprobes), which takes root (its owner); "
                    "fentry needs only CAP_BPF and CAP_PERFMON",
                )
            return root
    raise OSError(errno.ENOENT, f"no kprobe events in {mounted[0]} (CONFIG_KPROBE_EVENTS)")


class KprobeEvents:
    """This process's kprobe events: ``open()`` makes one, ``close()`` removes them all."""

    def __init__(self, maxactive: int = MAXACTIVE) -> None:
        self._root = tracefs()
        self.maxactive = maxactive
        self.names: list[str] = []
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove the events of usniff processes that are gone (killed before close())."""
        for line in (self._root / "kprobe_events").read_text().splitlines():
            event = line.split()[0].split(":", 1)[-1] if line else ""
            group, _, name = event.partition("/")
            pid = name.split("_")[1] if name.count("_") > 2 else ""
            if group == GROUP and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                self._write(f"-:{event}")

    def _write(self, line: str) -> None:
        # os.open, not open(..., "a"): Python seeks to the end, which tracefs refuses (EINVAL)
        fd = os.open(self._root / "kprobe_events", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)

    def open(self, func: str, retprobe: bool) -> int:
        """A probe on ``func``'s entry or return; the fd of its perf event (for a BPF program)."""
        name = f"{GROUP}_{os.getpid()}_{'r' if retprobe else 'p'}_{func}"  # see _remove_stale
        kind = f"r{self.maxactive}" if retprobe else "p"
        self._write(f"{kind}:{GROUP}/{name} {func}")
        self.names.append(name)
        event_id = int((self._root / "events" / GROUP / name / "id").read_text())
        return _perf_event_open(event_id)

    def misses(self) -> int:
        """Hits the kernel could not hand to these probes' programs, summed."""
        total = 0
        for line in (self._root / "kprobe_profile").read_text().splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] in self.names:
                total += int(fields[2])
        return total

    def close(self) -> None:
        """Remove the events (their perf events must be closed first)."""
        for name in self.names:
            with contextlib.suppress(OSError):  # removed already, or still open
                self._write(f"-:{GROUP}/{name}")
        self.names.clear()


def _perf_event_open(event_id: int) -> int:
    nr = _PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"perf_event_open: unknown on {platform.machine()}")
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_PERF_TYPE_TRACEPOINT, _ATTR.size, event_id, 1, 0, 0, 0, 1, 0, 0)
    )
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(
        ctypes.c_long(nr), attr, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )  # fmt: skip
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"perf_event_open of kprobe event {event_id}: {os.strerror(e)}")
    return int(fd)
