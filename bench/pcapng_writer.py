"""Throughput of the pcapng writer alone (no capture): packets/s and MB/s.

    .venv/bin/python bench/pcapng_writer.py [--out FILE] [--seconds S]

Feeds batches of synthetic records (Redis-like 31-byte writes over 64
connections, then 64 KiB writes) to PcapngOutput and prints the rate of each
run.  Not a test: figures depend on the machine; see docs/pcapng.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from usniff.events import FLAG_MSG_END, FLAG_MSG_START, CaptureStats, Record
from usniff.outputs.pcapng import PcapngOutput

CONNECTIONS = 64


def make_batches(size: int, count: int, batch_len: int) -> list[list[Record]]:
    """``count`` batches of ``size``-byte records, requests and replies alternating."""
    payload = (b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$1\r\nv\r\n" * (size // 31 + 1))[:size]
    offsets: dict[int, int] = {}
    batches = []
    ts = time.time()
    for _ in range(count):
        batch = []
        for i in range(batch_len):
            conn = i % CONNECTIONS
            server = (i // CONNECTIONS) % 2 == 1
            inode, peer = (2 * conn + 1000, 2 * conn + 1001)
            if server:
                inode, peer = peer, inode
            off = offsets.get(inode, 0)
            offsets[inode] = off + size
            ts += 1e-6
            batch.append(
                Record(
                    ts=ts,
                    pid=4000 + conn,
                    tid=4000 + conn,
                    uid=1000,
                    comm="redis-server" if server else "bench",
                    inode=inode,
                    peer_inode=peer,
                    sock_type="stream",
                    path="/run/redis/redis.sock",
                    path_is_own=server,
                    offset=off,
                    length=size,
                    data=payload,
                    flags=FLAG_MSG_START | FLAG_MSG_END,
                    sock_id=inode,
                    peer_id=peer,
                )  # fmt: skip
            )
        batches.append(batch)
    return batches


def run(path: str, size: int, seconds: float) -> None:
    batches = make_batches(size, 8, max(CONNECTIONS * 2, 4096 * 31 // size))
    # rotation keeps the disk use bounded (and is part of what is measured)
    out = PcapngOutput(path, rotate_bytes=200_000_000, rotate_count=2)
    records = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for batch in batches:
            out.write(batch)
            out.flush()
            records += len(batch)
        elapsed = time.perf_counter() - start
    out.close(CaptureStats(records=records))
    print(
        f"{size:>6}-byte records: {records / elapsed:>10,.0f} records/s "
        f"{out.packets / elapsed:>10,.0f} packets/s "
        f"{records * size / elapsed / 1e6:>8.1f} MB/s payload "
        f"({records} records in {elapsed:.2f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output file (default: in a temporary directory)")
    parser.add_argument("--dir", help="temporary directory's parent (default /dev/shm)")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    parent = args.dir or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        path = args.out or os.path.join(tmp, "bench.pcapng")
        for size in (31, 65536):
            run(path, size, args.seconds)


if __name__ == "__main__":
    main()
