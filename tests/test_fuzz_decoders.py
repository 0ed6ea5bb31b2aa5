"""Fuzzing: random, mutated (from the real captures), truncated and gapped streams.

The decoders must never raise and never hang.  Each hypothesis example runs a
batch of inputs (one input = one fresh decoder fed a whole stream, then
closed) so that, with the ``ci`` profile (250 examples), every decoder sees
more than 100k inputs in well under a minute; ``HYPOTHESIS_PROFILE=nightly``
runs 20x more.  ``test_zz_inputs_counted`` checks the count.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import capture
from hypothesis import given, settings
from hypothesis import strategies as st

from usniff.decoders.base import Decoder, Notice, Transaction
from usniff.decoders.http import HttpDecoder
from usniff.decoders.memcached import MemcachedDecoder
from usniff.decoders.mysql import MysqlDecoder
from usniff.decoders.postgres import PostgresDecoder
from usniff.decoders.resp import RespDecoder
from usniff.streams import Direction, conn_key

DECODERS: dict[str, Callable[[], Decoder]] = {
    "resp": RespDecoder,
    "mysql": MysqlDecoder,
    "postgres": PostgresDecoder,
    "http": HttpDecoder,
    "memcached": MemcachedDecoder,
}
CAPTURE = {
    "resp": "redis", "mysql": "mysql", "postgres": "postgres", "http": "http",
    "memcached": "memcached",
}  # fmt: skip
RANDOM_BATCH = 400
MUTATED_BATCH = 40
COUNTS: Counter[str] = Counter()
RAN: set[str] = set()

# a stream is a list of steps: (direction, bytes) to feed or (direction, n) for a gap
Step = tuple[Direction, bytes | int]

ALPHABET = {
    "resp": b"*$+-:%~>|_#,(!=;.?\r\n0123456789-abcdefPINGSET ",
    "mysql": b"\x00\x01\x02\x03\x05\x0a\x0e\x16\x17\x19\xfb\xfc\xfd\xfe\xff#def\x08\x0cSELECT",
    "postgres": b"\x00\x00\x00\x00\x03\x04\x05\x06\x08\x0aQPBEDSXHCpTDCZRNAGHdcf123nstISELECT",
    "http": b"GET POST HTTP/1.1 101 200\r\n\r\n: 0123456789abcdef;Content-Length:Transfer-Encoding:"
    b"chunked Host:Upgrade:Connection:close Expect:100-continue",
    "memcached": b"\r\n 0123456789-getsmvqOkVALUEND VA HD EN MN STAT ERROR noreply",
}


def feed(name: str, steps: list[Step]) -> None:
    decoder = DECODERS[name]()
    events = []
    ts = 1.0
    for direction, item in steps:
        ts += 0.001
        if isinstance(item, int):
            events += decoder.gap(direction, item, ts, False)
        else:
            events += decoder.feed(direction, item, ts)
    events += decoder.close()
    for ev in events:
        assert isinstance(ev, Transaction | Notice)
        if isinstance(ev, Transaction):
            assert ev.bytes_in >= 0 and ev.bytes_out >= 0 and isinstance(ev.reply, str)
    COUNTS[name] += 1


def random_stream(name: str, rng: random.Random) -> list[Step]:
    alphabet = ALPHABET[name]
    steps: list[Step] = []
    for _ in range(rng.randint(1, 8)):
        direction = Direction(rng.random() < 0.5)
        if rng.random() < 0.1:
            steps.append((direction, rng.randint(1, 100)))
        elif rng.random() < 0.5:
            steps.append((direction, rng.randbytes(rng.randint(0, 64))))
        else:
            steps.append((direction, bytes(rng.choices(alphabet, k=rng.randint(0, 64)))))
    return steps


def _sessions(name: str) -> list[list[Step]]:
    """Per connection, the chunks of both directions in capture order (small ones only)."""
    conns: dict[object, list[Step]] = {}
    if CAPTURE[name] in PCAPNG:
        return _pcapng_sessions(CAPTURE[name])
    for rec in capture(CAPTURE[name]):
        if rec.kind == "data" and len(rec.data) < 4096:
            direction = Direction.SERVER if rec.path_is_own else Direction.CLIENT
            conns.setdefault(conn_key(rec), []).append((direction, rec.data))
    return list(conns.values())


PCAPNG = {
    "postgres",
    "http",
    "memcached",
}  # captures recorded live by usniff (captures/record_live.py)


def _pcapng_sessions(name: str) -> list[list[Step]]:
    """The same from captures/<name>.pcapng, read by ``usniff read`` as raw records."""
    path = Path(__file__).resolve().parent.parent / "captures" / f"{name}.pcapng"
    usniff = str(Path(sys.executable).with_name("usniff"))
    out = subprocess.run([usniff, "read", str(path), "--protocol", "raw", "--format", "json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    conns: dict[object, list[Step]] = {}
    for line in out.stdout.splitlines():
        row = json.loads(line)
        if "data" in row and row["len"] < 4096:
            direction = Direction.SERVER if row["direction"] == "server" else Direction.CLIENT
            key = tuple(sorted((row["sock_id"], row["peer_id"])))
            conns.setdefault(key, []).append((direction, base64.b64decode(row["data"])))
    return list(conns.values())


SESSIONS = {name: _sessions(name) for name in DECODERS}


def mutate(steps: list[Step], rng: random.Random) -> list[Step]:
    start = rng.randrange(len(steps)) if rng.random() < 0.3 else 0  # mid-stream start
    out = list(steps[start : start + rng.randint(1, 40)])
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        direction, item = out[i]
        data = item if isinstance(item, bytes) else b""
        op = rng.randrange(7)
        if op == 0 and data:  # flip a byte
            j = rng.randrange(len(data))
            out[i] = (direction, data[:j] + bytes([rng.randrange(256)]) + data[j + 1 :])
        elif op == 1:  # lose the chunk: a gap
            out[i] = (direction, len(data) or 1)
        elif op == 2:  # drop it silently
            del out[i]
        elif op == 3:  # duplicate it
            out.insert(i, out[i])
        elif op == 4 and data:  # split it
            j = rng.randrange(len(data) + 1)
            out[i : i + 1] = [(direction, data[:j]), (direction, data[j:])]
        elif op == 5:  # truncate the stream here
            del out[i + 1 :]
            if data:
                out[i] = (direction, data[: rng.randrange(len(data) + 1)])
        else:  # insert random bytes
            out.insert(i, (direction, rng.randbytes(rng.randint(1, 16))))
        if not out:
            break
    return out


@pytest.mark.parametrize("name", DECODERS)
@given(data=st.binary(max_size=512), seed=st.integers(0, 2**32))
def test_random_streams(name: str, data: bytes, seed: int) -> None:
    RAN.add(f"random-{name}")
    half = len(data) // 2
    feed(name, [(Direction.CLIENT, data[:half]), (Direction.SERVER, data[half:])])
    rng = random.Random(seed)
    for _ in range(RANDOM_BATCH - 1):
        feed(name, random_stream(name, rng))


@pytest.mark.parametrize("name", DECODERS)
@given(seed=st.integers(0, 2**32))
def test_mutated_captures(name: str, seed: int) -> None:
    RAN.add(f"mutated-{name}")
    rng = random.Random(seed)
    sessions = SESSIONS[name]
    for _ in range(MUTATED_BATCH):
        feed(name, mutate(rng.choice(sessions), rng))


@pytest.mark.parametrize("name", DECODERS)
def test_unmutated_sessions_decode_cleanly(name: str) -> None:
    """The fuzz corpus itself is sane: real sessions give transactions and no errors."""
    decoder_events = 0
    for steps in SESSIONS[name]:
        decoder = DECODERS[name]()
        for direction, item in steps:
            assert isinstance(item, bytes)
            decoder_events += sum(
                isinstance(e, Transaction) for e in decoder.feed(direction, item, 1.0)
            )
    assert decoder_events > 30


@pytest.mark.parametrize("name", DECODERS)
def test_zz_inputs_counted(name: str) -> None:
    if {f"random-{name}", f"mutated-{name}"} - RAN:
        pytest.skip("fuzz tests for this decoder did not run in this session")
    target = 100_000 * settings().max_examples // 250
    assert COUNTS[name] >= target, COUNTS
