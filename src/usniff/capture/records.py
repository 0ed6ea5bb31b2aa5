"""Record assembly: ring-buffer records (layout in ``ebpf/usniff.h``) become
:class:`usniff.events.Record` batches in time order.

:class:`RecordAssembler` holds everything this needs and nothing of the kernel
side: it is built from explicit arguments, without loading BPF (the capture
owns one; tests and bench/collector.py feed it ring records directly).
"""

from __future__ import annotations

import struct
import time
from bisect import bisect_right
from dataclasses import replace
from operator import attrgetter
from typing import Any, Generic, Literal, TypeVar, cast, overload

from .._events import Packed
from ..events import FLAG_ADDR, FLAG_MSG_END, FLAG_MSG_START, FLAG_UNCOPYABLE, CaptureStats, Record
from . import sockets
from ._records import EVENT_SIZE, SOCK_STATE_SIZE, Assembler, sort_by_ts

# struct usniff_event and struct usniff_sock_state (ebpf/usniff.h, which _records.c includes)
EVENT = struct.Struct("<QQQQQQQQIIIIIIHHHHB7x16s16s")
SOCK_STATE = struct.Struct("<QQQQQQQQQIHBB16s")
if (EVENT.size, SOCK_STATE.size) != (EVENT_SIZE, SOCK_STATE_SIZE):
    raise ImportError("capture.records.EVENT/SOCK_STATE no longer match ebpf/usniff.h")
EV_DATA, EV_LOST, EV_SOCK, EV_DEST = 1, 2, 3, 4
CLOSE_CHECK = 1.0  # seconds between checks for sockets that went away
REORDER = 0.1  # seconds records wait so that records from other CPUs can precede them
RECEIVERS_TTL = 10.0  # seconds a datagram address's receiving socket is taken as known

Receiver = tuple[int, int, str]  # a datagram receiver's inode, pid and comm
# What a batch holds: Records, or also Packed records when the assembler was made packed.
R = TypeVar("R", Record, Record | Packed)
_ts = attrgetter("ts")


