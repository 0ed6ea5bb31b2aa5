"""The native text lines live: clients of a real redis-server, ``usniff --path SOCK``.

With text lines alone, the plain RESP connections' lines are rendered in C
(outputs/fast.py NativeText).  Clients on CONNS connections, each its own thread,
send SET k:C:I v:C:I then GET k:C:I, unpipelined and in pipelines, and check every
reply themselves.  usniff's lines must name every request the clients sent exactly
once, with the reply Redis gave, in each connection's order, in the layout of
format_text; and the count must equal Redis's own command counters (INFO
commandstats).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from tests.support.servers import start_redis
from tests.support.usniff import Usniff, run
from tests.test_pairing_live import commandstats

pytestmark = pytest.mark.root

CONNS = 8
ROUNDS = 1500  # per connection: a SET and a GET each
PIPELINE = 10  # every other batch of rounds is sent as one pipeline of this many


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-ntext-") as d:
        yield d


def command(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)


def client(sock: str, c: int, errors: list[str]) -> None:
    """Connection ``c``'s rounds; what went wrong, in ``errors``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        reader = s.makefile("rb")
        i = 0
        while i < ROUNDS:
            n = PIPELINE if (i // PIPELINE) % 2 else 1
            rounds = range(i, min(ROUNDS, i + n))
            s.sendall(b"".join(command("SET", f"k:{c}:{j}", f"v:{c}:{j}") for j in rounds))
            for _ in rounds:
                if reader.readline() != b"+OK\r\n":
                    errors.append(f"SET of connection {c}")
            s.sendall(b"".join(command("GET", f"k:{c}:{j}") for j in rounds))
            for j in rounds:
                want = f"v:{c}:{j}".encode()
                if (
                    reader.readline() != b"$%d\r\n" % len(want)
                    or reader.readline() != want + b"\r\n"
                ):
                    errors.append(f"GET {j} of connection {c}")
            i += n


def test_every_request_once_with_its_reply_in_order(tmp: str) -> None:
    with start_redis(tmp) as sock:
        run(["redis-cli", "-s", sock, "CONFIG", "RESETSTAT"])
        with Usniff("--path", sock) as usniff:
            usniff.started()
            errors: list[str] = []
            threads = [
                threading.Thread(target=client, args=(sock, c, errors)) for c in range(CONNS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server = commandstats(sock)
            result = usniff.stop()
    assert not errors, errors[:5]
    assert result.returncode == 0, result.stderr
    assert server["SET"] == server["GET"] == CONNS * ROUNDS, server
    line = re.compile(
        r"\d\d:\d\d:\d\d\.\d{6} (\S+)\[(\d+)\] -> redis-server\[\d+\]  "
        r"(?:SET k:(\d+):(\d+) v:\3:\4  \+OK|GET k:(\d+):(\d+)  v:\5:\6)  -?\d+\.\d{3} ms"
    )
    seen: dict[tuple[str, int], list[int]] = {("SET", c): [] for c in range(CONNS)}
    seen.update({("GET", c): [] for c in range(CONNS)})
    for text in result.text.splitlines():
        m = line.fullmatch(text)
        if m is None:
            assert "k:" not in text, text  # a client's request, not as format_text shows it
            continue
        assert int(m.group(2)) == os.getpid(), text
        op, c, i = ("SET", m.group(3), m.group(4)) if m.group(3) else ("GET", m[5], m[6])
        seen[op, int(c)].append(int(i))
    for key, rounds in seen.items():
        assert rounds == list(range(ROUNDS)), (key, len(rounds))  # once each, in order
    assert sum(map(len, seen.values())) == server["SET"] + server["GET"]
