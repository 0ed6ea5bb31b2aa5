"""Live capture on the real kernel: exact bytes and offsets, filters, losses, the CLI.

Needs root and a BPF-capable kernel (``-m root``).  The backend comes from
``$USNIFF_BACKEND`` (default auto), so the same file runs inside the kernel-matrix
VMs: ``USNIFF_BACKEND=fentry pytest -m root tests/test_capture_live.py``.

Workloads are separate processes (tests/progs/): a Capture never reports the
process that runs it, nor traffic whose peer is that process.  Each workload
states what it sent (OUTDIR/<inode>.sent); the tests reassemble the captured
records per socket inode by offset and compare byte for byte.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import (
    BACKEND,
    PROGS,
    SCALE,
    TIMEOUT,
    Collected,
    Workload,
    collect,
    covers,
    options,
)
from tests.support.servers import RedisInfo, start_redis
from tests.support.usniff import USNIFF, Usniff
from usniff.capture.collector import Capture, CaptureError, CaptureOptions
from usniff.capture.records import EVENT
from usniff.cli.main import summary
from usniff.events import (
    FLAG_ADDR,
    FLAG_COPY_LIMIT,
    FLAG_MSG_END,
    FLAG_MSG_START,
    FLAG_TRUNCATED,
    FLAG_UNCOPYABLE,
    Record,
    sender_is_server,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root"),
    pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="kernel without BTF"),
]

MiB = 1 << 20


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def start() -> Iterator[Any]:
    """start(**CaptureOptions fields) -> a running Capture (closed at teardown)."""
    caps: list[Capture] = []

    def _start(**kw: Any) -> Capture:
        cap = Capture(options(**kw))
        caps.append(cap)
        if BACKEND != "auto":
            assert cap.stats.backend == BACKEND
        return cap

    yield _start
    for cap in caps:
        cap.close()


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Any]:
    """work(scenario, *args) -> a started uxwork.py Workload (killed at teardown)."""
    procs: list[Workload] = []

    def _work(scenario: str, *args: object, argv: list[str] | None = None) -> Workload:
        w = Workload(argv) if argv else Workload.py(scenario, tmp_path, *args)
        procs.append(w)
        return w

    yield _work
    for w in procs:
        w.kill()


def run_workload(w: Workload, cap: Capture, expected: dict[int, int] | None = None) -> tuple[
    dict[str, Any], dict[int, bytes], Collected
]:  # fmt: skip
    """go, wait for done, collect until every socket's sent bytes are covered."""
    w.go()
    done = w.done()
    sent = Workload.sent(done)
    col = collect(cap, covers(expected or {i: len(b) for i, b in sent.items()}))
    w.finish()
    return done, sent, col


def sends(recs: list[Record]) -> list[list[Record]]:
    """Group a socket's records (by offset) into send calls / datagrams by their flags."""
    out: list[list[Record]] = []
    for r in recs:
        if r.flags & FLAG_MSG_START:
            assert not out or out[-1][-1].flags & FLAG_MSG_END, f"START inside a send: {r}"
            out.append([])
        assert out, f"first record lacks MSG_START: {r}"
        out[-1].append(r)
    assert out[-1][-1].flags & FLAG_MSG_END
    return out


# --------------------------------------------------------- sizes and syscalls


def test_ten_mib_single_write(start: Any, work: Any, tmp_path: Path) -> None:
    w = work("bigwrite")
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    cli, srv = w.ready["client"], w.ready["server"]
    assert done["n"] == 10 * MiB and done["received_ok"]
    assert col.stream(cli) == sent[cli]
    assert len(sent[cli]) == 10 * MiB
    recs = col.data(cli)
    assert len(recs) > 1, "a 10 MiB write must be split into several records"
    assert recs[-1].offset + recs[-1].length == 10 * MiB
    assert len(sends(recs)) == 1  # one write() = one START ... END run
    assert [r.flags & (FLAG_MSG_START | FLAG_MSG_END) for r in recs] == (
        [FLAG_MSG_START] + [0] * (len(recs) - 2) + [FLAG_MSG_END]
    )
    for r in recs:
        assert (r.pid, r.inode, r.peer_inode, r.sock_type) == (w.pid, cli, srv, "stream")
        assert r.path == str(tmp_path / "big.sock") and not r.path_is_own
        assert not r.flags & FLAG_TRUNCATED
    assert col.inodes() == {cli}  # the reader only reads
    assert cap.stats.lost_bytes == 0


CHUNK_EDGES = [1, 32767, 32768, 32769, 65536, 98304 + 5, 131072]


