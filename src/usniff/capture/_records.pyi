"""The capture stage's record assembly and ring walk, in C (_records.c)."""

from collections.abc import Callable

from typing_extensions import Buffer

from usniff._events import Packed
from usniff.events import CaptureStats, Record

EVENT_SIZE: int  # sizeof(struct usniff_event)
SOCK_STATE_SIZE: int  # sizeof(struct usniff_sock_state)
CONFIG_SIZE: int  # sizeof(struct usniff_config)
NAME_KEY_SIZE: int  # sizeof(struct usniff_name_key)
RELEASE: int  # ring bytes handled between two stores of the consumer position (drain)

Receiver = tuple[int, int, str]  # a datagram receiver's inode, pid and comm

class Assembler:
    """Ring records -> a batch of Records (or Packed).

    ``stats`` counts records, bytes and bytes_kept of data records.  The dicts
    are shared with the caller, keyed by sock_id: ``sock_info`` (path,
    path_is_own) is read for every record; ``last`` gets each socket's newest
    record; while ``dest`` or ``in_dest`` is not empty, ``destination`` is
    called for every data and loss record.  The callables run for the rare
    cases: ``announce(rec)`` for an EV_SOCK/EV_DEST record (a buffer valid
    during the call only), ``lookup(sock_id, inode, peer_inode)`` for a socket
    missing from ``sock_info``, ``count_loss(record, n)`` for a loss record.
    """

    clock: float  # wall clock - CLOCK_MONOTONIC, seconds: Record.ts = clock + ring ts
    packed: bool  # data on connected stream sockets becomes Packed
    sums: bool  # a Packed payload is summed as it is copied (pcapng will frame it)
    @property
    def batch(self) -> list[Record | Packed]:
        """The records made and not taken yet."""
    @property
    def stats(self) -> CaptureStats: ...
    def __init__(
        self,
        stats: CaptureStats,
        sock_info: dict[int, tuple[str, bool]],
        last: dict[int, Record | Packed],
        dest: dict[int, str],
        in_dest: dict[int, str],
        *,
        lookup: Callable[[int, int, int], tuple[str, bool]],
        destination: Callable[[int, str, bool, int], tuple[str, bool, int, Receiver | None]],
        count_loss: Callable[[Record, int], object],
        announce: Callable[[memoryview], object],
        clock: float,
        packed: bool = False,
        sums: bool = False,
    ) -> None: ...
    def handle(self, rec: Buffer) -> None:
        """One ring record (header and payload) -> a record in ``batch``."""
    def take(self) -> list[Record | Packed]:
        """The batch so far; a new empty one replaces it."""

def drain(assembler: Assembler, cons: Buffer, prod: Buffer, limit: int) -> int:
    """Walk a BPF ring's mapping (ringbuf.py): each record to ``assembler``."""

def sort_by_ts(records: list[Record] | list[Record | Packed], start: int = 0) -> None:
    """Sort ``records[start:]`` in place by ts, stably (as ``sorted(..., key=...ts)``)."""
