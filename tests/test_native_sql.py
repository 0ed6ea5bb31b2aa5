"""The native --stats and --metrics paths of MySQL and PostgreSQL connections
(outputs/fast.py, _fast.c) against the Python engine.

Both are fed the same Records in the same batches: the MySQL sessions of the captures
(tests/test_native_stats.py and tests/test_native_metrics.py compare every capture),
mutated, and generated sessions of COM_QUERY exchanges (OK, ERR, text resultsets with
and without CLIENT_DEPRECATE_EOF, many columns and rows, NULLs, malformed rows, varying
SQL texts) with the accidents the core hands back at (other commands, USE, LOCAL
INFILE, multi-results, progress reports, wrong sequence ids, packets split across
records); and of PostgreSQL simple queries (resultsets, command tags, errors, empty
queries, multi-statement queries, pipelined queries; notices, parameter statuses, COPY,
the extended protocol, a Query without its NUL) and the postgres capture's sessions;
their records reordered, duplicated, lost, truncated, closed and interleaved.  The
tables and the scrapes must be equal.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest

from tests.support.captures import connection_sends
from tests.test_native_metrics import assert_same as assert_same_metrics
from tests.test_native_metrics import endpoint  # noqa: F401 (a fixture)
from tests.test_native_stats import (
    Conn,
    assert_same,
    batched,
    capture,
    mixed,
    native_table,
    python_table,
)
from tests.test_native_stats import fuzzed as fuzzed_conns
from usniff.decoders.engine import Handover
from usniff.decoders.mysql import (
    CLIENT_DEPRECATE_EOF,
    CLIENT_QUERY_ATTRIBUTES,
    MARIADB_CACHE_METADATA,
)
from usniff.events import Record
from usniff.outputs import fast
from usniff.streams import Direction

CASES = 16_000  # fuzzed connections for the table (and a quarter as many for the metrics)
SEEDS = range(4)
PATH = "/run/mysqld/mysqld.sock"


def packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes((seq & 0xFF,)) + payload


def lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    return b"\xfd" + n.to_bytes(3, "little")


def lenstr(s: bytes | None) -> bytes:
    return b"\xfb" if s is None else lenenc(len(s)) + s


def column(name: bytes) -> bytes:
    names = b"".join(lenstr(s) for s in (b"def", b"shop", b"t", b"t", name, name))
    return names + b"\x0c" + b"\x21\x00" + b"\x00\x01\x00\x00" + b"\xfd" + b"\x00\x00\x00\x00\x00"


def ok(status: int = 2, affected: int = 0, header: int = 0) -> bytes:
    return bytes((header,)) + lenenc(affected) + lenenc(0) + struct.pack("<HH", status, 0)


def err(code: int = 1146, message: bytes = b"Table 'shop.x' doesn't exist") -> bytes:
    return b"\xff" + struct.pack("<H", code) + b"#42S02" + message


EOF = b"\xfe\x00\x00\x02\x00"
SQL = (
    b"SELECT 1", b"SELECT %d", b"select * from orders where id = %d", b"SELECT 'a%d', \"b\"",
    b"INSERT INTO t VALUES (%d, 'x'), (2, 'y')", b"UPDATE t SET n = n + %d WHERE id IN (1, 2, 3)",
    b"SELECT /* comment %d */ now()", b"SELECT '\xc3\xa9t\xc3\xa9 %d'", b"SELECT '\xff\xfe%d'",
    b"  SELECT\n\t%d  ", b"", b"CREATE USER u IDENTIFIED BY 'secret%d'", b"SELECT " + b"x, " * 200,
    b"SELECT -%d.5e-3, 1.5.3, a-1, 12e5x FROM t1",
)  # fmt: skip


def handshake(rng: random.Random, deprecate_eof: bool, cache: bool) -> list[tuple[int, bytes]]:
    """A login: greeting, HandshakeResponse41 (CLIENT_DEPRECATE_EOF as given; with
    ``cache`` a MariaDB client's, asking for the metadata cache as mariadb-slap does; now
    and then query attributes, with which the core does not adopt), OK."""
    caps = 0x1 | 0x200 | 0x8000 | 0x80000 | CLIENT_DEPRECATE_EOF
    greeting = (b"\x0a10.11.6-MariaDB\0" + struct.pack("<I", 7) + b"12345678\0"
                + struct.pack("<HBHHB", caps & 0xFFFF, 33, 2, caps >> 16, 21) + bytes(10)
                + b"123456789012\0mysql_native_password\0")  # fmt: skip
    client = 0x200 | 0x8000 | 0x80000 | (CLIENT_DEPRECATE_EOF if deprecate_eof else 0)
    client |= 0 if cache else 0x1  # CLIENT_MYSQL off: MariaDB's capabilities in the filler
    if rng.random() < 0.05:
        client |= CLIENT_QUERY_ATTRIBUTES
    mariadb = (MARIADB_CACHE_METADATA | 1 << 32) >> 32 if cache else 0  # and progress reports
    filler = bytes(19) + struct.pack("<I", mariadb)
    response = (struct.pack("<IIB", client, 1 << 24, 33) + filler + b"root\0" + b"\x14"
                + bytes(20) + b"mysql_native_password\0")  # fmt: skip
    return [(1, packet(0, greeting)), (0, packet(1, response)), (1, packet(2, ok()))]


def resultset(
    rng: random.Random, deprecate_eof: bool, cache: bool, seq: int, damage: float = 0.02
) -> list[bytes]:
    """The packets of a text resultset from sequence id ``seq``, a row malformed at the
    rate ``damage``; with the metadata ``cache``, the column definitions sent or not."""
    ncols = rng.choice((1, 1, 1, 2, 3, 20)) if rng.random() < 0.995 else 300
    send = not cache or rng.random() < 0.5
    out = [lenenc(ncols) + (bytes((send,)) if cache else b"")]
    if send:
        out += [column(b"c%d" % i) for i in range(ncols)] + ([] if deprecate_eof else [EOF])
    for _ in range(rng.choice((0, 1, 1, 2, 5)) if rng.random() < 0.98 else 40):
        values = [rng.choice((None, b"1", b"abc", b"x" * 300)) for _ in range(min(ncols, 2))]
        values += [b"v"] * (ncols - len(values))
        row = b"".join(lenstr(v) for v in values)
        if rng.random() < damage:
            row = row[:-1] or b"\x05"  # malformed: the decoder loses sync if it samples it
        out.append(row)
    roll = rng.random()
    if roll < 0.05:
        out.append(err(1317, b"Query execution was interrupted"))
    elif deprecate_eof:
        out.append(ok(2, header=0xFE) + (b"info" * 3 if roll > 0.9 else b""))
    else:
        out.append(EOF)
    return [packet(seq + i, p) for i, p in enumerate(out)]


def reply(rng: random.Random, deprecate_eof: bool, cache: bool) -> list[bytes]:
    """The server's packets answering a COM_QUERY (sequence ids from 1)."""
    roll = rng.random()
    if roll < 0.2:
        return [packet(1, ok(2, affected=rng.choice((0, 1, 300))))]
    if roll < 0.3:
        return [packet(1, err())]
    if roll < 0.9:
        return resultset(rng, deprecate_eof, cache, 1)
    if roll < 0.92:  # multi-results: the core hands back
        return [packet(1, ok(0x0A)), packet(2, ok())]
    if roll < 0.94:  # a progress report first
        return [packet(1, b"\xff\xff\xff\x01\x01\x00"), packet(2, ok())]
    if roll < 0.96:  # a wrong sequence id
        return [packet(3, ok())]
    if roll < 0.97:  # an empty packet, a short ERR
        return [packet(1, rng.choice((b"", b"\xff\x01", b"\x00\xfc\x01")))]
    return resultset(rng, deprecate_eof, cache, 1)[:-1]  # cut short (the next query interleaves)


