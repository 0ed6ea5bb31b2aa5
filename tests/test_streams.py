from __future__ import annotations

import dataclasses
import random

from tests.support.captures import capture
from usniff.events import Record
from usniff.streams import (
    Close,
    Data,
    Direction,
    Gap,
    Open,
    StreamAssembler,
    StreamEvent,
    conn_key,
)

CLIENT, SERVER = 100, 200


def rec(
    offset: int, data: bytes = b"", *, inode: int = CLIENT, ts: float = 0.0, **kw: object
) -> Record:
    own = inode == SERVER
    peer = SERVER if inode == CLIENT else CLIENT
    fields: dict[str, object] = dict(
        ts=ts, pid=1, tid=1, uid=0, comm="c", inode=inode, peer_inode=peer, sock_type="stream",
        path="/run/x.sock", path_is_own=own, offset=offset, length=len(data), data=data,
        sock_id=inode, peer_id=peer,
    )  # fmt: skip
    fields.update(kw)
    return Record(**fields)  # type: ignore[arg-type]


def run(records: list[Record], **kw: int | float) -> list[StreamEvent]:
    asm = StreamAssembler(**kw)  # type: ignore[arg-type]
    out: list[StreamEvent] = []
    for r in records:
        out += asm.feed(r)
    return out + asm.flush()


def stream(events: list[StreamEvent], direction: Direction) -> list[tuple[str, int, object]]:
    got: list[tuple[str, int, object]] = []
    for ev in events:
        if isinstance(ev, Data) and ev.direction is direction:
            got.append(("data", ev.offset, ev.data))
        elif isinstance(ev, Gap) and ev.direction is direction:
            got.append((ev.reason, ev.offset, ev.length))
    return got


def test_roles_open_and_in_order_delivery() -> None:
    events = run([rec(0, b"GET"), rec(0, b"+OK", inode=SERVER), rec(3, b" k")])
    assert isinstance(events[0], Open)
    assert (events[0].client_id, events[0].server_id, events[0].roles_known) == (
        CLIENT, SERVER, True,
    )  # fmt: skip
    assert stream(events, Direction.CLIENT) == [("data", 0, b"GET"), ("data", 3, b" k")]
    assert stream(events, Direction.SERVER) == [("data", 0, b"+OK")]


def test_socketpair_lower_id_is_client() -> None:
    events = run([rec(0, b"x", inode=SERVER, path="", path_is_own=False)])
    assert isinstance(events[0], Open)
    assert (events[0].client_id, events[0].roles_known) == (CLIENT, False)
    assert stream(events, Direction.SERVER) == [("data", 0, b"x")]


def test_reorder_within_window() -> None:
    events = run([rec(4, b"efgh"), rec(0, b"abcd"), rec(12, b"mn"), rec(8, b"ijkl")])
    assert stream(events, Direction.CLIENT)[1:] == [
        ("data", 4, b"efgh"), ("data", 8, b"ijkl"), ("data", 12, b"mn"),
    ]  # fmt: skip


def test_mid_stream_start_waits_for_reordering_then_starts_at_lowest_offset() -> None:
    asm = StreamAssembler(max_pending_records=2)
    events = asm.feed(rec(1000, b"abc")) + asm.feed(rec(990, b"0123456789"))
    assert stream(events, Direction.CLIENT) == []
    events = asm.feed(rec(1003, b"d"))
    assert stream(events, Direction.CLIENT) == [
        ("data", 990, b"0123456789"), ("data", 1000, b"abc"), ("data", 1003, b"d"),
    ]  # fmt: skip
    assert asm.feed(rec(980, b"late")) == []
    assert asm.stats.late == 1


def test_overlap_and_duplicates_delivered_once() -> None:
    asm = StreamAssembler()
    events: list[StreamEvent] = []
    for r in (rec(0, b"abcd"), rec(2, b"cdef"), rec(0, b"abcd")):
        events += asm.feed(r)
    assert stream(events, Direction.CLIENT) == [("data", 0, b"abcd"), ("data", 4, b"ef")]
    assert asm.stats.duplicates == 1


