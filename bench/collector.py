"""Throughput of the collector alone (no kernel): ring records -> pcapng.

    .venv/bin/python bench/collector.py [--records N] [--rounds R]

Packs synthetic ring records (struct usniff_event, as the BPF programs write
them: Redis-like 31-byte sends over 50 connections, then 32 KiB sends) into a
fake ring buffer (a memfd laid out like the kernel's, mapped by a RingBuffer)
and runs them through what a capture does with them: ``RingBuffer.drain``
(the walk and the assembler's C core: record -> Record or Packed),
``RecordAssembler.release`` (ordering) and ``PcapngOutput`` (into a file under
/dev/shm).  Only that is timed, not the filling of the ring.  Prints records/s
and MB/s of payload per round.  Not a test: figures depend on the machine;
see docs/performance.md.
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Callable
from unittest import mock

from usniff._events import Packed
from usniff.capture import records
from usniff.capture.ringbuf import RingBuffer
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, CaptureStats, Record
from usniff.outputs.pcapng import PcapngOutput

CONNECTIONS = 50
BATCH = 4096  # records per drain, about what one poll() hands over under load
RING = 1 << 24  # bytes of the fake ring's data area (fewer records per drain if they are large)
PATH = "/run/redis/redis.sock"


def ring_records(size: int, count: int) -> list[bytes]:
    """``count`` ring records of ``size``-byte sends, requests and replies alternating."""
    payload = (b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$1\r\nv\r\n" * (size // 31 + 1))[:size]
    offsets: dict[int, int] = {}
    t0 = time.monotonic_ns()
    out = []
    for i in range(count):
        conn = i % CONNECTIONS
        server = (i // CONNECTIONS) % 2
        ino, peer = 1000 + 2 * conn, 1001 + 2 * conn
        if server:
            ino, peer = peer, ino
        off = offsets.get(ino, 0)
        offsets[ino] = off + size
        comm = b"redis-server" if server else b"redis-benchmark"
        hdr = records.EVENT.pack(
            t0 + i * 1000, off, ino, peer, ino, peer, 0, 0, 100 + conn, 100 + conn, 0, 200, size,
            size, records.EV_DATA, FLAG_MSG_START | FLAG_MSG_END, 1, 0, 0, comm, b"redis-server",
        )  # fmt: skip
        out.append(hdr + payload)
    return out


def collector(out_path: str) -> tuple[records.RecordAssembler[Record | Packed], PcapngOutput]:
    """The capture's record handling without a kernel side, packed as for `usniff -w`
    (cli/loop.py: data records come as Packed)."""
    cap = records.RecordAssembler(CaptureStats(), packed=True, sums=True)
    cap._sock_info.update(
        {ino: (PATH, ino % 2 == 1) for ino in range(1000, 1000 + 2 * CONNECTIONS)}
    )
    return cap, PcapngOutput(out_path)


def fake_ring() -> tuple[RingBuffer, Callable[[list[bytes]], None]]:
    """A RingBuffer over a memfd laid out like a BPF ring (consumer page,
    producer page, data area), and a function that writes a batch of records
    into it, from the start of the data area (no wrap) as committed records."""
    page = mmap.PAGESIZE
    fd = os.memfd_create("usniff-bench-ring")
    os.ftruncate(fd, 2 * page + 2 * RING)  # RingBuffer maps the data area twice
    with mock.patch("select.epoll"):  # a memfd cannot be waited on; drain() only reads it
        ring = RingBuffer(fd, RING)
    kernel = mmap.mmap(fd, 2 * page + RING)
    os.close(fd)
    cons, prod = memoryview(kernel)[:8].cast("Q"), memoryview(kernel)[page : page + 8].cast("Q")

    def fill(records: list[bytes]) -> None:
        blob = b"".join(
            struct.pack("<II", len(r), 0) + r + bytes(-len(r) % 8) for r in records
        )  # fmt: skip
        kernel[2 * page : 2 * page + len(blob)] = blob
        cons[0], prod[0] = 0, len(blob)

    return ring, fill


def run(out_path: str, size: int, count: int) -> float:
    records = ring_records(size, count)
    cap, out = collector(out_path)
    ring, fill = fake_ring()
    per_drain = min(BATCH, RING // (len(records[0]) + 16))
    elapsed = 0.0
    for first in range(0, count, per_drain):
        fill(records[first : first + per_drain])
        start = time.perf_counter()
        ring.drain(cap.core)
        out.write(cap.release(float("inf")))
        out.flush()
        elapsed += time.perf_counter() - start
    out.close(cap.stats)
    ring.close()
    assert cap.stats.records == count and out.packets >= count
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="31-byte records per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    parent = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        path = os.path.join(tmp, "collector.pcapng")
        for size, count in ((31, args.records), (32768, max(args.records // 32, 100))):
            for _ in range(args.rounds):
                elapsed = run(path, size, count)
                print(
                    f"{size:>6}-byte records: {count / elapsed:>10,.0f} records/s "
                    f"{count * size / elapsed / 1e6:>8.1f} MB/s payload "
                    f"({count} records in {elapsed:.2f}s)"
                )


if __name__ == "__main__":
    main()
