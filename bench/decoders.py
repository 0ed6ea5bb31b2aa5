"""Decoded requests (messages) and megabytes per second, per decoder, on this machine.

    .venv/bin/python -m bench decoders

Replays the real sessions of captures/ (Redis and MySQL recorded by
captures/record.py; PostgreSQL, HTTP, FastCGI, memcached, gRPC and D-Bus by
captures/record_live.py, read back from their pcapng) many times through
(a) the decoder alone and (b) the whole pipeline (Records -> StreamAssembler ->
detection -> decoder -> Transaction objects), then the --stats table's pipeline
(Records -> table) through the Python engine and through the native path that
``usniff --stats`` runs (outputs/fast.py) side by side (and the records per second of
a connection the table leaves out: no decoder), the same for text lines (Records ->
lines: the engine and ``format_text``, against the core's lines that ``usniff --path
SOCK`` writes), and compares the RESP
parser with hiredis.Reader on the same reply bytes.  A message (msg/s) is one request paired
with its reply (a Transaction); MB/s counts both directions' bytes.
Prints figures measured in this run; not a test.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hiredis

from tests.support.recorder import load_records
from usniff.cli.read import read_records
from usniff.decoders.base import Decoder, Transaction
from usniff.decoders.dbus import DbusDecoder
from usniff.decoders.engine import Decoding, Event
from usniff.decoders.fastcgi import FastcgiDecoder
from usniff.decoders.http import HttpDecoder
from usniff.decoders.http2 import Http2Decoder
from usniff.decoders.memcached import MemcachedDecoder
from usniff.decoders.mysql import MysqlDecoder
from usniff.decoders.postgres import PostgresDecoder
from usniff.decoders.resp import Parser, RespDecoder
from usniff.events import CaptureStats, Record
from usniff.outputs.decoded import DecodedOutput, format_text
from usniff.outputs.fast import NativeStats, NativeText
from usniff.outputs.stats import Stats
from usniff.streams import Direction, conn_key

ROOT = Path(__file__).resolve().parent.parent
BATCH = 4096  # records per batch of the --stats pipeline rows (a busy poll's batch)
REDIS = list(load_records(ROOT / "captures" / "redis.jsonl.gz"))
MYSQL = list(load_records(ROOT / "captures" / "mysql.jsonl.gz"))


def _session(capture: str, comm: str) -> list[Record]:
    """Records of the busiest connection of ``comm`` in a capture."""
    records = list(load_records(ROOT / "captures" / f"{capture}.jsonl.gz"))
    conns: dict[object, list[Record]] = {}
    for r in records:
        conns.setdefault(conn_key(r), []).append(r)
    candidates = [rs for rs in conns.values() if any(r.comm == comm for r in rs)]
    return max(candidates, key=lambda rs: sum(r.kind == "data" for r in rs))


def _connections(capture: str) -> list[Record]:
    """Every connection of captures/<capture>.pcapng, one after the other (each
    connection's records in capture order)."""
    conns: dict[object, list[Record]] = {}
    for r in read_records(str(ROOT / "captures" / f"{capture}.pcapng")):
        conns.setdefault(conn_key(r), []).append(r)
    return [r for rs in conns.values() for r in rs]


def _best(fn: Callable[[], int], seconds: float = 2.0) -> float:
    """Best items/s over repeated runs for ``seconds`` (``fn`` returns how many items
    its run handled)."""
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _payload(records: list[Record]) -> int:
    return sum(len(r.data) for r in records if r.data and len(r.data) < 65536)


def decoder_only(factory: Callable[[], Decoder], records: list[Record], repeat: int) -> int:
    """Transactions of ``repeat`` replays; each connection gets a decoder of its own."""
    chunks = [
        (conn_key(r), Direction.SERVER if r.path_is_own else Direction.CLIENT, r.data, r.ts)
        for r in records
        if r.data and len(r.data) < 65536
    ]
    n = 0
    for _ in range(repeat):
        decoders: dict[object, Decoder] = {}
        for key, direction, data, ts in chunks:
            d = decoders.get(key) or decoders.setdefault(key, factory())
            n += sum(isinstance(e, Transaction) for e in d.feed(direction, data, ts))
    return n


def shifted(records: list[Record], i: int) -> list[Record]:
    """The records as other connections' (replay ``i``): socket ids and inodes shifted."""
    k = i * 1000003
    return [
        dataclasses.replace(
            r, sock_id=r.sock_id + k, peer_id=r.peer_id + k if r.peer_id else 0,
            inode=r.inode + k, peer_inode=r.peer_inode + k,
        )
        for r in records
    ]  # fmt: skip


def pipeline_replays(records: list[Record], repeat: int) -> list[Record]:
    return [r for i in range(repeat) for r in shifted(records, i)]


def pipeline(records: list[Record], repeat: int) -> int:
    n = 0
    for i in range(repeat):  # distinct connections
        decoding = Decoding()
        events = decoding.feed(shifted(records, i)) + decoding.finish()
        n += sum(isinstance(e, Transaction) for e in events)
    return n


def long_connection(records: list[Record], times: int, spread: bool = False) -> list[Record]:
    """One connection's records, then ``times`` - 1 more copies of its data records
    as if sent after them on the same connection (offsets and times shifted): a
    long-lived client, as redis-benchmark's 50 connections are.  With ``spread``
    each copy's replies come 10 us to 1 s later than recorded (log-uniform over
    the copies; the client is the first data record's sender), the copies 2 s
    apart: latency histograms over 17 powers of two, as a long capture fills."""
    data = [r for r in records if r.kind == "data"]
    sent = {
        sock: sum(r.length for r in data if r.sock_id == sock) for sock in {r.sock_id for r in data}
    }
    span = data[-1].ts - data[0].ts + 1e-4
    client = data[0].sock_id
    out = []
    for i in range(times):
        shift = i * (span + 2.0 if spread else span)
        late = 10 ** (-5 + 5 * (i * 0.6180339887 % 1.0)) if spread else 0.0
        out += [
            dataclasses.replace(
                r, offset=r.offset + i * sent[r.sock_id],
                ts=r.ts + shift + (0.0 if r.sock_id == client else late),
            )
            for r in data
        ]  # fmt: skip
    return out


def stats_pipeline(records: list[Record], native: bool) -> int:
    """Transactions of the --stats table's pipeline over ``records`` in batches as the
    capture loop gives them: the Python engine's (Decoding, Stats.add per transaction),
    or the native path's (outputs/fast.py, what ``usniff --stats`` runs)."""
    decoding, stats = Decoding(), Stats()

    def add(events: list[Event]) -> int:
        txs = [e for e in events if isinstance(e, Transaction)]
        for tx in txs:
            stats.add(tx)
        return len(txs)

    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    if not native:
        return sum(add(decoding.feed(b)) for b in batches) + add(decoding.finish())
    path = NativeStats(decoding, stats, add)
    n = sum(path.feed(b) for b in batches) + path.release()
    return n + add(decoding.finish())


class _Discard(io.StringIO):
    def write(self, s: str) -> int:
        return len(s)


def text_pipeline(records: list[Record], native: bool) -> int:
    """Lines of text mode over ``records`` in batches: the engine's events through
    ``format_text``, or DecodedOutput with text lines alone (the core's lines)."""
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    stream = _Discard()
    if not native:
        decoding, n = Decoding(), 0
        for events in [*map(decoding.feed, batches), decoding.finish()]:
            stream.write("".join(format_text(ev) + "\n" for ev in events))
            n += len(events)
        return n
    out = DecodedOutput(stream, stats_stream=io.StringIO())
    assert isinstance(out._native, NativeText)
    return sum(out.write(b) for b in batches) + out.close(CaptureStats())


def opaque(records: list[Record]) -> list[Record]:
    """The records with their bytes made TLS records' (no decoder: shown raw), lengths kept."""
    return [
        dataclasses.replace(r, data=b"\x16\x03\x01" + bytes(len(r.data) - 3)) if r.data else r
        for r in records
    ]


def records_left_out(records: list[Record], native: bool) -> int:
    """Records through the --stats pipeline when none is counted in the table (opaque)."""
    assert stats_pipeline(records, native) == 0
    return len(records)


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
    print(f"{'':40s} {'decoder alone':>26s}   {'full pipeline':>26s}")
    for label, factory, records in (
        ("resp  (redis-benchmark -P 4 SET/GET)", RespDecoder, redis_bench),
        ("resp  (redis-py session, mixed)", RespDecoder, redis_py),
        ("mysql (pymysql session, mixed)", MysqlDecoder, mysql_py),
        ("postgres (psql, psycopg, raw client)", PostgresDecoder, _connections("postgres")),
        ("http (curl -> podman API)", HttpDecoder, _connections("http")),
        ("fastcgi (nginx, cgi-fcgi -> php-fpm)", FastcgiDecoder, _connections("fastcgi")),
        ("memcached (text + meta commands)", MemcachedDecoder, _connections("memcached")),
        ("http2 (grpcio client -> grpcio server)", Http2Decoder, _connections("grpc")),
        ("dbus (busctl, dbus-send, dbus-fast)", DbusDecoder, _connections("dbus")),
    ):
        runs = decoder_only(factory, records, 1)  # the transactions of one replay
        megabytes = _payload(records) / 1e6
        alone = _best(lambda f=factory, r=records: decoder_only(f, r, 20)) / runs  # type: ignore[misc]
        whole = _best(lambda r=records: pipeline(r, 5)) / runs  # type: ignore[misc]
        print(
            f"{label:40s} {alone * runs:>10,.0f} msg/s {alone * megabytes:>7.1f} MB/s"
            f"   {whole * runs:>10,.0f} msg/s {whole * megabytes:>7.1f} MB/s"
        )
    print("--stats pipeline (Records -> table), Python engine vs native path (outputs/fast.py):")
    for label, records in (
        ("resp  (redis-benchmark -P 4 connection, x200)", long_connection(redis_bench, 200)),
        ("resp  (the same x3000, latencies 10 us - 1 s)", long_connection(redis_bench, 3000, True)),
        ("resp  (redis capture as recorded, 5 replays)", pipeline_replays(REDIS, 5)),
        ("mysql (mysql capture as recorded, 5 replays)", pipeline_replays(MYSQL, 5)),
    ):
        python = _best(lambda r=records: stats_pipeline(r, False))  # type: ignore[misc]
        native = _best(lambda r=records: stats_pipeline(r, True))  # type: ignore[misc]
        print(f"{label:48s} python {python:>10,.0f} tx/s   native {native:>10,.0f} tx/s"
              f"   x{native / python:.1f}")  # fmt: skip
    lines = long_connection(redis_bench, 200)
    python = _best(lambda: text_pipeline(lines, False))
    native = _best(lambda: text_pipeline(lines, True))
    print(f"{'text lines (the -P 4 connection, x200)':48s} python {python:>10,.0f} lines/s"
          f"   native {native:>10,.0f} lines/s   x{native / python:.1f}")  # fmt: skip
    tls = long_connection(opaque(redis_bench), 200)
    python = _best(lambda: records_left_out(tls, False))
    native = _best(lambda: records_left_out(tls, True))
    print(f"{'tls, no decoder (the -P 4 connection, x200)':48s} python {python:>10,.0f} rec/s"
          f"   native {native:>10,.0f} rec/s   x{native / python:.1f}")  # fmt: skip
    replies = b"".join(r.data for r in redis_bench if r.path_is_own) * 20
    assert resp_messages(replies, 1, False) == resp_messages(replies, 1, True)
    ours = _best(lambda: resp_messages(replies, 1, False))
    theirs = _best(lambda: resp_messages(replies, 1, True))
    print(
        f"RESP reply parsing: usniff Parser {ours:,.0f} msg/s, hiredis.Reader {theirs:,.0f} msg/s"
    )


if __name__ == "__main__":
    main()
