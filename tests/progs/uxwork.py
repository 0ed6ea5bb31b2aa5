"""Workloads over AF_UNIX sockets for the live capture tests (tests/test_capture_live.py).

    python uxwork.py SCENARIO OUTDIR [ARGS...]

Protocol with the test (line-based JSON on stdout, commands on stdin):

1. the program sets everything up (sockets bound, connected, maybe some
   traffic that must NOT be captured) and prints ``{"ready": {...}}``;
2. it waits for one line on stdin (the test has started its Capture by then;
   scenarios with several phases wait for one line per phase and print
   ``{"phase": i}`` after each);
3. it runs the traffic, then prints ``{"done": {...}}`` and, unless the
   scenario keeps its sockets open until stdin closes, exits.

Every byte a socket sent (accepted by the kernel, in stream order) is written
to ``OUTDIR/<inode>.sent``; ``done["sent"]`` maps inode -> that file.  The test
compares the capture against those files, so the program, not the test,
is the authority on what was sent.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import random
import socket
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

PR_SET_NAME = 15


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_go() -> str:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)  # the test went away
    return line.strip()


def ino(s: socket.socket | int) -> int:
    return os.fstat(s if isinstance(s, int) else s.fileno()).st_ino


def set_comm(name: str) -> None:
    """Name of the calling thread (what bpf_get_current_comm reports)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


class Sent:
    """What each socket sent, in order; dumped to OUTDIR/<inode>.sent."""

    def __init__(self, outdir: str) -> None:
        self.outdir = Path(outdir)
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.lock = threading.Lock()

    def add(self, s: socket.socket | int, data: bytes) -> None:
        with self.lock:
            self.data[ino(s)] += data

    def dump(self) -> dict[str, str]:
        out = {}
        for inode, data in self.data.items():
            path = self.outdir / f"{inode}.sent"
            path.write_bytes(bytes(data))
            out[str(inode)] = str(path)
        return out


def rand(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def drain(s: socket.socket, into: bytearray | None = None) -> threading.Thread:
    """Read s until EOF in a thread (optionally keeping the bytes)."""

    def run() -> None:
        while True:
            try:
                b = s.recv(1 << 20)
            except OSError:
                return
            if not b:
                return
            if into is not None:
                into.extend(b)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def listen(path: str | bytes, kind: int = socket.SOCK_STREAM) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, kind)
    srv.bind(path)
    srv.listen(16)
    return srv


def connected(
    path: str | bytes, kind: int = socket.SOCK_STREAM
) -> tuple[socket.socket, socket.socket]:
    """(client, accepted server end) of a new connection to a fresh listener at path."""
    srv = listen(path, kind)
    cli = socket.socket(socket.AF_UNIX, kind)
    cli.connect(path)
    conn, _ = srv.accept()
    srv.close()
    return cli, conn


def send_all(s: socket.socket, data: bytes, sent: Sent) -> None:
    s.sendall(data)
    sent.add(s, data)


def exchange(src: socket.socket, dst: socket.socket, data: bytes, sent: Sent) -> None:
    """src sends data (recorded in sent); dst reads what arrived."""
    send_all(src, data, sent)
    assert dst.recv(100)


# ----------------------------------------------------------------- scenarios


def sc_bigwrite(out: str, sent: Sent) -> dict:
    """One 10 MiB write() on a named stream socket; the peer reads it all."""
    cli, conn = connected(os.path.join(out, "big.sock"))
    payload = rand(random.Random(1), 10 << 20)
    got = bytearray()
    reader = drain(conn, got)
    emit({"ready": {"client": ino(cli), "server": ino(conn)}})
    wait_go()
    n = os.write(cli.fileno(), payload)
    sent.add(cli, payload[:n])
    cli.shutdown(socket.SHUT_WR)
    reader.join()
    return {"n": n, "received_ok": bytes(got) == payload[:n]}


