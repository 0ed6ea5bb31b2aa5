"""The native text lines (outputs/fast.py NativeText, _fast.c) against the Python engine.

Both are fed the same Records in the same batches: every capture in captures/, and
fuzzed connections (those of tests/test_native_stats.py: RESP sessions of the redis
capture mutated and generated exchanges, with the capture's accidents), about half
their data records as Packed twins.  The Python side is the engine's events through
``format_text``, as DecodedOutput prints them without the native path; the native side
is DecodedOutput with text lines alone, as ``usniff --path SOCK`` runs it.  The lines
must be equal, character for character and in the same order.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import random
from collections.abc import Callable, Sequence

import pytest

from tests.support.captures import capture
from tests.test_native_stats import NAMES, Conn, as_record, batched, command, fuzzed, mixed
from usniff._events import Packed
from usniff.containers import Containers, Identity
from usniff.decoders.engine import Decoding
from usniff.events import CaptureStats, Record
from usniff.outputs.decoded import DecodedOutput, format_text
from usniff.outputs.fast import NativeText

CASES = 16_000  # fuzzed connections in all (SEEDS x CASES // len(SEEDS))
SEEDS = range(4)


def python_lines(
    batches: Sequence[list[Record | Packed]], redact: bool, containers: Containers
) -> list[str]:
    decoding = Decoding(redact=redact)
    lines = []
    for batch in batches:
        events = decoding.feed([as_record(r) for r in batch])
        lines += [format_text(ev, containers) for ev in events]
    return lines + [format_text(ev, containers) for ev in decoding.finish()]


def native_lines(
    batches: Sequence[list[Record | Packed]], redact: bool, containers: Containers
) -> tuple[list[str], int]:
    """The lines, and how many of them the C core rendered."""
    stream = io.StringIO()
    out = DecodedOutput(stream, redact=redact, stats_stream=io.StringIO(), containers=containers)
    native = out._native
    assert isinstance(native, NativeText)
    rendered = 0
    take = native._take

    def counting_take() -> int:
        nonlocal rendered
        n = take()
        rendered += n
        return n

    native._take = counting_take  # type: ignore[method-assign]
    for batch in batches:
        out.write(batch)
    out.close(CaptureStats())
    return stream.getvalue().splitlines(), rendered


def assert_same(
    records: Sequence[Record],
    rng: random.Random,
    redact: bool = False,
    containers: Containers | None = None,
) -> int:
    batches = batched(mixed(records, rng), rng)
    want = python_lines(batches, redact, containers or Containers())
    got, rendered = native_lines(batches, redact, containers or Containers())
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        assert b == a, f"line {i}"
    assert len(got) == len(want)
    return rendered


@pytest.mark.parametrize("name", NAMES)
def test_every_capture_gives_the_same_lines(name: str) -> None:
    records = capture(name)
    for seed in range(2):
        rendered = assert_same(records, random.Random(seed), redact=bool(seed))
        if name == "redis":  # the core rendered lines, not only the engine
            assert rendered > 100, rendered


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_connections_give_the_same_lines(seed: int) -> None:
    rng = random.Random(seed)
    rendered = 0
    for records in fuzzed(seed, CASES // len(SEEDS)):
        rendered += assert_same(records, rng, redact=seed % 2 == 1)
    assert rendered > 300  # the native path ran (and handed back at the accidents)


# requests and replies of every kind the core renders, and of some it leaves to Python
RENDERED = (
    (
        [b"get", b"k"], [b"SET", b"k", b"v" * 47], [b"SET", b"k", b"v" * 48],
        [b"SET", b"k", b"v" * 49],
        [b"SET", b"k", b"x" * 300], [b"SET", b'q"\\ \t\n\r\x00\x7f\x80\xff', b""],
        [b"SET", b"k", b"\x01" * 60], [b"MSET", *(b"k%d" % i for i in range(20))],
        [b"MSET", *(b"key-%d" % i * 3 for i in range(15))], [b"g\xe9t", b"k"], [b"G T", b"k"],
        [b"", b"k"], [b"n" * 300], [b"CLIENT", b"setname", b"a"], [b"DEL", b" "],
    ),
    (
        b"+OK\r\n", b"-ERR wrong type\r\n", b":0\r\n", b":-12\r\n", b":007\r\n", b"$-1\r\n",
        b"$0\r\n\r\n", b"$2\r\nv\x07\r\n", b"$70\r\n" + b"w" * 70 + b"\r\n",
        b"$300\r\n" + b"\t" * 300 + b"\r\n", b"*-1\r\n", b"*0\r\n",
        b"*3\r\n$1\r\na\r\n$-1\r\n:5\r\n", b"*2\r\n+x y\r\n-E\r\n", b"*1\r\n*-1\r\n",
        b"*20\r\n" + b"$3\r\nabc\r\n" * 20, b"*20\r\n" + b":1\r\n" * 19 + b"*1\r\n:2\r\n",
        b"*2\r\n*1\r\n:1\r\n:2\r\n", b"+caf\xc3\xa9\r\n", b"+a\tb\r\n", b"-\x1b[31m\r\n",
        b"*1\r\n+\xff\r\n", b"%1\r\n+a\r\n:1\r\n", b"_\r\n", b":99999999999999999999\r\n",
        b"*4\r\n" + b"$60\r\n" + b"z" * 60 + b"\r\n" + b"$60\r\n" + b"\n" * 60 + b"\r\n" * 2,
    ),
)  # fmt: skip


def test_every_rendering_as_the_engine_gives_it() -> None:
    """Each request and reply above, in pipelines, on plain connections: the core
    renders what it can exactly (escapes, cuts, clips, arrays) and leaves the rest."""
    rng = random.Random(4)
    conns = []
    for cid in range(40):
        sends = []
        for _ in range(30):
            n = rng.choice((1, 1, 3))
            requests = [rng.choice(RENDERED[0]) for _ in range(n)]
            sends += [(0, b"".join(command(w) for w in requests))]
            sends += [(1, b"".join(rng.choice(RENDERED[1]) for _ in range(n)))]
        conns.append(list(Conn(cid, rng).records(sends, 5.0 + cid / 7)))
    interleaved = [rec for recs in itertools.zip_longest(*conns) for rec in recs if rec]
    assert assert_same(interleaved, random.Random(2)) > 300


# seconds between a request and its reply, exact in the records: ties of %.3f ms (2**-7 s
# is 7.8125 ms), a hair off them, and latencies whose ms * 1000 rounds to a tie as a double
# when the exact value is not one (printf rounds 5.1754999... ms down, rint(5175.5) up)
EXACT = (
    0.0, 2**-7, 3 * 2**-7, 2**-7 + 2**-40, 2**-7 - 2**-40, 2**-20,
    *map(float.fromhex, ("0x1.532e7b3d8e000p-8", "0x1.acd184c272000p-7", "0x1.2cd184c272000p-6")),
)  # fmt: skip


def exchanges(conn: Conn, first: float, gaps: Sequence[float], step: float) -> list[Record]:
    """PING and its PONG ``gap`` later, each request ``step`` after the one before."""
    ping, pong = command([b"PING"]), b"+PONG\r\n"
    records = []
    for i, gap in enumerate(gaps):
        ts = first + i * step
        records.append(conn._record(0, i * len(ping), len(ping), ping, ts))
        records.append(conn._record(1, i * len(pong), len(pong), pong, ts + gap))
    return records


def test_latencies_formatted_as_printf_formats_them() -> None:
    """The core rounds a latency to microseconds itself (not by printf's %f) and must
    print what ``f"{latency * 1000:.3f} ms"`` prints: ties, near ties, any size."""
    rng = random.Random(9)
    start, step = 4.0, 1 / 16  # in [4, 8): request + gap is exact, so is their difference
    assert all((start + i * step + g) - (start + i * step) == g for i, g in enumerate(EXACT))
    gaps = [10 ** rng.uniform(-7, 3) for _ in range(3000)]
    gaps += [5e-7, 4.999999e-7, 2.5e-4, 0.1234565, 999.9999995, 1e3, 1234.5, 86400.25]
    records = exchanges(Conn(0, rng), start, EXACT * 4, step)
    records += exchanges(Conn(1, rng), 5.0, gaps, 1e5)
    records.sort(key=lambda r: r.ts)
    assert assert_same(records, random.Random(1)) > len(gaps) // 2


def test_names_of_the_ends_as_the_engine_gives_them() -> None:
    """Containers name the ends (``comm[pid]@container``), an end's process changes mid
    connection (the core hands it back to be renamed), an end not known at first is
    learnt from its peer's records, comms need escaping; secrets are masked (--redact)."""
    containers = Containers()
    for cgroup, name in ((7, "web"), (8, "cache\x1b[2J")):
        containers.learn(Identity(cgroup=cgroup, runtime="docker", container_id="", name=name))
    rng = random.Random(3)
    sends = []
    for i in range(40):
        words = [b"GET", b"k%d" % i]
        if rng.random() < 0.1:
            words = rng.choice(([b"AUTH", b"pw"], [b"CONFIG", b"GET", b"x"]))
        sends += [(0, command(words)), (1, rng.choice(RENDERED[1]))]
    conns: list[list[Record]] = []
    for cid in range(30):
        conn = Conn(cid, rng)
        conns.append(records := [])
        for j, rec in enumerate(conn.records(sends, 1.0 + cid)):
            d = int(rec.sock_id == conn.ids[1])
            change: dict[str, object] = {"cgroup": (7, 8)[d], "peer_cgroup": (8, 7)[d]}
            if cid % 3 == 1 and j > 40:  # another process now sends on the client's socket
                change.update({"pid": 77, "comm": "fork\ter"} if d == 0 else {"peer_pid": 77})
            if cid % 3 == 2 and j < 10:  # the server's process not known yet
                change.update({"peer_pid": 0, "peer_comm": ""} if d == 0 else {})
                if d == 1:
                    continue
            records.append(dataclasses.replace(rec, **change))  # type: ignore[arg-type]
    interleaved = [rec for recs in itertools.zip_longest(*conns) for rec in recs if rec]
    for redact in (False, True):
        assert assert_same(interleaved, random.Random(1), redact, containers) > 200


def test_a_container_named_mid_run_is_named_as_the_engine_names_it() -> None:
    """The core names a connection's ends once, when it takes the connection: an end
    whose cgroup is not in the tree yet (a container just started) stays with the
    engine, which names it at each line, until no later walk can name it otherwise
    (Containers.settled); lines before and after the container is known are the
    engine's lines, character for character."""
    rng = random.Random(6)
    unknown = 2**40 + 11  # in no cgroup tree: learnt mid-run below
    conns = []
    for cid in range(20):
        sends = [(d, command([b"GET", b"k"]) if d == 0 else b"+OK\r\n") for _ in range(40)
                 for d in (0, 1)]  # fmt: skip
        recs = Conn(cid, rng).records(sends, 1.0 + cid)
        conns.append([dataclasses.replace(r, cgroup=unknown) if r.sock_id % 4 == 1 else r
                      for r in recs])  # fmt: skip
    records = [rec for recs in itertools.zip_longest(*conns) for rec in recs if rec]
    batches = [records[i : i + 200] for i in range(0, len(records), 200)]
    name = Identity(cgroup=unknown, runtime="docker", container_id="", name="late")
    outputs, rendered = [], 0
    for native in (False, True):
        containers, lines = Containers(), []
        decoding, stream = Decoding(), io.StringIO()
        out = DecodedOutput(stream, stats_stream=io.StringIO(), containers=containers)
        assert isinstance(out._native, NativeText)
        take = out._native._take

        def counting_take(take: Callable[[], int] = take) -> int:
            nonlocal rendered
            n = take()
            rendered += n
            return n

        out._native._take = counting_take  # type: ignore[method-assign]
        for i, batch in enumerate(batches):
            if i == len(batches) // 2:
                containers.learn(name)
            if native:
                out.write(batch)
            else:
                lines += [format_text(ev, containers) for ev in decoding.feed(batch)]
        if native:
            out.close(CaptureStats())
            lines = stream.getvalue().splitlines()
        else:
            lines += [format_text(ev, containers) for ev in decoding.finish()]
        outputs.append(lines)
    python, native = outputs
    assert any("@late" in line for line in python) and not all("@late" in line for line in python)
    assert native == python
    assert rendered > 100  # the core took the connections once the name was known
