"""Typed records that flow from capture to streams, decoders and outputs.

The capture layer turns ring-buffer bytes (layout in ``ebpf/usniff.h``) into
:class:`Record` objects; nothing downstream ever sees the raw layout.  One
record describes one contiguous range ``[offset, offset + length)`` of the
byte stream sent by one socket (``sock_id``):

* a data record carries ``data`` (``len(data) <= length``; shorter only when
  the user asked for a snap length with ``-s``),
* a loss record (``lost > 0``) says ``lost`` bytes at ``offset`` were sent but
  could not be copied (ring buffer full, or the bytes were not in user memory,
  e.g. ``sendfile``); ``data`` is empty and ``length == lost``,
* a close record (``kind == "close"``) says the socket went away.

A socket is named by ``sock_id``, this capture's id for it, which exists from
its first byte and never changes; a connection is the pair of its two ends'
ids (``conn_key``).  Inodes are shown (as ``ss -x`` does) but do not identify:
a client may send before the server has accept()ed, when the server's socket
has no inode yet (``peer_inode == 0``) but already an id (``peer_id``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOCK_TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}

# Record.flags bits (same values as ebpf/usniff.h)
FLAG_MSG_START = 1  # first record of one send() call / datagram
FLAG_MSG_END = 2  # last record of one send() call / datagram
FLAG_TRUNCATED = 4  # snap length cut this record's data (len(data) < length)
FLAG_ADDR = 8  # datagram sent with an explicit destination address (sendto/sendmsg)
FLAG_UNCOPYABLE = 16  # a loss record for bytes that were not in user memory, not a full ring
FLAG_COPY_LIMIT = 32  # with UNCOPYABLE: more than the copy loop's steps (kernels without bpf_loop)


@dataclass(slots=True)
class Record:
    ts: float  # wall clock, epoch seconds
    pid: int
    tid: int
    uid: int
    comm: str
    inode: int  # sending socket's inode (as `ss -x` shows it)
    peer_inode: int  # its peer's inode, 0 when unconnected or not accept()ed yet
    sock_type: str  # "stream" | "dgram" | "seqpacket"
    path: str  # own bound address, else the peer's / destination's; "@x" = abstract; "" unknown
    path_is_own: bool  # True when `path` is the sender's own address (the server side)
    offset: int  # position of the first byte in the sender's stream (from first byte seen)
    length: int  # stream bytes this record covers
    data: bytes = b""
    lost: int = 0
    flags: int = 0
    kind: str = "data"  # "data" | "lost" | "close"
    peer_pid: int = 0  # peer's pid when the kernel knows it (connected sockets), else 0
    sock_id: int = 0  # the sending socket's id in this capture (or file)
    peer_id: int = 0  # its peer's id; 0 when unconnected
    peer_comm: str = ""  # the peer process's name when the kernel knows it
    cgroup: int = 0  # the sender's cgroup v2 id (usniff.containers names it); 0 unknown
    peer_cgroup: int = 0  # the peer process's, when the kernel knows it

    @property
    def is_loss(self) -> bool:
        return self.kind == "lost"


ConnKey = tuple[int, int] | tuple[int, int, str]


def conn_key(rec: Record) -> ConnKey:
    """A connection: its two ends' ids, or (sender id, 0, destination) for unconnected datagrams."""
    a, b = rec.sock_id, rec.peer_id
    if b:
        return (a, b) if a < b else (b, a)
    return (a, 0, rec.path)


def sender_is_server(rec: Record) -> bool | None:
    """Whether the record's sender is the server side of its connection: the
    socket that owns the bound address (``path_is_own``); False when the
    address is the peer's or the destination's; None when no address is known
    on either side (a socketpair)."""
    if rec.path_is_own:
        return True
    return False if rec.path else None


def server_id(rec: Record) -> int:
    """The id of the connection's server side (0: an unconnected datagram's receiver).

    The server is decided by :func:`sender_is_server`; with no address on
    either side (socketpair) the lower id is the client ("A" side).
    """
    if not rec.peer_id:
        return 0
    is_server = sender_is_server(rec)
    if is_server is None:
        return max(rec.sock_id, rec.peer_id)
    return rec.sock_id if is_server else rec.peer_id


@dataclass(slots=True)
class CaptureStats:
    records: int = 0
    bytes: int = 0  # bytes covered by data records
    bytes_kept: int = 0
    lost_records: int = 0
    lost_bytes: int = 0  # includes unwritten_bytes
    unwritten_bytes: int = 0  # captured, but an output could not write them (disk full)
    # lost in a full ring on sockets that went away before their loss could be reported
    unattributed_lost: int = 0
    # sends the kernel's kprobes did not hand to the programs (kprobe backend): lost, size unknown
    missed_sends: int = 0
    backend: str = ""
    per_socket_lost: dict[int, int] = field(default_factory=dict)
