"""Offline reader for ``usniff read FILE``: pcap/pcapng back into Records.

* usniff's own files: the per-packet comments carry pid, tid, uid, comm,
  socket inodes and path, so the records come back as they were captured
  (Name Resolution Blocks name the server when a comment is missing).
* ordinary TCP captures (tcpdump/tshark/dumpcap of Redis on 6379, MySQL on
  3306, ...): each TCP flow is reassembled here into per-direction records
  with stream offsets.  The server side is the one that answered the SYN, or,
  without a SYN in the file, the side on a well-known port (else the lower
  port).  Such records get synthetic inodes (1, 2, 3, ... per direction) and
  ``path = "ADDR:PORT"`` of the server; pid/comm are unknown (0/"").

Either way a record's ``sock_id`` is its flow endpoint's (1, 2, 3, ...): one
TCP flow is one connection, whatever the comments say of the inodes.

Reassembly is streaming and keeps no payload: a segment that starts beyond
the next expected byte turns the hole into a loss record at once, a segment
that was already seen (retransmission) is trimmed or dropped.
"""

from __future__ import annotations

import importlib
import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from usniff.events import FLAG_MSG_END, FLAG_MSG_START, FLAG_TRUNCATED, Record
from usniff.outputs.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_NRB,
    BT_SHB,
    IF_TSRESOL,
    NRB_IPV4,
    OPT_COMMENT,
    OTHER_PORT,
    PROTOCOL_PORTS,
    parse_comment,
)

WELL_KNOWN_PORTS = frozenset(PROTOCOL_PORTS.values()) | {OTHER_PORT}
MASK32 = 0xFFFFFFFF
BT_SPB = 3
NRB_IPV6 = 2
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# link types -> how to find the IP header
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP = 0, 1, 101, 108
LINKTYPE_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_SLL2 = 113, 228, 229, 276
_RAW_LINKTYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}
_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


class PcapReadError(Exception):
    """The file is not a pcap/pcapng file, or is damaged."""


@dataclass(slots=True)
class Packet:
    ts: float
    linktype: int
    data: bytes
    origlen: int
    comment: str = ""


# ---------------------------------------------------------------- containers


