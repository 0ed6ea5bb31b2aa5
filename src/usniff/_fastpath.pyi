"""The collector's per-record hot path, in C (_fastpath.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

from usniff.events import Record
from usniff.outputs.pcapng import Framer, _Dir, _Sink

EVENT_SIZE: int  # sizeof(struct usniff_event)
SOCK_STATE_SIZE: int  # sizeof(struct usniff_sock_state)
SPLICE_MIN: int  # payloads from this size are kept by reference (_Sink.splice), not copied
RELEASE: int  # ring bytes handled between two stores of the consumer position (drain)

class Packed:
    """A data record for the pcapng output (Capture.packed); its payload is the buffer."""

    ts: float
    inode: int
    def record(self) -> Record:
        """The equivalent Record."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class Direction:
    """Base of pcapng._Dir: a flow direction's numbers, as C values."""

    seq0: int
    next_off: int
    l4_sum: int
    ip_sum: int
    fin: int
    proto: int
    addrs: bytes

class EventHandler:
    """Base of capture.Capture: its per-record ``_handle``."""

    def _handle(self, rec: memoryview) -> None: ...

def drain(handler: EventHandler, cons: Buffer, prod: Buffer, limit: int) -> int:
    """Walk a BPF ring's mapping (ringbuf.py): records to ``handler._handle``."""

def tcp(
    buf: _Sink,
    d: _Dir,
    ts: float,
    flags: int,
    off: int,
    payload: bytes | memoryview,
    length: int,
    opts: bytes,
    tcp_opts: bytes,
) -> None: ...
def udp(buf: _Sink, d: _Dir, ts: float, payload: bytes, length: int, opts: bytes) -> None: ...
def write_batch(
    framer: Framer,
    buf: _Sink,
    batch: Sequence[Record | Packed],
    start: int,
    room: float,
    deadline: float,
) -> int:
    """Frame batch[start:] (PcapngOutput.write), the common records in C, the others
    with ``framer.add``; the index of the first record that needs a rotation."""