def session(rng: random.Random) -> list[tuple[int, bytes]]:
    """(direction, bytes) sends of a MySQL conversation in the command phase."""
    deprecate_eof, cache = rng.random() < 0.6, rng.random() < 0.3
    sends = handshake(rng, deprecate_eof, cache) if rng.random() < 0.8 else []  # or mid-stream
    cache = cache and bool(sends)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        sql = rng.choice(SQL)
        query = packet(0, b"\x03" + (sql % rng.randrange(50) if b"%d" in sql else sql))
        if roll < 0.03:
            sends += [(0, packet(0, b"\x0e")), (1, packet(1, ok()))]  # COM_PING
        elif roll < 0.05:
            sends += [(0, packet(0, b"\x03USE shop")), (1, packet(1, ok()))]
        elif roll < 0.06:  # LOCAL INFILE
            sends += [(0, packet(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t")),
                      (1, packet(1, b"\xfbf")), (0, packet(2, b"1,2\n") + packet(3, b"")),
                      (1, packet(4, ok()))]  # fmt: skip
        elif roll < 0.08:  # pipelined
            sends += [(0, query + query)] + [(1, b"".join(reply(rng, deprecate_eof, cache)))] * 2
        else:
            sends.append((0, query))
            packets = reply(rng, deprecate_eof, cache)
            if rng.random() < 0.15:  # a packet per send
                sends += [(1, p) for p in packets]
            else:
                sends.append((1, b"".join(packets)))
    if rng.random() < 0.3:
        sends.append((0, packet(0, b"\x01")))  # COM_QUIT
    return sends


def capture_conns(name: str) -> list[list[tuple[Direction, bytes]]]:
    """The sends of the connections of a capture, but the few large ones (the mysql
    capture's 16 MiB packets, tested there): this test is about exchanges the core may
    take."""
    return connection_sends(name, max_size=8192)


CONNS = capture_conns("mysql")


def capture_sends(
    conns: list[list[tuple[int, bytes]]], rng: random.Random
) -> list[tuple[int, bytes]]:
    """Sends of one of ``conns``, from its start or mid-stream, a byte changed now and
    then."""
    sends = list(rng.choice(conns))
    start = rng.randrange(len(sends)) if rng.random() < 0.3 else 0
    sends = sends[start : start + rng.randint(4, 16)]
    if sends and rng.random() < 0.3:
        i = rng.randrange(len(sends))
        d, data = sends[i]
        j = rng.randrange(len(data))
        sends[i] = (d, data[:j] + bytes([rng.randrange(256)]) + data[j + 1 :])
    return sends


def sends_of(rng: random.Random) -> list[tuple[int, bytes]]:
    """A connection's sends: of the capture, mutated, or generated."""
    return capture_sends(CONNS, rng) if rng.random() < 0.15 else session(rng)


def fuzzed(seed: int, cases: int) -> Iterator[list[Record]]:
    return fuzzed_conns(seed, cases, (PATH,), sends_of=sends_of)


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzzed_mysql_connections_give_the_same_table(seed: int) -> None:
    rng = random.Random(seed)
    handled = sum(assert_same(records, rng) for records in fuzzed(seed, CASES // len(SEEDS)))
    assert handled > CASES // len(SEEDS) // 2  # the native path ran (and handed back)


def test_fuzzed_mysql_connections_give_the_same_metrics(endpoint: str) -> None:  # noqa: F811
    rng = random.Random(9)
    records = [r for chunk in fuzzed(9, CASES // 4) for r in chunk]
    assert_same_metrics(batched(mixed(records, rng), rng), endpoint)


def test_a_plain_session_is_handled_natively() -> None:
    """Logged in, then COM_QUERY exchanges only: after the first RUN records the core
    handles (nearly) every record, with and without CLIENT_DEPRECATE_EOF, with the
    metadata cache (as mariadb-slap asks for it)."""
    rng = random.Random(3)
    for deprecate_eof, cache in ((True, False), (False, False), (False, True)):
        sends = handshake(random.Random(1), deprecate_eof, cache)
        for i in range(300):
            sends += [(0, packet(0, b"\x03SELECT %d" % i)),
                      (1, b"".join(resultset(rng, deprecate_eof, cache, 1, damage=0)))]  # fmt: skip
        conn, offsets, records = Conn(1, rng, PATH), [0, 0], []
        for i, (direction, data) in enumerate(sends):  # no accidents
            records.append(
                conn._record(direction, offsets[direction], len(data), data, 1 + i / 1e4)
            )
            offsets[direction] += len(data)
        batches = [list(records[i : i + 300]) for i in range(0, len(records), 300)]
        got, n_native, handled = native_table(batches)
        assert (got, n_native) == python_table(batches)
        assert handled > 0.85 * len(records), (handled, len(records))  # all but the first RUN


# ----------------------------------------------------------------- PostgreSQL

PG_PATH = "/run/postgresql/.s.PGSQL.5432"


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def pg_login() -> list[tuple[int, bytes]]:
    """StartupMessage, then AuthenticationOk, a ParameterStatus, BackendKeyData,
    ReadyForQuery."""
    params = b"user\0postgres\0database\0app\0\0"
    startup = struct.pack(">II", len(params) + 8, 196608) + params
    server = (message(b"R", struct.pack(">i", 0)) + message(b"S", b"server_version\x0016\0")
              + message(b"K", struct.pack(">ii", 77, 1234)) + message(b"Z", b"I"))  # fmt: skip
    return [(0, startup), (1, server)]


def pg_reply(rng: random.Random) -> list[bytes]:
    """The server's messages answering a simple Query: resultsets, a command tag, an
    error, an empty query; now and then what the core hands back at (a notice, a
    parameter status, COPY, an unknown message) or a reply cut short."""
    out: list[bytes] = []
    for _ in range(1 if rng.random() < 0.9 else 2):  # a multi-statement Query
        roll = rng.random()
        if roll < 0.6:
            ncols = rng.choice((1, 1, 2, 3, 20))
            names = b"".join(b"c%d\0" % i + bytes(18) for i in range(ncols))
            out.append(message(b"T", struct.pack(">h", ncols) + names))
            for _ in range(rng.choice((0, 1, 1, 2, 5)) if rng.random() < 0.98 else 40):
                values = [rng.choice((None, b"1", b"abc", b"x" * 300)) for _ in range(ncols)]
                row = b"".join(b"\xff\xff\xff\xff" if v is None else struct.pack(">i", len(v)) + v
                               for v in values)  # fmt: skip
                out.append(message(b"D", struct.pack(">h", ncols) + row))
            out.append(message(b"C", b"SELECT %d\0" % ncols))
        elif roll < 0.75:
            out.append(message(b"C", b"INSERT 0 1\0"))
        elif roll < 0.85:
            out.append(message(b"E", b"SERROR\0VERROR\0C42P01\0Mrelation does not exist\0\0"))
            break
        elif roll < 0.88:
            out.append(message(b"I", b""))
        elif roll < 0.91:
            out.append(message(b"N", b"SNOTICE\0C00000\0Mhello\0\0"))
            out.append(message(b"C", b"DO\0"))
        elif roll < 0.93:
            out.append(message(b"S", b"TimeZone\0UTC\0"))
            out.append(message(b"C", b"SET\0"))
        elif roll < 0.95:
            out.append(message(b"H", b"\0\0\0"))  # COPY OUT
            out.append(message(b"d", b"1\n") + message(b"c", b"") + message(b"C", b"COPY 1\0"))
        elif roll < 0.96:
            out.append(message(b"?", b"x"))
        else:
            return out  # no ReadyForQuery: the next Query's reply follows
    return [*out, message(b"Z", rng.choice((b"I", b"T", b"E")))]


PG_SQL = (*SQL, b"SELECT $1::int", b"SELECT 1; SELECT 2", b"SELECT E'a\\'b%d'", b"  ")


def pg_session(rng: random.Random) -> list[tuple[int, bytes]]:
    """(direction, bytes) sends of a PostgreSQL conversation: simple queries, now and
    then a pipelined pair, an extended-protocol batch or a Terminate."""
    sends = pg_login() if rng.random() < 0.8 else []  # else mid-stream
    for _ in range(rng.randint(1, 3)):
        sql = rng.choice(PG_SQL)
        query = message(b"Q", (sql % rng.randrange(50) if b"%d" in sql else sql) + b"\0")
        roll = rng.random()
        if roll < 0.04:  # the extended protocol
            batch = (message(b"P", b"\0SELECT 1\0\0\0") + message(b"B", b"\0\0" + bytes(6))
                     + message(b"E", b"\0" + bytes(4)) + message(b"S", b""))  # fmt: skip
            reply = message(b"1", b"") + message(b"2", b"") + message(b"C", b"SELECT 1\0")
            sends += [(0, batch), (1, reply + message(b"Z", b"I"))]
        elif roll < 0.06:  # pipelined
            sends += [(0, query + query)] + [(1, b"".join(pg_reply(rng)))] * 2
        elif roll < 0.07:
            sends.append((0, query[:-1] + b"x"))  # no NUL: the decoder loses sync
        else:
            sends.append((0, query))
            messages = pg_reply(rng)
            if rng.random() < 0.15:
                sends += [(1, m) for m in messages]
            else:
                sends.append((1, b"".join(messages)))
    if rng.random() < 0.3:
        sends.append((0, message(b"X", b"")))
    return sends


PG_CONNS = capture_conns("postgres")


def pg_sends_of(rng: random.Random) -> list[tuple[int, bytes]]:
    """A connection's sends: of the postgres capture, mutated, or generated."""
    return capture_sends(PG_CONNS, rng) if rng.random() < 0.15 else pg_session(rng)


PG_CASES = 4_000


@pytest.mark.parametrize("seed", range(2))
def test_fuzzed_postgres_connections_give_the_same_table(seed: int) -> None:
    rng = random.Random(seed)
    handled = 0
    for records in fuzzed_conns(seed, PG_CASES // 2, (PG_PATH,), sends_of=pg_sends_of):
        handled += assert_same(records, rng)
    assert handled > PG_CASES // 4  # the native path ran (and handed back)


def test_fuzzed_postgres_connections_give_the_same_metrics(endpoint: str) -> None:  # noqa: F811
    rng = random.Random(7)
    chunks = fuzzed_conns(7, PG_CASES // 3, (PG_PATH,), sends_of=pg_sends_of)
    records = [r for chunk in chunks for r in chunk]
    assert_same_metrics(batched(mixed(records, rng), rng), endpoint)


def plain_postgres(rng: random.Random, queries: list[bytes]) -> list[list[Record]]:
    """Batches of the records of a session of the simple ``queries``, no accidents."""
    sends = pg_login()
    for sql in queries:
        reply = [m for m in pg_reply(rng) if m[:1] in b"TDCIEZ"]
        if not reply or reply[-1][:1] != b"Z":
            reply.append(message(b"Z", b"I"))
        sends += [(0, message(b"Q", sql + b"\0")), (1, b"".join(reply))]
    conn, offsets, records = Conn(1, rng, PG_PATH), [0, 0], []
    for i, (direction, data) in enumerate(sends):
        records.append(conn._record(direction, offsets[direction], len(data), data, 1 + i / 1e4))
        offsets[direction] += len(data)
    return [list(records[i : i + 300]) for i in range(0, len(records), 300)]


def test_a_plain_postgres_session_is_handled_natively() -> None:
    """After the startup, simple queries only: after the first RUN records the core
    handles nearly every record."""
    batches = plain_postgres(random.Random(4), [b"SELECT %d" % i for i in range(300)])
    got, n_native, handled = native_table(batches)
    assert (got, n_native) == python_table(batches)
    records = sum(map(len, batches))
    assert handled > 0.85 * records, (handled, records)  # all but the first RUN


def test_texts_of_other_numbers_are_asked_their_shape_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """pgbench -S's statements differ in a number: the core asks Python the shape of
    their folded text once (_fast.fold_numbers), and counts them as the engine does."""
    rng = random.Random(5)
    forms = (b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;", b"SELECT -%d.5e-3, 2",
             b"SELECT 1 FROM t1 WHERE x IN (%d, 1.5.3, a-1, 12e5x)", b"SELECT '%d'")  # fmt: skip
    queries = [rng.choice(forms) % rng.randrange(10**6) for _ in range(2000)]
    asked: list[bytes] = []
    shape = fast.stats_key

    def stats_key(protocol: str, sql: bytes) -> bytes | None:
        asked.append(sql)
        return shape(protocol, sql)

    monkeypatch.setattr(fast, "stats_key", stats_key)
    batches = plain_postgres(rng, queries)
    got, n_native, _ = native_table(batches)
    assert (got, n_native) == python_table(batches)
    assert len(set(asked)) == len(asked)  # kept
    assert sorted(a for a in asked if b"'" not in a) == [  # a quote: the text its own key
        b"SELECT ? FROM t1 WHERE x IN (?, ?.3, a-?, 12e5x)", b"SELECT ?, ?",
        b"SELECT abalance FROM pgbench_accounts WHERE aid = ?;"]  # fmt: skip


@pytest.mark.parametrize("protocol", ["mysql", "postgres"])
def test_a_connection_handed_straight_back_decodes_as_before(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader may refuse a connection handed over (NativeText does, for a cut request
    or a container not yet named) and hand it straight back with the decoder's state as
    the decoder gave it: the decoder takes back what it handed over and the table is the
    Python engine's."""
    refused: list[str] = []

    def adoptable(self: fast.Native, over: Handover) -> bool:
        refused.append(over.protocol)
        return False

    monkeypatch.setattr(fast.NativeStats, "_adoptable", adoptable)
    rng = random.Random(11)
    sends_of_, path = (sends_of, PATH) if protocol == "mysql" else (pg_sends_of, PG_PATH)
    chunks = fuzzed_conns(11, 1000, (path,), sends_of=sends_of_)
    records = [*capture(protocol), *(r for chunk in chunks for r in chunk)]
    batches = batched(mixed(records, rng), rng)
    got, n_native, handled = native_table(batches)
    assert (got, n_native) == python_table(batches)
    assert handled == 0
    assert refused.count(protocol) > 100  # handed over (and back) again and again