def _options(body: bytes, endian: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(endian + "HH", body, pos)
        if code == 0:
            return
        yield code, body[pos + 4 : pos + 4 + length]
        pos += 4 + length + (-length % 4)


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
            if size:
                name = value[size:].split(b"\0", 1)[0]
                self[value[:size]] = name.decode("utf-8", "surrogateescape")
            pos += 4 + length + (-length % 4)


def _pcapng_packets(f: BinaryIO, names: _Names) -> Iterator[Packet]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        btype = struct.unpack("<I", head[:4])[0]
        if btype == BT_SHB:
            magic = f.read(4)
            endian = "<" if magic == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
            total = struct.unpack(endian + "I", head[4:])[0]
            body = magic + f.read(total - 12)
        else:
            total = struct.unpack(endian + "I", head[4:])[0]
            body = f.read(total - 8)
        if total < 12 or len(body) < total - 8:
            return  # cut short in the middle of a block: everything before it was read
        body = body[:-4]
        if btype == BT_IDB:
            linktype = struct.unpack_from(endian + "H", body)[0]
            opts = dict(_options(body[8:], endian))
            resol = _tsresol(opts[IF_TSRESOL]) if IF_TSRESOL in opts else 1e-6
            interfaces.append((linktype, resol))
        elif btype == BT_EPB:
            iface, hi, lo, caplen, origlen = struct.unpack_from(endian + "5I", body)
            linktype, resol = interfaces[iface]
            data = body[20 : 20 + caplen]
            opts = dict(_options(body[20 + caplen + (-caplen % 4) :], endian))
            comment = opts.get(OPT_COMMENT, b"").decode("utf-8", "replace")
            yield Packet(((hi << 32) | lo) * resol, linktype, data, origlen, comment)
        elif btype == BT_SPB and interfaces:
            origlen = struct.unpack_from(endian + "I", body)[0]
            yield Packet(0.0, interfaces[0][0], body[4 : 4 + origlen], origlen)
        elif btype == BT_NRB:
            names.add_block(body, endian)


def _pcap_packets(f: BinaryIO, magic: bytes) -> Iterator[Packet]:
    endian, resol = _PCAP_MAGIC[magic]
    header = f.read(20)
    if len(header) < 20:
        raise PcapReadError("truncated pcap file header")
    linktype = struct.unpack(endian + "I", header[16:])[0] & 0xFFFF
    record = struct.Struct(endian + "4I")
    while True:
        head = f.read(16)
        if len(head) < 16:
            return
        sec, frac, caplen, origlen = record.unpack(head)
        data = f.read(caplen)
        if len(data) < caplen:
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
    l4 = ip[hlen:total]
    wire = total - hlen
    if proto == 6 and len(l4) >= 20:
        sport, dport, seq, _ack, off_flags = struct.unpack_from("!HHIIH", l4)
        doff = (off_flags >> 12) * 4
        flags = off_flags & 0x3F
        return _Segment(src, dst, proto, sport, dport, seq, flags, wire - doff, bytes(l4[doff:]))
    if proto == 17 and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        return _Segment(src, dst, proto, sport, dport, 0, 0, wire - 8, bytes(l4[8:]))
    return None


# ---------------------------------------------------------------- flows


@dataclass(slots=True)
class _Side:
    id: int  # the Record's sock_id: one per flow endpoint
    base: int | None = None  # sequence number of stream offset 0
    next: int = 0  # next stream offset expected
    msg_start: bool = True
    closed: bool = False


@dataclass(slots=True)
class _Flow:
    server: tuple[bytes, int]
    sides: dict[tuple[bytes, int], _Side] = field(default_factory=dict)


def _endpoint_text(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class _Reassembler:
    def __init__(self, names: _Names) -> None:
        self._names = names
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
        peer_inode = int(info.get("peer", peer.id))
        # a datagram socket's flow is its own unless the comment names a peer
        connected = seg.proto == 6 or peer_inode != 0 or not info
        template = Record(
            ts=pkt.ts,
            pid=int(info.get("pid", 0)),
            tid=int(info.get("tid", 0)),
            uid=int(info.get("uid", 0)),
            comm=info.get("comm", ""),
            inode=int(info.get("inode", side.id)),
            peer_inode=peer_inode,
            sock_type=info.get("type", "stream" if seg.proto == 6 else "dgram"),
            path=info.get("path", path),
            path_is_own=is_server,
            offset=side.next,
            length=0,
            peer_pid=int(info.get("peer_pid", 0)),
            sock_id=side.id,
            peer_id=peer.id if connected else 0,
            peer_comm=info.get("peer_comm", ""),
        )
        if seg.proto == 17:
            yield self._datagram(side, seg, pkt.comment, template)
            return
        if side.base is None:
            side.base = seg.seq
        rel = (seg.seq - side.base - side.next) & MASK32
        off = side.next + (rel - (1 << 32) if rel & 0x80000000 else rel)
        if off > side.next:
            gap = off - side.next
            yield replace(template, length=gap, lost=gap, kind="lost")
            side.next = off
        length, payload = seg.length, seg.payload
        if off < side.next:  # retransmission: keep only what is new
            skip = min(side.next - off, length)
            off, length, payload = off + skip, length - skip, payload[skip:]
        if length > 0:
            flags = FLAG_MSG_START if side.msg_start else 0
            if seg.flags & TCP_PSH:
                flags |= FLAG_MSG_END
            if len(payload) < length:
                flags |= FLAG_TRUNCATED
            side.msg_start = bool(seg.flags & TCP_PSH)
            side.next = off + length
            yield replace(template, offset=off, length=length, data=payload, flags=flags)
        if seg.flags & (TCP_FIN | TCP_RST) and not side.closed:
            side.closed = True
            yield replace(template, offset=side.next, kind="close")

    @staticmethod
    def _datagram(side: _Side, seg: _Segment, comment: str, template: Record) -> Record:
        flags = FLAG_MSG_START | FLAG_MSG_END
        if " of one " in comment and comment.startswith("usniff: part "):
            part, count = comment.split()[2].split("/")
            flags = (FLAG_MSG_START if part == "1" else 0) | (FLAG_MSG_END if part == count else 0)
        if len(seg.payload) < seg.length:
            flags |= FLAG_TRUNCATED
        side.next += seg.length
        return replace(template, length=seg.length, data=seg.payload, flags=flags)

    def _comment_fields(self, comment: str) -> dict[str, str]:
        info = self._fields.get(comment)
        if info is None:
            info = parse_comment(comment) if "inode=" in comment else {}
            if len(self._fields) < 100_000:
                self._fields[comment] = info
        return info


# ---------------------------------------------------------------- public API


def read_packets(path: str, names: _Names | None = None) -> Iterator[Packet]:
    """Packets of a pcap or pcapng file, in file order."""
    names = _Names() if names is None else names
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic == struct.pack("<I", BT_SHB):
            f.seek(0)
            yield from _pcapng_packets(f, names)
        elif magic in _PCAP_MAGIC:
            yield from _pcap_packets(f, magic)
        else:
            raise PcapReadError(f"{path}: not a pcap or pcapng file")


def read_records(path: str) -> Iterator[Record]:
    """Records of every TCP (and UDP) flow in a pcap/pcapng file, in packet order."""
    names = _Names()
    flows = _Reassembler(names)
    for pkt in read_packets(path, names):
        seg = _segment(pkt)
        if seg is not None:
            yield from flows.records(pkt, seg)


@dataclass(slots=True)
class Dissected:
    """One packet as Wireshark's dissectors see it."""

    number: int
    ts: float
    protocol: str  # "resp", "mysql", "pgsql", "http"
    fields: dict[str, str]


WIRESHARK_PROTOCOLS = ("resp", "mysql", "pgsql", "http")


def dissect_wireshark(
    path: str,
    protocols: tuple[str, ...] = WIRESHARK_PROTOCOLS,
    decode_as: dict[str, str] | None = None,
) -> Iterator[Dissected]:
    """``usniff read --dissect wireshark``: the fields tshark (through pyshark)
    finds in each packet of the given protocols.  Repeated fields (the
    arguments of one command) are joined with ", ".  ``decode_as`` is passed to
    tshark, e.g. ``{"tcp.port==16379": "resp"}`` for a server on another port."""
    pyshark = importlib.import_module("pyshark")  # optional dependency
    capture = pyshark.FileCapture(
        path, display_filter=" || ".join(protocols), keep_packets=False, decode_as=decode_as
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
