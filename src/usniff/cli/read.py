"""Offline reader for ``usniff read FILE``: pcap/pcapng back into Records.

* usniff's own files: the per-packet comments carry pid, tid, uid, comm,
  socket inodes and path, so the records come back as they were captured
  (Name Resolution Blocks name the server when a comment is missing).
* ordinary TCP captures (tcpdump/tshark/dumpcap of Redis on 6379, PostgreSQL
  on any port, ...): each TCP flow is reassembled here into per-direction
  records with stream offsets.  The server side is the one that answered the
  SYN, or, without a SYN in the file, the side on a well-known port, else the
  receiver of the flow's first payload if it begins a request of a registered
  protocol (the sender if it begins a server's greeting), else the lower port.
  Such records get synthetic inodes (1, 2, 3, ... per direction) and
  ``path = "ADDR:PORT"`` of the server; pid/comm are unknown (0/"").

Either way a record's ``sock_id`` is its flow endpoint's (1, 2, 3, ...): one
TCP flow is one connection, whatever the comments say of the inodes.

Reassembly is streaming and keeps no payload.  A segment that starts beyond
the next expected byte leaves a hole, which a later segment may fill (a segment
the network lost, retransmitted after the ones behind it): the records go out
in packet order, each at its stream offset, and the stream assembler downstream
puts them back in order.  A hole is given up as a loss record when MAX_HOLE_AGE
seconds of capture pass without it being filled, when a side has more than
MAX_HOLES, when its side sends FIN or RST, and at the end of the file.  Bytes
that were already seen (retransmissions) are dropped.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import ipaddress
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from usniff.containers import Containers
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, FLAG_TRUNCATED, SOCK_TYPES, Record
from usniff.formats.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_NRB,
    BT_PB,
    BT_SHB,
    BT_SPB,
    BYTE_ORDER_MAGIC,
    IF_TSOFFSET,
    IF_TSRESOL,
    IPPROTO_TCP,
    IPPROTO_UDP,
    LINKTYPE_RAW,
    MASK32,
    NRB_IPV4,
    NRB_IPV6,
    OPT_COMMENT,
    OTHER_PORT,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    comment_identity,
    parse_comment,
)

from ..decoders.detect import ENOUGH
from ..decoders.registry import DECODE_AS, PROTOCOLS

WELL_KNOWN_PORTS = frozenset(p.port for p in PROTOCOLS) | {OTHER_PORT}
MAX_HOLES = 64  # per direction; beyond, the oldest is given up
# Less than the stream assembler's reorder window (1 s), so that the loss record
# of a hole reaches it before it gives up waiting for the bytes.
MAX_HOLE_AGE = 0.5
_PROTO_TYPE = {IPPROTO_TCP: "stream", IPPROTO_UDP: "dgram"}
_PART = re.compile(r"usniff: part (\d+)/(\d+) of one ")

# link types -> how to find the IP header
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP = 0, 1, 108
LINKTYPE_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_SLL2 = 113, 228, 229, 276
_RAW_LINKTYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class PcapReadError(Exception):
    """The file is not a pcap/pcapng file, or is damaged: the message says
    what and where (byte offsets from the start of the file)."""


@dataclass(slots=True)
class Packet:
    ts: float
    linktype: int
    data: bytes
    origlen: int
    comment: str = ""


# ---------------------------------------------------------------- containers

MAX_BLOCK = 64 << 20  # a longer block is skipped, not read into memory (packets are <= 256 KiB)
MAX_PROBLEMS = 10  # damage reports kept per file
SHB_MAGIC = {struct.pack(e + "I", BYTE_ORDER_MAGIC): e for e in "<>"}
PCAP_MAX_PACKET = 262144  # what libpcap and Wireshark accept in a pcap record


class _Damage(Exception):
    """The rest of the file cannot be read (framing lost): what, and the byte
    where (None when ``what`` says it)."""

    def __init__(self, what: str, at: int | None = None) -> None:
        super().__init__(what, at)
        self.what, self.at = what, at


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    resol: float  # seconds per timestamp unit (if_tsresol)
    offset: int  # seconds added to every timestamp (if_tsoffset)


class _Problems(dict[str, list[int]]):
    """What is damaged and where (byte offsets, the first one shown) while
    reading goes on where it can."""

    def add(self, what: str, at: int | None = None) -> None:
        places = self.setdefault(what, []) if len(self) < MAX_PROBLEMS or what in self else None
        if places is not None and at is not None:
            places.append(at)

    def text(self) -> str:
        return "; ".join(
            what
            + (f" at byte {places[0]}" if places else "")
            + (f" (and {len(places) - 1} more like it)" if len(places) > 1 else "")
            for what, places in self.items()
        )


def _options(body: bytes, endian: str, at: int, problems: _Problems) -> dict[int, bytes]:
    """Options (code -> value, the last one of a code wins) up to opt_endofopt."""
    opts: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, pos)
        if code == 0:
            break
        if pos + 4 + length > len(body):
            problems.add(f"option {code} of {length} bytes runs past its block", at)
            break
        opts[code] = body[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)
    return opts


def _tsresol(value: bytes) -> float:
    exp = value[0] & 0x7F
    return 2.0**-exp if value[0] & 0x80 else 10.0**-exp


class _Names(dict[bytes, str]):
    """Address bytes -> name, from Name Resolution Blocks."""

    def add_block(self, body: bytes, endian: str) -> None:
        pos = 0
        while pos + 4 <= len(body):
            rtype, length = struct.unpack_from(endian + "HH", body, pos)
            if rtype == 0:
                return
            value = body[pos + 4 : pos + 4 + length]
            size = 4 if rtype == NRB_IPV4 else 16 if rtype == NRB_IPV6 else 0
            if size and len(value) > size:
                name = value[size:].split(b"\0", 1)[0]
                self[value[:size]] = name.decode("utf-8", "surrogateescape")
            pos += 4 + length + (-length % 4)


class _Input:
    """The file, read front to back with the byte offset kept: no seeking, so
    that a pipe (``usniff read /dev/stdin``) reads like a file."""

    def __init__(self, f: io.BufferedReader) -> None:
        self._f = f
        st = os.fstat(f.fileno())
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else None  # None: not known ahead
        self.pos = 0

    def read(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the file."""
        data = self._f.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        """Pass over ``n`` bytes, 1 MiB at a time; how many there were."""
        done = 0
        while done < n:
            chunk = len(self.read(min(n - done, 1 << 20)))
            if not chunk:
                break
            done += chunk
        return done

    def peek(self, n: int) -> bytes:
        """The next bytes without reading them (as many as are buffered, up to n)."""
        return self._f.peek(n)[:n]


