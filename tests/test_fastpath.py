"""The C hot path against independent Python references: the record
assembler (usniff.capture._records: ring-record parsing, struct layout, Record
fields) and the EPB encoder (usniff.outputs._epb: blocks, headers, checksums,
segments, against a reference encoder written here)."""

from __future__ import annotations

import gc
import random
import struct
import subprocess
import sys

import pytest

from usniff import _events
from usniff.capture import _records, collector, records
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, FLAG_TRUNCATED, CaptureStats, Record
from usniff.formats.pcapng import IPPROTO_TCP, IPPROTO_UDP
from usniff.outputs import _epb
from usniff.outputs._epb import Sink
from usniff.outputs.pcapng import PcapngOutput, _Dir

Assembler = records.RecordAssembler[Record | _events.Packed]


def assembler(packed: bool = False, sums: bool = False, **methods: object) -> Assembler:
    """The capture's record handling alone, at a fixed clock; ``methods``
    replace the callbacks its core is given (``_lookup=lambda self, ...: ...``)."""
    cls = type("Assembler", (records.RecordAssembler,), methods)
    cap: Assembler = cls(CaptureStats(), packed=packed, sums=sums)
    cap.core.clock = 1.7e9
    return cap


def event(kind: int, ino: int, peer: int, data: bytes = b"", **kw: int | bytes) -> memoryview:
    """A ring record of socket ``ino`` (its sock_id is ino + 1000, its peer's peer + 1000)."""
    f = {"ts": 123_456_789_012, "off": 5, "pid": 7, "tid": 8, "uid": 9, "ppid": 10, "flags": 3}
    f.update(kw)  # type: ignore[arg-type]
    length = f.pop("length", len(data))
    hdr = records.EVENT.pack(
        f["ts"], f["off"], ino + 1000, peer + 1000 if peer else 0,
        ino, f.get("peer_inode", peer), f.get("cgroup", 0), f.get("peer_cgroup", 0), f["pid"],
        f["tid"], f["uid"], f["ppid"], length,
        len(data) if kind == records.EV_DATA else 0, kind, f["flags"], f.get("stype", 1),
        f.get("addr_len", 0), f.get("own", 0), f.get("comm", b"redis-cli\0"),
        f.get("peer_comm", b"redis-server\0"),
    )  # fmt: skip
    return memoryview(hdr + data)


@pytest.mark.parametrize("module", ["usniff.capture._records", "usniff.outputs._epb"])
def test_each_c_module_imports_first(module: str) -> None:
    # each imports usniff._events' C API itself (a capsule is found only once
    # its module is imported)
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)


def test_event_layout_matches() -> None:
    assert records.EVENT.size == _records.EVENT_SIZE
    assert records.SOCK_STATE.size == _records.SOCK_STATE_SIZE
    assert collector._CONFIG.size == _records.CONFIG_SIZE
    assert len(collector.name_key(b"/run/r.sock")) == _records.NAME_KEY_SIZE


def test_handle_builds_records() -> None:
    cap = assembler()
    addr = b"/run/r.sock\0"
    cap.core.handle(event(records.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1))
    assert cap._sock_info == {1011: ("/run/r.sock", True)}
    cap.core.handle(event(records.EV_DATA, 11, 12, b"+OK\r\n", comm=b"bad\xff\0" + b"x" * 11))
    cap.core.handle(event(records.EV_LOST, 11, 12, length=40, off=10, stype=9))
    data, lost = cap.core.batch
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
    cap = assembler()
    cap.core.handle(event(records.EV_DATA, 11, 12, b"+OK\r\n"))
    (rec,) = cap.core.batch
    assert not gc.is_tracked(rec)
    assert gc.is_tracked(Record(0.0, 1, 1, 0, "", 1, 0, "stream", "", False, 0, 0))


