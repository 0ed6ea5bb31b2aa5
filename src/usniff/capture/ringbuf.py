"""Drain a BPF ring buffer straight from its memory mapping, in batches.

libbpf's ``ring_buffer__poll`` calls back into Python once per record through
ctypes, which limits the collector to ~100k records/s.  Reading the mmap-ed
ring ourselves costs one header load per record and one consumer-position
store per MiB.  This class maps the ring and waits on it; the walk over the
records is ``_records.drain`` (C), which hands each one to the C record
assembler without a Python call.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write
it), page 1 the producer position, then the data pages mapped twice in a row
so a record that wraps is still contiguous.  Each record starts with an 8-byte
header: ``u32 len`` (bit 31 busy, bit 30 discarded) and ``u32 page offset``;
records are 8-byte aligned.
"""

from __future__ import annotations

import mmap
import select

from ._records import Assembler
from ._records import drain as _drain


class RingBuffer:
    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # Positions are read here through native memoryview casts: one aligned
        # 8-byte load each (drain() stores the consumer position, in C, as one
        # aligned 8-byte store).  struct's "<Q" packs byte by byte, and the
        # kernel, reading a half-written consumer position, saw the ring full
        # (measured: single-record losses with "consumer position 0" at the
        # failed reservation).
        self._cons_pos = memoryview(self._cons).cast("Q")
        self._prod_pos = memoryview(self._prod)[:8].cast("Q")
        self._epoll = select.epoll()
        # edge-triggered: woken by the kernel's wakeups (the BPF programs ask
        # for one only once the ring fills up), not by every record present
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        self._seen = self._prod_pos[0]  # the producer position at the last skip()

    def wait(self, timeout: float) -> None:
        """Block until the kernel sends a wakeup, or ``timeout`` seconds."""
        self._epoll.poll(timeout)

    def pending(self) -> int:
        prod: int = self._prod_pos[0]
        cons: int = self._cons_pos[0]
        return prod - cons

    def drain(self, assembler: Assembler, limit: int = 1 << 62) -> int:
        """Hand each committed record to ``assembler`` (its C code).

        Returns the number of bytes of ring consumed; stops at a record still
        being written, or after ``limit`` bytes so a caller can interleave output.
        The consumer position is published every RELEASE (1 MiB) bytes, so the
        kernel can reuse the space while the rest of a large batch is handled,
        and at the end, also when a Python callback raises.

        The walk is ``_records.drain`` (C), calling the assembler's C code directly:
        in Python the walk cost as much per small record as the handling
        (figures: docs/performance.md, "Collector").
        """
        return _drain(assembler, self._cons, self._prod, limit)

    def skip(self) -> int:
        """Release, unread, the records the kernel had written by the last call.

        For measuring the kernel side alone (``bench windows``).  Those records
        are committed: a program holds a reservation for microseconds, the
        calls are a poll apart.  Returns the bytes released.
        """
        seen, self._seen = self._seen, self._prod_pos[0]
        done: int = self._cons_pos[0]
        if seen <= done:
            return 0
        self._cons_pos[0] = seen
        return seen - done

    def close(self) -> None:
        self._epoll.close()
        for view in (self._prod_pos, self._cons_pos):
            view.release()
        self._prod.close()
        self._cons.close()
