"""Outputs of decoded transactions only (``--metrics``, ``--otlp``).

A sink decodes on its own only when no decoded output runs beside it;
otherwise the decoded output hands it each transaction it prints and each
record it does not decode (``event``), so a capture decodes once whatever the
outputs.  When several sinks run without a decoded output, the first decodes
and hands the same events to the others (``listeners``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..decoders.base import Transaction
from ..decoders.engine import DecoderOptions, Decoding, Undecoded
from ..events import CaptureStats, Record


class TransactionSink:
    """An Output whose items are transactions (``-c N`` counts them when it
    decodes); subclasses implement ``add`` and may override ``undecoded`` (a
    record of a connection no decoder decodes), ``records`` (every batch,
    decoded or not) and ``stop`` (end of the capture)."""

    def __init__(
        self,
        decode: bool,
        protocol: str = "auto",
        redact: bool = False,
        options: DecoderOptions | None = None,
    ) -> None:
        self.decoding = Decoding(protocol, redact, options) if decode else None
        self.listeners: list[Callable[[Transaction | Undecoded], None]] = []

    def add(self, tx: Transaction) -> None:
        raise NotImplementedError

    def undecoded(self, ev: Undecoded) -> None:
        """A record of a connection no decoder decodes (shown raw by text mode)."""

    def event(self, ev: Transaction | Undecoded) -> None:
        """What a decoded output beside the sink hands it (its listener)."""
        if isinstance(ev, Transaction):
            self.add(ev)
        else:
            self.undecoded(ev)

    def records(self, batch: Sequence[Record]) -> None:
        """Every batch of records, before it is decoded."""

    def stop(self) -> None:
        """The capture ended: release what the sink holds (after the last ``add``)."""

    def report(self) -> str:
        """A line for the stop summary ("" for none)."""
        return ""

    def write(self, batch: Sequence[Record], limit: int = 0) -> int:
        self.records(batch)
        if self.decoding is None:
            return 0  # the decoded output beside it counts the items
        return self._count(self.decoding.feed(batch), limit)

    def flush(self) -> None:
        pass

    def close(self, stats: CaptureStats) -> int:
        counted = self._count(self.decoding.finish()) if self.decoding is not None else 0
        self.stop()
        return counted

    def _count(self, events: Sequence[object], limit: int = 0) -> int:
        """Hand the transactions among ``events`` on (at most ``limit``, when > 0), and
        the records not decoded; returns the transactions."""
        counted = 0
        for ev in events:
            if isinstance(ev, Transaction):
                if limit and counted >= limit:
                    break
                self.add(ev)
                counted += 1
            elif isinstance(ev, Undecoded):
                self.undecoded(ev)
            else:
                continue
            for listener in self.listeners:
                listener(ev)
        return counted
