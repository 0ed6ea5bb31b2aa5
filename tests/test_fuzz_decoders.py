"""Fuzzing: random, mutated (from the real captures), truncated and gapped streams.

The decoders must never raise and never hang.  Each hypothesis example runs a
batch of inputs (one input = one fresh decoder fed a whole stream, then
closed) so that, with the ``ci`` profile (250 examples), every decoder sees
more than 100k inputs in well under a minute; ``HYPOTHESIS_PROFILE=nightly``
runs 20x more.  ``test_zz_inputs_counted`` checks the count.
"""

from __future__ import annotations

import gc
import random
import sys
import types
from collections import Counter
from collections.abc import Callable
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.captures import connection_sends
from tests.support.replay import Step, drive
from usniff.decoders.base import Decoder, Notice, Transaction
from usniff.decoders.dbus import DbusDecoder
from usniff.decoders.fastcgi import FastcgiDecoder
from usniff.decoders.http import HttpDecoder
from usniff.decoders.http2 import PREFACE, Http2Decoder
from usniff.decoders.memcached import MemcachedDecoder
from usniff.decoders.mysql import MysqlDecoder, PacketReader
from usniff.decoders.postgres import SSL_REQUEST, Framer, PostgresDecoder
from usniff.decoders.resp import RespDecoder
from usniff.streams import Direction

DECODERS: dict[str, Callable[[], Decoder]] = {
    "resp": RespDecoder,
    "mysql": MysqlDecoder,
    "postgres": PostgresDecoder,
    "http": HttpDecoder,
    "memcached": MemcachedDecoder,
    "fastcgi": FastcgiDecoder,
    "http2": Http2Decoder,
    "dbus": DbusDecoder,
}
CAPTURE = {
    "resp": "redis",
    "mysql": "mysql",
    "postgres": "postgres",
    "http": "http",
    "memcached": "memcached",
    "fastcgi": "fastcgi",
    "http2": "grpc",
    "dbus": "dbus",
}
# transactions the captures give at least (fastcgi's is small: 13 requests)
SESSION_TRANSACTIONS = {
    "resp": 41, "mysql": 41, "postgres": 41, "http": 41, "memcached": 30, "fastcgi": 12,
    "http2": 6,
    "dbus": 41,
}  # fmt: skip
RANDOM_BATCH = 400
MUTATED_BATCH = 40
COUNTS: Counter[str] = Counter()
RAN: set[str] = set()

# a stream is a list of steps: (direction, bytes) to feed or (direction, n) for a gap

ALPHABET = {
    "resp": b"*$+-:%~>|_#,(!=;.?\r\n0123456789-abcdefPINGSET ",
    "mysql": b"\x00\x01\x02\x03\x05\x0a\x0e\x16\x17\x19\xfb\xfc\xfd\xfe\xff#def\x08\x0cSELECT",
    "postgres": b"\x00\x00\x00\x00\x03\x04\x05\x06\x08\x0aQPBEDSXHCpTDCZRNAGHdcf123nstISELECT",
    "http": b"GET POST HTTP/1.1 101 200\r\n\r\n: 0123456789abcdef;Content-Length:Transfer-Encoding:"
    b"chunked Host:Upgrade:Connection:close Expect:100-continue",
    "memcached": b"\r\n 0123456789-getsmvqOkVALUEND VA HD EN MN STAT ERROR noreply",
    "fastcgi": bytes(range(12)) + b"\x80\xff\x00\x00\x00Status: 404\r\n\r\nLocation:FCGI_",
    "http2": bytes(range(10)) + b"\x80\x82\x84\x86\x3f\xe1\xff\x00\x00\x00\x05PRI * HTTP/2.0",
    "dbus": b"\0AUTH EXTERNAL DATA BEGIN OK REJECTED NEGOTIATE_UNIX_FD AGREE_UNIX_FD 3031\r\n"
    b"lB\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09osgvua{}()",
}


def feed(name: str, steps: list[Step]) -> None:
    for ev in drive(DECODERS[name](), steps):
        assert isinstance(ev, Transaction | Notice)
        if isinstance(ev, Transaction):
            assert ev.bytes_in >= 0 and ev.bytes_out >= 0 and isinstance(ev.reply, str)
    COUNTS[name] += 1


_FCGI_KINDS = (1, 1, 2, 3, 4, 4, 5, 6, 6, 7, 8, 9, 10, 11, 12, 200)
_FCGI_CONTENT = (
    b"\x00\x01\x01" + bytes(5),  # BEGIN_REQUEST: RESPONDER, keep-conn
    bytes(8),  # END_REQUEST: complete
    b"\x0b\x09SCRIPT_NAME/a.php\x0e\x03REQUEST_METHODGET",
    b"\x80\x00\x00\x0b\x05SCRIPT_NAMEx",  # a 4-byte name length, cut short
    b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nbody",
    b"Location: /x\n\n",
    b"",
)