def test_a_callback_may_take_the_batch() -> None:
    # the record made after a callback goes to the batch as it is then
    taken: list[list[Record | _events.Packed]] = []

    def lookup(self: Assembler, sock_id: int, ino: int, peer: int) -> tuple[str, bool]:
        taken.append(self.core.take())
        return ("/run/r.sock", False)

    cap = assembler(_lookup=lookup)
    cap.core.handle(event(records.EV_DATA, 11, 12, b"+OK\r\n"))
    (rec,) = cap.core.batch
    assert rec.path == "/run/r.sock" and cap._last == {1011: rec} and taken == [[]]


def test_assembler_takes_only_what_its_contract_says() -> None:
    stats, d = CaptureStats(), dict[int, str]()

    def make(**change: object) -> _records.Assembler:
        kw: dict[str, object] = dict(
            lookup=print, destination=print, count_loss=print, announce=print, clock=0.0
        )
        kw.update(change)
        return _records.Assembler(stats, {}, {}, d, d, **kw)  # type: ignore[arg-type]

    assert make().stats is stats and make(packed=True).packed
    with pytest.raises(TypeError, match="lookup must be callable"):
        make(lookup=None)
    with pytest.raises(TypeError):
        make(extra=1)
    with pytest.raises(TypeError):
        _records.Assembler(stats, [], {}, d, d, lookup=print, destination=print,  # type: ignore[arg-type]
                           count_loss=print, announce=print, clock=0.0)  # fmt: skip


def test_records_sorted_in_c_as_list_sort_sorts_them() -> None:
    """sort_by_ts orders Packed and Records by ts as ``list.sort(key=ts)``: stably (one
    send's chunks share a ts), sorted runs kept, and refuses what has no float ts."""
    rng = random.Random(7)
    cap = assembler(packed=True)
    for i in range(3000):
        ts = 123_456_789_000 + rng.choice((0, 1, 2, 1000, rng.randrange(10**6)))
        cap.core.handle(event(records.EV_DATA, 1 + i % 7, 2 + i % 7, b"x", ts=ts, off=i))
        if rng.random() < 0.1:  # a loss record: a Record
            cap.core.handle(event(records.EV_LOST, 1 + i % 7, 2 + i % 7, ts=ts, length=3))
    made = cap.core.take()
    assert {type(r) for r in made} == {_events.Packed, Record}
    for trial in range(50):
        batch = list(made)
        if trial:
            rng.shuffle(batch)
        batch = batch[: rng.randrange(len(batch) + 1)] if trial > 1 else batch
        start = rng.randrange(len(batch) + 2) if trial > 10 else 0  # 0: the whole list
        want = batch[:start] + sorted(batch[start:], key=lambda r: r.ts)
        _records.sort_by_ts(batch, start)
        assert [id(r) for r in batch] == [id(r) for r in want]
    rng.shuffle(made)
    before = {id(r): sys.getrefcount(r) for r in made}
    _records.sort_by_ts(made)
    assert {id(r): sys.getrefcount(r) for r in made} == before  # permuted, none leaked
    with pytest.raises(TypeError):
        _records.sort_by_ts([made[0], object()])  # type: ignore[list-item]


def test_packed_records_are_the_same_records() -> None:
    """With Capture.packed, data on a connected stream socket comes as a
    Packed: its record() is the Record made without it; losses, datagrams
    and sockets without a known address still come as Records."""
    addr = b"/run/r.sock\0"
    evs = [
        event(records.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1),
        event(records.EV_DATA, 11, 12, b"+OK\r\n", comm=b"bad\xff\0" + b"x" * 11),
        event(records.EV_DATA, 11, 12, b"abc", length=10, flags=FLAG_TRUNCATED),
        event(records.EV_LOST, 11, 12, length=40, off=10),
        event(records.EV_DATA, 13, 0, b"dgram", stype=2),
        event(records.EV_DATA, 15, 16, b"late"),  # its address comes from _lookup
    ]
    caps = []
    for want_packed in (False, True):
        cap = assembler(want_packed, _lookup=lambda self, sock_id, ino, peer: ("", False))
        cap._sock_info[1013] = ("/run/log", False)
        for ev in evs:
            cap.core.handle(ev)
        caps.append(cap)
    plain, packed = (c.core.batch for c in caps)
    kinds = [type(r).__name__ for r in packed]
    assert kinds == ["Packed", "Packed", "Record", "Record", "Packed"]
    full = [r.record() if isinstance(r, _events.Packed) else r for r in packed]
    assert full == plain
    first = packed[0]
    assert isinstance(first, _events.Packed)
    assert (first.ts, len(first), bytes(memoryview(first))) == (plain[0].ts, 5, b"+OK\r\n")
    assert caps[1].stats == caps[0].stats
    assert caps[1]._last[1015] is packed[-1]


