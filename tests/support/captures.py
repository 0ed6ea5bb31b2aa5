"""The recorded captures (captures/*.jsonl.gz, captures/*.pcapng) as Records."""

from __future__ import annotations

import functools
from pathlib import Path

from usniff.cli.read import read_records
from usniff.events import Record

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