class _Pcapng:
    """Blocks of a pcapng file (draft-ietf-opsawg-pcapng): every section, in
    either byte order; packets from Enhanced, Simple and (obsolete) Packet
    Blocks; names from Name Resolution Blocks; every other block skipped.
    Damage inside a block skips that block; damage to the framing (block
    lengths) ends the reading, since the next block cannot be found."""

    def __init__(self, f: _Input, names: _Names, problems: _Problems) -> None:
        self._f, self._names, self._problems = f, names, problems
        self._endian = "<"
        self._interfaces: list[_Interface | None] = []

    def packets(self) -> Iterator[Packet]:
        try:
            while self._f.peek(1):
                pos = self._f.pos
                btype, body = self._block(pos)
                if btype is None:  # a block too long to read: skipped
                    pass
                elif btype == BT_EPB:
                    yield from self._epb(pos, body)
                elif btype == BT_SPB:
                    yield from self._spb(pos, body)
                elif btype == BT_PB:
                    yield from self._pb(pos, body)
                elif btype == BT_IDB:
                    self._idb(pos, body)
                elif btype == BT_NRB:
                    self._names.add_block(body, self._endian)
        except _Damage as damage:
            self._problems.add(damage.what, damage.at)

    def _block(self, pos: int) -> tuple[int | None, bytes]:
        """Type and body (without type, length and trailer) of the block at ``pos``."""
        f = self._f
        head = f.read(8)
        if len(head) < 8:
            raise _Damage(f"cut short at byte {f.pos}, in a block header at byte {pos}")
        magic = b""
        if head[:4] == b"\x0a\x0d\x0d\x0a":  # Section Header: same bytes in both orders
            magic = f.read(4)
            if magic not in SHB_MAGIC:
                if len(magic) < 4:
                    raise _Damage(f"cut short at byte {f.pos}, in a section header at byte {pos}")
                raise _Damage("section header with an unknown byte-order magic", pos)
            self._endian = SHB_MAGIC[magic]
            self._interfaces = []
        btype, total = struct.unpack(self._endian + "II", head)
        if btype == BT_SHB and total < 28 or total < 12 or total % 4:
            raise _Damage(f"block of type {btype} with an impossible length ({total})", pos)
        cut = f"in the middle of a block that starts at byte {pos} and should be {total} bytes long"
        if f.size is not None and pos + total > f.size:  # known ahead: nothing allocated
            raise _Damage(f"cut short at byte {f.size}, {cut}")
        if total > MAX_BLOCK:
            if f.skip(total - 8 - len(magic)) < total - 8 - len(magic):
                raise _Damage(f"cut short at byte {f.pos}, {cut}")
            self._problems.add(f"block of {total} bytes skipped (too long to read)", pos)
            return None, b""
        data = magic + f.read(total - 8 - len(magic))
        if len(data) < total - 8:
            raise _Damage(f"cut short at byte {f.pos}, {cut}")
        trailer = struct.unpack_from(self._endian + "I", data, total - 12)[0]
        if trailer != total:
            raise _Damage(
                f"block length {total} at the start of a block, {trailer} at its end", pos
            )
        body = data[:-4]
        if btype == BT_SHB:
            major = struct.unpack_from(self._endian + "H", body, 4)[0]
            if major != 1:
                raise _Damage(f"section of pcapng version {major} (only version 1 is known)", pos)
        return btype, body

    def _idb(self, pos: int, body: bytes) -> None:
        if len(body) < 8:
            self._problems.add(f"interface description block of {12 + len(body)} bytes", pos)
            self._interfaces.append(None)  # keeps the numbering of the interfaces after it
            return
        linktype, _, snaplen = struct.unpack_from(self._endian + "HHI", body)
        opts = _options(body[8:], self._endian, pos, self._problems)
        # an if_tsresol or if_tsoffset of the wrong size is ignored, as by Wireshark
        resol, offset = 1e-6, 0
        if len(opts.get(IF_TSRESOL, b"")) == 1:
            resol = _tsresol(opts[IF_TSRESOL])
        if len(opts.get(IF_TSOFFSET, b"")) == 8:
            offset = struct.unpack(self._endian + "q", opts[IF_TSOFFSET])[0]
        self._interfaces.append(_Interface(linktype, snaplen, resol, offset))

    def _interface(self, pos: int, number: int) -> _Interface | None:
        iface = self._interfaces[number] if number < len(self._interfaces) else None
        if iface is None:
            self._problems.add(f"packet for undescribed interface {number}", pos)
        return iface

    def _packet(
        self, pos: int, body: bytes, start: int, number: int, ts: int, caplen: int, origlen: int
    ) -> Iterator[Packet]:
        iface = self._interface(pos, number)
        if iface is None:
            return
        if start + caplen > len(body):
            self._problems.add(f"packet whose captured length {caplen} runs past its block", pos)
            return
        end = start + caplen + (-caplen % 4)
        opts = _options(body[end:], self._endian, pos, self._problems)
        comment = opts.get(OPT_COMMENT, b"").decode("utf-8", "replace")
        seconds = ts * iface.resol + iface.offset
        data = body[start : start + caplen]
        yield Packet(seconds, iface.linktype, data, origlen, comment)

    def _epb(self, pos: int, body: bytes) -> Iterator[Packet]:
        if len(body) < 20:
            self._problems.add(f"enhanced packet block of {12 + len(body)} bytes", pos)
            return
        number, hi, lo, caplen, origlen = struct.unpack_from(self._endian + "5I", body)
        yield from self._packet(pos, body, 20, number, (hi << 32) | lo, caplen, origlen)

    def _pb(self, pos: int, body: bytes) -> Iterator[Packet]:
        if len(body) < 20:
            self._problems.add(f"packet block of {12 + len(body)} bytes", pos)
            return
        number, _, hi, lo, caplen, origlen = struct.unpack_from(self._endian + "HH4I", body)
        yield from self._packet(pos, body, 20, number, (hi << 32) | lo, caplen, origlen)

    def _spb(self, pos: int, body: bytes) -> Iterator[Packet]:
        if len(body) < 4:
            self._problems.add(f"simple packet block of {12 + len(body)} bytes", pos)
            return
        iface = self._interface(pos, 0)
        if iface is None:
            return
        origlen = struct.unpack_from(self._endian + "I", body)[0]
        caplen = min(origlen, iface.snaplen or origlen, len(body) - 4)
        yield Packet(0.0, iface.linktype, body[4 : 4 + caplen], origlen)