def sc_slowread(out: str, sent: Sent) -> dict:
    """One 1 MiB write() to a peer that starts reading only 0.5 s later, then
    reads 64 KiB every 20 ms: the send lasts about 0.8 s and is read from its
    0.5th second on (wall-clock start, first read and end reported)."""
    a, b = socket.socketpair()
    payload = rand(random.Random(3), 1 << 20)
    emit({"ready": {"a": ino(a)}})
    wait_go()
    first_read: list[float] = []

    def paced() -> None:
        time.sleep(0.5)
        first_read.append(time.time())
        while b.recv(64 << 10):
            time.sleep(0.02)

    reader = threading.Thread(target=paced)
    start = time.time()
    reader.start()
    n = os.write(a.fileno(), payload)
    end = time.time()
    sent.add(a, payload[:n])
    a.shutdown(socket.SHUT_WR)
    reader.join()
    return {"n": n, "start": start, "first_read": first_read[0], "end": end}


def sc_writev(out: str, sent: Sent) -> dict:
    """writev() and sendmsg() with 64 segments each (one empty), crossing record chunks."""
    a, b = socket.socketpair()
    reader = drain(b)
    rng = random.Random(2)
    sizes = [0 if i == 10 else rng.randrange(1, 2000) for i in range(64)]
    sizes[40] = 40000  # one segment larger than a record chunk
    segs = [rand(rng, n) for n in sizes]
    segs2 = [bytes([i]) * (i + 1) for i in range(64)]
    emit({"ready": {"a": ino(a)}})
    wait_go()
    n1 = os.writev(a.fileno(), segs)
    assert n1 == sum(sizes), n1
    sent.add(a, b"".join(segs))
    n2 = a.sendmsg(segs2)
    assert n2 == sum(map(len, segs2)), n2
    sent.add(a, b"".join(segs2))
    a.shutdown(socket.SHUT_WR)
    reader.join()
    return {"sizes": [sizes, [len(s) for s in segs2]]}


def sc_nonblock(out: str, sent: Sent) -> dict:
    """Non-blocking send to a peer that does not read: the kernel accepts only part."""
    a, b = socket.socketpair()
    a.setblocking(False)
    payload = rand(random.Random(3), 4 << 20)
    emit({"ready": {"a": ino(a)}})
    wait_go()
    n1 = a.send(payload)  # partial: the peer is not reading
    sent.add(a, payload[:n1])
    first = n1
    again = False
    while not again:  # fill the send buffer until the kernel says EAGAIN
        try:
            k = a.send(payload[n1:])
        except BlockingIOError:
            again = True
        else:
            sent.add(a, payload[n1 : n1 + k])
            n1 += k
    # a write() that is partial too, once the reader made a little room
    got = bytearray()
    while len(got) < 50000:
        got += b.recv(50000 - len(got))
    try:
        n2 = os.write(a.fileno(), payload[n1:])
    except BlockingIOError:
        n2 = 0
    sent.add(a, payload[n1 : n1 + n2])
    a.setblocking(True)
    tail = b"tail after the partial writes\n"
    reader = drain(b)
    send_all(a, tail, sent)
    a.shutdown(socket.SHUT_WR)
    reader.join()
    return {"asked": len(payload), "first": first, "n1": n1, "n2": n2, "eagain": again}


