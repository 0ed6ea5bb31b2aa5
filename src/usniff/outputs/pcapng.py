"""pcapng writer: each Unix socket connection becomes a synthetic TCP/IPv4 flow.

Stock Wireshark then reassembles and dissects the bytes as if they had been
sent over TCP (framing documented in docs/pcapng.md):

* a stream connection (pair of socket inodes) becomes one TCP flow with a
  SYN/SYN-ACK/ACK handshake when first seen, ``seq = ISN + 1 + offset``, ACKs
  reflecting what the other side has sent, and a FIN when a socket closes;
* datagram/seqpacket sockets become UDP flows, one datagram per packet;
* the server side (the socket owning the bound path) gets the protocol's
  well-known port, clients get ephemeral ports; addresses are synthetic
  (servers 10.0.0.0/9, clients 10.128.0.0/9) and Name Resolution Blocks map
  them to the socket path and ``comm[pid]``;
* each packet carries a comment with pid, tid, uid, comm, inodes and path.

The packets are encoded in C (:mod:`usniff.outputs._epb`): each whole
Enhanced Packet Block (headers, both checksums, payload, options) goes into
one buffer per batch (:class:`~usniff.outputs._epb.Sink`), written with
writev(2), large payloads by reference; no scapy.  This module decides what
the packets are (flows, handshakes, comments, gaps, closes, datagrams).
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import stat
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from usniff import __version__, events
from usniff._events import Packed
from usniff.containers import Containers
from usniff.decoders import registry
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, CaptureStats, Record
from usniff.formats.pcapng import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    BT_NRB,
    BT_SHB,
    BYTE_ORDER_MAGIC,
    END_OPTS,
    EPB_FLAGS,
    EPB_INBOUND,
    EPB_OUTBOUND,
    IF_DESCRIPTION,
    IF_NAME,
    IF_TSRESOL,
    IPPROTO_TCP,
    IPPROTO_UDP,
    ISB_ENDTIME,
    ISB_IFDROP,
    ISB_IFRECV,
    ISB_STARTTIME,
    ISB_USRDELIV,
    LINKTYPE_RAW,
    MASK32,
    NRB_IPV4,
    OPT_COMMENT,
    OTHER_PORT,
    SHB_HARDWARE,
    SHB_OS,
    SHB_USERAPPL,
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    block,
    option,
    record_comment,
)
from usniff.outputs._epb import MAX_SEGMENT, Direction, Sink, segments, tcp, udp, write_batch
from usniff.outputs.base import OutputError

EPHEMERAL_FIRST = 49152
EPHEMERAL_COUNT = 65536 - EPHEMERAL_FIRST
SERVER_NET = 0x0A000000  # 10.0.0.0/9: one address per server path
CLIENT_NET = 0x0A800000  # 10.128.0.0/9: one address per client process
NET_SIZE = 1 << 23
MAX_DATAGRAM = 65535 - 20 - 8  # UDP payload that fits one IPv4 packet
FLUSH_BYTES = 1 << 20  # write out as soon as this much is buffered, also within a batch
ISB_ROOM = 512  # bytes left free when the disk fills, for the statistics block (~300)
IOV_MAX = 1024  # buffers per writev(2)
MAX_NAMES = 1 << 16  # server paths and client processes with an address at once
WSCALE = 14  # window scale announced in the SYNs: window 65535 << 14 never fills

_SYN_OPTIONS = bytes((2, 4, MAX_SEGMENT >> 8, MAX_SEGMENT & 0xFF, 1, 3, 3, WSCALE))  # MSS, NOP, WS


def _u64(value: int) -> bytes:
    return struct.pack("<II", value >> 32, value & MASK32)


def _usec(ts: float) -> int:
    return int(ts * 1_000_000)


def _addr_sum(addr: int) -> int:
    return (addr >> 16) + (addr & 0xFFFF)


# ---------------------------------------------------------------- protocol ports


def server_port(client: bytes, server: bytes) -> int:
    """The port of the protocol these first bytes belong to (Wireshark dissects it there)."""
    found = registry.detect(client, server)
    return registry.BY_NAME[found].port if found in registry.BY_NAME else OTHER_PORT


# ---------------------------------------------------------------- framing


class _Dir(Direction):
    """One direction of one flow: the bytes one socket sends.

    Its numbers (seq0, next_off, fin, proto, l4_sum, ip_sum, addrs) and
    comment state (peer, note, comment_key, comment_opts) are C fields of
    :class:`usniff.outputs._epb.Direction`, which the C framing reads and
    advances directly."""

    __slots__ = ("epb_flags", "key", "pending")
    peer: _Dir

    def __init__(self, src: int, dst: int, sport: int, dport: int, proto: int, epb: int) -> None:
        self.addrs = struct.pack("!IIHH", src, dst, sport, dport)
        self.proto = proto
        self.epb_flags = option(EPB_FLAGS, struct.pack("<I", epb))
        # constant parts of the IPv4 header sum and of the TCP/UDP pseudo-header + header sum
        self.ip_sum = 0x4500 + 0x4000 + (64 << 8) + proto + _addr_sum(src) + _addr_sum(dst)
        window = 0xFFFF if proto == IPPROTO_TCP else 0
        self.l4_sum = _addr_sum(src) + _addr_sum(dst) + proto + sport + dport + window
        self.seq0 = 1  # seq = ISN + 1 + offset with ISN 0
        self.next_off = 0  # next stream offset expected (what the peer has ACKed)
        self.fin = 0
        self.note = ""  # extra comment for this direction's next packet
        self.pending: list[Record] = []  # records of a datagram not yet complete
        self.comment_key = None
        self.comment_opts = b""
        self.peer = self
        self.key: object = None  # its key in Framer._dirs


def _names_block(names: Sequence[tuple[int, str]]) -> bytes:
    body = bytearray()
    for addr, name in names:
        body += option(
            NRB_IPV4, struct.pack("!I", addr) + name.encode("utf-8", "surrogateescape") + b"\0"
        )
    body += END_OPTS
    return block(BT_NRB, bytes(body))


class Framer:
    """Turns records into pcapng blocks (no I/O).  One instance per capture.

    ``packets`` counts the packets produced so far.
    """

    def __init__(self, snaplen: int = 0, containers: Containers | None = None) -> None:
        self.snaplen = snaplen
        self._who = (containers or Containers()).identity
        self.packets = 0
        self._dirs: dict[object, _Dir] = {}  # sock_id (or sock_id + destination) -> direction
        self._open: dict[_Dir, None] = {}  # client directions of open TCP flows
        self._datagram_keys: dict[int, list[object]] = {}  # sock_id -> its destinations' keys
        self._path_ports: dict[str, int] = {}  # server path -> port of the protocol detected there
        self._addr_of: dict[object, int] = {}
        self._names: dict[int, str] = {}
        self._servers = 0
        self._clients = 0
        self._ports = 0

    # -- file preamble ---------------------------------------------------

    def preamble(self, buf: Sink, ts: float) -> None:
        """Everything a new file starts with: SHB, IDB, all names, and a
        handshake for every flow still open (sequence numbers continue)."""
        uname = os.uname()
        buf += block(
            BT_SHB,
            struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
            + option(SHB_HARDWARE, platform.machine().encode())
            + option(SHB_OS, f"{uname.sysname} {uname.release} {uname.version}".encode())
            + option(SHB_USERAPPL, f"usniff {__version__}".encode())
            + END_OPTS,
        )
        buf += block(
            BT_IDB,
            struct.pack("<HHI", LINKTYPE_RAW, 0, self.snaplen + 40 if self.snaplen else 0)
            + option(IF_NAME, b"usniff")
            + option(IF_DESCRIPTION, b"Unix domain sockets as synthetic TCP/IPv4 (usniff)")
            + option(IF_TSRESOL, b"\x06")
            + END_OPTS,
        )
        if self._names:
            buf += _names_block(list(self._names.items()))
        for client in self._open:
            self._handshake(buf, client, ts, "connection continues from the previous file")
            for d in (client, client.peer):
                if d.fin:
                    self._tcp(buf, d, ts, TCP_FIN | TCP_ACK, d.next_off, b"", 0, d.epb_flags)

    def statistics(
        self, buf: Sink, stats: CaptureStats, start: float, end: float, delivered: int
    ) -> None:
        """The Interface Statistics Block; ``delivered``: packets that reached
        the files (isb_usrdeliv), fewer than produced when the disk filled up."""
        comment = (
            f"usniff: backend={stats.backend or '?'} records={stats.records} "
            f"bytes={stats.bytes} lost_records={stats.lost_records} lost_bytes={stats.lost_bytes}"
        )
        if stats.unwritten_bytes:
            comment += f" unwritten_bytes={stats.unwritten_bytes}"
        start_us, end_us = _usec(start), _usec(end)
        buf += block(
            BT_ISB,
            struct.pack("<III", 0, end_us >> 32, end_us & MASK32)
            + option(ISB_STARTTIME, _u64(start_us))
            + option(ISB_ENDTIME, _u64(end_us))
            + option(ISB_IFRECV, struct.pack("<Q", stats.records))
            + option(ISB_IFDROP, struct.pack("<Q", stats.lost_records))
            + option(ISB_USRDELIV, struct.pack("<Q", delivered))
            + option(OPT_COMMENT, comment.encode())
            + END_OPTS,
        )

    # -- records ---------------------------------------------------------

    def frame(
        self, buf: Sink, batch: Sequence[Record | Packed], start: int, room: float, deadline: float
    ) -> int:
        """Append the packets of batch[start:] (:func:`usniff.outputs._epb.write_batch`:
        the common record in C, the others with :meth:`add`) up to the first
        record that needs a rotation (``buf.size() > room`` or ``ts >=
        deadline``); returns its index (``len(batch)``: all framed)."""
        i, packets = write_batch(self._dirs, self.add, buf, batch, start, room, deadline)
        self.packets += packets
        return i

    def add(self, buf: Sink, rec: Record) -> None:
        """Append the packets for one record."""
        d = self._dirs.get(rec.sock_id if rec.peer_id else (rec.sock_id, rec.path))
        kind = rec.kind
        if kind == "close":
            if d is not None:
                self._close(buf, d, rec)
            return
        if d is None:
            d = self._new_flow(buf, rec)
        if kind == "lost":
            self._lost(buf, d, rec)
        elif d.proto == IPPROTO_TCP:
            self._segments(buf, d, rec)
        else:
            self._datagram(buf, d, rec)

    @property
    def open_flows(self) -> int:
        """Flow directions still remembered (sockets not closed)."""
        return len(self._dirs)

    def finish(self, buf: Sink) -> None:
        """Write out datagrams still waiting for their last record."""
        for d in self._dirs.values():
            if d.pending:
                self._emit_datagram(buf, d)

    def _comment_opts(self, d: _Dir, rec: Record) -> bytes:
        key = (
            rec.pid,
            rec.tid,
            rec.uid,
            rec.comm,
            rec.peer_pid,
            rec.peer_comm,
            rec.cgroup,
            rec.peer_cgroup,
        )
        if key != d.comment_key:
            d.comment_key = key
            d.comment_opts = (
                option(OPT_COMMENT, record_comment(rec, self._who).encode()) + d.epb_flags
            )
        note = d.note
        if not note:
            return d.comment_opts
        d.note = ""
        text = f"usniff: {note}; {record_comment(rec, self._who)}"
        return option(OPT_COMMENT, text.encode()) + d.epb_flags

    def _segments(self, buf: Sink, d: _Dir, rec: Record) -> None:
        off = rec.offset
        if off > d.next_off:
            d.note = f"{off - d.next_off} bytes missing before this packet (not captured)"
        opts = self._comment_opts(d, rec)
        # write_batch frames the common case (no gap or note, same comment) in C
        # without this call; both cut the record into packets in _epb.segments
        push = bool(rec.flags & FLAG_MSG_END)
        self.packets += segments(buf, d, rec.ts, push, off, rec.data, rec.length, opts)

    def _lost(self, buf: Sink, d: _Dir, rec: Record) -> None:
        """A sequence gap, announced by a zero-payload packet after the gap."""
        end = rec.offset + rec.lost
        if end > d.next_off:
            d.next_off = end
        d.note = f"{rec.lost} bytes lost at stream offset {rec.offset} (not captured)"
        if d.proto == IPPROTO_TCP:
            self._tcp(buf, d, rec.ts, TCP_ACK, end, b"", 0, self._comment_opts(d, rec))
        # for datagrams the note goes onto the next datagram

    def _close(self, buf: Sink, d: _Dir, rec: Record) -> None:
        """The socket is gone: its FIN; the flow is forgotten once its other end
        closed too or never sent (a closed socket's peer cannot send any more)."""
        for key in self._datagram_keys.pop(rec.sock_id, [d.key]):
            other = self._dirs.pop(key)
            if other.pending:
                self._emit_datagram(buf, other)
        peer = d.peer
        if d.proto == IPPROTO_TCP:
            d.note = "socket closed"
            opts = self._comment_opts(d, rec)
            self._tcp(buf, d, rec.ts, TCP_FIN | TCP_ACK, d.next_off, b"", 0, opts)
            d.fin = 1
        if peer.fin or not peer.next_off:
            self._open.pop(d, None)
            self._open.pop(peer, None)
            if self._dirs.get(peer.key) is peer:
                del self._dirs[peer.key]
            # the two directions refer to each other: unlinked, reference counting
            # frees them now (the capture raises the cyclic GC's thresholds)
            del d.peer, peer.peer

    def _datagram(self, buf: Sink, d: _Dir, rec: Record) -> None:
        flags = rec.flags
        if d.pending and flags & FLAG_MSG_START:
            self._emit_datagram(buf, d)  # the previous datagram's end was not seen
        d.pending.append(rec)
        if flags & FLAG_MSG_END:
            self._emit_datagram(buf, d)

    def _emit_datagram(self, buf: Sink, d: _Dir) -> None:
        recs, d.pending = d.pending, []
        first = recs[0]
        data = b"".join(r.data for r in recs)
        length = sum(r.length for r in recs)
        if length <= MAX_DATAGRAM:
            udp(buf, d, first.ts, data, length, self._comment_opts(d, first))
            self.packets += 1
            return
        parts = range(0, length, MAX_DATAGRAM)
        for n, pos in enumerate(parts, 1):
            d.note = f"part {n}/{len(parts)} of one {length}-byte datagram"
            part_len = min(MAX_DATAGRAM, length - pos)
            chunk = data[pos : pos + part_len]
            udp(buf, d, first.ts, chunk, part_len, self._comment_opts(d, first))
            self.packets += 1

    # -- flows -----------------------------------------------------------

    def _address(self, key: object, server: bool) -> int:
        addr = self._addr_of.get(key)
        if addr is None:
            if len(self._addr_of) >= MAX_NAMES:  # forget the older half (a bound on memory)
                for old in list(self._addr_of)[: MAX_NAMES // 2]:
                    self._names.pop(self._addr_of.pop(old), None)
                self._path_ports.clear()
            if server:
                self._servers += 1
                addr = SERVER_NET + self._servers % (NET_SIZE - 2)
            else:
                self._clients += 1
                addr = CLIENT_NET + self._clients % (NET_SIZE - 2)
            self._addr_of[key] = addr
        return addr

    def _new_flow(self, buf: Sink, rec: Record) -> _Dir:
        connected = rec.peer_id != 0
        if not connected:
            from_server = events.sender_is_server(rec) is True
            server_id, client_id = (rec.sock_id, 0) if from_server else (0, rec.sock_id)
        else:
            server_id = events.server_id(rec)
            from_server = rec.sock_id == server_id
            client_id = rec.peer_id if from_server else rec.sock_id
        own_ino, peer_ino = rec.inode or "-", rec.peer_inode or "-"
        server_inode, client_inode = (own_ino, peer_ino) if from_server else (peer_ino, own_ino)
        first = rec.data
        port = server_port(b"" if from_server else first, first if from_server else b"")
        how = ""
        if rec.path and port != OTHER_PORT:
            self._path_ports[rec.path] = port
        elif rec.path in self._path_ports:  # its first bytes lost, or mid-stream: unclear alone
            port = self._path_ports[rec.path]
            how = f"; port of the protocol of earlier connections to {rec.path}"
        server_key = ("path", rec.path) if rec.path else ("socket", server_id)
        server_name = rec.path or f"socket:{server_inode}"
        client_pid = rec.peer_pid if from_server else rec.pid
        client_comm = rec.peer_comm if from_server else rec.comm
        client_key: object = client_pid or ("socket", client_id)
        if not client_pid:
            client_name = f"socket:{client_inode}"
        else:
            client_name = f"{client_comm or 'client'}[{client_pid}]"
        names = []
        for key, name, is_server in (
            (server_key, server_name, True),
            (client_key, client_name, False),
        ):
            addr = self._address(key, is_server)
            if addr not in self._names:
                self._names[addr] = name
                names.append((addr, name))
        if names:
            buf += _names_block(names)
        server_addr = self._addr_of[server_key]
        client_addr = self._addr_of[client_key]
        proto = IPPROTO_TCP if rec.sock_type == "stream" else IPPROTO_UDP
        cport = EPHEMERAL_FIRST + self._ports % EPHEMERAL_COUNT
        self._ports += 1
        client = _Dir(client_addr, server_addr, cport, port, proto, EPB_INBOUND)
        server = _Dir(server_addr, client_addr, port, cport, proto, EPB_OUTBOUND)
        client.peer, server.peer = server, client
        if connected:
            server.key, client.key = server_id, client_id
        else:
            own = server if from_server else client
            own.key = (rec.sock_id, rec.path)
            self._datagram_keys.setdefault(rec.sock_id, []).append(own.key)
        for d in (server, client):
            if d.key is not None:
                self._dirs[d.key] = d
        if proto == IPPROTO_TCP:
            self._open[client] = None
            self._handshake(
                buf,
                client,
                rec.ts,
                f"new connection: socket {client_inode} ({client_name}) -> "
                f"{server_inode} ({server_name}){how}",
            )
        return server if from_server else client

    def _handshake(self, buf: Sink, client: _Dir, ts: float, comment: str) -> None:
        """SYN, SYN-ACK, ACK with ISNs chosen so that the next bytes continue the flow."""
        server = client.peer
        c_off, s_off = client.next_off, server.next_off
        syn_opts = option(OPT_COMMENT, f"usniff: {comment}".encode()) + client.epb_flags
        self._tcp(buf, client, ts, TCP_SYN, c_off - 1, b"", 0, syn_opts, _SYN_OPTIONS)
        self._tcp(
            buf, server, ts, TCP_SYN | TCP_ACK, s_off - 1, b"", 0, server.epb_flags, _SYN_OPTIONS
        )
        self._tcp(buf, client, ts, TCP_ACK, c_off, b"", 0, client.epb_flags)

    # -- packets ---------------------------------------------------------

    def _tcp(
        self,
        buf: Sink,
        d: _Dir,
        ts: float,
        flags: int,
        off: int,
        payload: bytes | memoryview,
        length: int,
        opts: bytes,
        tcp_opts: bytes = b"",
    ) -> None:
        """One TCP segment of ``length`` stream bytes (``payload`` may be shorter:
        snap length) from direction ``d`` starting at stream offset ``off``
        (a handshake's, a FIN's, a gap's: data goes through ``segments``)."""
        tcp(buf, d, ts, flags, off, payload, length, opts, tcp_opts)
        self.packets += 1


# ---------------------------------------------------------------- files


def _block_ends(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each whole block of a buffer framed here."""
    pos = 0
    while pos + 8 <= len(data):
        end = pos + struct.unpack_from("<I", data, pos + 4)[0]
        if end > len(data):
            return
        yield pos, end
        pos = end


def _payloads(data: bytes) -> tuple[int, int]:
    """(packets, payload bytes) of the Enhanced Packet Blocks in a buffer
    framed here (raw IPv4, TCP or UDP): what is lost when it is not written."""
    packets = payload = 0
    for pos, _end in _block_ends(data):
        if struct.unpack_from("<I", data, pos)[0] != BT_EPB:
            continue
        ip = pos + 28  # block header 8 + interface, timestamp, lengths 20
        origlen = struct.unpack_from("<I", data, pos + 24)[0]
        l4 = ip + (data[ip] & 0x0F) * 4
        header = (data[l4 + 12] >> 4) * 4 if data[ip + 9] == IPPROTO_TCP else 8
        packets += 1
        payload += origlen - (l4 - ip) - header
    return packets, payload


_PLANTED = (
    "it is a symbolic link another user made in a directory others can write to "
    "(usniff does not follow those: name the target itself)"
)


def _shared(directory: str) -> bool:
    """Whether users other than root and this one can add names to ``directory``
    (/tmp, a group-writable log directory): a name found there may be a trap."""
    st = os.stat(directory)
    return st.st_uid not in (0, os.geteuid()) or bool(st.st_mode & 0o022)


def _refusal(st: os.stat_result, shared: bool) -> str | None:
    """Why the file (or link) at a -w name must not be written, or None.

    usniff runs as root and -w names often sit in /tmp: whoever can write
    there may plant a symlink or a hard link to /etc/passwd, a device, or a
    file of their own under the name the operator is about to use.  Regular
    files are reused (truncated) only when they are the operator's own, as
    when the same command is run again; a link or FIFO is followed only when
    the operator made it or nobody else could have (``-w /dev/stdout``)."""
    mine = st.st_uid == os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        return _PLANTED if shared and not mine else None
    if not mine and (shared or stat.S_ISREG(st.st_mode)):
        return f"it belongs to uid {st.st_uid}, not to this user (remove it or pick another name)"
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"it has {st.st_nlink} hard links (remove it or pick another name)"
    return None


def _create(path: str) -> int:
    """Open ``path`` for writing, new or truncated, mode 0600, never for
    another user's benefit (see :func:`_refusal`).  The name is judged before
    opening (lstat), then opened so that a name replaced in between fails
    (O_EXCL for a new file, O_NOFOLLOW unless it was a link that may be
    followed), and the file opened is judged again (fstat).  A FIFO or device
    (``-w /dev/null``) is written as it is: not truncated, mode unchanged."""
    try:
        shared = _shared(os.path.dirname(path) or ".")
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
    except OSError as err:
        raise OutputError(f"cannot create {path}: {err.strerror}") from err
    reason = _refusal(st, shared) if st is not None else None
    if reason:
        raise OutputError(f"refusing to write {path}: {reason}")
    flags = os.O_WRONLY | os.O_CLOEXEC
    if st is None:
        flags |= os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    elif not stat.S_ISLNK(st.st_mode):
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EEXIST):
            raise OutputError(f"refusing to write {path}: it was replaced while opening") from None
        raise OutputError(f"cannot create {path}: {err.strerror}") from err
    st = os.fstat(fd)
    reason = _refusal(st, shared)
    if reason:
        os.close(fd)
        raise OutputError(f"refusing to write {path}: {reason}")
    if stat.S_ISREG(st.st_mode):
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)  # umask-proof, and fixes the mode of a file reused
    return fd


class _Discarder:
    """Deletes old rotation files on a background thread.

    Freeing a file's pages happens in the unlink (or in the truncation of a
    reused -W name), and the capture loop must not wait for it: at 1 GB/s
    with ``-C 200 -W 2`` on tmpfs, reopening a 200 MB file with O_TRUNC was
    7.5 % of usniff's CPU (perf), all of it while the ring filled up.  A
    file is renamed aside at once (so its name is free), then unlinked.
    """

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self._serial = 0

    def discard(self, path: str, keep_name: bool) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        victim = path
        if keep_name:  # the name is reused right away: move the old file aside
            self._serial += 1
            victim = f"{path}.usniff-discard-{self._serial}"
            try:
                os.rename(path, victim)
            except FileNotFoundError:
                return
        t = threading.Thread(target=self._unlink, args=(victim,), name="usniff-discard")
        t.start()
        self._threads.append(t)

    @staticmethod
    def _unlink(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def join(self) -> None:
        for t in self._threads:
            t.join()
        self._threads.clear()


def _cause(err: OSError) -> str:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if err.errno == errno.EPIPE:
        return "reader went away"
    return "I/O error"


# Instants (UTC) at which -w names are tried: different seconds, minutes,
# hours, days, months and years, and fractions of a second.
_NAME_SAMPLES = (1e9, 1.5e9 + 0.999, 1.7e9 + 3599.5)


def _check_time_names(pattern: str, seconds: float) -> None:
    """Refuse a ``-G`` whose file names would repeat from one period to the
    next: tcpdump then overwrites the previous file (its man page says so);
    we say so up front instead of silently keeping one period of data."""

    def same(t: float, later: float) -> bool:
        return time.strftime(pattern, time.gmtime(t)) == time.strftime(pattern, time.gmtime(later))

    if all(same(t, t + 1e8) for t in _NAME_SAMPLES):
        raise ValueError(
            f"-G {seconds:g} needs a time in the -w name, or every file overwrites the one "
            f"before: put strftime conversions in it, e.g. -w 'cap-%Y%m%d-%H%M%S.pcapng'"
        )
    if any(same(t, t + seconds) for t in _NAME_SAMPLES):
        raise ValueError(
            f"-G {seconds:g}: the time in -w {pattern!r} can stay the same for {seconds:g} s, "
            "so a file would overwrite the one before: use a conversion that changes "
            "every period (%S changes every second), or a longer -G"
        )


class PcapngOutput:
    """pcapng file (or ``-`` for stdout) with tcpdump-style rotation.

    ``rotate_bytes`` (``-C``, in bytes: the CLI multiplies by 1,000,000),
    ``rotate_seconds`` (``-G``, ``path`` may hold strftime patterns) and
    ``rotate_count`` (``-W``, keep that many files: with ``-C`` the names cycle
    through ``path0..path{N-1}`` like tcpdump; with ``-G`` the oldest file is
    deleted).  Every file is complete: SHB, IDB, names and a handshake for
    every flow that continues into it.
    """

    def __init__(
        self,
        path: str,
        *,
        rotate_bytes: int | None = None,
        rotate_count: int | None = None,
        rotate_seconds: float | None = None,
        snaplen: int = 0,
        clock: Callable[[], float] = time.time,
        containers: Containers | None = None,
    ) -> None:
        if path == "-" and (rotate_bytes or rotate_seconds):
            raise ValueError("cannot rotate files when writing to stdout (-w -)")
        if rotate_count and not (rotate_bytes or rotate_seconds):
            raise ValueError("-W needs -C or -G")
        if rotate_seconds and path != "-":
            _check_time_names(path, rotate_seconds)
        self._pattern = path
        self._rotate_bytes = rotate_bytes or 0
        self._rotate_seconds = rotate_seconds or 0.0
        self._count = rotate_count or 0
        self._framer = Framer(snaplen, containers)
        self._buf = Sink()
        self._kept: deque[str] = deque()
        self._discarder = _Discarder()
        self._index = 0
        self._failed: OutputError | None = None
        self._closed = False
        self._clock = clock
        self._start = clock()
        self._fd = -1
        self._size = 0  # bytes in the current file
        self._file_first = self._durable = 0  # packet counts: before this file, written
        self._deadline = float("inf")
        self._unwritten = 0  # payload bytes that could not be written (disk full)
        self.name = ""  # the file being written now
        self._open_file(self._start)

    @property
    def packets(self) -> int:
        """Packets produced so far, all files together."""
        return self._framer.packets

    # -- Output ----------------------------------------------------------

    takes_packed = True  # the capture's Packed records are framed from their C fields
    frames_packed = True

    def write(self, batch: Sequence[Record | Packed], limit: int = 0) -> int:
        """Frame a batch (its first ``limit`` records when ``limit`` > 0; returns
        how many) with :meth:`Framer.frame`: the common record (one TCP
        segment on a known flow, no gap, no note pending, same comment as
        before) with no Python call, the others through :meth:`Framer.add`;
        it returns here when a file must rotate (or for an item that is not a
        Record).  The loop is in C because a Python call
        per record was the writer's limit for small records.
        The buffer is written out whenever it passes FLUSH_BYTES, also
        within a batch (a 0.1 s batch of small records frames to 2-7 MB):
        writev copies it into the page cache while it is still in the CPU's
        cache (figures for both: docs/performance.md, "Collector")."""
        if limit:
            batch = batch[:limit]
        framer = self._framer
        size_limit = self._rotate_bytes or float("inf")
        i, n = 0, len(batch)
        try:
            self._check()
            while True:
                room = min(size_limit - self._size, FLUSH_BYTES)
                i = framer.frame(self._buf, batch, i, room, self._deadline)
                if i >= n:
                    break
                rec = batch[i]
                if self._size + self._buf.size() > size_limit or rec.ts >= self._deadline:
                    self._rotate(rec.ts)
                elif self._buf.size() > FLUSH_BYTES:
                    self._drain()
                    continue
                framer.add(self._buf, rec.record() if isinstance(rec, Packed) else rec)
                i += 1
            if self._buf.size() >= FLUSH_BYTES:
                self.flush()
        except OutputError:
            for item in batch[i:]:  # not framed: count what they carried
                r = item.record() if isinstance(item, Packed) else item
                self._unwritten += r.length if r.kind == "data" else 0
            raise
        return n

    def flush(self) -> None:
        self._check()
        self._drain()

    def close(self, stats: CaptureStats) -> int:
        if self._closed:
            return 0
        self._closed = True
        try:
            if self._failed is None:
                self._framer.finish(self._buf)
                self._framer.statistics(
                    self._buf, stats, self._start, self._clock(), self._framer.packets
                )
                self._drain()
            else:
                self._account(stats)
        finally:
            self._close_fd()
            self._discarder.join()
        return 0  # every record was emitted by write

    def _account(self, stats: CaptureStats) -> None:
        """After a write error: count what never reached the file as lost
        (datagrams still waiting for their end too), then try to end the file
        with the statistics block saying so, in the ISB_ROOM bytes ``_cut`` left
        (space the file already held)."""
        pending = Sink()
        self._framer.finish(pending)
        self._unwritten += _payloads(b"".join(pending.pieces()))[1]
        stats.unwritten_bytes += self._unwritten
        stats.lost_bytes += self._unwritten
        if self._fd < 0 or self._pattern == "-":
            return
        isb = Sink()
        self._framer.statistics(isb, stats, self._start, self._clock(), self._durable)
        try:
            if os.write(self._fd, isb) == len(isb):
                return
        except OSError:
            pass
        self._truncate()

    def _truncate(self) -> None:
        """Cut the file back to its whole blocks; the next write goes there."""
        if self._pattern != "-":
            with contextlib.suppress(OSError):  # a FIFO or device cannot be cut
                os.ftruncate(self._fd, self._size)
                os.lseek(self._fd, self._size, os.SEEK_SET)

    # -- files -----------------------------------------------------------

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._closed:
            raise OutputError(f"{self.name}: output already closed")

    def _name(self, ts: float) -> str:
        name = self._pattern
        if self._rotate_seconds:
            name = time.strftime(name, time.localtime(ts))
        if self._rotate_bytes and (self._index or self._count):
            width = len(str(self._count - 1)) if self._count else 0
            number = self._index % self._count if self._count else self._index
            name += str(number).zfill(width)
        return name

    def _open_file(self, ts: float) -> None:
        self.name = self._name(ts)
        if self._pattern == "-":
            self.name = "<stdout>"
            self._fd = sys.stdout.fileno()
        else:
            if self.name in self._kept:  # -C -W reuses a name: its old file goes
                self._discarder.discard(self.name, keep_name=True)
            try:
                self._fd = _create(self.name)
            except OutputError as err:
                self._failed = err  # close() then writes nothing more
                raise
            self._keep(self.name)
        self._size = 0
        self._file_first = self._durable = self._framer.packets
        self._deadline = ts + self._rotate_seconds if self._rotate_seconds else float("inf")
        self._framer.preamble(self._buf, ts)
        self._drain()

    def _keep(self, name: str) -> None:
        if not self._count:
            return
        if name in self._kept:
            self._kept.remove(name)
        self._kept.append(name)
        while len(self._kept) > self._count:
            self._discarder.discard(self._kept.popleft(), keep_name=False)

    def _rotate(self, ts: float) -> None:
        self._drain()
        self._close_fd()
        if ts >= self._deadline:
            self._index = 0  # -C numbering restarts in every -G period, like tcpdump
        else:
            self._index += 1
        self._open_file(ts)

    def _close_fd(self) -> None:
        if self._fd >= 0 and self._pattern != "-":
            os.close(self._fd)
        self._fd = -1

    def _drain(self) -> None:
        """Write the buffer out with writev(2), IOV_MAX buffers per call."""
        pieces = self._buf.pieces()
        if not pieces:
            return
        whole = list(pieces)  # the loop below replaces partly written pieces
        written = 0
        try:
            first = 0
            while first < len(pieces):
                n = os.writev(self._fd, pieces[first : first + IOV_MAX])
                written += n
                while first < len(pieces) and n >= len(pieces[first]):
                    n -= len(pieces[first])
                    first += 1
                if n:  # the kernel took part of a buffer
                    pieces[first] = memoryview(pieces[first])[n:]
        except OSError as err:
            self._cut(b"".join(whole), written)
            readable = self._durable - self._file_first
            self._failed = OutputError(
                f"{_cause(err)} writing {self.name}: {err.strerror}; capture stopped; "
                f"file is readable up to packet {readable}"
            )
            raise self._failed from err
        finally:
            for piece in (*pieces, *whole):
                if isinstance(piece, memoryview):
                    piece.release()
            self._buf = Sink()
        self._size += written
        self._durable = self._framer.packets

    def _cut(self, data: bytes, written: int) -> None:
        """A write failed after ``written`` bytes of ``data``: keep the whole
        blocks among them (a disk with 0.5 MiB free takes 0.5 MiB of a 1 MiB
        buffer) but the last ISB_ROOM bytes, where the statistics block will go
        (``_account``: space the file already holds, so it is written), cut off
        the rest, count the packets after it as not written."""
        room = self._size + written - ISB_ROOM  # where the kept blocks must end
        kept = 0
        for _start, end in _block_ends(data):
            if self._size + end > room:
                break
            kept = end
        dropped = self._unwind(room) if not kept else b""
        self._size += kept
        self._truncate()
        self._durable += _payloads(data[:kept])[0] - _payloads(dropped)[0]
        self._unwritten += _payloads(data[kept:])[1] + _payloads(dropped)[1]

    def _unwind(self, room: int) -> bytes:
        """Packets at the end of the file (EPBs, read back by their trailing block
        lengths) dropped until it ends by ``room``; their blocks."""
        end = self._size
        with contextlib.suppress(OSError):  # a FIFO or device cannot be read back
            while end > room:
                (length,) = struct.unpack("<I", os.pread(self._fd, 4, end - 4))
                start = end - length
                head = os.pread(self._fd, 4, start) if 0 < start < end else b""
                if len(head) < 4 or struct.unpack("<I", head)[0] != BT_EPB:
                    break
                end = start
        dropped = os.pread(self._fd, self._size - end, end) if end < self._size else b""
        self._size = end
        return dropped