def _pcap_packets(f: _Input, problems: _Problems) -> Iterator[Packet]:
    header = f.read(24)
    endian, resol = _PCAP_MAGIC[header[:4]]
    if len(header) < 24:
        problems.add(f"cut short at byte {f.pos}, in the file header")
        return
    linktype = struct.unpack(endian + "I", header[20:])[0] & 0xFFFF
    record = struct.Struct(endian + "4I")
    while head := f.read(16):
        pos = f.pos - len(head)
        if len(head) < 16:
            problems.add(f"cut short at byte {f.pos}, in a packet header at byte {pos}")
            return
        sec, frac, caplen, origlen = record.unpack(head)
        if caplen > PCAP_MAX_PACKET:
            problems.add(f"packet of {caplen} captured bytes (more than {PCAP_MAX_PACKET})", pos)
            return
        data = f.read(caplen)
        if len(data) < caplen:
            problems.add(
                f"cut short at byte {f.pos}, in the middle of a packet that starts at byte {pos}"
            )
            return
        yield Packet(sec + frac * resol, linktype, data, origlen)


# ---------------------------------------------------------------- IP / TCP


@dataclass(slots=True)
class _Segment:
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    seq: int
    flags: int
    length: int  # payload length on the wire
    payload: bytes  # captured part


