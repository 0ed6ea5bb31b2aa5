"""The SQL statement shapes (decoders/sql.py) against the definition they implement:
each dialect's literal alternatives tried at every character, whitespace runs (re's
``\\s+``) collapsed.  The fast forms (a lookahead before the alternatives, str.split,
a cache of shapes) must give the same key for any text."""

from __future__ import annotations

import random
import re
import sys

import pytest

from usniff.decoders import mysql, postgres, sql
from usniff.decoders.base import clip

CASES = 20_000
ALPHABET = "'\"$`\\-+.,()?;:_eExXbB0179af SELECTINWHERE\t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000"


def reference(text: str, literal: re.Pattern[str]) -> str:
    """The shape as defined: no lookahead, re's whitespace."""
    bare = re.compile(re.sub(r"^\(\?=[^)]*\)\(\?:(.*)\)$", r"\1", literal.pattern, flags=re.S),
                      literal.flags)  # fmt: skip
    assert bare.pattern != literal.pattern  # the lookahead is there, and gone
    shape = sql._IN_LIST.sub("(?+)", bare.sub("?", text))
    return clip(re.sub(r"\s+", " ", shape).strip(), sql.SHAPE)


def texts(rng: random.Random) -> list[str]:
    words = ["SELECT", "x'0A'", "E'a\\'b'", "$q$x'y$q$", "$$", "0x1F", "-12.5e-3", "IN (1, 2)",
             "a.1", "t1", "\"c\"\"d\"", "''", "(?, ?)", "b'01'"]  # fmt: skip
    out = []
    for _ in range(CASES):
        parts = [rng.choice(ALPHABET) if rng.random() < 0.6 else rng.choice(words)
                 for _ in range(rng.randrange(1, 40))]  # fmt: skip
        out.append("".join(parts))
    return out


@pytest.mark.parametrize("dialect", [mysql, postgres], ids=["mysql", "postgres"])
def test_shapes_equal_the_definition(dialect: object) -> None:
    literal = dialect._LITERAL  # type: ignore[attr-defined]
    for text in texts(random.Random(7)):
        want = reference(text, literal)
        assert dialect.query_shape(text) == want, text  # type: ignore[attr-defined]
        assert dialect.query_shape(text) == want, text  # type: ignore[attr-defined]  # cached
    long = "SELECT 1, 'x' , 2 " * 100  # beyond the cache
    assert len(long) > sql.CACHED
    assert dialect.query_shape(long) == reference(long, literal)  # type: ignore[attr-defined]


def test_str_split_whitespace_is_re_whitespace() -> None:
    for c in map(chr, range(sys.maxunicode + 1)):
        assert (re.fullmatch(r"\s", c) is not None) == c.isspace() == (c.split() == []), hex(ord(c))


def test_one_line() -> None:
    assert sql.one_line("  select\u2028 1,\n\t 2  ", 100) == "select 1, 2"
