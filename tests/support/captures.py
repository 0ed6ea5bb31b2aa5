"""The recorded captures (captures/*.jsonl.gz, captures/*.pcapng) as Records."""

from __future__ import annotations

import functools
from pathlib import Path

from usniff.cli.read import read_records
from usniff.events import Record, conn_key, server_id
from usniff.streams import Direction

from .recorder import load_records

CAPTURES = Path(__file__).resolve().parents[2] / "captures"


@functools.cache
def capture(name: str) -> tuple[Record, ...]:
    """Records of captures/<name>.jsonl.gz (recorded from real servers by captures/record.py),
    else of captures/<name>.pcapng (written by usniff, captures/record_live.py)."""
    jsonl = CAPTURES / f"{name}.jsonl.gz"
    if jsonl.exists():
        return tuple(load_records(jsonl))
    return tuple(read_records(str(CAPTURES / f"{name}.pcapng")))


def connection_sends(name: str, max_size: int | None = None) -> list[list[tuple[Direction, bytes]]]:
    """Per connection of capture ``name``, its sends in capture order: (the direction, the
    bytes); with ``max_size``, only the sends of at most that many bytes."""
    conns: dict[object, list[tuple[Direction, bytes]]] = {}
    for rec in capture(name):
        if rec.kind == "data" and (max_size is None or len(rec.data) <= max_size):
            direction = Direction.SERVER if rec.sock_id == server_id(rec) else Direction.CLIENT
            conns.setdefault(conn_key(rec), []).append((direction, rec.data))
    return list(conns.values())