def _ip_offset(linktype: int, data: bytes) -> int | None:
    if linktype in _RAW_LINKTYPES:
        return 0
    if linktype == LINKTYPE_ETHERNET:
        pos, ethertype = 12, data[12:14]
        while ethertype in (b"\x81\x00", b"\x88\xa8"):  # VLAN tags
            pos += 4
            ethertype = data[pos : pos + 2]
        return pos + 2 if ethertype in (b"\x08\x00", b"\x86\xdd") else None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4
    if linktype == LINKTYPE_SLL:
        return 16
    if linktype == LINKTYPE_SLL2:
        return 20
    return None


def _segment(pkt: Packet) -> _Segment | None:
    start = _ip_offset(pkt.linktype, pkt.data)
    if start is None:
        return None
    ip = memoryview(pkt.data)[start:]
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        hlen = (ip[0] & 0x0F) * 4
        total, frag, proto = struct.unpack_from("!H2xH1xB", ip, 2)
        if frag & 0x3FFF:
            return None  # fragments are not reassembled
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
    elif version == 6 and len(ip) >= 40:
        hlen, proto = 40, ip[6]
        total = 40 + struct.unpack_from("!H", ip, 4)[0]
        src, dst = bytes(ip[8:24]), bytes(ip[24:40])
    else:
        return None
    if hlen < 20 or total < hlen:
        return None  # damaged IP header
    l4 = ip[hlen:total]
    wire = total - hlen
    if proto == IPPROTO_TCP and len(l4) >= 20:
        sport, dport, seq, _ack, off_flags = struct.unpack_from("!HHIIH", l4)
        doff = (off_flags >> 12) * 4
        if not 20 <= doff <= wire:
            return None  # damaged TCP header
        flags = off_flags & 0x3F
        return _Segment(src, dst, proto, sport, dport, seq, flags, wire - doff, bytes(l4[doff:]))
    if proto == IPPROTO_UDP and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        return _Segment(src, dst, proto, sport, dport, 0, 0, wire - 8, bytes(l4[8:]))
    return None


# ---------------------------------------------------------------- flows


@dataclass(slots=True)
class _Hole:
    start: int
    end: int
    ts: float  # when the bytes after it were seen