def fastcgi_records(rng: random.Random) -> bytes:
    """Well-framed FastCGI records of random types, ids and contents (random bytes
    rarely pass for a record header, the decoder's sync point)."""
    out = b""
    for _ in range(1 + int(rng.random() * 4)):
        kind = _FCGI_KINDS[int(rng.random() * len(_FCGI_KINDS))]
        roll = rng.random()
        if roll < 0.7:
            content = _FCGI_CONTENT[int(roll * 10)]
        else:
            content = rng.randbytes(int(rng.random() * 40))
        padding = int(rng.random() * 8)
        rid = (0, 1, 1, 2, 3, 65535)[int(rng.random() * 6)]
        out += bytes([1, kind]) + rid.to_bytes(2, "big") + len(content).to_bytes(2, "big")
        out += bytes([padding, 0]) + content + bytes(padding)
    return out


_H2_PAYLOADS = (
    b"\x82\x86\x84\x41\x09localhost",  # HPACK: GET http / :authority (static table)
    b"\x88",  # :status 200
    b"\xbe\xbf",  # dynamic table entries (maybe not there)
    b"\x3f\xe1\x1f",  # a dynamic table size update
    b"\x00\x00\x00\x00\x03\x08\x96\x01",  # a gRPC message
    b"\x00\x00\x00\x00\x08",  # ... cut short
    bytes(8),
    b"",
)


def http2_frames(rng: random.Random) -> bytes:
    """Well-framed HTTP/2 frames of random types, flags, streams and payloads, after
    the preface half of the time."""
    out = PREFACE if rng.random() < 0.5 else b""
    for _ in range(1 + int(rng.random() * 5)):
        kind = int(rng.random() * 11)
        roll = rng.random()
        payload = (_H2_PAYLOADS[int(roll * 10)] if roll < 0.8
                   else rng.randbytes(int(rng.random() * 40)))  # fmt: skip
        flags = (0, 1, 4, 5, 8, 0x20, 0xFF)[int(rng.random() * 7)]
        sid = (0, 1, 1, 3, 5, 2**31 - 1)[int(rng.random() * 6)]
        out += len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big")
        out += payload
    return out


_DBUS_SIGNATURES = (b"", b"s", b"a{sv}", b"v", b"aay", b"(ii)", b"a()", b"h", b"av", b"((s))", b"x")
_DBUS_VALUES = (b"", b"\x00" * 8, b"\x03\x00\x00\x00abc\x00", b"\xff" * 8, b"\x01v\x00" * 8,
                b"\x01a\x00\x00", b"\x10\x00\x00\x00")  # fmt: skip


def dbus_messages(rng: random.Random) -> bytes:
    """Well-framed D-Bus messages (either endianness) with random header fields, a
    signature from a list (some invalid) and a body of values that may not fit it."""
    out = b""
    for _ in range(1 + int(rng.random() * 3)):
        order: Literal["little", "big"] = "little" if rng.random() < 0.5 else "big"
        fields = b""
        for _ in range(int(rng.random() * 4)):
            code = int(rng.random() * 11)
            if rng.random() < 0.5:
                value = int(rng.random() * 4).to_bytes(4, order)  # u: reply serial, unix fds
                field = bytes([code, 1]) + b"u\0" + value
            elif rng.random() < 0.5:
                sig = _DBUS_SIGNATURES[int(rng.random() * len(_DBUS_SIGNATURES))]
                field = bytes([code, 1]) + b"g\0" + bytes([len(sig)]) + sig + b"\0"
            else:
                text = rng.choice((b"/a", b"org.x", b"Ping", b"\xff"))
                field = bytes([code, 1]) + b"s\0" + len(text).to_bytes(4, order) + text + b"\0"
            fields += field + bytes(-len(field) % 8)
        body = b"".join(rng.choice(_DBUS_VALUES) for _ in range(int(rng.random() * 3)))
        head = (b"l" if order == "little" else b"B") + bytes([1 + int(rng.random() * 4),
                int(rng.random() * 2), 1])  # fmt: skip
        head += len(body).to_bytes(4, order) + (1 + int(rng.random() * 3)).to_bytes(4, order)
        head += len(fields).to_bytes(4, order) + fields
        out += head + bytes(-len(head) % 8) + body
    return out


FRAMED = {"fastcgi": fastcgi_records, "http2": http2_frames, "dbus": dbus_messages}


