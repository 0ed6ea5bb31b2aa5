"""The native --metrics path (outputs/fast.py NativeMetrics, _fast.c) against the
Python engine.

Both are fed the same Records in the same batches: every capture in captures/, and
30k fuzzed connections (three of the ten seeds of tests/test_native_stats.py, whose
100k the table's differential test runs through the same core; bounded for the CI's
time), spread over more socket paths than MAX_PATHS, with more command names on one
path than MAX_OPERATIONS.  The Python side is Metrics fed the engine's transactions; the
native side is MetricsOutput alone, as ``usniff --metrics`` runs it.  The scrapes
must be equal byte for byte (every series, its value, and their order, which is the
order the operations were labelled in), and so must the labels' bookkeeping.
"""

from __future__ import annotations

import io
import math
import random
import tempfile
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.support.captures import capture
from tests.test_native_stats import (
    CASES,
    NAMES,
    SEEDS,
    Conn,
    as_record,
    batched,
    command,
    counter,
    fuzzed,
    mixed,
    opaque_sends,
    packed_twin,
)  # fmt: skip
from usniff._events import Packed
from usniff.decoders.engine import Decoding, Event, Undecoded
from usniff.events import CaptureStats, Record
from usniff.outputs import fast
from usniff.outputs._fast import sockets as fast_sockets
from usniff.outputs.base import packed_sinks
from usniff.outputs.decoded import DecodedOutput
from usniff.outputs.metrics import BUCKETS, MAX_OPERATIONS, MAX_PATHS, OTHER, Metrics, MetricsOutput
from usniff.outputs.pcapng import PcapngOutput

# the main path takes about a third of the connections, the others share the rest
PATHS = ("/run/redis.sock",) * 60 + tuple(f"/run/r{i}.sock" for i in range(MAX_PATHS + 20))
OP_NAMES = MAX_OPERATIONS + 100


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-nm-") as d:  # short: AF_UNIX paths
        yield f"{d}/metrics.sock"


@pytest.fixture
def handled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The records the C core handled (one entry per take)."""
    counts: list[int] = []
    take = fast.Native._take

    def counting_take(self: fast.Native) -> int:
        before = self.decoding.assembler.stats.records
        n = take(self)
        counts.append(self.decoding.assembler.stats.records - before)
        return n

    monkeypatch.setattr(fast.NativeMetrics, "_take", counting_take)
    return counts


def scrape(metrics: Metrics) -> str:
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode()


def bookkeeping(metrics: Metrics) -> tuple[object, ...]:
    ops = [(key, op.count, op.errors, op.unanswered, op.bytes_in, op.bytes_out, op.buckets,
            op.nanoseconds) for key, op in metrics._ops.items()]  # fmt: skip
    undecoded = sorted(metrics._undecoded.items())
    return ops, metrics._per_path, sorted(metrics._paths), metrics.records, undecoded


def python_metrics(batches: Sequence[Sequence[Record | Packed]]) -> tuple[Metrics, int]:
    """The engine's events counted by hand: the transactions, and the records it does
    not decode (by path and reason)."""
    decoding, metrics = Decoding(), Metrics()
    transactions = counter(metrics.add)

    def add(events: list[Event]) -> int:
        for ev in events:
            if isinstance(ev, Undecoded):
                metrics.add_undecoded(ev.record.path, ev.reason)
        return transactions(events)

    n = 0
    for batch in batches:
        records = [as_record(r) for r in batch]
        metrics.add_records(records)
        n += add(decoding.feed(records))
    n += add(decoding.finish())
    return metrics, n


def native_metrics(
    batches: Sequence[Sequence[Record | Packed]], endpoint: str
) -> tuple[Metrics, int]:
    out = MetricsOutput(endpoint, decode=True)
    try:
        n = sum(out.write(batch) for batch in batches)
        assert isinstance(out._native, fast.NativeMetrics)  # alone: the native path
    finally:
        n += out.close(CaptureStats())
    return out.metrics, n


def assert_same(batches: Sequence[Sequence[Record | Packed]], endpoint: str) -> Metrics:
    want, n_py = python_metrics(batches)
    got, n_native = native_metrics(batches, endpoint)
    assert bookkeeping(got) == bookkeeping(want)
    assert scrape(got) == scrape(want)
    assert n_native == n_py
    return got


@pytest.mark.parametrize("name", NAMES)
def test_every_capture_gives_the_same_metrics(name: str, endpoint: str, handled: list[int]) -> None:
    records = capture(name)
    for seed in range(3):
        rng = random.Random(seed)
        assert_same(batched(mixed(records, rng), rng), endpoint)
    if name == "redis":  # the native path did the work, not only the engine
        assert sum(handled) > 3 * len(records) // 4, (sum(handled), len(records))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_fuzzed_connections_give_the_same_metrics(
    seed: int, endpoint: str, handled: list[int]
) -> None:
    rng = random.Random(seed)
    records = [r for chunk in fuzzed(seed, CASES // len(SEEDS), PATHS, OP_NAMES) for r in chunk]
    metrics = assert_same(batched(mixed(records, rng), rng), endpoint)
    assert sum(handled) > 1500  # the native path ran (and handed back at the accidents)
    # the label bounds were reached, so their order was compared
    assert len(metrics._paths) == MAX_PATHS
    assert any(path == OTHER for path, _, _ in metrics._ops)
    assert ("/run/redis.sock", "resp", OTHER) in metrics._ops


def test_connections_with_no_decoder_leave_the_metrics_as_python_does(
    endpoint: str, handled: list[int]
) -> None:
    """The core takes connections no decoder reads (their records count in the socket
    counters and as records not decoded, never as requests): the metrics are the
    engine's."""
    rng = random.Random(11)
    records = [r for chunk in fuzzed(11, 2000, sends_of=opaque_sends) for r in chunk]
    metrics = assert_same(batched(mixed(records, rng), rng), endpoint)
    assert sum(handled) > len(records) // 2, (sum(handled), len(records))  # most in C
    # every record (data, loss, close) is of a connection no decoder reads: counted once
    assert sum(metrics._undecoded.values()) == len(records)


