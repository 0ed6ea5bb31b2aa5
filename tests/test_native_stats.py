"""The native --stats path (outputs/fast.py, _fast.c) against the Python engine.

Both are fed the same Records in the same batches: every capture in captures/, and
more than 100k fuzzed connections (RESP sessions of the redis capture mutated, and
generated RESP exchanges: pipelined, split across records, stateful commands, RESP3
replies, errors, garbage), their records reordered, duplicated, lost, truncated,
closed, interleaved with each other.  The tables must be equal: per (protocol,
command) count, errors, unanswered, bytes in and out, the latency histogram's
buckets (so every percentile) and maximum, and the slowest requests with their text.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.support.captures import CAPTURES, capture, connection_sends
from usniff._events import Packed
from usniff.capture.records import EV_DATA, EVENT, RecordAssembler
from usniff.decoders.base import Notice, Transaction
from usniff.decoders.engine import Decoding, Event, Undecoded, decode_records
from usniff.events import CaptureStats, Record
from usniff.outputs.base import unpacked
from usniff.outputs.decoded import DecodedOutput
from usniff.outputs.fast import NativeStats
from usniff.outputs.stats import Stats

CASES = 100_000  # fuzzed connections in all (SEEDS x CASES // len(SEEDS))
SEEDS = range(10)
CHUNK = 500  # connections interleaved in one replay


Table = tuple[dict[tuple[str, str], tuple[object, ...]], list[tuple[float, int, str]]]


def _table(stats: Stats) -> Table:
    rows = {
        key: (row.count, row.errors, row.unanswered, row.bytes_in, row.bytes_out,
              sorted(row.latencies.counts.items()), row.latencies.total, row.latencies.max)
        for key, row in stats.rows.items()
    }  # fmt: skip
    return rows, sorted(stats.slowest, reverse=True)


def counter(count: Callable[[Transaction], None]) -> Callable[[list[Event]], int]:
    """``count`` each transaction among the events; how many there were."""

    def add(events: list[Event]) -> int:
        txs = [ev for ev in events if isinstance(ev, Transaction)]
        for tx in txs:
            count(tx)
        return len(txs)

    return add


def python_table(batches: Sequence[list[Record | Packed]]) -> tuple[Table, int]:
    decoding, stats = Decoding(), Stats()
    add = counter(stats.add)
    n = sum(add(decoding.feed([as_record(r) for r in batch])) for batch in batches)
    n += add(decoding.finish())
    return _table(stats), n


def native_table(batches: Sequence[list[Record | Packed]]) -> tuple[Table, int, int]:
    """The table, the transactions counted, the records the C core handled."""
    decoding, stats = Decoding(), Stats()
    add = counter(stats.add)
    native = NativeStats(decoding, stats, add)
    handled = 0
    take = native._take

    def counting_take() -> int:
        nonlocal handled
        before = decoding.assembler.stats.records
        n = take()
        handled += decoding.assembler.stats.records - before
        return n

    native._take = counting_take  # type: ignore[method-assign]
    n = sum(native.feed(batch) for batch in batches)
    n += native.release()
    n += add(decoding.finish())
    return _table(stats), n, handled


def as_record(rec: Record | Packed) -> Record:
    return rec.record() if isinstance(rec, Packed) else rec


def packed_twin(rec: Record) -> Packed | Record:
    """A data record as a packed capture hands it over: the same ring record made into
    a Packed by the C assembler (a Record still when it is not of the packed kind)."""
    assert rec.kind == "data"
    asm = RecordAssembler(CaptureStats(), packed=True)
    asm.core.clock = 0.0
    asm._sock_info[rec.sock_id] = (rec.path, rec.path_is_own)
    comm, peer_comm = (c.encode()[:15] + b"\0" for c in (rec.comm, rec.peer_comm))
    header = EVENT.pack(
        round(rec.ts * 1e9), rec.offset, rec.sock_id, rec.peer_id, rec.inode, rec.peer_inode,
        rec.cgroup, rec.peer_cgroup, rec.pid, rec.tid, rec.uid, rec.peer_pid, rec.length,
        len(rec.data), EV_DATA, rec.flags, 1 if rec.sock_type == "stream" else 2, 0,
        int(rec.path_is_own), comm, peer_comm,
    )  # fmt: skip
    asm.core.handle(memoryview(header + rec.data))
    (twin,) = asm.core.take()
    return twin


def mixed(recs: Sequence[Record], rng: random.Random) -> list[Record | Packed]:
    """About half the data records of stream connections as Packed twins (--stats alone
    runs the capture packed; records of other kinds stay Records there too)."""
    return [
        packed_twin(r) if r.kind == "data" and r.peer_id and rng.random() < 0.5 else r for r in recs
    ]


def batched(records: Sequence[Record | Packed], rng: random.Random) -> list[list[Record | Packed]]:
    out, i = [], 0
    while i < len(records):
        size = rng.choice((1, 2, 5, 17, 64, 300, 4096))
        out.append(list(records[i : i + size]))
        i += size
    return out


def assert_same(records: Sequence[Record], rng: random.Random) -> int:
    batches = batched(mixed(records, rng), rng)
    want, n_py = python_table(batches)
    got, n_native, handled = native_table(batches)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert n_native == n_py
    return handled


# ----------------------------------------------------------------- the captures

NAMES = sorted(
    {p.name.split(".")[0] for p in CAPTURES.iterdir() if p.name.endswith((".jsonl.gz", ".pcapng"))}
)


@pytest.mark.parametrize("name", NAMES)
def test_every_capture_gives_the_same_table(name: str) -> None:
    records = capture(name)
    for seed in range(3):
        handled = assert_same(records, random.Random(seed))
        if name == "redis":  # the native path did the work, not only the engine
            assert handled > len(records) // 4, (handled, len(records))


# ----------------------------------------------------------------- fuzzed connections

COMMANDS = (
    [b"GET", b"k"], [b"SET", b"k", b"v" * 3], [b"set", b"k2", b"x" * 300], [b"INCR", b"n"],
    [b"PING"], [b"CONFIG", b"GET", b"maxmemory"], [b"client", b"setname", b"a"],
    [b"CLIENT", b"REPLY", b"OFF"], [b"CLIENT", b"REPLY", b"ON"], [b"CLIENT", b"REPLY", b"SKIP"],
    [b"SUBSCRIBE", b"c1", b"c2"], [b"UNSUBSCRIBE"], [b"PSUBSCRIBE", b"p*"], [b"MONITOR"],
    [b"BLPOP", b"q", b"0"], [b"AUTH", b"secret"], [b"HELLO", b"3"], [b"MGET", b"a", b"b"],
    [b"\xff\xfeBAD"], [b"ACL", b"SETUSER", b"u", b">pw"], [b""], [b"LRANGE", b"l", b"0", b"-1"],
)  # fmt: skip
REPLIES = (
    b"+OK\r\n", b"-ERR wrong\r\n", b":1\r\n", b":-7\r\n", b"$-1\r\n", b"$3\r\nabc\r\n",
    b"$0\r\n\r\n", b"*2\r\n$1\r\na\r\n$-1\r\n", b"*-1\r\n", b"*0\r\n", b"*1\r\n*1\r\n:1\r\n",
    b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n",
    b"*3\r\n$7\r\nmessage\r\n$2\r\nc1\r\n$1\r\nm\r\n",
    b"%1\r\n+a\r\n:1\r\n", b">2\r\n+x\r\n+y\r\n", b"|1\r\n+k\r\n+v\r\n+OK\r\n", b"_\r\n",
    b"#t\r\n", b",1.5\r\n", b"(12\r\n", b"!3\r\nerr\r\n", b"=7\r\ntxt:abc\r\n",
    b"+1700000000.1 [0 unix:/s] \"GET\"\r\n", b"-\r\n", b"+\r\n", b":+1\r\n", b"$+3\r\nabc\r\n",
    b"$4\r\nabc\r\n",
)  # fmt: skip


def command(words: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


def exchange(rng: random.Random) -> list[tuple[int, bytes]]:
    """(direction, bytes) sends of a RESP conversation: pipelined requests, replies
    (mostly the right count), inline commands and garbage now and then."""
    sends: list[tuple[int, bytes]] = []
    for _ in range(rng.randint(1, 2) if rng.random() < 0.98 else 40):  # a few long ones
        n = rng.choice((1, 1, 1, 1, 2, 3, 16) if rng.random() < 0.1 else (1,))
        words = [rng.choice(COMMANDS) for _ in range(n)]
        roll = rng.random()
        if roll < 0.05:
            sends.append((0, b"PING\r\n"))  # inline
        elif roll < 0.08:
            sends.append((0, rng.randbytes(rng.randint(1, 20))))
        elif roll < 0.11:
            sends.append((0, b"*1\r\n$3\r\nGE"))  # a command cut short, completed later
            words = [[b"T"]]
            sends.append((0, b"T\r\n"))
        else:
            sends.append((0, b"".join(command(w) for w in words)))
        replies = b"".join(
            rng.choice(REPLIES) if rng.random() < 0.3 else REPLIES[0] for _ in range(n)
        )
        if rng.random() < 0.9:
            sends.append((1, replies))
    return sends


def split(sends: list[tuple[int, bytes]], rng: random.Random) -> list[tuple[int, bytes]]:
    """The sends cut into records: whole mostly, sometimes mid-message."""
    out = []
    for direction, data in sends:
        while len(data) > 1 and rng.random() < 0.1:
            j = rng.randrange(1, len(data))
            out.append((direction, data[:j]))
            data = data[j:]
        out.append((direction, data))
    return out


CONNS = connection_sends("redis")


def capture_sends(rng: random.Random) -> list[tuple[int, bytes]]:
    """Sends of one connection of the redis capture, mutated lightly."""
    sends = rng.choice(CONNS)
    start = rng.randrange(len(sends)) if rng.random() < 0.2 else 0  # mid-stream
    sends = sends[start : start + rng.randint(1, 6)]
    if rng.random() < 0.3:
        i = rng.randrange(len(sends))
        d, data = sends[i]
        if data:
            j = rng.randrange(len(data))
            sends[i] = (d, data[:j] + bytes([rng.randrange(256)]) + data[j + 1 :])
    return sends


class Conn:
    """Records of one connection from its sends, with the capture's accidents."""

    def __init__(self, cid: int, rng: random.Random, path: str = "/run/redis.sock") -> None:
        self.ids = (4 * cid + 1, 4 * cid + 2)  # client, server
        self.rng = rng
        self.path = path
        self.next = [rng.choice((0, 0, 0, 0, 0, 100)), 0]  # sometimes seen mid-stream

    def records(self, sends: list[tuple[int, bytes]], ts: float) -> Iterator[Record]:
        rng = self.rng
        for direction, data in sends:
            ts += rng.choice((0.0, 1e-6, 2.5e-5, 1e-4, 0.003))  # ties among latencies
            roll = rng.random()
            off = self.next[direction]
            self.next[direction] += len(data)
            if roll < 0.01:
                yield self._record(direction, off, len(data), b"", ts, kind="lost")
            elif roll < 0.02:
                continue  # a hole: the reorder buffer's gap
            elif roll < 0.03:  # cut by the snap length
                yield self._record(direction, off, len(data), data[: len(data) // 2], ts)
            else:
                yield self._record(direction, off, len(data), data, ts)
                if roll > 0.99:
                    yield self._record(direction, off, len(data), data, ts)  # duplicate
        if rng.random() < 0.7:
            yield self._record(rng.randrange(2), 0, 0, b"", ts + 1e-6, kind="close")

    def _record(self, direction: int, offset: int, length: int, data: bytes, ts: float,
                kind: str = "data") -> Record:  # fmt: skip
        sock, peer = self.ids if direction == 0 else self.ids[::-1]
        return Record(
            ts=ts, pid=1000 + direction, tid=1000 + direction, uid=0,
            comm=("redis-benchmark", "redis-server")[direction], inode=sock, peer_inode=peer,
            sock_type="stream", path=self.path, path_is_own=direction == 1,
            offset=offset, length=length, data=data, lost=length if kind == "lost" else 0,
            kind=kind, peer_pid=1000 + 1 - direction, sock_id=sock, peer_id=peer,
            peer_comm=("redis-benchmark", "redis-server")[1 - direction],
        )  # fmt: skip


def named(rng: random.Random, names: int) -> list[tuple[int, bytes]]:
    """Sends of a few requests whose command is one of ``names`` made-up names."""
    sends = []
    for _ in range(rng.randint(1, 4)):
        sends += [(0, command([b"OP%d" % rng.randrange(names), b"k"])), (1, b"+OK\r\n")]
    return sends


def fuzzed(
    seed: int,
    cases: int,
    paths: Sequence[str] = ("/run/redis.sock",),
    names: int = 0,
    sends_of: Callable[[random.Random], list[tuple[int, bytes]]] | None = None,
) -> Iterator[list[Record]]:
    """Per CHUNK connections, their records interleaved (each one's in order but for
    the occasional swap of two neighbours); each connection on one of ``paths``, a
    fifth of them (when ``names``) sending commands of ``names`` made-up names; with
    ``sends_of``, each connection's sends made by it instead (another protocol's)."""
    rng = random.Random(seed)
    for first in range(0, cases, CHUNK):
        streams = []
        for cid in range(first, min(cases, first + CHUNK)):
            if sends_of is not None:
                sends = sends_of(rng)
            elif names and rng.random() < 0.2:
                sends = named(rng, names)
            else:
                sends = capture_sends(rng) if rng.random() < 0.3 else exchange(rng)
            path = rng.choice(paths) if len(paths) > 1 else paths[0]
            recs = list(Conn(cid, rng, path).records(split(sends, rng), 1.0 + rng.random()))
            if len(recs) > 2 and rng.random() < 0.05:  # out of order
                i = rng.randrange(len(recs) - 1)
                recs[i], recs[i + 1] = recs[i + 1], recs[i]
            streams.append(recs)
        out: list[Record] = []
        while streams:
            s = rng.randrange(len(streams))
            out.extend(streams[s][:3])
            del streams[s][:3]
            if not streams[s]:
                streams.pop(s)
        yield out


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_connections_give_the_same_table(seed: int) -> None:
    rng = random.Random(seed)
    handled = 0
    for records in fuzzed(seed, CASES // len(SEEDS)):
        handled += assert_same(records, rng)
    assert handled > 1500  # the native path ran (and handed back at the accidents)


def opaque_sends(rng: random.Random) -> list[tuple[int, bytes]]:
    """A conversation no decoder reads: TLS records ("tls, no decoder") or bytes of no
    protocol ("protocol not recognised"), both sides sending."""
    head = b"\x16\x03\x01" if rng.random() < 0.5 else b"\x7fXQ"
    return [(i % 2, head + rng.randbytes(rng.randint(1, 60))) for i in range(rng.randint(2, 40))]


def not_decoded_by_reason(batches: Sequence[list[Record | Packed]], native: bool) -> Counter[str]:
    """The --stats line under the table: the records left out, by reason (DecodedOutput)."""
    decoding = Decoding()
    left_out = Counter[str]()

    def count(events: list[Event]) -> int:
        left_out.update(ev.reason for ev in events if isinstance(ev, Undecoded))
        return 0

    if native:
        path = NativeStats(decoding, Stats(), count, left_out)
        for batch in batches:
            path.feed(batch)
        path.release()
    else:
        for batch in batches:
            count(decoding.feed(unpacked(batch)))
    count(decoding.finish())
    return left_out


def test_records_shown_raw_are_counted_in_c() -> None:
    """The table shows no raw records: the native path delivers those of connections with
    no decoder in C, and counts them by reason as the engine's Undecoded records."""
    rng = random.Random(3)
    handled = 0
    for records in fuzzed(3, 2000, sends_of=opaque_sends):
        batches = batched(mixed(records, rng), rng)
        want = not_decoded_by_reason(batches, native=False)
        assert {"tls, no decoder", "protocol not recognised"} <= set(want)
        assert not_decoded_by_reason(batches, native=True) == want
        handled += native_table(batches)[2]
    assert handled > 10_000  # most records: in C


def test_the_table_alone_counts_what_it_leaves_out() -> None:
    """--stats without lines: the records of connections not decoded and the losses of
    sync are counted in a line under the table, as the engine's events give them."""
    rng = random.Random(5)
    unknown = list(Conn(1, rng).records([(0, b"hello?\n"), (1, b"who is there\n")], 1.0))
    garbled = [(0, command([b"GET", b"k"])), (1, b"$1\r\nv\r\n"), (0, b"*x\r\n"), (1, b"+OK\r\n")]
    resp = list(Conn(2, rng).records(garbled, 2.0))
    records = unknown + resp
    events = list(decode_records(records))
    not_decoded = sum(isinstance(e, Undecoded) for e in events)
    lost_sync = sum(isinstance(e, Notice) and e.kind == "undecodable" for e in events)
    assert not_decoded and lost_sync  # the case is what it claims to be
    table = io.StringIO()
    out = DecodedOutput(None, stats=True, stats_stream=table)
    assert out.write(records) == 1  # the transactions counted: the GET
    out.close(CaptureStats())
    assert (
        f"usniff: not in the table: {not_decoded} records (protocol not recognised); "
        f"{lost_sync} times a decoder lost sync" in table.getvalue().replace("\n", " ")
    ), table.getvalue()


def test_records_the_core_does_not_own_are_scanned_once() -> None:
    """Core.feed looks for the next record of a connection it owns at most ``most``
    records ahead: the engine decodes ``most`` at a time, and a batch of other protocols'
    records must not be scanned again at every run (which made --stats of MariaDB and
    PostgreSQL quadratic in the batch: a sixth of usniff's CPU under mariadb-slap)."""
    records: list[Record | Packed] = [r for r in capture("mysql") if r.data]
    assert len(records) > 100
    core = NativeStats(Decoding(), Stats(), counter(lambda tx: None)).core
    assert core.feed(records, 0, 64) == (0, 64, None)
    assert core.feed(records, 10, 64) == (10, 74, None)
    n = len(records)
    assert core.feed(records, n - 5, 64) == (n - 5, n, None)
    assert core.feed(records, n, 64) == (n, n, None)