def random_stream(name: str, rng: random.Random) -> list[Step]:
    alphabet = ALPHABET[name]
    steps: list[Step] = []
    for _ in range(rng.randint(1, 8)):
        direction = Direction(rng.random() < 0.5)
        if rng.random() < 0.1:
            steps.append((direction, rng.randint(1, 100)))
        elif name in FRAMED and rng.random() < 0.5:
            steps.append((direction, FRAMED[name](rng)))
        elif rng.random() < 0.5:
            steps.append((direction, rng.randbytes(rng.randint(0, 64))))
        else:
            steps.append((direction, bytes(rng.choices(alphabet, k=rng.randint(0, 64)))))
    return steps


# per connection, the chunks of both directions in capture order (small ones only)
SESSIONS = {name: connection_sends(CAPTURE[name], max_size=4095) for name in DECODERS}


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
    assert decoder_events >= SESSION_TRANSACTIONS[name]


@pytest.mark.parametrize("name", DECODERS)
def test_zz_inputs_counted(name: str) -> None:
    if {f"random-{name}", f"mutated-{name}"} - RAN:
        pytest.skip("fuzz tests for this decoder did not run in this session")
    target = 100_000 * settings().max_examples // 250
    assert COUNTS[name] >= target, COUNTS


LONG_INPUTS = 2000  # random and mutated streams fed to one decoder, back to back
RETAINED_LIMIT = 256 << 10  # bytes a decoder may hold, whatever it was fed
_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType)  # fmt: skip


def held_bytes(root: object) -> int:
    """The size of every object reachable from ``root`` (its buffers, pending
    requests, previews), classes, modules and functions left out."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SHARED):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


@pytest.mark.parametrize("name", DECODERS)
def test_one_connection_fed_fuzz_keeps_bounded_memory(name: str) -> None:
    """Bounded memory: ONE decoder (a connection that never ends) fed thousands of
    random and mutated streams with gaps, more than twice RETAINED_LIMIT in all,
    never holds more than RETAINED_LIMIT: what it buffers for partial messages,
    pending requests and previews is capped, whatever the bytes."""
    rng = random.Random(18)
    decoder = DECODERS[name]()
    fed, held = 0, 0
    for i in range(LONG_INPUTS):
        steps = mutate(rng.choice(SESSIONS[name]), rng) if i % 2 else random_stream(name, rng)
        for direction, item in steps:
            if isinstance(item, int):
                decoder.gap(direction, item, 1.0, False)
            else:
                decoder.feed(direction, item, 1.0)
                fed += len(item)
        if i % 50 == 49:
            held = max(held, held_bytes(decoder))
    assert fed > 2 * RETAINED_LIMIT
    assert held < RETAINED_LIMIT, held


def _pieces(data: bytes, cut: random.Random | int) -> list[bytes]:
    """``data`` cut at random points, or in pieces of ``cut`` bytes."""
    if isinstance(cut, int):
        return [data[i : i + cut] for i in range(0, len(data), cut)]
    points = sorted(cut.sample(range(1, len(data)), min(len(data) - 1, cut.randint(0, 4))))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _framed(
    name: str, chunks: list[bytes], cut: random.Random | int, start: tuple[bool, bool]
) -> list[object]:
    """What the decoder's framing gives of one direction's ``chunks``, each cut in pieces;
    ``start``: PostgreSQL's framer begins untyped (a client), single (SSLRequest's answer)."""
    out: list[object] = []
    if name == "mysql":
        reader = PacketReader()
        for chunk in chunks:
            for piece in _pieces(chunk, cut):
                out += reader.feed(piece)
    else:
        framer = Framer()
        framer.untyped, framer.single = start
        for chunk in chunks:
            for piece in _pieces(chunk, cut):
                out += framer.feed(piece, 1.0)
    return out


@pytest.mark.parametrize("name", ["mysql", "postgres"])
def test_how_the_bytes_are_cut_changes_no_message(name: str) -> None:
    """MySQL's PacketReader and PostgreSQL's Framer read whole packets in place (_whole)
    and the rest through their buffers: the same packets whatever the cuts."""
    rng, streams = random.Random(3), 0
    for steps in SESSIONS[name]:
        ssl = steps[0][1][4:8] == SSL_REQUEST.to_bytes(4, "big")  # type: ignore[index]
        for direction in Direction:
            chunks = [item for d, item in steps if d is direction and isinstance(item, bytes)]
            if not chunks:
                continue
            start = (direction is Direction.CLIENT, ssl and direction is Direction.SERVER)
            whole = _framed(name, chunks, 1 << 30, start)
            assert whole, "the framing read the capture's packets"
            assert whole == _framed(name, chunks, 1, start)
            for _ in range(5):
                assert whole == _framed(name, chunks, rng, start)
            streams += 1
    assert streams >= 4