def test_latencies_on_the_bucket_edges_go_where_python_puts_them(
    endpoint: str, handled: list[int]
) -> None:
    """A latency equal to an edge is in that edge's bucket (le), one a float above it in
    the next: the C search agrees with bisect at every edge."""
    conn = Conn(1, random.Random(1))
    first = [(0, command([b"PING"])), (1, b"+PONG\r\n")]  # decoded in Python, then adopted
    # without the close Conn.records may end with: a closed end's connection is not adopted
    batches: list[list[Record]] = [[r for r in conn.records(first, 1e-6) if r.kind == "data"]]
    later, latencies = [], []
    for edge in BUCKETS:
        # sent at edge, answered at 2 * edge: a latency of exactly edge (Sterbenz)
        for sent in (edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf)):
            for direction, data, ts in (
                (0, command([b"GET", b"k"]), sent),
                (1, b"$-1\r\n", 2 * edge),
            ):
                off = conn.next[direction]
                conn.next[direction] += len(data)
                later.append(conn._record(direction, off, len(data), data, ts))
            latencies.append(2 * edge - sent)
    assert set(BUCKETS) <= set(latencies)  # the cases are what they claim to be
    batches.append(later)
    got = assert_same(batches, endpoint)
    assert sum(handled) == len(later)  # every one counted in C
    by_python = [0] * (len(BUCKETS) + 1)
    for latency in latencies:
        by_python[sum(edge < latency for edge in BUCKETS)] += 1
    assert got._ops[("/run/redis.sock", "resp", "GET")].buckets == by_python


def per_record(batch: Sequence[Record]) -> dict[tuple[str, bool, int], list[int]]:
    """The socket counters as a loop over the records gives them, keys in order."""
    out: dict[tuple[str, bool, int], list[int]] = {}
    for rec in batch:
        if rec.kind != "close":
            side = out.setdefault((rec.path, rec.path_is_own, rec.cgroup), [0, 0, 0])
            if rec.lost:
                side[2] += rec.lost
            else:
                side[0] += rec.flags & 1
                side[1] += rec.length
    return out