def test_loss_record_becomes_gap() -> None:
    lost = rec(3, kind="lost", lost=5, length=5)
    events = run([rec(0, b"abc"), lost, rec(8, b"xyz")])
    assert stream(events, Direction.CLIENT) == [
        ("data", 0, b"abc"), ("lost", 3, 5), ("data", 8, b"xyz"),
    ]  # fmt: skip


def test_snaplen_truncation_becomes_gap() -> None:
    events = run([rec(0, b"ab", length=10), rec(10, b"z")])
    assert stream(events, Direction.CLIENT) == [
        ("data", 0, b"ab"), ("truncated", 2, 8), ("data", 10, b"z"),
    ]  # fmt: skip


def test_hole_still_missing_at_flush_becomes_gap() -> None:
    events = run([rec(0, b"ab"), rec(5, b"fg")])
    assert stream(events, Direction.CLIENT) == [
        ("data", 0, b"ab"),
        ("missing", 2, 3),
        ("data", 5, b"fg"),
    ]


def test_reorder_buffer_is_bounded() -> None:
    asm = StreamAssembler(max_pending_records=3)
    events: list[StreamEvent] = []
    events += asm.feed(rec(0, b"a"))
    for off in range(2, 7):  # offset 1 never comes
        events += asm.feed(rec(off, b"x"))
    assert stream(events, Direction.CLIENT)[:3] == [
        ("data", 0, b"a"),
        ("missing", 1, 1),
        ("data", 2, b"x"),
    ]
    assert asm.stats.reorder_gaps == 1


def test_stale_hole_gives_up_after_max_delay() -> None:
    asm = StreamAssembler(max_delay=0.5)
    events = asm.feed(rec(0, b"a", ts=1.0)) + asm.feed(rec(2, b"c", ts=1.0))
    assert stream(events, Direction.CLIENT) == [("data", 0, b"a")]
    events = asm.feed(rec(3, b"d", ts=2.0))
    assert stream(events, Direction.CLIENT) == [
        ("missing", 1, 1),
        ("data", 2, b"c"),
        ("data", 3, b"d"),
    ]


def test_close_flushes_direction_and_forgets_connection() -> None:
    asm = StreamAssembler()
    events = asm.feed(rec(0, b"a")) + asm.feed(rec(5, b"f"))
    events += asm.feed(rec(0, kind="close"))
    assert stream(events, Direction.CLIENT) == [
        ("data", 0, b"a"),
        ("missing", 1, 4),
        ("data", 5, b"f"),
    ]
    assert isinstance(events[-1], Close) and events[-1].direction is Direction.CLIENT
    assert not events[-1].final  # the server has not sent: its last send may be on its way
    assert asm.feed(rec(0, b"x", inode=7, sock_id=7, peer_id=8, ts=0.5)) != []  # another
    assert asm.open_connections == 2
    # the server never sent within close_grace (capture time) of the client's close: over
    (last,) = asm.expire(1.0)
    assert isinstance(last, Close) and last.final and last.direction is Direction.CLIENT
    assert last.ts == 1.0 and asm.open_connections == 1
    assert asm.feed(rec(0, kind="close", inode=SERVER, ts=1.5)) == []  # already forgotten


def test_a_reply_recorded_after_the_readers_close_is_paired() -> None:
    """The client reads the reply and closes before the server's send is recorded (a
    send is recorded when it ends; its sender's CPU may stall meanwhile, past the
    collector's reorder hold): the reply still belongs to the connection, which the
    server's close ends."""
    asm = StreamAssembler()
    events = asm.feed(rec(0, b"GET", ts=1.0))
    events += asm.feed(rec(3, kind="close", ts=1.2))
    events += asm.feed(rec(0, b"+OK", inode=SERVER, ts=1.1))  # recorded late
    events += asm.feed(rec(3, kind="close", inode=SERVER, ts=1.3))
    assert stream(events, Direction.SERVER) == [("data", 0, b"+OK")]
    assert sum(isinstance(ev, Open) for ev in events) == 1
    closes = [ev for ev in events if isinstance(ev, Close)]
    assert [c.final for c in closes] == [False, True] and asm.open_connections == 0
    assert asm.expire(9.0) == []


