"""SQL text helpers shared by the SQL decoders (MySQL, PostgreSQL)."""

from __future__ import annotations

import functools
import re

from .base import clip

_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
SHAPE = 120  # characters of a statement shape
CACHED = 512  # characters: the shapes of statements up to this long are kept (SHAPES of them)
SHAPES = 4096


def query_shape(sql: str, literal: re.Pattern[str]) -> str:
    """Statistics key: what ``literal`` matches (the dialect's literals) replaced by
    ``?``, IN lists folded to ``(?+)``, whitespace collapsed."""
    # clients repeat their statements: a shape is computed once (a few us each time)
    return _cached_shape(sql, literal) if len(sql) <= CACHED else _shape(sql, literal)


def _shape(sql: str, literal: re.Pattern[str]) -> str:
    shape = _IN_LIST.sub("(?+)", literal.sub("?", sql))
    return clip(" ".join(shape.split()), SHAPE)  # str.split's whitespace is re's \s


_cached_shape = functools.lru_cache(maxsize=SHAPES)(_shape)


def one_line(sql: str, limit: int) -> str:
    """``sql`` for a one-line summary: whitespace collapsed, clipped to ``limit``."""
    return clip(" ".join(sql.split()), limit)