def test_sends_around_record_chunk_sizes(start: Any, work: Any) -> None:
    """Each send is its own START..END run of non-empty records, whatever its size
    relative to the 32 KiB record chunk (usniff.h: USNIFF_CHUNK)."""
    w = work("sizes", *CHUNK_EDGES)
    cap = start(pids=[w.pid])
    _, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    assert all(r.length > 0 for r in col.data(a)), [
        (r.offset, r.length, r.flags) for r in col.data(a) if r.length == 0
    ]
    assert col.stream(a) == sent[a]
    assert [sum(r.length for r in c) for c in sends(col.data(a))] == CHUNK_EDGES


def test_copy_limit_is_a_counted_loss(start: Any, work: Any) -> None:
    """On kernels without bpf_loop a send is copied in a bounded number of steps
    (16 per copy call; the test allows one call): the rest of a longer
    send is one loss record flagged COPY_LIMIT, counted, never a silent cut.  With
    bpf_loop the same send is copied whole."""
    chunk, size = 32768, 20 * 32768
    w = work("sizes", size)
    cap = start(pids=[w.pid], copy_calls=1)
    _, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    if not cap.bounded:
        assert col.stream(a) == sent[a]
        assert cap.stats.lost_bytes == 0
        return
    *data, lost = col.tiles(a)
    # 16 steps: 16 chunks, or 15 and the step that opens the iovec when send()'s
    # buffer reaches the socket as a one-iovec array (kernels before ITER_UBUF, 6.0)
    kept = len(data) * chunk
    assert [(r.kind, r.length) for r in data] in ([("data", chunk)] * 15, [("data", chunk)] * 16)
    assert b"".join(r.data for r in data) == sent[a][:kept]
    assert (lost.kind, lost.offset, lost.lost) == ("lost", kept, size - kept)
    assert lost.flags & FLAG_COPY_LIMIT and lost.flags & FLAG_UNCOPYABLE
    assert (cap.stats.lost_records, cap.stats.lost_bytes) == (1, size - kept)


def test_send_stamped_before_any_answer(start: Any, work: Any) -> None:
    """A record's stamp lies between its send's start and the receiver's
    first read of it, so nothing the receiver answers can precede it.
    fentry/kprobe stamp the start (unix_*_sendmsg entry).  The tracepoint
    backend has no hook before the bytes are queued: it stamps a send when it
    returned, or at the receiver's first read of it if that came earlier."""
    w = work("slowread")
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    assert done["n"] == 1 << 20 and col.stream(a) == sent[a]
    assert done["end"] - done["first_read"] >= 0.15, "the write() ended with the first read"
    first = col.data(a)[0]
    assert first.flags & FLAG_MSG_START
    when = done["first_read"] if cap.stats.backend == "tracepoint" else done["start"]
    assert when - 0.05 <= first.ts <= when + 0.1, (first.ts, done)