@dataclass(slots=True)
class _Side:
    id: int  # the Record's sock_id: one per flow endpoint
    base: int | None = None  # sequence number of stream offset 0
    next: int = 0  # the stream offset after the highest byte seen
    msg_start: bool = True
    closed: bool = False
    holes: list[_Hole] = field(default_factory=list)  # bytes below ``next`` not seen, in order
    last: Record | None = None  # the side's latest record: what a hole's loss record is like


@dataclass(slots=True)
class _Flow:
    server: tuple[bytes, int]
    sides: dict[tuple[bytes, int], _Side] = field(default_factory=dict)
    guessed: bool = False  # server by the lower port: the first payload may say otherwise


def _endpoint_text(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class _Reassembler:
    def __init__(self, names: _Names, containers: Containers | None = None) -> None:
        self._names = names
        self._containers = containers
        self._flows: dict[tuple[tuple[bytes, int], tuple[bytes, int]], _Flow] = {}
        self._ids = 0
        self._fields: dict[str, dict[str, str]] = {}

    def _flow(self, seg: _Segment) -> _Flow:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        key = (a, b) if a <= b else (b, a)
        flow = self._flows.get(key)
        if flow is None or (seg.flags & TCP_SYN and not seg.flags & TCP_ACK):
            if seg.flags & TCP_SYN:
                server = b if not seg.flags & TCP_ACK else a
            elif (seg.dport in WELL_KNOWN_PORTS) != (seg.sport in WELL_KNOWN_PORTS):
                server = b if seg.dport in WELL_KNOWN_PORTS else a
            else:
                server = b if seg.dport < seg.sport else a
                flow = self._flows[key] = _Flow(server, guessed=True)
                return flow
            flow = self._flows[key] = _Flow(server)
        return flow

    def _side(self, flow: _Flow, endpoint: tuple[bytes, int]) -> _Side:
        side = flow.sides.get(endpoint)
        if side is None:
            self._ids += 1
            side = flow.sides[endpoint] = _Side(self._ids)
        return side

    def records(self, pkt: Packet, seg: _Segment) -> Iterator[Record]:
        flow = self._flow(seg)
        src, dst = (seg.src, seg.sport), (seg.dst, seg.dport)
        opening = seg.payload or seg.flags & (TCP_FIN | TCP_RST)
        if flow.guessed and seg.proto == IPPROTO_TCP and opening:
            flow.guessed = False  # decided before the flow's first record
            role = _role(seg.payload[:ENOUGH])
            if role is not None:
                flow.server = dst if role == "client" else src
        side, peer = self._side(flow, src), self._side(flow, dst)
        if seg.flags & TCP_SYN:
            side.base = (seg.seq + 1) & MASK32
            return
        if side.closed:
            return  # only the ACK of the peer's FIN can follow a FIN
        is_server = src == flow.server
        info = self._comment_fields(pkt.comment)
        server_addr, server_port = flow.server
        path = self._names.get(server_addr) or _endpoint_text(server_addr, server_port)
        peer_inode = _number(info, "peer", peer.id)
        # a datagram socket's flow is its own unless the comment names a peer
        connected = seg.proto == IPPROTO_TCP or peer_inode != 0 or not info
        sock_type = info.get("type", "")
        template = Record(
            ts=pkt.ts,
            pid=_number(info, "pid", 0),
            tid=_number(info, "tid", 0),
            uid=_number(info, "uid", 0),
            comm=info.get("comm", ""),
            inode=_number(info, "inode", side.id),
            peer_inode=peer_inode,
            sock_type=sock_type if sock_type in SOCK_TYPES.values() else _PROTO_TYPE[seg.proto],
            path=info.get("path", path),
            path_is_own=is_server,
            offset=side.next,
            length=0,
            peer_pid=_number(info, "peer_pid", 0),
            sock_id=side.id,
            peer_id=peer.id if connected else 0,
            peer_comm=info.get("peer_comm", ""),
            cgroup=_number(info, "cgroup", 0),
            peer_cgroup=_number(info, "peer_cgroup", 0),
        )
        if seg.proto == IPPROTO_UDP:
            yield self._datagram(side, seg, pkt.comment, template)
            return
        side.last = template
        if side.base is None:
            side.base = seg.seq
        rel = (seg.seq - side.base - side.next) & MASK32
        off = side.next + (rel - (1 << 32) if rel & 0x80000000 else rel)
        while side.holes and (
            len(side.holes) > MAX_HOLES or pkt.ts - side.holes[0].ts > MAX_HOLE_AGE
        ):
            yield _lost(side, side.holes.pop(0))
        if off > side.next:
            side.holes.append(_Hole(side.next, off, pkt.ts))
            side.next = off
            if info:  # usniff's own file, written in order: its holes are losses it counted
                yield from self._give_up(side)
        end = off + seg.length
        pieces = _fill(side.holes, off, min(end, side.next))  # the bytes not seen before
        if end > side.next:
            pieces.append((max(off, side.next), end))
            side.next = end
        if pieces:
            flags = FLAG_MSG_START if side.msg_start else 0
            if seg.flags & TCP_PSH:
                flags |= FLAG_MSG_END
            side.msg_start = bool(seg.flags & TCP_PSH)
            for start, stop in pieces:
                data = seg.payload[start - off : stop - off]
                cut = FLAG_TRUNCATED if len(data) < stop - start else 0
                yield replace(template, offset=start, length=stop - start, data=data,
                              flags=flags | cut)  # fmt: skip
        if seg.flags & (TCP_FIN | TCP_RST) and not side.closed:
            side.closed = True
            yield from self._give_up(side)
            yield replace(template, offset=side.next, kind="close")

    def finish(self) -> Iterator[Record]:
        """End of the file: the holes still open are losses."""
        for flow in self._flows.values():
            for side in flow.sides.values():
                yield from self._give_up(side)

    @staticmethod
    def _give_up(side: _Side) -> Iterator[Record]:
        for hole in side.holes:
            yield _lost(side, hole)
        side.holes.clear()

    @staticmethod
    def _datagram(side: _Side, seg: _Segment, comment: str, template: Record) -> Record:
        flags = FLAG_MSG_START | FLAG_MSG_END
        split = _PART.match(comment)
        if split:
            part, count = split.groups()
            flags = (FLAG_MSG_START if part == "1" else 0) | (FLAG_MSG_END if part == count else 0)
        if len(seg.payload) < seg.length:
            flags |= FLAG_TRUNCATED
        side.next += seg.length
        return replace(template, length=seg.length, data=seg.payload, flags=flags)

    def _comment_fields(self, comment: str) -> dict[str, str]:
        """The fields of a usniff comment; any other comment (a person's note,
        or one damaged on its way) gives none, a field that does not parse is
        left out."""
        info = self._fields.get(comment)
        if info is None:
            info = _comment_fields(comment) if "inode=" in comment else {}
            for prefix in ("", "peer_"):
                ident = comment_identity(info, prefix)
                if ident is not None and self._containers is not None:
                    self._containers.learn(ident)
            if len(self._fields) < 100_000:
                self._fields[comment] = info
        return info


def _role(payload: bytes) -> str | None:
    """Whose bytes begin a flow seen without its handshake, on ports that do not
    say (a server on a high port): "client" when they start a request of a
    registered protocol, "server" when they start a server's greeting, else None."""
    if any(p.client_first is not None and p.client_first(payload) for p in PROTOCOLS):
        return "client"
    if any(p.server_first is not None and p.server_first(payload) for p in PROTOCOLS):
        return "server"
    return None


def _fill(holes: list[_Hole], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of [start, end) that fill ``holes``, taken out of them."""
    pieces: list[tuple[int, int]] = []
    i = 0
    while i < len(holes) and start < end:
        hole = holes[i]
        lo, hi = max(start, hole.start), min(end, hole.end)
        if lo >= hi:
            i += 1
            continue
        pieces.append((lo, hi))
        rest = [_Hole(a, b, hole.ts) for a, b in ((hole.start, lo), (hi, hole.end)) if a < b]
        holes[i : i + 1] = rest
        i += len(rest)
    return pieces


def _lost(side: _Side, hole: _Hole) -> Record:
    assert side.last is not None  # a hole is found by a record of its side
    return replace(side.last, offset=hole.start, length=hole.end - hole.start, data=b"",
                   lost=hole.end - hole.start, kind="lost", flags=0)  # fmt: skip


def _comment_fields(comment: str) -> dict[str, str]:
    try:
        fields = parse_comment(comment)
    except ValueError:  # a quoted value that is not a JSON string
        return {}
    # a JSON string may hold a lone surrogate (\ud800), which no output can print
    return {k: v.encode("utf-8", "replace").decode() for k, v in fields.items()}


def _number(info: dict[str, str], key: str, default: int) -> int:
    value = info.get(key, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else default


# ---------------------------------------------------------------- public API


def read_packets(path: str, names: _Names | None = None) -> Iterator[Packet]:
    """Packets of a pcap or pcapng file, in file order.  Everything readable
    is yielded; then PcapReadError says what was damaged, if anything was."""
    names = _Names() if names is None else names
    problems = _Problems()
    count = 0
    try:
        with open(path, "rb") as f:
            data = _Input(f)
            magic = data.peek(4)
            if magic == struct.pack("<I", BT_SHB):
                packets = _Pcapng(data, names, problems).packets()
            elif magic in _PCAP_MAGIC:
                packets = _pcap_packets(data, problems)
            else:
                raise PcapReadError(f"{path}: not a pcap or pcapng file")
            for packet in packets:
                count += 1
                yield packet
    except OSError as err:
        raise PcapReadError(f"{path}: {err.strerror}") from None
    if problems:
        raise PcapReadError(f"{path}: damaged: {problems.text()}; {count} packets read")


def read_records(path: str, containers: Containers | None = None) -> Iterator[Record]:
    """Records of every TCP (and UDP) flow in a pcap/pcapng file, in packet order;
    PcapReadError after the last one when the file is damaged.  ``containers``
    learns what the comments say of the records' cgroups (the writer's host)."""
    names = _Names()
    flows = _Reassembler(names, containers)
    try:
        for pkt in read_packets(path, names):
            seg = _segment(pkt)
            if seg is not None:
                yield from flows.records(pkt, seg)
    except PcapReadError:
        yield from flows.finish()
        raise
    yield from flows.finish()


@dataclass(slots=True)
class Dissected:
    """One packet as Wireshark's dissectors see it."""

    number: int
    ts: float
    protocol: str  # "resp", "mysql", "pgsql", "http"
    fields: dict[str, str]


WIRESHARK_PROTOCOLS = tuple(dict.fromkeys(p.wireshark for p in PROTOCOLS))


def dissect_wireshark(
    path: str,
    protocols: tuple[str, ...] = WIRESHARK_PROTOCOLS,
    decode_as: dict[str, str] | None = None,
) -> Iterator[Dissected]:
    """``usniff read --dissect wireshark``: the fields tshark (through pyshark)
    finds in each packet of the given protocols.  Repeated fields (the
    arguments of one command) are joined with ", ".  ``decode_as`` is passed to
    tshark, e.g. ``{"tcp.port==16379": "resp"}`` for a server on another port, besides
    the ports of the protocols stock Wireshark does not dissect unasked (FastCGI's)."""
    pyshark = importlib.import_module("pyshark")  # optional dependency
    # an event loop of its own: pyshark takes the thread's current one, which code that
    # ran asyncio.run() before (in the same process) has left unset
    loop = asyncio.new_event_loop()
    capture = pyshark.FileCapture(
        path,
        display_filter=" || ".join(protocols),
        keep_packets=False,
        decode_as={**DECODE_AS, **(decode_as or {})},
        eventloop=loop,
    )
    try:
        for pkt in capture:
            for layer in pkt.layers:
                name = layer.layer_name
                if name not in protocols:
                    continue
                values = {}
                for key in layer.field_names:
                    shown = [f.showname_value or f.show for f in layer.get_field(key).all_fields]
                    if key and not set(shown) <= {"Set", "Not set", ""}:  # skip flag bits
                        values[key] = ", ".join(shown)
                yield Dissected(int(pkt.number), float(pkt.sniff_timestamp), name, values)
    finally:
        capture.close()
        loop.close()
