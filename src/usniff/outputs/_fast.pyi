"""The native path of the statistics table and of --metrics, in C (_fast.c); outputs/fast.py
drives it."""

from collections.abc import Callable, Sequence

from usniff._events import Packed
from usniff.decoders.engine import HandoverState
from usniff.events import Record

SUB_BITS: int  # the latency histogram's buckets: exact below 2**SUB_BITS ns

def bucket(ns: int) -> int:
    """The bucket of a latency of ``ns`` nanoseconds (monotonic in ``ns``)."""

def bucket_middle(key: int) -> float:
    """The middle of bucket ``key``, in nanoseconds."""

def fold_numbers(sql: bytes) -> bytes | None:
    """The key the shape cache keeps ``sql`` under: its numbers (as the literals' regexes
    find them) replaced by ``?``; None when the text is its own key (a quote, ``$``, a
    backslash, ``0x`` or a byte past ASCII in it)."""

def sockets(batch: list[Record | Packed]) -> list[tuple[str, bool, int, int, int, int]]:
    """Per (path, path_is_own, cgroup) of ``batch``'s records but closes, in the order of
    their first record: (path, path_is_own, cgroup, messages, bytes, lost bytes)."""

ConnKey = tuple[int, int]
# what a connection hands back (Core.feed, Core.release_all): its key, its server's id,
# the next offset and whether it started, per direction (client, server), the capture time
# of its last record, the pids, comms, inodes and cgroups of both ends (client, server), the
# requests waiting for a reply (each the request as sent, bytes, or the object adopted,
# with its ts and size), the decoder's state (decoders.engine.HandoverState)
Handback = tuple[
    ConnKey,
    int,
    tuple[int, int],
    tuple[bool, bool],
    float,
    tuple[int, int],
    tuple[str, str],
    tuple[int, int],
    tuple[int, int],
    list[tuple[object, float, int]],
    HandoverState,
]
# per label (adopt's), protocol and command (the --stats key), in the order of their first
# transaction since the last take: label, protocol, command, count, errors, bytes in, bytes
# out, latency counts per bucket (log-linear, or the index among Core's edges), the largest
# latency, the sum of the latencies in nanoseconds (each rounded as bucket's argument)
Row = tuple[int, str, str, int, int, int, int, dict[int, int], float, int]
# a candidate for the slowest list: latency, protocol, the client's comm, the request (as in
# Handback)
Slow = tuple[float, str, str, object]

class Core:
    """RESP, MySQL and PostgreSQL connections taken over from the Python engine, decoded
    and counted in C."""

    def __init__(
        self,
        containers: frozenset[bytes],
        stateful: frozenset[bytes],
        top: int,
        edges: Sequence[float] | None = None,
        clock: Callable[[float], str] | None = None,
        shape: Callable[[str, bytes], bytes | None] | None = None,
    ) -> None:
        """``containers``: names whose subcommand is part of the key; ``stateful``: keys
        after which a connection goes back to Python; ``top``: the slowest list's size;
        ``edges``: the histogram's upper bounds, ascending (a latency's bucket is the
        index of the first edge >= it, len(edges) above them all); None: log-linear;
        ``clock``: given (outputs.base.clock_text), the core renders each transaction's
        text line as outputs/decoded.py format_text does (:meth:`lines`) instead of
        counting it in rows, and leaves to Python the records whose line it does not
        render exactly; ``shape``: given, the --stats key of an SQL text of a protocol
        (utf-8; None: the decoder must see the statement), called once per distinct text
        (4096 of them kept); needed to adopt MySQL connections."""
    @property
    def owned(self) -> int:
        """Connections owned."""
    def feed(
        self, batch: list[Record | Packed], start: int, most: int
    ) -> tuple[int, int, Handback | None]:
        """Handle ``batch[start:]`` up to the first record not handled, ``j``; ``k``: the
        first record after it of a connection owned, or ``j + most``, or len(batch); the
        state of the connection of ``batch[j]`` when it was owned and is handed back for
        that record."""
    def adopt(
        self,
        key: ConnKey,
        server: int,
        next: tuple[int, int],
        started: tuple[bool, bool],
        last_ts: float,
        pids: tuple[int, int],
        comms: tuple[str, str],
        inodes: tuple[int, int],
        cgroups: tuple[int, int],
        pending: list[tuple[object, bytes, float, int, bytes | None]],
        label: int,
        names: bytes | None,
        protocol: str,
        state: HandoverState,
    ) -> None:
        """Take a connection over; ``pending``: its requests (object, command key, ts, size,
        and with lines its text: utf-8, printable); ``label``: its transactions are counted
        in the rows of this label; ``names``: with lines, " client -> server  " as the
        lines name the ends (utf-8, printable); ``protocol``: "resp", "mysql" or
        "postgres" (the last two: no lines, pending requests whose reply has not begun), or
        "opaque" (no decoder: its records only delivered and counted; no lines, no pending);
        ``state``: the decoder's (Decoding.hand_over; a reply not begun)."""
    def release_all(self) -> list[Handback]:
        """Hand every connection back."""
    def seed(self, latencies: list[float]) -> None:
        """The latencies in the slowest list now (candidates are the requests it may take)."""
    def take(self) -> tuple[list[Row], list[Slow], int, int]:
        """Counted since the last take: rows, slowest candidates in order, transactions,
        records handled."""
    def lines(self) -> str:
        """The text lines rendered since the last call (with ``clock``), each ending in a
        newline."""