@pytest.mark.parametrize("window", [1, 4])
def test_answer_never_stamped_before_its_request(start: Any, work: Any, c_prog: Any,
                                                 tmp_path: Path, window: int) -> None:  # fmt: skip
    """Two threads on two CPUs answer each other's bytes at once, spinning on
    a non-blocking recv() (window 1: one request in flight; 4: four, so that
    a receiver also reads requests after their write() returned).  A
    receiver then sometimes takes a byte before its sender's write() has
    returned.  Answer i must still be stamped after request i, and request
    i + window after answer i.  The tracepoint backend stamps such a send at
    that first read; stamped at the write's return instead, 4-34 of 200,000
    answers preceded their request (5 runs of a build without the repair)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: the race is between a sender and a receiver running at once")
    rounds = int(200_000 / SCALE)  # 40,000 in an emulated guest (SCALE 5); 200,000 natively
    w = work("pingpong", argv=[c_prog("pingpong"), str(tmp_path), str(rounds), str(window)])
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    a, b = w.ready["a"], w.ready["b"]
    assert col.stream(a) == b"q" * rounds and col.stream(b) == b"r" * rounds
    req = {r.offset: r.ts for r in col.data(a)}
    ans = {r.offset: r.ts for r in col.data(b)}
    assert len(req) == len(ans) == rounds, "one record per one-byte write"
    late = [i for i in range(rounds) if not req[i] < ans[i]]
    early = [i for i in range(rounds - window) if not ans[i] < req[i + window]]
    assert not late, f"{len(late)} answers stamped before their request (at {late[:5]})"
    assert not early, f"{len(early)} requests stamped before the answer they follow ({early[:5]})"


def test_writev_and_sendmsg_64_segments(start: Any, work: Any) -> None:
    w = work("writev")
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    assert col.stream(a) == sent[a]
    sizes_writev, sizes_sendmsg = done["sizes"]
    calls = sends(col.data(a))
    assert [sum(r.length for r in c) for c in calls] == [sum(sizes_writev), sum(sizes_sendmsg)]
    assert calls[0][0].offset == 0 and calls[1][0].offset == sum(sizes_writev)


def test_sendmmsg(start: Any, work: Any, c_prog: Any, tmp_path: Path) -> None:
    w = work("mmsg", argv=[c_prog("mmsg"), str(tmp_path)])
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    n1, n2, n3, n4, n5, n6 = done["n"]
    assert [n1, n2, n3, n4] == [8, 4, 3, 8]
    assert 0 < n5 < 4 and 0 < done["partial"] < 100000, "the non-blocking call was not cut short"
    assert n6 >= 1
    dg, st, tx, nb = w.ready["dgram"], w.ready["stream"], w.ready["tx"], w.ready["nb"]
    for ino in (dg, st, tx, nb):
        assert col.stream(ino) == sent[ino]
    # one datagram per message, each one send; the second call starts again at message 0
    dgrams = sends(col.data(dg))
    assert [sum(r.length for r in d) for d in dgrams] == 2 * [len(f"mmsg-{i}:") + i * 1000 + 2
                                                              for i in range(8)]  # fmt: skip
    # after the partial message, the next call's first message is message 0 again
    nb_sends = [sum(r.length for r in m) for m in sends(col.data(nb))]
    assert nb_sends[: n5 + 1] == [100000] * (n5 - 1) + [done["partial"], 100000]
    assert all(r.sock_type == "dgram" for r in col.data(dg))
    assert [sum(r.length for r in m) for m in sends(col.data(st))] == [107, 109, 50009, 113]
    to_named = col.data(tx)
    assert [sum(r.length for r in m) for m in sends(to_named)] == [300, 301, 302]
    for r in to_named:
        assert r.path == w.ready["rpath"] and r.flags & FLAG_ADDR and r.peer_inode == 0


def test_nonblocking_partial_writes(start: Any, work: Any) -> None:
    w = work("nonblock")
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    assert done["eagain"] and 0 < done["first"] < done["asked"]
    assert 0 < done["n2"] < done["asked"] - done["n1"], "the write() was not partial"
    tail = len(b"tail after the partial writes\n")
    assert len(sent[a]) == done["n1"] + done["n2"] + tail
    # exactly the accepted bytes, never the asked ones
    assert col.stream(a) == sent[a]
    calls = sends(col.data(a))
    assert sum(r.length for r in calls[0]) == done["first"]
    assert [sum(r.length for r in c) for c in calls][-2:] == [done["n2"], tail]


def run_threads(
    start: Any, work: Any, *args: str
) -> tuple[Workload, dict[str, Any], int, Collected]:
    """The `threads` workload, captured by its pid: (workload, done, client inode, records)."""
    w = work("threads", *args)
    cap = start(pids=[w.pid])
    w.go()
    done = w.done()
    cli = w.ready["client"]
    col = collect(cap, covers({cli: done["total"]}))
    w.finish()
    return w, done, cli, col


def test_eight_threads_one_socket(start: Any, work: Any) -> None:
    w, done, cli, col = run_threads(start, work)
    stream = col.stream(cli)  # tiles [0, total) exactly
    assert len(stream) == done["total"]
    threads = {int(t): Path(p).read_bytes() for t, p in done["threads"].items()}
    assert len(threads) == 8
    seen_tids = {r.tid for r in col.data(cli)}
    assert seen_tids == set(threads)
    for tid, payload in threads.items():
        mine = [r for r in col.data(cli) if r.tid == tid]
        assert all(r.pid == w.pid for r in mine)
        assert b"".join(r.data for r in mine) == payload, f"thread {tid}"
    assert sum(map(len, threads.values())) == done["total"]


def test_missed_kretprobes_are_counted(start: Any, work: Any) -> None:
    """kprobe backend: every task inside unix_stream_sendmsg (8 threads, often
    blocked on a full socket) holds one of the kretprobe's instances; with one
    instance the kernel misses returns, and with them sends.  They are counted
    from the kernel's miss counts, never lost silently.  With the instances
    usniff asks for, none are missed (test_eight_threads_one_socket)."""
    w = work("threads")
    cap = start(pids=[w.pid], kretprobe_maxactive=1)
    w.go()
    done = w.done()  # every send has returned: its return probe ran or was missed
    col = Collected()
    col.add(cap.finish())
    w.finish()
    captured = sum(r.length for r in col.data(w.ready["client"]))
    if cap.stats.backend != "kprobe":
        assert (captured, cap.stats.missed_sends) == (done["total"], 0)
        return
    assert cap.stats.missed_sends > 0
    assert f"{cap.stats.missed_sends} sends were missed by the kernel's kprobes" in summary(
        cap.stats
    )
    assert captured < done["total"]
    assert cap.stats.lost_bytes == 0  # the ring lost nothing: the misses are the kprobes'


@pytest.mark.xfail(
    reason="known limitation: a send's stream offset is taken when the send returns, so "
    "concurrent senders on one socket can be recorded in another order than the peer "
    "reads them (the bytes and totals are exact; see test_eight_threads_one_socket)",
    strict=False,
)
def test_concurrent_small_writes_in_receive_order(start: Any, work: Any) -> None:
    _, done, cli, col = run_threads(start, work, "small")
    assert col.stream(cli) == Path(done["received"]).read_bytes()


def test_datagrams_to_unconnected_receiver(start: Any, work: Any) -> None:
    w = work("dgram")
    rpath = w.ready["rpath"]
    cap = start(paths=[rpath])  # matches the destination address of sendto()
    done, sent, col = run_workload(w, cap)
    tx = w.ready["tx"]
    assert done["received_ok"]
    assert col.inodes() == {tx}
    assert col.stream(tx) == sent[tx]
    grams = sends(col.data(tx))
    assert [sum(r.length for r in g) for g in grams] == done["sizes"]
    assert len(grams[3]) > 1  # 70000 bytes: several records, every one addressed
    for r in col.data(tx):
        assert r.path == rpath and not r.path_is_own
        assert r.flags & FLAG_ADDR
        assert (r.peer_inode, r.sock_type, r.pid) == (0, "dgram", w.pid)


def test_seqpacket(start: Any, work: Any, tmp_path: Path) -> None:
    w = work("seqpacket")
    cap = start(pids=[w.pid])
    done, sent, col = run_workload(w, cap)
    cli, srv = w.ready["client"], w.ready["server"]
    assert col.inodes() == {cli, srv}
    for ino in (cli, srv):
        assert col.stream(ino) == sent[ino]
        assert all(r.sock_type == "seqpacket" for r in col.data(ino))
    assert [sum(r.length for r in m) for m in sends(col.data(cli))] == done["sizes"]
    assert [sum(r.length for r in m) for m in sends(col.data(srv))] == [9, 9, 9]
    path = str(tmp_path / "sp.sock")
    assert {(r.path, r.path_is_own) for r in col.data(cli)} == {(path, False)}
    assert {(r.path, r.path_is_own) for r in col.data(srv)} == {(path, True)}


def test_abstract_names(start: Any, work: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b, c = f"usniff-a-{tag}", f"usniff-b-{tag}", f"usniff-c-{tag}"
    w = work("abstract", a, b, c)
    cap = start(paths=[f"@{a}", f"@{c}"])
    _, sent, col = run_workload(w, cap, {w.ready[k]: 1 for k in ("a_cli", "a_srv", "tx")})
    r = w.ready
    assert col.inodes() == {r["a_cli"], r["a_srv"], r["tx"]}  # nothing of @b
    for ino in (r["a_cli"], r["a_srv"], r["tx"]):
        assert col.stream(ino) == sent[ino]
    assert {x.path for x in col.data(r["a_cli"]) + col.data(r["a_srv"])} == {f"@{a}"}
    assert all(x.path == f"@{c}" and x.flags & FLAG_ADDR for x in col.data(r["tx"]))


def test_socket_connected_before_capture(start: Any, work: Any) -> None:
    w = work("preopen")  # 12345 + 777 bytes went over the pair already
    cap = start(pids=[w.pid])
    _, sent, col = run_workload(w, cap)
    a, b = w.ready["a"], w.ready["b"]
    assert col.stream(a) == b"first bytes after start" + b"second from a" == sent[a]
    assert col.stream(b) == b"reply from b" == sent[b]
    assert col.data(a)[0].offset == 0 and col.data(b)[0].offset == 0
    assert col.data(a)[1].offset == len(b"first bytes after start")


# ------------------------------------------------------------------- filters


def test_filter_path(start: Any, work: Any, tmp_path: Path) -> None:
    w = work("twosock")
    cap = start(paths=[str(tmp_path / "a.sock")])
    _, sent, col = run_workload(w, cap, {w.ready["a_cli"]: 1, w.ready["a_srv"]: 1})
    r = w.ready
    assert col.inodes() == {r["a_cli"], r["a_srv"]}
    assert col.stream(r["a_cli"]) == b"A request 0A request 1A request 2" == sent[r["a_cli"]]
    assert col.stream(r["a_srv"]) == b"A reply 0A reply 1A reply 2" == sent[r["a_srv"]]
    assert len(sent[r["b_cli"]]) > 0  # the other socket did talk


def test_filter_pid_either_end(start: Any, work: Any, tmp_path: Path) -> None:
    p_path, r_path = str(tmp_path / "p.sock"), str(tmp_path / "r.sock")
    pd, rd, qd = (tmp_path / d for d in ("p", "r", "q"))
    for d in (pd, rd, qd):
        d.mkdir()
    p = work("", argv=[sys.executable, str(PROGS / "uxwork.py"), "server", str(pd), p_path])
    r = work("", argv=[sys.executable, str(PROGS / "uxwork.py"), "server", str(rd), r_path])
    q = work("", argv=[sys.executable, str(PROGS / "uxwork.py"), "client", str(qd),
                       r_path, p_path])  # fmt: skip
    cap = start(pids=[p.ready["pid"]])
    q.go()
    q_done, p_done, r_done = q.done(), p.done(), r.done()
    q_to_r, q_to_p = q_done["clients"]
    p_conn, r_conn = p_done["server"], r_done["server"]
    req = b"request to " + p_path.encode()
    col = collect(cap, covers({q_to_p: len(req), p_conn: len(req) + 6}))
    for x in (p, q, r):
        x.finish()
    assert col.inodes() == {q_to_p, p_conn}  # nothing between q and r
    assert col.stream(q_to_p) == req == Workload.sent(q_done)[q_to_p]
    assert col.stream(p_conn) == b"reply:" + req == Workload.sent(p_done)[p_conn]
    assert {x.pid for x in col.data(q_to_p)} == {q.pid}  # sent by q, *to* p
    assert {x.peer_pid for x in col.data(q_to_p)} == {p.pid}
    assert {x.pid for x in col.data(p_conn)} == {p.pid}
    assert r_conn not in col.inodes() and q_to_r not in col.inodes()


def test_filter_comm(start: Any, work: Any) -> None:
    tag = uuid.uuid4().hex[:6]
    comm_a, comm_b = f"usnA-{tag}", f"usnB-{tag}"
    w = work("comms", comm_a, comm_b)
    cap = start(comms=[comm_a])
    _, sent, col = run_workload(w, cap, {w.ready["a"]: 1})
    a, b = w.ready["a"], w.ready["b"]
    assert col.inodes() == {a}
    assert col.stream(a) == b"from thread A (filtered comm)" == sent[a]
    assert len(sent[b]) > 0
    assert {r.comm for r in col.data(a)} == {comm_a}


@pytest.mark.parametrize("types", [["dgram"], ["stream", "seqpacket"]])
def test_filter_type(start: Any, work: Any, types: list[str]) -> None:
    w = work("types")
    cap = start(pids=[w.pid], types=types)
    _, sent, col = run_workload(w, cap, {w.ready[t]: 1 for t in types})
    assert col.inodes() == {w.ready[t] for t in types}
    for t in types:
        ino = w.ready[t]
        assert col.stream(ino) == sent[ino] == f"{t} message 0{t} message 1".encode()
        assert {r.sock_type for r in col.data(ino)} == {t}


def test_snaplen(start: Any, work: Any) -> None:
    w = work("snap")
    cap = start(pids=[w.pid], snaplen=100)
    done, sent, col = run_workload(w, cap)
    a = w.ready["a"]
    payload = sent[a]
    recs = col.tiles(a)  # lengths still tile the whole stream
    assert recs[-1].offset + recs[-1].length == len(payload)
    calls = sends(recs)
    assert [sum(r.length for r in c) for c in calls] == done["sends"]
    for call in calls:
        start_off = call[0].offset
        size = sum(r.length for r in call)
        kept = b"".join(r.data for r in call)
        assert kept == payload[start_off : start_off + min(100, size)]
        for r in call:
            assert bool(r.flags & FLAG_TRUNCATED) == (len(r.data) < r.length), r
        assert bool(call[-1].flags & FLAG_TRUNCATED) == (size > 100)
    assert cap.stats.bytes == len(payload)
    assert cap.stats.bytes_kept == sum(min(100, n) for n in done["sends"])


def test_losses_with_tiny_ring(start: Any, work: Any) -> None:
    phases = 3
    w = work("loss", phases)
    cap = start(pids=[w.pid], buffer_size=16384)
    col = Collected()
    for phase in range(phases):
        w.go()  # a burst while we do not poll
        assert w.expect("phase") == phase
        for _ in range(4):  # now drain the ring (one poll takes up to half of it)
            col.add(cap.poll(0))
    done = w.done()
    sent = Workload.sent(done)
    col.add(cap.poll(0))
    col.add(cap.finish())  # + losses still pending in the kernel
    w.finish()
    lost_total = 0
    for ino, payload in sent.items():
        recs = col.tiles(ino)  # data and loss records tile [0, sent) exactly
        assert recs[-1].offset + recs[-1].length == len(payload), f"socket {ino}"
        kept = lost = 0
        for r in recs:
            if r.kind == "lost":
                lost += r.lost
            else:
                assert r.data == payload[r.offset : r.offset + r.length]
                kept += r.length
        assert kept + lost == len(payload)
        assert kept > 0 and lost > 0, f"socket {ino}: kept {kept}, lost {lost}"
        assert cap.stats.per_socket_lost[ino] == lost
        lost_total += lost
        # losses reported inside the ring (not only by finish()) sit at their offsets too
        assert sum(r.kind == "lost" for r in recs) >= 2
    assert cap.stats.lost_bytes == lost_total == cap.kernel_stats()["lost_bytes"]


@pytest.mark.any_kernel
def test_discard_releases_the_ring_to_the_kernel(start: Any, work: Any) -> None:
    """Capture.discard (bench windows' "kernel only") hands the space of what the
    kernel wrote back unread: three times the ring's size goes through it, with
    nothing lost, and what it released is what the kernel wrote."""
    phases, ring = 8, 4 << 20
    w = work("loss", phases)  # ~2 MB of sends per phase: half the ring
    cap = start(pids=[w.pid], buffer_size=ring)
    released = 0
    for phase in range(phases):
        w.go()
        assert w.expect("phase") == phase
        released += cap.discard(0)  # what the last call saw is released...
        released += cap.discard(0)  # ...and now this phase's records
        assert cap.discard(0) == 0  # nothing new was written
    done = w.done()
    sent = sum(len(p) for p in Workload.sent(done).values())
    w.finish()
    k = cap.kernel_stats()
    assert k["lost_records"] == 0 and k["bytes"] == sent > 3 * ring
    # each data record: its header, the ring's 8-byte one, its bytes padded to 8;
    # and an EV_SOCK record per socket (counted by the kernel as no data record)
    least = k["bytes"] + k["records"] * (EVENT.size + 8)
    assert least <= released <= least + k["records"] * 7 + 4 * (EVENT.size + 8)


# --------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_sock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    with start_redis(tmp_path_factory.mktemp("redis")) as sock:
        yield sock


def test_redis_bytes_match_info_counters(start: Any, redis_sock: str) -> None:
    cap = start(paths=[redis_sock])
    probe = RedisInfo(redis_sock)
    in0, out0, reply0 = probe.read()
    s = ["-s", redis_sock]
    cli_cmds = [["SET", "live:k", "v\r\nwith crlf"], ["GET", "live:k"], ["INCRBY", "live:n", "7"]]
    cli_pids = []
    for cmd in cli_cmds:
        p = subprocess.Popen(["redis-cli", *s, *cmd], stdout=subprocess.PIPE)
        assert p.communicate(timeout=TIMEOUT)[0]
        assert p.returncode == 0
        cli_pids.append(p.pid)
    bench = ["redis-benchmark", *s, "-n", "2000", "-c", "4", "-q", "-t", "set,get,lpush"]
    subprocess.run(bench, check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT * 3)
    subprocess.run([*bench, "-P", "16"], check=True, stdout=subprocess.DEVNULL, timeout=TIMEOUT)
    in1, out1, _ = probe.read()
    probe.close()
    want_in = in1 - in0 - len(RedisInfo.REQUEST)  # reading 1 counted its own request
    want_out = out1 - out0 - reply0  # reading 0's reply went out after it

    def totals(c: Collected, kinds: tuple[str, ...] = ("data", "lost")) -> tuple[int, int]:
        """(bytes to the server, bytes to clients) covered by records of these kinds."""
        to_srv = sum(r.length for r in c.records if r.kind in kinds and not sender_is_server(r))
        to_cli = sum(r.length for r in c.records if r.kind in kinds and sender_is_server(r))
        return to_srv, to_cli

    col = collect(cap, lambda c: (t := totals(c))[0] >= want_in and t[1] >= want_out)
    assert totals(col) == (want_in, want_out)
    losses = [r for r in col.records if r.kind == "lost"]
    assert not losses, f"losses (flags 16 = bytes not readable from user memory): {losses}"
    assert totals(col, ("data",)) == (want_in, want_out)
    assert want_in > 2 * 3 * 2000 * 20  # the benchmarks really ran through the socket
    assert os.getpid() not in {r.pid for r in col.records} | {r.peer_pid for r in col.records}
    servers = {r.pid for r in col.records if sender_is_server(r)}
    assert len(servers) == 1 and {r.comm for r in col.records if sender_is_server(r)} == {
        "redis-server"
    }
    for ino in col.inodes():  # every connection's stream tiles exactly from offset 0
        col.stream(ino)
    # each redis-cli sent exactly its command; the server answered exactly
    replies = [b"+OK\r\n", b"$12\r\nv\r\nwith crlf\r\n", None]
    for pid, cmd, reply in zip(cli_pids, cli_cmds, replies, strict=True):
        (ino,) = {r.inode for r in col.records if r.pid == pid}
        resp = b"*%d\r\n" % len(cmd) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in cmd
        )
        assert col.stream(ino) == resp
        (srv,) = {r.inode for r in col.records if r.peer_inode == ino}
        if reply:
            assert col.stream(srv) == reply
        else:
            assert re.fullmatch(rb":\d+\r\n", col.stream(srv))


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_redis_raw_pipeline_byte_identical(start: Any, work: Any, redis_sock: str,
                                           tmp_path: Path) -> None:  # fmt: skip
    big = bytes(range(256)) * 400  # 102400 bytes: several records
    marker = f"end-{uuid.uuid4().hex}"
    pipeline = b"".join([
        resp(b"SET", b"pipe:bin", b"a\r\nb\0c\xff"),
        resp(b"GET", b"pipe:bin"),
        resp(b"SET", b"pipe:big", big),
        resp(b"GET", b"pipe:big"),
        resp(b"DEL", b"pipe:list"),
        *[resp(b"RPUSH", b"pipe:list", b"item-%d" % i) for i in range(50)],
        resp(b"LRANGE", b"pipe:list", b"0", b"-1"),
        resp(b"ECHO", marker.encode()),
    ])  # fmt: skip
    (tmp_path / "pipeline.bin").write_bytes(pipeline)
    w = work("resp", redis_sock, tmp_path / "pipeline.bin", marker)
    cap = start(paths=[redis_sock])
    w.go()
    done = w.done()
    cli = done["client"]
    sent = Workload.sent(done)
    replies = Path(done["replies"]).read_bytes()
    assert sent[cli] == pipeline

    def complete(c: Collected) -> bool:
        to_cli = sum(r.length for r in c.records if r.peer_inode == cli)
        return c.covered.get(cli, 0) >= len(pipeline) and to_cli >= len(replies)

    col = collect(cap, complete)
    w.finish()
    (srv,) = {r.inode for r in col.records if r.peer_inode == cli}
    assert col.stream(cli) == pipeline
    assert col.stream(srv) == replies
    assert replies.startswith(b"+OK\r\n$7\r\na\r\nb\0c\xff\r\n+OK\r\n$102400\r\n" + big)
    assert {r.comm for r in col.data(srv)} == {"redis-server"}


# ----------------------------------------------------------------------- CLI


class CliRun(Usniff):
    """The CLI under test, on the backend the tests run with (USNIFF_BACKEND)."""

    def started(self, timeout: float = TIMEOUT) -> str:
        line = super().started(timeout)
        if BACKEND != "auto":
            assert f"the {BACKEND} backend" in line, line
        return line


@pytest.fixture
def usniff() -> Iterator[Any]:
    started: list[CliRun] = []

    def _run(*args: str, backend: bool = True, preexec: list[str] | None = None) -> CliRun:
        backend_args = ["--backend", BACKEND] if backend else []
        u = CliRun(*backend_args, *args, command=[*(preexec or []), USNIFF], ready=False)
        started.append(u)
        return u

    if not shutil.which(USNIFF):
        pytest.skip("usniff is not installed in this environment")
    yield _run
    for u in started:
        u.kill()


@pytest.fixture
def talk(work: Any, tmp_path: Path) -> Any:
    """talk(count) -> Workload connected on tmp/cli.sock sending count messages each way."""
    return lambda count: work("talk", tmp_path / "cli.sock", count)


def test_cli_json_count(usniff: Any, talk: Any, tmp_path: Path) -> None:
    w = talk(3)
    u = usniff("--path", str(tmp_path / "cli.sock"), "--format", "json", "-c", "6")
    u.started()
    w.go()
    sent = Workload.sent(w.done())
    assert u.wait() == 0, u.stderr
    lines = u.stdout.decode().splitlines()
    assert len(lines) == 6
    objs = [json.loads(line) for line in lines]
    keys = {"ts", "pid", "tid", "comm", "inode", "peer_inode", "path", "type", "offset", "len",
            "data"}  # fmt: skip
    by_ino: dict[int, list[dict[str, Any]]] = {}
    for o in objs:
        assert keys <= set(o), o
        assert o["pid"] == w.pid and o["type"] == "stream"
        assert o["path"] == str(tmp_path / "cli.sock")
        by_ino.setdefault(o["inode"], []).append(o)
    cli, srv = w.ready["client"], w.ready["server"]
    assert set(by_ino) == {cli, srv}
    assert {o["peer_inode"] for o in by_ino[cli]} == {srv}
    for ino, objs_ in by_ino.items():
        pos, data = 0, b""
        for o in sorted(objs_, key=lambda o: o["offset"]):
            assert o["offset"] == pos
            chunk = base64.b64decode(o["data"])
            assert len(chunk) == o["len"]
            pos += o["len"]
            data += chunk
        assert data == sent[ino]
    w.finish()


def hexdump_payloads(text: str) -> list[bytes]:
    """Payload bytes of each record in -X output (header line, then 0xOFFS: lines)."""
    out: list[bytes] = []
    for line in text.splitlines():
        m = re.match(r"\s+0x([0-9a-f]{4}):  (.{39})  ", line)
        if not m:
            if line.strip():
                out.append(b"")
            continue
        assert int(m.group(1), 16) == len(out[-1])
        out[-1] += bytes.fromhex(m.group(2).replace(" ", ""))
    return out


@pytest.mark.any_kernel
@pytest.mark.parametrize("view", ["-A", "-X"])
def test_cli_payload_views(usniff: Any, talk: Any, tmp_path: Path, view: str) -> None:
    w = talk(2)
    u = usniff("--path", str(tmp_path / "cli.sock"), view, "-c", "4")
    u.started()
    w.go()
    w.done()
    assert u.wait() == 0, u.stderr
    text = u.stdout.decode()
    msgs = [b"request 000\n", b"reply 000\n", b"request 001\n", b"reply 001\n"]
    headers = [line for line in text.splitlines() if re.search(r" off \d+ len \d+", line)]
    assert len(headers) == 4
    assert [re.search(r" off (\d+) len (\d+)", h).groups() for h in headers] == [  # type: ignore[union-attr]
        ("0", "12"), ("0", "10"), ("12", "12"), ("10", "10")]  # fmt: skip
    if view == "-A":
        for m in msgs:
            assert m.decode() in text
    else:
        assert hexdump_payloads(text) == msgs
    w.finish()


@pytest.mark.any_kernel
def test_cli_duration_stops_by_itself(usniff: Any, tmp_path: Path) -> None:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "quiet.sock"))
    u = usniff("--path", str(tmp_path / "quiet.sock"), "--duration", "2")
    u.started()
    t0 = time.monotonic()
    rc = u.wait(timeout=2 + 30 * SCALE)
    elapsed = time.monotonic() - t0
    srv.close()
    assert rc == 0, u.stderr
    assert elapsed >= 1.8, elapsed
    assert "0 records" in u.stderr and "Traceback" not in u.stderr


@pytest.mark.any_kernel
def test_cli_sigterm_clean_summary(usniff: Any, talk: Any, tmp_path: Path) -> None:
    w = talk(3)
    u = usniff("--path", str(tmp_path / "cli.sock"), "--format", "json")
    u.started()
    w.go()
    sent = Workload.sent(w.done())
    lines = u.stdout_lines(6)
    u.proc.send_signal(signal.SIGTERM)
    assert u.wait() == 0, u.stderr
    w.finish()
    assert [json.loads(line)["len"] for line in lines] == [12, 10, 12, 10, 12, 10]
    out = u.stdout.decode().splitlines()
    assert len(out) == 6 and all(json.loads(line) for line in out)  # stdout: data only
    err = u.stderr
    assert "Traceback" not in err
    m = re.search(r"(\d+) records, (\d+) bytes captured.*?(\d+) bytes lost.*backend (\w+)",
                  err)  # fmt: skip
    assert m, err
    total = sum(map(len, sent.values()))
    backend = BACKEND if BACKEND != "auto" else m.group(4)
    assert m.groups() == ("6", str(total), "0", backend)


@pytest.mark.any_kernel
def test_cli_errors(usniff: Any) -> None:
    cases = [
        (["--path", "/nonexistent/x.sock"], "no such file"),
        (["--path", "/etc/passwd"], "not a unix socket"),
    ]
    for args, needle in cases:
        u = usniff(*args)
        rc = u.wait()
        err = u.stderr
        assert rc != 0 and needle in err.lower(), (args, rc, err)
        assert "Traceback" not in err and not u.stdout


def test_cli_backend_unavailable(usniff: Any) -> None:
    try:
        Capture(CaptureOptions(backend="fentry")).close()
    except CaptureError:
        pass
    else:
        pytest.skip("fentry loads on this kernel")
    u = usniff("--backend", "fentry", "--duration", "1", backend=False)
    rc = u.wait()
    err = u.stderr
    assert rc != 0 and "fentry" in err and "unavailable" in err, err
    assert "Traceback" not in err and not u.stdout


@pytest.mark.any_kernel
def test_cli_needs_root(usniff: Any) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*drop, sys.executable, "-c", "pass"], capture_output=True).returncode:
        pytest.skip(f"user nobody cannot run {sys.executable}")
    u = usniff("--duration", "1", preexec=drop)
    rc = u.wait()
    err = u.stderr
    assert rc != 0 and "root" in err, err
    assert "Traceback" not in err and not u.stdout


def test_cli_list_shows_socket(usniff: Any, work: Any) -> None:
    d = tempfile.mkdtemp(prefix="usl")  # short: the table must not wrap
    try:
        path = os.path.join(d, "l.sock")
        w = work("listen", path)
        out = subprocess.run([USNIFF, "list"], capture_output=True, check=True,
                             timeout=TIMEOUT).stdout.decode()  # fmt: skip
        rows = {int(m.group(1)): line for line in out.splitlines()
                if (m := re.search(r"\s(\d+)\s+(?:\d+|-)\s", line))}  # fmt: skip
        ready = w.ready
        me = f"[{w.pid}]"
        listener = rows[ready["listener"]]
        assert path in listener and "stream" in listener and "LISTEN" in listener
        assert me in listener and "python" in listener
        server = rows[ready["server"]]
        assert path in server and me in server
        assert re.search(rf"\s{ready['server']}\s+{ready['client']}\s", server)
        client = rows[ready["client"]]
        assert re.search(rf"\s{ready['client']}\s+{ready['server']}\s", client) and me in client
        w.finish()
    finally:
        shutil.rmtree(d)
