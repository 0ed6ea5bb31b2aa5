"""The C hot path (usniff._fastpath) against independent Python references:
ring-record parsing (struct layout, Record fields) and the EPB checksums."""

from __future__ import annotations

import gc
import random
import struct

import pytest

from usniff import _fastpath
from usniff.capture import collector as capture
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, FLAG_TRUNCATED, CaptureStats, Record
from usniff.outputs.pcapng import IPPROTO_TCP, IPPROTO_UDP, PcapngOutput, _Dir, _Sink


def bare_capture() -> capture.Capture:
    cap = capture.Capture.__new__(capture.Capture)
    cap.stats = CaptureStats()
    cap._init_records()
    cap._clock = 1.7e9
    return cap


def event(kind: int, ino: int, peer: int, data: bytes = b"", **kw: int | bytes) -> memoryview:
    """A ring record of socket ``ino`` (its sock_id is ino + 1000, its peer's peer + 1000)."""
    f = {"ts": 123_456_789_012, "off": 5, "pid": 7, "tid": 8, "uid": 9, "ppid": 10, "flags": 3}
    f.update(kw)  # type: ignore[arg-type]
    length = f.pop("length", len(data))
    hdr = capture._EVENT.pack(
        f["ts"], f["off"], ino + 1000, peer + 1000 if peer else 0,
        ino, f.get("peer_inode", peer), f["pid"], f["tid"], f["uid"], f["ppid"], length,
        len(data) if kind == capture.EV_DATA else 0, kind, f["flags"], f.get("stype", 1),
        f.get("addr_len", 0), f.get("own", 0), f.get("comm", b"redis-cli\0"),
        f.get("peer_comm", b"redis-server\0"),
    )  # fmt: skip
    return memoryview(hdr + data)


def test_event_layout_matches() -> None:
    assert capture._EVENT.size == _fastpath.EVENT_SIZE
    assert capture._STATE.size == _fastpath.SOCK_STATE_SIZE


def test_handle_builds_records() -> None:
    cap = bare_capture()
    addr = b"/run/r.sock\0"
    cap._handle(event(capture.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1))
    assert cap._sock_info == {1011: ("/run/r.sock", True)}
    cap._handle(event(capture.EV_DATA, 11, 12, b"+OK\r\n", comm=b"bad\xff\0" + b"x" * 11))
    cap._handle(event(capture.EV_LOST, 11, 12, length=40, off=10, stype=9))
    data, lost = cap._batch
    assert data == Record(
        1.7e9 + 123_456_789_012 / 1e9, 7, 8, 9, "bad\ufffd", 11, 12, "stream", "/run/r.sock",
        True, 5, 5, b"+OK\r\n", 0, 3, "data", 10, 1011, 1012, "redis-server",
    )  # fmt: skip
    assert lost == Record(
        1.7e9 + 123_456_789_012 / 1e9, 7, 8, 9, "redis-cli", 11, 12, "9", "/run/r.sock",
        True, 10, 40, b"", 40, 3, "lost", 10, 1011, 1012, "redis-server",
    )  # fmt: skip
    st = cap.stats
    assert (st.records, st.bytes, st.bytes_kept, st.lost_records, st.lost_bytes) == (1, 5, 5, 1, 40)
    assert cap._last == {1011: lost}


def test_records_are_left_out_of_the_cyclic_gc() -> None:
    # a Record holds only atomic values; tracked, every batch was re-traversed
    # by the collections its own allocations triggered
    cap = bare_capture()
    cap._handle(event(capture.EV_DATA, 11, 12, b"+OK\r\n"))
    (rec,) = cap._batch
    assert not gc.is_tracked(rec)
    assert gc.is_tracked(Record(0.0, 1, 1, 0, "", 1, 0, "stream", "", False, 0, 0))


def test_attributes_a_callback_rebinds_are_read_again() -> None:
    # _fastpath reads the Capture's attributes once per drain and again after
    # each call into Python: a record must land in the list bound now
    cap = bare_capture()
    old_batch, old_last = cap._batch, cap._last

    def lookup(sock_id: int, ino: int, peer: int) -> tuple[str, bool]:
        cap._batch, cap._last = [], {}
        return ("/run/r.sock", False)

    cap._lookup = lookup  # type: ignore[method-assign]
    cap._handle(event(capture.EV_DATA, 11, 12, b"+OK\r\n"))
    (rec,) = cap._batch
    assert rec.path == "/run/r.sock" and cap._last == {1011: rec}
    assert old_batch == [] and old_last == {}