def test_freed_packed_records_are_reused_whole() -> None:
    """Packed records are kept for reuse when freed (_events.c, recycled): every
    size, reused for one of another size in the same class or made anew, has exactly
    its own payload, length and fields; larger ones are not kept."""
    rng = random.Random(5)
    sizes = [0, 1, 7, 8, 63, 64, 65, 500, 1800, 1900, 2100, 5000, 70_000]
    cap = assembler(True, _lookup=lambda self, sock_id, ino, peer: ("/run/r.sock", False))
    for _ in range(40):
        want = []
        for size in rng.choices(sizes, k=200):
            data = rng.randbytes(size)
            pid = rng.randrange(1, 1 << 20)
            cap.core.handle(event(records.EV_DATA, 11, 12, data, pid=pid))
            want.append((data, pid))
        made = cap.core.take()
        assert all(isinstance(r, _events.Packed) for r in made)
        got = [(bytes(memoryview(r)), r.record().pid) for r in made]
        assert [len(r) for r in made] == [len(d) for d, _ in want]
        assert got == want
        del made  # freed: the next round reuses them
        cap._last.clear()


def _records_for_pcapng() -> list[memoryview]:
    """Two connections, both directions, a tid change (new comment), a gap
    (loss record), a snap-length cut, a payload spliced by reference (>= 4 KiB),
    a datagram socket and a client seen before its address: what Framer.add
    and the C framing share between them."""
    server, dgram = b"/run/r.sock\0", b"/run/log\0"
    evs = [
        event(records.EV_SOCK, 21, 0, server, addr_len=len(server), own=1),
        event(records.EV_SOCK, 31, 0, server, addr_len=len(server), own=1),
        event(records.EV_SOCK, 41, 0, dgram, addr_len=len(dgram), own=0),
    ]
    offs: dict[int, int] = {}
    rnd = random.Random(7)
    ts = 1_000_000_000
    for i in range(400):
        ino, peer = rnd.choice([(21, 22), (22, 21), (31, 32), (32, 31)])
        ts += rnd.randrange(1, 50_000)
        off = offs.get(ino, 0)
        kind, size = records.EV_DATA, rnd.choice([1, 31, 200, 5000])
        extra: dict[str, int | bytes] = {"tid": 8 + (i // 100)}
        if i in (150, 151):
            kind, size = records.EV_LOST, 64
        if i == 260:
            extra.update(length=size + 100, flags=FLAG_MSG_START | FLAG_TRUNCATED)
        if i == 300:  # more than one IPv4 packet holds: several segments
            extra.update(length=size + 70_000, flags=FLAG_MSG_END | FLAG_TRUNCATED)
        data = b"" if kind == records.EV_LOST else bytes(rnd.randrange(256) for _ in range(size))
        length = int(extra.pop("length", size))
        offs[ino] = off + length
        evs.append(event(kind, ino, peer, data, ts=ts, off=off, length=length, **extra))
        if i % 37 == 0:
            evs.append(event(records.EV_DATA, 41, 0, b"<13>msg", ts=ts, off=i, stype=2,
                             flags=FLAG_MSG_START | FLAG_MSG_END))  # fmt: skip
    evs.append(event(records.EV_DATA, 51, 52, b"later", ts=ts + 1, off=0))
    return evs


def pcapng_of_records(path: str, packed: str, fast: bool) -> tuple[bytes, int]:
    """The pcapng file of _records_for_pcapng(), and how many records went
    through Framer.add; ``fast=False``: all of them (write_batch frames none).
    ``packed``: "records", "packed" (Packed payloads summed by the encoder) or
    "summed" (summed as the assembler copies them)."""
    cap = assembler(
        packed != "records",
        packed == "summed",
        _lookup=lambda self, sock_id, ino, peer: ("/run/other.sock", False),
    )
    out = PcapngOutput(path, snaplen=0, clock=lambda: 1.7e9)
    framer, added = out._framer, list[Record]()
    if not fast:  # PcapngOutput.write then adds each record itself
        framer.frame = lambda buf, batch, start, room, deadline: start  # type: ignore[method-assign]
    add = framer.add

    def counted(buf: Sink, rec: Record) -> None:
        added.append(rec)
        add(buf, rec)

    framer.add = counted  # type: ignore[method-assign]
    evs = _records_for_pcapng()
    for start in range(0, len(evs), 97):
        for ev in evs[start : start + 97]:
            cap.core.handle(ev)
        out.write(cap.release(float("inf")))
    cap._last.clear()
    out.close(cap.stats)
    with open(path, "rb") as f:
        return f.read(), len(added)


@pytest.mark.parametrize("packed", ["records", "packed", "summed"])
def test_pcapng_is_byte_identical_either_way(tmp_path: object, packed: str) -> None:
    """The same ring records, framed as Packed (their payloads summed by the
    assembler or by the encoder) or as Records by the C fast path (write_batch)
    where it applies, give the file Framer.add alone (Python deciding every
    packet) gives; its blocks, checksums included, are checked against the
    reference encoder below."""
    reference, all_added = pcapng_of_records(f"{tmp_path}/ref.pcapng", packed, fast=False)
    fast, added = pcapng_of_records(f"{tmp_path}/fast.pcapng", packed, fast=True)
    assert len(reference) > 500_000 and fast == reference
    assert check_blocks(reference) > 400
    # the fast path framed most records (the others: new flows, comment changes, gaps)
    assert added < all_added // 3


# ------------------------------------------------------------ reference encoder

MASK32 = 0xFFFFFFFF


def checksum(data: bytes) -> int:
    """The Internet checksum as the encoder writes it: 0xFFFF, not 0, for a
    zero sum (the same in ones' complement; for UDP 0 would mean "none")."""
    if len(data) % 2:
        data += b"\0"
    return 0xFFFF - sum(struct.unpack(f"!{len(data) // 2}H", data)) % 0xFFFF


def ref_epb(ts: float, packet: bytes, origlen: int, opts: bytes) -> bytes:
    """An Enhanced Packet Block (pcapng spec 4.3), interface 0, microseconds."""
    usec = int(ts * 1_000_000)
    body = struct.pack("<IIIII", 0, usec >> 32, usec & MASK32, len(packet), origlen)
    body += packet + bytes(-len(packet) % 4) + opts + b"\0\0\0\0"
    return struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def ref_ip(d: _Dir, proto: int, payload_len: int) -> bytes:
    """The IPv4 header (RFC 791): no options, DF, TTL 64, id 0."""
    src, dst = d.addrs[:4], d.addrs[4:8]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def ref_tcp(
    d: _Dir, ts: float, flags: int, off: int, payload: bytes, length: int, opts: bytes,
    tcp_opts: bytes = b"",
) -> bytes:  # fmt: skip
    """One TCP segment (RFC 793) of ``length`` stream bytes, ``payload`` of them captured."""
    sport, dport = struct.unpack("!HH", d.addrs[8:])
    seq = (d.seq0 + off) & MASK32
    ack = (d.peer.seq0 + d.peer.next_off + d.peer.fin) & MASK32 if flags & 0x10 else 0
    hlen = 20 + len(tcp_opts)
    tcp = struct.pack("!HHIIHHHH", sport, dport, seq, ack, hlen << 10 | flags, 0xFFFF, 0, 0)
    tcp += tcp_opts
    pseudo = d.addrs[:8] + struct.pack("!BBH", 0, IPPROTO_TCP, hlen + length)
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp + payload)) + tcp[18:]
    packet = ref_ip(d, IPPROTO_TCP, hlen + length) + tcp + payload
    return ref_epb(ts, packet, 20 + hlen + length, opts)


