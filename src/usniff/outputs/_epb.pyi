"""The pcapng output's packet encoder, in C (_epb.c)."""

from collections.abc import Callable, Sequence
from typing import TypeVar

from typing_extensions import Buffer

from usniff._events import Packed
from usniff.events import Record

SPLICE_MIN: int  # payloads from this size are kept by reference (Sink.splice), not copied
MAX_SEGMENT: int  # TCP payload that fits one IPv4 packet

class Direction:
    """One direction of a flow: its numbers and comment state, as C fields."""

    seq0: int  # seq = seq0 + stream offset
    next_off: int  # next stream offset expected (what the peer has ACKed)
    l4_sum: int  # TCP/UDP checksum, constant part
    ip_sum: int  # IPv4 checksum, constant part
    fin: int  # 1 once this side has sent its FIN
    proto: int  # IPPROTO_TCP or IPPROTO_UDP
    addrs: bytes  # source, destination address, source, destination port (network order)
    peer: Direction  # the flow's other direction
    note: str  # extra comment for the next packet ("" for none)
    comment_key: tuple[int, int, int, str, int, str, int, int] | None  # what comment_opts says
    comment_opts: bytes  # EPB options (comment, flags) of a packet with that comment

Piece = bytes | memoryview | Packed  # what Sink keeps: bytes it held, payloads by reference

class Sink(bytearray):
    """A batch's output buffer; payloads from SPLICE_MIN bytes are kept by reference."""

    @property
    def parts(self) -> list[Piece]: ...
    @property
    def parts_size(self) -> int: ...
    def splice(self, payload: Piece) -> None: ...
    def size(self) -> int:
        """Bytes held: the parts and the bytearray."""
    def pieces(self) -> list[Piece]:
        """The buffers to write, in order: the parts, then a view of the bytearray."""

def tcp(
    buf: Sink,
    d: Direction,
    ts: float,
    flags: int,
    off: int,
    payload: Buffer,
    length: int,
    opts: bytes,
    tcp_opts: bytes,
) -> None:
    """One TCP segment's EPB: ``length`` stream bytes at ``off`` (``payload``
    shorter when cut by the snap length); ACK from ``d.peer`` when flags has ACK."""

def udp(buf: Sink, d: Direction, ts: float, payload: Buffer, length: int, opts: bytes) -> None:
    """One UDP datagram's EPB."""

def segments(
    buf: Sink,
    d: Direction,
    ts: float,
    push: bool,
    off: int,
    data: Buffer,
    length: int,
    opts: bytes,
) -> int:
    """A TCP data record's segments (MAX_SEGMENT payload bytes each, PSH on the
    last when ``push``); ``d.next_off`` moves past them.  Returns how many."""

_D = TypeVar("_D", bound=Direction)

def write_batch(
    dirs: dict[object, _D],
    add: Callable[[Sink, Record], None],
    buf: Sink,
    batch: Sequence[Record | Packed],
    start: int,
    room: float,
    deadline: float,
) -> tuple[int, int]:
    """Frame batch[start:] into ``buf``: the common records here, the others
    with ``add``.  Stops at the first record that needs a rotation (``buf.size()
    > room`` or ``ts >= deadline``); returns its index and the packets framed here."""