def test_packed_records_are_the_same_records() -> None:
    """With Capture.packed, data on a connected stream socket comes as a
    Packed: its record() is the Record made without it; losses, datagrams
    and sockets without a known address still come as Records."""
    addr = b"/run/r.sock\0"
    evs = [
        event(capture.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1),
        event(capture.EV_DATA, 11, 12, b"+OK\r\n", comm=b"bad\xff\0" + b"x" * 11),
        event(capture.EV_DATA, 11, 12, b"abc", length=10, flags=FLAG_TRUNCATED),
        event(capture.EV_LOST, 11, 12, length=40, off=10),
        event(capture.EV_DATA, 13, 0, b"dgram", stype=2),
        event(capture.EV_DATA, 15, 16, b"late"),  # its address comes from _lookup
    ]
    caps = []
    for packed in (False, True):
        cap = bare_capture()
        cap.packed = packed
        cap._sock_info[1013] = ("/run/log", False)
        cap._lookup = lambda sock_id, ino, peer: ("", False)  # type: ignore[method-assign]
        for ev in evs:
            cap._handle(ev)
        caps.append(cap)
    plain, packed = caps
    kinds = [type(r).__name__ for r in packed._batch]
    assert kinds == ["Packed", "Packed", "Record", "Record", "Packed"]
    full = [r.record() if isinstance(r, _fastpath.Packed) else r for r in packed._batch]
    assert full == plain._batch
    first = packed._batch[0]
    assert isinstance(first, _fastpath.Packed)
    assert (first.ts, len(first), bytes(memoryview(first))) == (plain._batch[0].ts, 5, b"+OK\r\n")
    assert packed.stats == plain.stats
    assert packed._last[1015] is packed._batch[-1]