class RecordAssembler(Generic[R]):
    """Ring records in, Records out (:meth:`release`), counted in ``stats``.

    Each ring record goes to ``core`` (:class:`usniff.capture._records.Assembler`,
    C; ``RingBuffer.drain`` walks the ring into it), which appends a Record to
    its batch and calls back into Python only for the rarer cases below, the
    methods it is given (``_announce``, ``_lookup``, ``_destination``,
    ``_count_loss``); it shares the dicts it reads and fills with them.  It is
    in C because the per-record Python cost was the collector's limit
    (docs/performance.md, "Collector").

    ``packed=True`` (every output takes them): common data records come as
    :class:`usniff._events.Packed` (``.record()`` gives the Record),
    which is what the type parameter says.  ``sums=True`` (an output frames
    them into pcapng): their payloads' checksum sums are taken as they are
    copied out of the ring, while in the CPU cache.
    """

    @overload
    def __init__(
        self: RecordAssembler[Record], stats: CaptureStats, *, packed: Literal[False] = False
    ) -> None: ...
    @overload
    def __init__(
        self: RecordAssembler[Record | Packed],
        stats: CaptureStats,
        *,
        packed: bool,
        sums: bool = False,
    ) -> None: ...
    def __init__(self, stats: CaptureStats, *, packed: bool = False, sums: bool = False) -> None:
        self.stats = stats
        # all keyed by sock_id, shared with the core
        self._sock_info: dict[int, tuple[str, bool]] = {}
        self._dest: dict[int, str] = {}
        self._in_dest: dict[int, str] = {}
        self._last: dict[int, Record | Packed] = {}  # newest record per socket, for closes
        self.core = Assembler(
            stats, self._sock_info, self._last, self._dest, self._in_dest,
            lookup=self._lookup, destination=self._destination,
            count_loss=self._count_loss, announce=self._announce,
            clock=time.time() - time.monotonic(), packed=packed, sums=sums,
        )  # fmt: skip
        self._pending: list[R] = []  # ordered by ts, waiting for REORDER
        self._ring_lost = 0  # bytes of full-ring losses reported by loss records
        self._receivers: dict[str, Receiver] = {}  # bound datagram address -> its socket
        self._receivers_at = -RECEIVERS_TTL

    @property
    def packed(self) -> bool:
        """Whether common data records come as Packed."""
        return self.core.packed

    @property
    def ring_lost(self) -> int:
        """Bytes of full-ring losses reported by loss records so far."""
        return self._ring_lost

    def _announce(self, rec: memoryview) -> None:
        """An EV_SOCK or EV_DEST record (from the core): a socket's address,
        or the destination of the next datagram."""
        fields = EVENT.unpack_from(rec, 0)
        sock_id, kind, addr_len, own = fields[2], fields[14], fields[17], fields[18]
        addr = _addr(rec[EVENT.size : EVENT.size + addr_len])
        if kind == EV_SOCK:
            self._sock_info[sock_id] = (addr, bool(own))
        else:
            self._dest[sock_id] = addr

    def _destination(
        self, sock_id: int, path: str, is_own: bool, flags: int
    ) -> tuple[str, bool, int, Receiver | None]:
        """A datagram sent to an explicit address is labelled with that address
        (announced by an EV_DEST record just before its first data record), and
        with the socket bound to it, which receives it (``_receiver``)."""
        if flags & FLAG_MSG_START:
            dest = self._dest.pop(sock_id, None)
            if dest is not None:
                self._in_dest[sock_id] = dest
            else:
                self._in_dest.pop(sock_id, None)
        dest = self._in_dest.get(sock_id)
        if dest is None:
            return path, is_own, flags, None
        if flags & FLAG_MSG_END:
            del self._in_dest[sock_id]
        return dest, False, flags | FLAG_ADDR, self._receiver(dest)

    def _receiver(self, address: str) -> Receiver | None:
        """(inode, pid, comm) of the socket bound to ``address``, from sock_diag and
        /proc, looked up again at most once per RECEIVERS_TTL (or CLOSE_CHECK
        seconds when the address was not bound at the last look)."""
        now = time.monotonic()
        age = now - self._receivers_at
        if age >= RECEIVERS_TTL or (address not in self._receivers and age >= CLOSE_CHECK):
            try:
                self._receivers = sockets.receivers()
            except OSError:
                self._receivers = {}
            self._receivers_at = now
        return self._receivers.get(address)

    def _count_loss(self, rec: Record, n: int) -> None:
        st = self.stats
        st.lost_records += 1
        st.lost_bytes += n
        st.per_socket_lost[rec.inode] = st.per_socket_lost.get(rec.inode, 0) + n
        if not rec.flags & FLAG_UNCOPYABLE:
            self._ring_lost += n

    def _lookup(self, sock_id: int, ino: int, peer: int) -> tuple[str, bool]:
        """Fallback when the socket's announcement was lost: ask sock_diag."""
        addresses = sockets.addresses()
        own = addresses.get(ino, "")
        info = (own, True) if own else (addresses.get(peer, "") if peer else "", False)
        self._sock_info[sock_id] = info
        return info

    def close_gone(self, alive: set[int]) -> None:
        """Close records for the sockets whose inode is not in ``alive`` (the
        kernel's socket table: checked from user space so that every backend,
        and process exit without close(), are covered alike)."""
        now = time.time()
        for sock_id in [i for i, newest in self._last.items() if newest.inode not in alive]:
            newest = self._last.pop(sock_id)
            last = newest.record() if isinstance(newest, Packed) else newest
            self._sock_info.pop(sock_id, None)
            self.core.batch.append(
                replace(
                    last,
                    ts=now,
                    kind="close",
                    offset=last.offset + last.length,
                    length=0,
                    data=b"",
                    lost=0,
                    flags=0,
                )  # fmt: skip
            )

    def pending_loss(
        self, now: float, sock_id: int, ino: int, peer_id: int, peer_ino: int, off: int, length: int
    ) -> None:
        """A loss the kernel still holds for a socket (its map entry, at the end)."""
        path, own = self._sock_info.get(sock_id, ("", False))
        rec = Record(
            now, 0, 0, 0, "", ino, peer_ino, "stream", path, own, off, length,
            lost=length, kind="lost", sock_id=sock_id, peer_id=peer_id,
        )  # fmt: skip
        self.core.batch.append(rec)
        self._count_loss(rec, length)

    def release(self, cutoff: float) -> list[R]:
        """Records stamped before ``cutoff`` (wall clock), in time order.

        Records are stamped when the send began (in the kernel), but reach the
        ring when it ended, from any CPU: a reply can be drained before its
        request.  Holding records for REORDER seconds and sorting restores the
        order.
        """
        # the core makes Packed records only when packed, as R says
        taken: list[Any] = self.core.take()
        pending, batch = self._pending, cast(list[R], taken)
        # ordered in C, in place: list.sort(key=_ts) made a float per record, and
        # re-slicing the window at every poll copied it
        if batch:  # only the part of ``pending`` the new records fall into is re-sorted
            sort_by_ts(batch)
            start = bisect_right(pending, batch[0].ts, key=_ts)
            pending += batch
            sort_by_ts(pending, start)
        cut = bisect_right(pending, cutoff, key=_ts)
        out = pending[:cut]
        del pending[:cut]
        return out

    def ripe(self) -> list[R]:
        """The records that waited REORDER seconds (:meth:`release`)."""
        return self.release(self.core.clock + time.monotonic() - REORDER)


def _addr(raw: memoryview | bytes) -> str:
    b = bytes(raw)
    if b[:1] == b"\0":
        return "@" + b[1:].decode(errors="backslashreplace")
    return b.split(b"\0", 1)[0].decode(errors="backslashreplace")
