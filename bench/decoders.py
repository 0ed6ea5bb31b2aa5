"""Decoded requests per second, per decoder, on this machine.

    .venv/bin/python bench/decoders.py

Replays the real sessions of captures/ (recorded by captures/record.py)
many times through (a) the decoder alone and (b) the whole pipeline
(Records -> StreamAssembler -> detection -> decoder -> Transaction objects),
and compares the RESP parser with hiredis.Reader on the same reply bytes.
Prints figures measured in this run; not a test.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hiredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from recorder import load_records  # noqa: E402

from usniff.decoders.base import Decoder, Transaction  # noqa: E402
from usniff.decoders.mysql import MysqlDecoder  # noqa: E402
from usniff.decoders.resp import Parser, RespDecoder  # noqa: E402
from usniff.events import Record  # noqa: E402
from usniff.outputs.decoded import Decoding  # noqa: E402
from usniff.streams import Direction, conn_key  # noqa: E402


def _session(capture: str, comm: str) -> list[Record]:
    """Records of the busiest connection of ``comm`` in a capture."""
    records = list(load_records(ROOT / "captures" / f"{capture}.jsonl.gz"))
    conns: dict[object, list[Record]] = {}
    for r in records:
        conns.setdefault(conn_key(r), []).append(r)
    candidates = [rs for rs in conns.values() if any(r.comm == comm for r in rs)]
    return max(candidates, key=lambda rs: sum(r.kind == "data" for r in rs))


def _best(fn: Callable[[], int], seconds: float = 2.0) -> float:
    """Best items/s over repeated runs for ``seconds``."""
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def decoder_only(factory: Callable[[], Decoder], records: list[Record], repeat: int) -> int:
    chunks = [
        (Direction.SERVER if r.path_is_own else Direction.CLIENT, r.data, r.ts)
        for r in records
        if r.data and len(r.data) < 65536
    ]
    n = 0
    for _ in range(repeat):
        d = factory()
        for direction, data, ts in chunks:
            n += sum(isinstance(e, Transaction) for e in d.feed(direction, data, ts))
    return n


def pipeline(records: list[Record], repeat: int) -> int:
    n = 0
    for i in range(repeat):  # distinct connections: shift the inodes
        shifted = [
            dataclasses.replace(
                r, inode=r.inode + i * 1000003, peer_inode=r.peer_inode + i * 1000003
            )
            for r in records
        ]
        decoding = Decoding()
        n += sum(isinstance(e, Transaction) for e in decoding.feed(shifted) + decoding.finish())
    return n


def resp_messages(replies: bytes, repeat: int, use_hiredis: bool) -> int:
    n = 0
    for _ in range(repeat):
        if use_hiredis:
            reader = hiredis.Reader()
            reader.feed(replies)
            while reader.gets() is not False:
                n += 1
        else:
            n += len(Parser(inline=False).feed(replies, 1.0))
    return n


def main() -> None:
    redis_bench = _session("redis", "redis-benchmark")
    redis_py = _session("redis", "python")
    mysql_py = [r for r in _session("mysql", "python") if len(r.data) < 65536]
    print(f"python {sys.version.split()[0]}, figures are best of repeated runs (2 s each)")
    for label, factory, records in (
        ("resp  (redis-benchmark -P 4 SET/GET)", RespDecoder, redis_bench),
        ("resp  (redis-py session, mixed)", RespDecoder, redis_py),
        ("mysql (pymysql session, mixed)", MysqlDecoder, mysql_py),
    ):
        alone = _best(lambda f=factory, r=records: decoder_only(f, r, 20))  # type: ignore[misc]
        whole = _best(lambda r=records: pipeline(r, 5))  # type: ignore[misc]
        print(f"{label:40s} decoder {alone:>10,.0f} req/s   full pipeline {whole:>10,.0f} req/s")
    replies = b"".join(r.data for r in redis_bench if r.path_is_own) * 20
    assert resp_messages(replies, 1, False) == resp_messages(replies, 1, True)
    ours = _best(lambda: resp_messages(replies, 1, False))
    theirs = _best(lambda: resp_messages(replies, 1, True))
    print(
        f"RESP reply parsing: usniff Parser {ours:,.0f} msg/s, hiredis.Reader {theirs:,.0f} msg/s"
    )


if __name__ == "__main__":
    main()