def test_a_connection_one_end_closed_is_not_handed_over() -> None:
    """Its ending close_grace after that close is the assembler's: handed to another
    reader, which hands a connection back only at a record, it would never end."""
    asm = StreamAssembler()
    asm.feed(rec(0, b"GET", ts=1.0))
    key = conn_key(rec(0))
    position = asm.hand_over(key)
    assert position is not None
    asm.take_back(key, position)
    asm.feed(rec(3, kind="close", ts=1.2))
    assert asm.hand_over(key) is None
    (last,) = asm.expire(1.2 + asm.close_grace)
    assert isinstance(last, Close) and last.final and asm.open_connections == 0


def test_connection_is_over_when_both_ends_closed() -> None:
    asm = StreamAssembler()
    asm.feed(rec(0, b"GET"))
    asm.feed(rec(0, b"+OK", inode=SERVER))
    (first,) = asm.feed(rec(3, kind="close"))
    assert isinstance(first, Close) and not first.final and asm.open_connections == 1
    (last,) = asm.feed(rec(3, kind="close", inode=SERVER))
    assert isinstance(last, Close) and last.final and asm.open_connections == 0


def test_conn_key() -> None:
    assert conn_key(rec(0, b"x", inode=SERVER)) == (CLIENT, SERVER)
    dgram = rec(0, b"x", peer_inode=0, peer_id=0, sock_type="dgram", path="/dev/log")
    assert conn_key(dgram) == (CLIENT, 0, "/dev/log")


def test_real_capture_survives_local_reordering() -> None:
    """Shuffling records within a small window reproduces exactly the same byte streams."""
    records = list(capture("redis"))
    shuffled = []
    rng = random.Random(7)
    for i in range(0, len(records), 4):
        window = records[i : i + 4]
        rng.shuffle(window)
        shuffled += window
    # same wall clock for all so the stale timer never fires
    shuffled = [dataclasses.replace(r, ts=0.0) for r in shuffled]

    def streams(evs: list[StreamEvent]) -> dict[tuple[object, int], bytes]:
        out: dict[tuple[object, int], bytes] = {}
        for ev in evs:
            assert not isinstance(ev, Gap)
            if isinstance(ev, Data):
                out[(ev.conn, ev.direction)] = out.get((ev.conn, ev.direction), b"") + ev.data
        return out

    assert streams(run(shuffled)) == streams(run(records))
    assert sum(len(v) for v in streams(run(records)).values()) == sum(len(r.data) for r in records)


def conn_records(i: int, server_replies: bool) -> list[Record]:
    """Connection ``i``: a request, maybe a reply, then both sockets gone."""
    c, s = 10_000 + 2 * i, 10_001 + 2 * i
    req = rec(0, b"PING", inode=CLIENT, sock_id=c, peer_id=s)
    out = [req]
    if server_replies:
        out.append(rec(0, b"+PONG", inode=SERVER, sock_id=s, peer_id=c))
    out.append(dataclasses.replace(req, offset=4, length=0, data=b"", kind="close"))
    if server_replies:
        out.append(rec(5, kind="close", inode=SERVER, sock_id=s, peer_id=c))
    return out


def test_closed_connections_are_forgotten() -> None:
    """Both ends closed, or one closed and the other never sent within close_grace:
    nothing is kept (memory is bounded by the connections alive, not ever seen)."""
    asm = StreamAssembler()
    finals = 0
    for i in range(1000):
        for r in conn_records(i, server_replies=i % 2 == 0):
            r = dataclasses.replace(r, ts=i * 0.01)
            finals += sum(1 for ev in asm.feed(r) if isinstance(ev, Close) and ev.final)
    finals += sum(1 for ev in asm.expire(10 + asm.close_grace) if isinstance(ev, Close))
    assert asm.open_connections == 0 and finals == 1000


def test_connections_that_never_close_are_bounded() -> None:
    asm = StreamAssembler(max_connections=64)
    events: list[StreamEvent] = []
    for i in range(1000):
        events += asm.feed(conn_records(i, server_replies=True)[1])  # the reply only: left open
    assert asm.open_connections <= 64
    assert asm.stats.evicted == 1000 - asm.open_connections
    closed = [ev for ev in events if isinstance(ev, Close)]
    assert len(closed) == asm.stats.evicted and all(ev.final for ev in closed)