def test_socket_counters_counted_in_c_equal_a_loop_over_the_records() -> None:
    """sockets() (every batch, whichever path decodes it) against the records one by one:
    paths (equal strings that are distinct objects too), sides, cgroups, losses, closes,
    message starts; and Metrics.add_records labels the paths in the order they came."""
    rng = random.Random(7)
    for size in (0, 1, 2, 17, 4096):
        batch = []
        for _ in range(size):
            kind = rng.choice(("data", "data", "data", "lost", "close"))
            length = rng.randrange(1, 5000)
            path = "".join(["/run/s", str(rng.randrange(150))])  # a new str each time
            batch.append(Record(
                ts=1.0, pid=1, tid=1, uid=0, comm="c", inode=1, peer_inode=2, sock_id=1, peer_id=2,
                sock_type="stream", offset=0, path=path, path_is_own=rng.random() < 0.5, kind=kind,
                length=0 if kind == "close" else length, lost=length if kind == "lost" else 0,
                data=b"x" if kind == "data" else b"", flags=rng.randrange(4),
                cgroup=rng.choice((0, 0, 7, 2**63 + 5)),
            ))  # fmt: skip
        want = per_record(batch)
        # the data records as a packed capture gives them, half of them
        twins = [packed_twin(r) if r.kind == "data" and rng.random() < 0.5 else r for r in batch]
        got = fast_sockets(twins)
        assert [(p, o, c) for p, o, c, *_ in got] == list(want)
        assert {(p, o, c): list(v) for p, o, c, *v in got} == want
        metrics = Metrics()
        metrics.add_records(batch)
        labelled = list(dict.fromkeys(p for p, _, _ in want))[:MAX_PATHS]
        assert metrics._paths == set(labelled)
        assert metrics.records == size


def test_a_limit_hands_the_count_back_to_python(endpoint: str, handled: list[int]) -> None:
    """-c N (write's limit) counts each transaction in Python: a first write with a limit
    never takes the native path; a limit after native writes releases the connections
    the core owns (their transactions counted, not lost nor counted twice)."""
    records = mixed(capture("redis"), random.Random(3))  # Packed ones too: unpacked in Python
    batches = [records[i : i + 64] for i in range(0, len(records), 64)]
    half = len(batches) // 2
    want, n_py = python_metrics(batches)
    out = MetricsOutput(endpoint, decode=True)
    try:
        n = sum(out.write(batch) for batch in batches[:half])
        assert out._native is not None and out._native.core.owned  # connections in C
        n += sum(out.write(batch, limit=10**9) for batch in batches[half:])
        assert out._native is None
    finally:
        n += out.close(CaptureStats())
    assert sum(handled) > 0
    assert (scrape(out.metrics), n) == (scrape(want), n_py)
    limited = MetricsOutput(f"{endpoint}.2", decode=True)
    try:
        assert limited.write(batches[0] + batches[1], limit=3) == 3
        assert limited._native is None
    finally:
        limited.close(CaptureStats())


def test_the_capture_runs_packed_when_every_output_takes_packed(
    endpoint: str,
) -> None:
    # the capture runs packed only when every output takes Packed records; --metrics
    # beside a decoded output is handed that output's transactions and takes Records
    alone = MetricsOutput(endpoint, decode=True)
    beside = MetricsOutput(f"{endpoint}.2", decode=False)
    listened = MetricsOutput(f"{endpoint}.3", decode=True)
    listened.listeners = [print]
    table = DecodedOutput(None, stats=True, stats_stream=io.StringIO())
    lines = DecodedOutput(io.StringIO(), stats=True, stats_stream=io.StringIO())
    pcapng = PcapngOutput(f"{endpoint}.pcapng")
    try:
        assert alone.takes_packed
        assert not beside.takes_packed and not listened.takes_packed
        # what the capture loop runs packed (cli.loop.run): every output takes them
        for outputs in ([alone], [alone, pcapng], [table, alone], [pcapng]):
            assert packed_sinks(outputs) == outputs
        for outputs in ([], [beside], [listened], [alone, lines], [pcapng, lines]):
            assert packed_sinks(outputs) is None
        # only pcapng sums the payloads: with it, the capture sums them as it copies them
        assert [out.frames_packed for out in (alone, table, pcapng)] == [False, False, True]
    finally:
        for out in (alone, beside, listened, table, lines, pcapng):
            out.close(CaptureStats())
