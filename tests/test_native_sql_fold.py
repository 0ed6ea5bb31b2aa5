"""The numbers _fast.c folds out of an SQL text before it looks its shape up
(fold_numbers): exactly what the literals' regexes replace, and the folded text's
shape (stats_key, of both dialects) the text's, against generated texts."""

from __future__ import annotations

import random
import re

from usniff.decoders import mysql, postgres
from usniff.outputs._fast import fold_numbers

# the number alternative of both dialects' _LITERAL
NUMBER = re.compile(r"(?<![\w.$])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
TOKENS = (
    *"0123456789", "12", "345", "-", "-", "+", ".", ".", "e", "E", "e-", "E+", "x", "_", "a",
    "t1", " ", " ", "\t", "\n", "(", ")", ",", ", ", "=", "*", ";", "`", "?", "SELECT ",
    " FROM t", " WHERE id = ", " IN (", "use ", "USE ", "0", "0X", "1e5", "1.5", "-1.5e-3",
)  # fmt: skip
BAILS = ("'", '"', "$", "\\", "0x", "é", "$1", "E'", "x'", "b'")
TEXTS = 200_000


def texts(rng: random.Random) -> list[str]:
    out = []
    for _ in range(TEXTS):
        tokens = rng.choices(TOKENS, k=rng.randint(0, 14))
        if rng.random() < 0.1:
            tokens.insert(rng.randint(0, len(tokens)), rng.choice(BAILS))
        out.append("".join(tokens))
    return out


def bails(text: str) -> bool:
    """The texts the fold leaves alone: what another literal or Unicode could take."""
    return not text.isascii() or any(c in text for c in "'\"$\\") or "0x" in text


def test_the_fold_is_the_regexes_and_keeps_the_shape() -> None:
    folded = 0
    for text in texts(random.Random(1)):
        raw = text.encode()
        got = fold_numbers(raw)
        assert (got is None) == bails(text), text
        if got is None:
            continue
        assert got.decode() == NUMBER.sub("?", text), text
        if got != raw:
            folded += 1
            assert mysql.stats_key(got) == mysql.stats_key(raw), text
            assert postgres.stats_key(got) == postgres.stats_key(raw), text
    assert folded > TEXTS // 2


def test_the_cases_of_re_backtracking() -> None:
    cases = {
        "12e5x": "12e5x", "1.5.3": "?.3", "a-1": "a-?", "-1": "?", "1e": "1e", "1.": "?.",
        "x1": "x1", "_1": "_1", ".5": ".5", "1.5x": "?.5x", "1.5e3x": "?.5e3x", "1-2": "?-?",
        "1e+-2": "1e+?", "--1": "-?", "1e-5,2E+3": "?,?", "aid = 52345;": "aid = ?;",
    }  # fmt: skip
    for text, want in cases.items():
        assert fold_numbers(text.encode()) == want.encode(), text
        assert NUMBER.sub("?", text) == want, text
