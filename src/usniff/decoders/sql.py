"""SQL text helpers shared by the SQL decoders (MySQL, PostgreSQL)."""

from __future__ import annotations

import re

from .base import clip

_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_SPACE = re.compile(r"\s+")
SHAPE = 120  # characters of a statement shape


def query_shape(sql: str, literal: re.Pattern[str]) -> str:
    """Statistics key: what ``literal`` matches (the dialect's literals) replaced by
    ``?``, IN lists folded to ``(?+)``, whitespace collapsed."""
    shape = _IN_LIST.sub("(?+)", literal.sub("?", sql))
    return clip(_SPACE.sub(" ", shape).strip(), SHAPE)


def one_line(sql: str, limit: int) -> str:
    """``sql`` for a one-line summary: whitespace collapsed, clipped to ``limit``."""
    return clip(_SPACE.sub(" ", sql).strip(), limit)