def sc_threads(out: str, sent: Sent, mode: str = "mixed") -> dict:
    """8 threads write to one connected socket at once; each thread's bytes go to its own file.

    mode "mixed": 40 writes each of 18 B .. 70 kB; "small": 3000 writes of 20 B each."""
    cli, conn = connected(os.path.join(out, "thr.sock"))
    got = bytearray()
    reader = drain(conn, got)
    start = threading.Barrier(8)
    per_thread: dict[int, bytearray] = {}

    def worker(i: int) -> None:
        rng = random.Random(100 + i)
        mine = bytearray()
        per_thread[threading.get_native_id()] = mine
        start.wait()
        for _ in range(40 if mode == "mixed" else 3000):
            if mode == "mixed":
                data = bytes([0x41 + i]) * 8 + rand(rng, rng.choice((10, 200, 3000, 40000, 70000)))
            else:
                data = bytes([0x41 + i]) * 8 + rand(rng, 12)
            cli.sendall(data)
            mine += data

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    emit({"ready": {"client": ino(cli)}})
    wait_go()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cli.shutdown(socket.SHUT_WR)
    reader.join()
    files = {}
    for tid, data in per_thread.items():
        p = Path(out) / f"thread-{tid}.sent"
        p.write_bytes(bytes(data))
        files[str(tid)] = str(p)
    total = sum(len(d) for d in per_thread.values())
    recv = Path(out) / "thr.recv"
    recv.write_bytes(bytes(got))
    return {"threads": files, "total": total, "received": str(recv)}


