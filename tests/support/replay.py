"""Feeding a sans-IO decoder a scripted exchange, as the offline decoder tests do."""

from __future__ import annotations

from usniff.decoders.base import Decoder, DecoderEvent
from usniff.streams import Direction

Step = tuple[Direction, bytes | int]  # bytes sent by one side, or a gap of that many bytes


def drive(decoder: Decoder, steps: list[Step]) -> list[DecoderEvent]:
    """Feed ``steps`` (1 ms apart) to ``decoder``, then close it: all its events."""
    events: list[DecoderEvent] = []
    ts = 1.0
    for direction, item in steps:
        ts += 0.001
        if isinstance(item, int):
            events += decoder.gap(direction, item, ts, False)
        else:
            events += decoder.feed(direction, item, ts)
    return events + decoder.close()