def ref_udp(d: _Dir, ts: float, payload: bytes, length: int, opts: bytes) -> bytes:
    """One UDP datagram (RFC 768)."""
    sport, dport = struct.unpack("!HH", d.addrs[8:])
    udp = struct.pack("!HHHH", sport, dport, 8 + length, 0)
    pseudo = d.addrs[:8] + struct.pack("!BBH", 0, IPPROTO_UDP, 8 + length)
    udp = udp[:6] + struct.pack("!H", checksum(pseudo + udp + payload))
    return ref_epb(ts, ref_ip(d, IPPROTO_UDP, 8 + length) + udp + payload, 28 + length, opts)


def ref_segments(
    d: _Dir, ts: float, push: bool, off: int, data: bytes, length: int, opts: bytes
) -> bytes:
    """A data record as TCP segments of at most 65495 bytes, PSH on the last."""
    out = b""
    for pos in range(0, length, 65495) if length else [0]:
        seg = min(65495, length - pos)
        last = pos + seg == length
        flags = 0x10 | (0x08 if push and last else 0)
        out += ref_tcp(d, ts, flags, off + pos, data[pos : pos + seg], seg, opts)
    d.next_off = max(d.next_off, off + length)
    return out


def check_blocks(data: bytes) -> int:
    """Every EPB of a file written here (after its SHB and IDB) is what the
    reference encoder makes of its own fields; returns how many there are."""
    pos, count = 0, 0
    while pos < len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        assert struct.unpack_from("<I", data, pos + total - 4)[0] == total
        if btype == 6:
            caplen, origlen = struct.unpack_from("<II", data, pos + 20)
            pkt = data[pos + 28 : pos + 28 + caplen]
            assert struct.unpack_from("!H", pkt, 2)[0] == origlen
            assert checksum(pkt[:20]) in (0, 0xFFFF), "IPv4 header checksum"
            l4 = pkt[20:]
            pseudo = pkt[12:20] + struct.pack("!BBH", 0, pkt[9], origlen - 20)
            assert checksum(pseudo + l4) in (0, 0xFFFF) or caplen < origlen
            count += 1
        pos += total
    assert pos == len(data)
    return count


