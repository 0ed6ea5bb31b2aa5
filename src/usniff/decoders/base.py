"""Events and helpers shared by the sans-IO protocol decoders.

A decoder sees one connection: ``feed(direction, data, ts)`` with the bytes of
one direction in stream order, ``gap(direction, n, ts, cut)`` when ``n`` bytes of
that direction are unknown, ``close()`` at the end.  It never does I/O, never reads
a clock and keeps no global state; it returns :class:`Transaction` (a request
paired with its reply) and :class:`Notice` (everything else: greetings, push
messages, protocol labels, loss of sync) events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..streams import Direction

Details = dict[str, object]


@dataclass(slots=True)
class Transaction:
    protocol: str
    command: str  # statistics key: command name or query shape
    request: str  # display summary of the request
    reply: str  # display summary of the reply ("" when there was none)
    error: bool
    ts_request: float  # when the request's last byte was sent
    ts_reply: float | None  # when the reply's first byte was sent; None: no reply seen
    bytes_in: int  # request bytes, client -> server
    bytes_out: int  # reply bytes, server -> client
    details: Details = field(default_factory=dict)
    unanswered: bool = False  # a reply was expected and none was seen
    cut: int = 0  # bytes of request and reply not captured (snap length, -s)
    # filled in by the glue (usniff.decode), decoders know nothing about processes
    conn: str = ""
    path: str = ""
    client_pid: int = 0
    client_comm: str = ""
    server_pid: int = 0
    server_comm: str = ""

    @property
    def latency(self) -> float | None:
        """Server-side time: from the request's last byte to the reply's first byte, as
        the two ends sent them (the client's reading of the reply is not included)."""
        return None if self.ts_reply is None else self.ts_reply - self.ts_request


@dataclass(slots=True)
class Notice:
    protocol: str
    direction: Direction
    kind: str  # "greeting" | "push" | "monitor" | "label" | "undecodable" | "unpaired" | ...
    summary: str
    ts: float
    details: Details = field(default_factory=dict)
    conn: str = ""


DecoderEvent = Transaction | Notice


class Decoder(Protocol):
    protocol: str

    def feed(self, direction: Direction, data: bytes, ts: float) -> list[DecoderEvent]: ...

    def gap(self, direction: Direction, n: int, ts: float, cut: bool) -> list[DecoderEvent]:
        """``n`` bytes of ``direction`` are unknown (sent at ``ts``); ``cut``: they were
        sent but not kept (snap length), in the same send() as the bytes before them."""
        ...

    def close(self) -> list[DecoderEvent]: ...


REDACTED = "***"


def lost(n: int, cut: bool) -> str:
    """Why a decoder lost sync at a gap of ``n`` bytes (``cut``: by the snap length)."""
    return f"{n} bytes {'cut by the snap length' if cut else 'missing'}"


def clip(text: str, limit: int) -> str:
    """Shorten ``text`` to at most ``limit`` characters, marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord('"'), ord("\\")}


def show_bytes(value: bytes, limit: int = 64, total: int | None = None) -> str:
    """redis-cli style rendering: bare when printable without spaces, else quoted+escaped.

    ``total`` is the real size when ``value`` is only a kept prefix.
    """
    size = len(value) if total is None else total
    cut = value[:limit]
    if cut and all(b in _PRINTABLE for b in cut) and size == len(cut):
        return cut.decode("ascii")
    body = "".join(
        chr(b) if b in _PRINTABLE or b == 0x20 else _ESCAPES.get(b, f"\\x{b:02x}") for b in cut
    )
    if size > len(cut):
        return f'"{body}"...({size} bytes)'
    return f'"{body}"'


_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