def sc_dgram(out: str, sent: Sent) -> dict:
    """Datagrams from an unbound socket to a named receiver (sendto and sendmsg)."""
    rpath = os.path.join(out, "dg.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(rpath)
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    rng = random.Random(4)
    sizes = [1, 100, 5000, 70000, 33]
    msgs = [rand(rng, n) for n in sizes]
    got: list[bytes] = []

    def receive() -> None:
        for _ in msgs:
            got.append(rx.recv(1 << 20))

    emit({"ready": {"tx": ino(tx), "rx": ino(rx), "rpath": rpath}})
    wait_go()
    t = threading.Thread(target=receive)
    t.start()
    for i, m in enumerate(msgs):
        n = tx.sendmsg([m[:7], m[7:]], [], 0, rpath) if i % 2 else tx.sendto(m, rpath)
        assert n == len(m)
        sent.add(tx, m)
    t.join()
    return {"sizes": sizes, "received_ok": got == msgs}


def sc_seqpacket(out: str, sent: Sent) -> dict:
    cli, conn = connected(os.path.join(out, "sp.sock"), socket.SOCK_SEQPACKET)
    rng = random.Random(5)
    sizes = [10, 3000, 40000]
    emit({"ready": {"client": ino(cli), "server": ino(conn)}})
    wait_go()
    for n in sizes:
        m = rand(rng, n)
        assert cli.send(m) == n
        sent.add(cli, m)
        assert conn.recv(1 << 20) == m
        reply = b"ack:" + m[:5]
        assert conn.send(reply) == len(reply)
        sent.add(conn, reply)
        assert cli.recv(100) == reply
    return {"sizes": sizes}


def sc_abstract(out: str, sent: Sent, name_a: str, name_b: str, name_c: str) -> dict:
    """Stream on @name_a (captured), stream on @name_b (not), datagrams to @name_c."""
    a_cli, a_srv = connected(b"\0" + name_a.encode())
    b_cli, b_srv = connected(b"\0" + name_b.encode())
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(b"\0" + name_c.encode())
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    emit({"ready": {"a_cli": ino(a_cli), "a_srv": ino(a_srv), "b_cli": ino(b_cli),
                    "b_srv": ino(b_srv), "tx": ino(tx)}})  # fmt: skip
    wait_go()
    exchange(b_cli, b_srv, b"on B: must not be captured", sent)
    exchange(b_srv, b_cli, b"B reply: not captured either", sent)
    for m in (b"datagram one to C", b"datagram two to C"):
        assert tx.sendto(m, b"\0" + name_c.encode()) == len(m)
        sent.add(tx, m)
        assert rx.recv(100) == m
    exchange(a_cli, a_srv, b"hello over abstract A", sent)
    exchange(a_srv, a_cli, b"A replies", sent)
    return {}


def sc_preopen(out: str, sent: Sent) -> dict:
    """Connected (and used) before the capture starts."""
    a, b = socket.socketpair()
    before = Sent(out)
    send_all(a, b"x" * 12345, before)
    b.recv(12345, socket.MSG_WAITALL)
    send_all(b, b"y" * 777, before)
    a.recv(777, socket.MSG_WAITALL)
    emit({"ready": {"a": ino(a), "b": ino(b), "before": 12345}})
    wait_go()
    exchange(a, b, b"first bytes after start", sent)
    exchange(b, a, b"reply from b", sent)
    exchange(a, b, b"second from a", sent)
    return {}


def sc_twosock(out: str, sent: Sent) -> dict:
    """Traffic on b.sock first (not in the filter), then on a.sock."""
    a_cli, a_srv = connected(os.path.join(out, "a.sock"))
    b_cli, b_srv = connected(os.path.join(out, "b.sock"))
    emit({"ready": {"a_cli": ino(a_cli), "a_srv": ino(a_srv),
                    "b_cli": ino(b_cli), "b_srv": ino(b_srv)}})  # fmt: skip
    wait_go()
    for i in range(3):
        send_all(b_cli, b"B request %d" % i, sent)
        b_srv.recv(100)
        send_all(b_srv, b"B reply %d" % i, sent)
        b_cli.recv(100)
    for i in range(3):
        send_all(a_cli, b"A request %d" % i, sent)
        a_srv.recv(100)
        send_all(a_srv, b"A reply %d" % i, sent)
        a_cli.recv(100)
    return {}


def sc_server(out: str, sent: Sent, path: str) -> dict:
    """Serve one connection on path: reply b"reply:" + request to each request."""
    srv = listen(path)
    emit({"ready": {"pid": os.getpid()}})
    conn, _ = srv.accept()
    while True:
        req = conn.recv(1 << 16)
        if not req:
            break
        send_all(conn, b"reply:" + req, sent)
    return {"server": ino(conn)}


def sc_client(out: str, sent: Sent, *paths: str) -> dict:
    """After go: one request per server path, in order, waiting for each reply."""
    emit({"ready": {}})
    wait_go()
    inodes = []
    for p in paths:
        s = socket.socket(socket.AF_UNIX)
        s.connect(p)
        req = b"request to " + p.encode()
        send_all(s, req, sent)
        want = len(b"reply:" + req)
        got = b""
        while len(got) < want:
            got += s.recv(want - len(got))
        inodes.append(ino(s))
        s.close()
    return {"clients": inodes}


def sc_comms(out: str, sent: Sent, comm_a: str, comm_b: str) -> dict:
    """Main thread named comm_a, a second thread comm_b; B sends first."""
    set_comm(comm_a)
    a, b = socket.socketpair()
    emit({"ready": {"a": ino(a), "b": ino(b)}})
    wait_go()

    def thread_b() -> None:
        set_comm(comm_b)
        send_all(b, b"from thread B (other comm)", sent)

    t = threading.Thread(target=thread_b)
    t.start()
    t.join()
    a.recv(100)
    send_all(a, b"from thread A (filtered comm)", sent)
    b.recv(100)
    return {}


def sc_types(out: str, sent: Sent) -> dict:
    """A stream, a seqpacket, then a datagram socketpair: the datagram last."""
    pairs = {t: socket.socketpair(socket.AF_UNIX, k)
             for t, k in (("stream", socket.SOCK_STREAM), ("seqpacket", socket.SOCK_SEQPACKET),
                          ("dgram", socket.SOCK_DGRAM))}  # fmt: skip
    emit({"ready": {t: ino(a) for t, (a, _) in pairs.items()}})
    wait_go()
    for t, (a, b) in pairs.items():
        for i in range(2):
            send_all(a, f"{t} message {i}".encode(), sent)
            b.recv(100)
    return {}


def sc_sizes(out: str, sent: Sent, *sizes: str) -> dict:
    """One send() per size on a stream socketpair (record chunk boundaries)."""
    a, b = socket.socketpair()
    reader = drain(b)
    rng = random.Random(8)
    emit({"ready": {"a": ino(a)}})
    wait_go()
    for n in map(int, sizes):
        send_all(a, rand(rng, n), sent)
    a.shutdown(socket.SHUT_WR)
    reader.join()
    return {}


def sc_snap(out: str, sent: Sent) -> dict:
    """Sends of many sizes (and a writev) with the test's snap length of 100."""
    a, b = socket.socketpair()
    reader = drain(b)
    rng = random.Random(6)
    sizes = [50, 100, 101, 5000, 70000, 1]
    emit({"ready": {"a": ino(a)}})
    wait_go()
    sends = []
    for n in sizes:
        m = rand(rng, n)
        send_all(a, m, sent)
        sends.append(n)
    segs = [rand(rng, 60) for _ in range(3)]
    assert os.writev(a.fileno(), segs) == 180
    sent.add(a, b"".join(segs))
    sends.append(180)
    a.shutdown(socket.SHUT_WR)
    reader.join()
    return {"sends": sends}


def sc_loss(out: str, sent: Sent, phases: str) -> dict:
    """Bursts of writes on both ends of a socketpair, one burst per phase."""
    a, b = socket.socketpair()
    ra, rb = drain(a), drain(b)
    emit({"ready": {"a": ino(a), "b": ino(b)}})
    sizes = [1000, 3000, 40000, 8000, 500, 12000, 100000]
    for phase in range(int(phases)):
        wait_go()

        def burst(s: socket.socket, seed: int) -> None:
            r = random.Random(seed)
            for _ in range(6):
                for n in sizes:
                    send_all(s, rand(r, n), sent)

        t = threading.Thread(target=burst, args=(b, 1000 + phase))
        t.start()
        burst(a, phase)
        t.join()
        emit({"phase": phase})
    a.shutdown(socket.SHUT_WR)
    b.shutdown(socket.SHUT_WR)
    ra.join()
    rb.join()
    return {}


def sc_resp(out: str, sent: Sent, path: str, pipeline_file: str, marker: str) -> dict:
    """Send a raw RESP pipeline to Redis; read replies up to the marker's ECHO reply."""
    pipeline = Path(pipeline_file).read_bytes()
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    emit({"ready": {"client": ino(s)}})
    wait_go()
    send_all(s, pipeline, sent)
    end = b"$%d\r\n%s\r\n" % (len(marker), marker.encode())
    got = bytearray()
    while not got.endswith(end):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    (Path(out) / "replies.bin").write_bytes(bytes(got))
    return {"client": ino(s), "replies": str(Path(out) / "replies.bin")}


def sc_talk(out: str, sent: Sent, path: str, count: str) -> dict:
    """For the CLI: a named connection; after go, `count` messages each way; stays
    open (and connected) until stdin closes."""
    cli, conn = connected(path)
    emit({"ready": {"client": ino(cli), "server": ino(conn), "pid": os.getpid()}})
    wait_go()
    for i in range(int(count)):
        send_all(cli, b"request %03d\n" % i, sent)
        conn.recv(100)
        send_all(conn, b"reply %03d\n" % i, sent)
        cli.recv(100)
    emit({"done": {"sent": sent.dump()}})
    sys.stdin.read()  # keep the sockets until the test is finished
    return {}


def sc_listen(out: str, sent: Sent, path: str) -> dict:
    """For `usniff list`: a listening socket and one connection, until stdin closes."""
    srv = listen(path)
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(path)
    conn, _ = srv.accept()
    emit({"ready": {"listener": ino(srv), "client": ino(cli), "server": ino(conn),
                    "pid": os.getpid()}})  # fmt: skip
    sys.stdin.read()
    return {}


SCENARIOS = {name[3:]: fn for name, fn in globals().items() if name.startswith("sc_")}


def main() -> None:
    name, outdir, *args = sys.argv[1:]
    sent = Sent(outdir)
    try:
        result = SCENARIOS[name](outdir, sent, *args)
    except OSError as e:
        if e.errno == errno.EPIPE:
            sys.exit(1)
        raise
    if name not in ("talk", "listen"):
        result["sent"] = sent.dump()
        emit({"done": result})


if __name__ == "__main__":
    main()