def random_flow(rnd: random.Random, proto: int) -> _Dir:
    """A direction with random addresses, ports and stream state, and its peer."""
    a, b = rnd.getrandbits(32), rnd.getrandbits(32)
    p, q = rnd.getrandbits(16), rnd.getrandbits(16)
    d, peer = _Dir(a, b, p, q, proto, 2), _Dir(b, a, q, p, proto, 1)
    d.peer, peer.peer = peer, d
    for x in (d, peer):
        x.seq0, x.next_off, x.fin = rnd.getrandbits(32), rnd.getrandbits(40), rnd.randrange(2)
    return d


def blocks(buf: Sink) -> bytes:
    return b"".join(bytes(p) for p in buf.pieces())


def test_encoder_matches_the_reference() -> None:
    """tcp(), udp() and segments() against the reference encoder: random
    flows, payload sizes around the word, splice (4 KiB) and segment
    (65495 B) boundaries, snap-length cuts, options and timestamps."""
    rnd = random.Random(5)
    sizes = [0, 1, 2, 3, 7, 8, 31, 255, 4095, 4096, 4097, 65495, 65496, 140_000]
    for n in sizes * 4:
        opts = rnd.randbytes(4 * rnd.randrange(8))
        ts = rnd.uniform(0, 2e9)
        length = n + rnd.choice([0, 0, 5, 70_000])
        payload = rnd.randbytes(n)
        d = random_flow(rnd, IPPROTO_TCP)
        off = rnd.getrandbits(40)
        if length <= 65495:
            flags = rnd.choice([0x02, 0x12, 0x10, 0x18, 0x11])
            tcp_opts = rnd.choice([b"", rnd.randbytes(8), rnd.randbytes(40)])
            buf = Sink()
            _epb.tcp(buf, d, ts, flags, off, payload, length, opts, tcp_opts)
            assert blocks(buf) == ref_tcp(d, ts, flags, off, payload, length, opts, tcp_opts)
        push = rnd.random() < 0.5
        buf = Sink()
        before = d.next_off
        n_packets = _epb.segments(buf, d, ts, push, off, payload, length, opts)
        after, d.next_off = d.next_off, before
        expected = ref_segments(d, ts, push, off, payload, length, opts)
        assert blocks(buf) == expected and n_packets == max(1, -(-length // 65495))
        assert after == d.next_off
        u = random_flow(rnd, IPPROTO_UDP)
        if length <= 65507:
            buf = Sink()
            _epb.udp(buf, u, ts, payload, length, opts)
            assert blocks(buf) == ref_udp(u, ts, payload, length, opts)


def test_drain_walks_ring() -> None:
    """_records.drain over a ring laid out like the kernel's (ringbuf.py): a
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

    announced: list[memoryview] = []

    def announce(self: Assembler, rec: memoryview) -> None:
        announced.append(rec)
        records.RecordAssembler._announce(self, rec)

    def lookup(self: Assembler, sock_id: int, ino: int, peer: int) -> tuple[str, bool]:
        raise ZeroDivisionError

    cap = assembler(_announce=announce, _lookup=lookup)
    struct.pack_into("<Q", cons, 0, start)
    addr = b"/run/r.sock\0"
    put(bytes(event(records.EV_SOCK, 11, 0, addr, addr_len=len(addr), own=1)))
    first = pos - start
    put(bytes(event(records.EV_DATA, 11, 12, b"one")))
    put(bytes(event(records.EV_DATA, 11, 12, b"dropped")), discard=True)
    put(bytes(event(records.EV_DATA, 11, 12, b"two!")))
    done = pos
    put(bytes(event(records.EV_DATA, 11, 12, b"three")), busy=True)

    assert _records.drain(cap.core, cons, prod, 1) == first  # limit: the first record only
    assert [r.data for r in cap.core.batch] == []
    assert cap._sock_info == {1011: ("/run/r.sock", True)}
    assert len(announced) == 1
    with pytest.raises(ValueError):
        bytes(announced[0])  # released after the call: the ring space is reused
    assert _records.drain(cap.core, cons, prod, 1 << 62) == done - start - first
    assert [r.data for r in cap.core.batch] == [b"one", b"two!"]
    assert (cap.stats.records, cap.stats.bytes) == (2, 7)  # added once, at the end of the drain
    assert struct.unpack_from("<Q", cons)[0] == done  # stopped at the busy record

    cap._sock_info.clear()  # the next record's socket is unknown: lookup raises
    busy_at = done
    ring[busy_at % size + 3] &= 0x7F  # committed now
    prod[page:] = ring + ring
    put(bytes(event(records.EV_DATA, 11, 12, b"four")))
    with pytest.raises(ZeroDivisionError):
        _records.drain(cap.core, cons, prod, 1 << 62)
    assert struct.unpack_from("<Q", cons)[0] == busy_at  # published up to the last handled
    assert (cap.stats.records, cap.stats.bytes) == (2, 7)