def _records_for_pcapng() -> list[memoryview]:
    """Two connections, both directions, a tid change (new comment), a gap
    (loss record), a snap-length cut, a payload spliced by reference (>= 4 KiB),
    a datagram socket and a client seen before its address: what Framer.add
    and the C framing share between them."""
    server, dgram = b"/run/r.sock\0", b"/run/log\0"
    evs = [
        event(capture.EV_SOCK, 21, 0, server, addr_len=len(server), own=1),
        event(capture.EV_SOCK, 31, 0, server, addr_len=len(server), own=1),
        event(capture.EV_SOCK, 41, 0, dgram, addr_len=len(dgram), own=0),
    ]
    offs: dict[int, int] = {}
    rnd = random.Random(7)
    ts = 1_000_000_000
    for i in range(400):
        ino, peer = rnd.choice([(21, 22), (22, 21), (31, 32), (32, 31)])
        ts += rnd.randrange(1, 50_000)
        off = offs.get(ino, 0)
        kind, size = capture.EV_DATA, rnd.choice([1, 31, 200, 5000])
        extra: dict[str, int | bytes] = {"tid": 8 + (i // 100)}
        if i in (150, 151):
            kind, size = capture.EV_LOST, 64
        if i == 260:
            extra.update(length=size + 100, flags=FLAG_MSG_START | FLAG_TRUNCATED)
        data = b"" if kind == capture.EV_LOST else bytes(rnd.randrange(256) for _ in range(size))
        length = int(extra.pop("length", size))
        offs[ino] = off + length
        evs.append(event(kind, ino, peer, data, ts=ts, off=off, length=length, **extra))
        if i % 37 == 0:
            evs.append(event(capture.EV_DATA, 41, 0, b"<13>msg", ts=ts, off=i, stype=2,
                             flags=FLAG_MSG_START | FLAG_MSG_END))  # fmt: skip
    evs.append(event(capture.EV_DATA, 51, 52, b"later", ts=ts + 1, off=0))
    return evs


def test_packed_pcapng_is_byte_identical(tmp_path: object) -> None:
    files = []
    for packed in (False, True):
        cap = bare_capture()
        cap.packed = packed
        cap._lookup = lambda sock_id, ino, peer: (  # type: ignore[method-assign]
            "/run/other.sock",
            False,
        )
        path = f"{tmp_path}/{packed}.pcapng"
        out = PcapngOutput(path, snaplen=0, clock=lambda: 1.7e9)
        evs = _records_for_pcapng()
        for start in range(0, len(evs), 97):
            for ev in evs[start : start + 97]:
                cap._handle(ev)
            out.write(cap._release(float("inf")))
        cap._last.clear()
        out.close(cap.stats)
        files.append(open(path, "rb").read())  # noqa: SIM115
    plain, packed = files
    assert len(plain) > 500_000 and packed == plain


def ones_sum(data: bytes) -> int:
    """RFC 1071 ones' complement sum of big-endian words, the plain way."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_checksums_verify() -> None:
    rnd = random.Random(1)
    for proto in (IPPROTO_TCP, IPPROTO_UDP):
        d = _Dir(0x0A000001, 0x0A800002, 6379, 49152, proto, 2)
        d.peer = _Dir(0x0A800002, 0x0A000001, 49152, 6379, proto, 1)
        for n in [*range(40), 255, 1023, 1025, 4095, 4096, 65495]:
            payload = rnd.randbytes(n)
            buf = _Sink()
            if proto == IPPROTO_TCP:
                _fastpath.tcp(buf, d, 1.5, 0x18, rnd.randrange(1 << 40), payload, n, b"", b"")
            else:
                _fastpath.udp(buf, d, 1.5, payload, n, b"")
            block = b"".join(bytes(p) for p in buf.pieces())
            caplen = struct.unpack_from("<I", block, 20)[0]
            pkt = block[28 : 28 + caplen]
            assert pkt[20 + (8 if proto == IPPROTO_UDP else 20) :] == payload
            assert ones_sum(pkt[:20]) == 0xFFFF
            pseudo = pkt[12:20] + struct.pack("!BBH", 0, proto, len(pkt) - 20)
            assert ones_sum(pseudo + pkt[20:]) == 0xFFFF, (proto, n)


def test_drain_walks_ring() -> None:
    """_fastpath.drain over a ring laid out like the kernel's (ringbuf.py): a
    record that wraps, a discarded one, a busy one, ``limit``, and an error."""
    page, size = 4096, 4096
    cons, prod = bytearray(page), bytearray(page + 2 * size)
    ring = bytearray(size)
    start = 5 * size - 64  # the first record wraps around the end of the data area
    pos = start

    def put(rec: bytes, busy: bool = False, discard: bool = False) -> None:
        nonlocal pos
        hdr = len(rec) | (1 << 31 if busy else 0) | (1 << 30 if discard else 0)
        for i, b in enumerate(struct.pack("<II", hdr, 0) + rec):
            ring[(pos + i) % size] = b
        pos += (len(rec) + 8 + 7) & ~7
        prod[page:] = ring + ring  # the data pages are mapped twice
        struct.pack_into("<Q", prod, 0, pos)

    cap = bare_capture()
    announced: list[memoryview] = []
    cap._announce = lambda rec: (announced.append(rec), capture.Capture._announce(cap, rec))[0]  # type: ignore[method-assign]
    struct.pack_into("<Q", cons, 0, start)
    addr = b"/run/r.sock\0"
    put(bytes(event(capture.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1)))
    first = pos - start
    put(bytes(event(capture.EV_DATA, 11, 12, b"one")))
    put(bytes(event(capture.EV_DATA, 11, 12, b"dropped")), discard=True)
    put(bytes(event(capture.EV_DATA, 11, 12, b"two!")))
    done = pos
    put(bytes(event(capture.EV_DATA, 11, 12, b"three")), busy=True)

    assert _fastpath.drain(cap, cons, prod, 1) == first  # limit: the first record only
    assert [r.data for r in cap._batch] == [] and cap._sock_info == {1011: ("/run/r.sock", True)}
    assert len(announced) == 1
    with pytest.raises(ValueError):
        bytes(announced[0])  # released after the call: the ring space is reused
    assert _fastpath.drain(cap, cons, prod, 1 << 62) == done - start - first
    assert [r.data for r in cap._batch] == [b"one", b"two!"]
    assert (cap.stats.records, cap.stats.bytes) == (2, 7)  # added once, at the end of the drain
    assert struct.unpack_from("<Q", cons)[0] == done  # stopped at the busy record

    cap._sock_info = {}  # the next record's socket is unknown: _lookup raises
    cap._lookup = lambda sock_id, ino, peer: 1 / 0  # type: ignore[method-assign,assignment]
    busy_at = done
    ring[busy_at % size + 3] &= 0x7F  # committed now
    prod[page:] = ring + ring
    put(bytes(event(capture.EV_DATA, 11, 12, b"four")))
    with pytest.raises(ZeroDivisionError):
        _fastpath.drain(cap, cons, prod, 1 << 62)
    assert struct.unpack_from("<Q", cons)[0] == busy_at  # published up to the last handled
    assert (cap.stats.records, cap.stats.bytes) == (2, 7)
