"""Live end-to-end helpers: run the real `usniff` CLI against real servers and clients.

Used by tests/test_live_decode.py, tests/test_live_pcapng.py and
captures/record_live.py.  Nothing here is mocked: usniff is started as a
subprocess (readiness = its ``usniff: capturing with the`` line on stderr,
never a fixed sleep), the workloads are redis-cli / redis-benchmark /
mariadb / pymysql, and byte totals come from the servers' own counters.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pymysql

from .mysql_stmt import COM_QUERY, COM_STMT_CLOSE, stmt_execute, stmt_prepare

USNIFF = str(Path(sys.executable).with_name("usniff"))
READY = "usniff: capturing with the"
REDIS_PASSWORD = "s3cr3t-pw"  # for the ACL user "app" (masked by --redact)
MYSQL_PASSWORD = "hunter2-pw"  # for app@localhost (masked by --redact)
SUBSCRIBE_MESSAGE = "hello-subscribers"


def wait_until(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode()


class Usniff:
    """``usniff ARGS`` as a subprocess, ready (capturing) when the constructor returns.

    stdout goes to ``stdout`` (a file object or fd) when given, else it is
    collected by a thread; stderr is always collected.
    """

    def __init__(
        self,
        *args: str,
        stdout: IO[bytes] | int | None = None,
        ready_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        **popen: Any,
    ) -> None:
        # command: how to start usniff (default: the one beside sys.executable)
        self.args = [*(command or [USNIFF]), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            **popen,
        )
        self._out = bytearray()
        self._err: list[str] = []
        self._ready = threading.Event()
        self._threads = [threading.Thread(target=self._read_err, daemon=True)]
        if stdout is None:
            self._threads.append(threading.Thread(target=self._read_out, daemon=True))
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.proc.kill()
                self.proc.wait()
                for t in self._threads:
                    t.join(5)
                raise RuntimeError(f"usniff did not become ready: {self.args} {self.stderr!r}")

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            text = line.decode(errors="replace")
            self._err.append(text)
            if READY in text:
                self._ready.set()

    def _read_out(self) -> None:
        out = self.proc.stdout
        assert out is not None
        for chunk in iter(lambda: os.read(out.fileno(), 65536), b""):
            self._out += chunk

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    @property
    def stdout(self) -> bytes:
        return bytes(self._out)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> Result:
        """Send ``sig`` and wait for the exit; stdout/stderr are complete afterwards."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for t in self._threads:
            t.join(10)
        return Result(rc, self.stdout, self.stderr)

    def __enter__(self) -> Usniff:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 60)
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- Redis


def resp_command(*args: str | bytes) -> bytes:
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class RedisCounters:
    """INFO stats byte counters read on one raw connection, with exact request/reply sizes.

    Open it *before* usniff starts and read it before and after the capture:
    the only counted-but-uncaptured bytes are then the first reply and the
    second request (``delta()`` subtracts them).
    """

    REQUEST = resp_command("INFO", "stats")

    def __init__(self, sock: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
        self.samples: list[tuple[int, int, int]] = []  # (in, out, reply size)

    def read(self) -> None:
        self.sock.sendall(self.REQUEST)
        buf = b""
        while b"\r\n" not in buf:
            buf += self.sock.recv(65536)
        header, _, rest = buf.partition(b"\r\n")
        assert header.startswith(b"$"), header
        size = int(header[1:])
        while len(rest) < size + 2:
            rest += self.sock.recv(65536)
        body = rest[:size].decode()
        stats = dict(line.split(":", 1) for line in body.split("\r\n") if ":" in line)
        reply = len(header) + 2 + size + 2
        self.samples.append(
            (int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"]), reply)
        )

    def delta(self) -> tuple[int, int]:
        """(client->server, server->client) bytes of everyone else between the two reads."""
        (in0, out0, reply0), (in1, out1, _) = self.samples[-2:]
        return in1 - in0 - len(self.REQUEST), out1 - out0 - reply0

    def close(self) -> None:
        self.sock.close()


def create_redis_user(sock: str) -> None:
    """ACL user "app", created before the capture."""
    out = run(["redis-cli", "-s", sock, "ACL", "SETUSER", "app", "on", f">{REDIS_PASSWORD}",
               "~*", "&*", "+@all"])  # fmt: skip
    assert out.stdout.strip() == "OK", out


def raw_exchange(sock: str, payload: bytes, replies_end: bytes) -> bytes:
    """Send ``payload`` in one write on a new connection; read until the replies end so."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.settimeout(10)
        s.sendall(payload)
        got = b""
        while not got.endswith(replies_end):
            part = s.recv(65536)
            assert part, got
            got += part
        return got


def _blocked_clients(sock: str) -> int:
    out = run(["redis-cli", "-s", sock, "INFO", "clients"]).stdout
    for line in out.splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":")[1])
    return 0


PIPE_N = 30  # SETs and GETs sent by redis-cli --pipe


def redis_session(sock: str, benchmark_requests: int = 100) -> None:
    """The scripted Redis session; tests assert what it must decode to."""
    cli = ["redis-cli", "-s", sock]
    for args, expect in (
        (["SET", "user:1", "ann"], "OK"),
        (["GET", "user:1"], "ann"),
        (["HSET", "h", "f1", "v1", "f2", "v2"], "2"),
        (["HGETALL", "h"], "f1\nv1\nf2\nv2"),
        (["LPUSH", "list", "a", "b", "c"], "3"),
        (["LRANGE", "list", "0", "-1"], "c\nb\na"),
        (["INCR", "counter"], "1"),
        (["GET", "missing"], ""),
        (["LPUSH", "user:1", "x"], "WRONGTYPE"),
        (["NOSUCHCMD", "arg"], "ERR unknown command"),
    ):
        out = run(cli + args)
        assert out.stdout.strip().startswith(expect), (args, out)
    # MULTI/EXEC on a raw socket, all commands in one write
    tx = b"".join(
        resp_command(*c) for c in (["MULTI"], ["SET", "tx", "10"], ["INCR", "tx"], ["EXEC"])
    )
    got = raw_exchange(sock, tx, b"*2\r\n+OK\r\n:11\r\n")
    assert got == b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:11\r\n", got
    # a pipeline through redis-cli --pipe
    pipe = b"".join(resp_command("SET", f"pipe:{i}", f"v{i}") for i in range(PIPE_N))
    pipe += b"".join(resp_command("GET", f"pipe:{i}") for i in range(PIPE_N))
    piped = subprocess.run(cli + ["--pipe"], input=pipe, capture_output=True, timeout=60)
    assert b"errors: 0, replies: %d" % (2 * PIPE_N) in piped.stdout, piped
    # SUBSCRIBE in one redis-cli, PUBLISH from another: the push reaches the subscriber
    sub = subprocess.Popen(
        ["stdbuf", "-oL", *cli, "SUBSCRIBE", "news"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert sub.stdout is not None
        assert [sub.stdout.readline().strip() for _ in range(3)] == ["subscribe", "news", "1"]
        assert run(cli + ["PUBLISH", "news", SUBSCRIBE_MESSAGE]).stdout.strip() == "1"
        got3 = [sub.stdout.readline().strip() for _ in range(3)]
        assert got3 == ["message", "news", SUBSCRIBE_MESSAGE], got3
    finally:
        sub.terminate()
        sub.wait(10)
    # BLPOP blocks until another client pushes
    blpop = subprocess.Popen(cli + ["BLPOP", "jobs", "10"], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: _blocked_clients(sock) == 1, 10, "BLPOP to block")
    assert run(cli + ["RPUSH", "jobs", "job1"]).stdout.strip() == "1"
    out_b, _ = blpop.communicate(timeout=10)
    assert out_b.split() == ["jobs", "job1"], out_b
    # AUTH (username + password), masked by --redact
    out = run(cli + ["--user", "app", "--pass", REDIS_PASSWORD, "PING"])
    assert out.stdout.strip() == "PONG", out
    if benchmark_requests:
        out = run(["redis-benchmark", "-s", sock, "-n", str(benchmark_requests), "-c", "2",
                   "-P", "4", "-t", "set,get", "-q"])  # fmt: skip
        assert out.returncode == 0, out


# --------------------------------------------------------------------------- MySQL

STATUS_SQL = "SHOW GLOBAL STATUS WHERE Variable_name IN ('Bytes_received','Bytes_sent')"


class MysqlCounters:
    """Bytes_received/Bytes_sent on one connection opened before the capture (see RedisCounters)."""

    def __init__(self, sock: str) -> None:
        self.conn = pymysql.connect(unix_socket=sock, user="root")
        self.samples: list[tuple[int, int, int]] = []  # (received, sent, reply size)

    def read(self) -> None:
        conn = self.conn
        conn._execute_command(COM_QUERY, STATUS_SQL)
        size = 0
        rows: list[bytes] = []

        def packet() -> Any:
            nonlocal size
            p = conn._read_packet()
            size += 4 + len(p.get_all_data())
            return p

        ncols = packet().read_length_encoded_integer()
        for _ in range(ncols + 1):  # column definitions, EOF
            packet()
        while not (p := packet()).is_eof_packet():
            rows.append(p.get_all_data())
        values = {}
        for row in rows:
            name_len = row[0]
            name = row[1 : 1 + name_len].decode()
            value_len = row[1 + name_len]
            values[name] = int(row[2 + name_len : 2 + name_len + value_len])
        self.samples.append((values["Bytes_received"], values["Bytes_sent"], size))

    def delta(self) -> tuple[int, int]:
        (in0, out0, reply0), (in1, out1, _) = self.samples[-2:]
        request = 4 + 1 + len(STATUS_SQL)
        return in1 - in0 - request, out1 - out0 - reply0

    def close(self) -> None:
        self.conn.close()


MYSQL_CLI_SQL = (
    "CREATE DATABASE shop; USE shop; "
    "CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer VARCHAR(40), total INT); "
    "INSERT INTO orders (customer, total) VALUES ('ann', 10), ('bob', 20), ('cid', 30); "
    "SELECT customer, total FROM orders ORDER BY id; "
    f"CREATE USER app@localhost IDENTIFIED BY '{MYSQL_PASSWORD}'; "
    "GRANT ALL ON shop.* TO app@localhost; "
    "SELECT * FROM no_such_table"
)


def mysql_session(sock: str) -> None:
    """The scripted MariaDB session; tests assert what it must decode to."""
    out = run(["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e", MYSQL_CLI_SQL])
    assert out.returncode == 1 and "ERROR 1146" in out.stderr, out  # the last query fails
    assert "ann\t10" in out.stdout, out
    conn = pymysql.connect(
        unix_socket=sock,
        user="app",
        password=MYSQL_PASSWORD,
        database="shop",
        client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
    )
    with conn.cursor() as cur:
        cur.execute("SELECT customer FROM orders WHERE id = %s", (2,))
        assert cur.fetchall() == (("bob",),)
        cur.execute("UPDATE orders SET total = total + 1 WHERE customer IN ('ann', 'bob')")
        cur.execute("SELECT 1 AS one; SELECT 'two' AS two; DELETE FROM orders WHERE id = 3")
        while cur.nextset():
            pass
        with contextlib.suppress(pymysql.err.ProgrammingError):
            cur.execute("SELEC broken syntax")
    stmt, nparams, ncols = stmt_prepare(conn, "SELECT id, customer FROM orders WHERE id >= ?")
    assert (nparams, ncols) == (1, 2)
    assert stmt_execute(conn, stmt, [(8, struct.pack("<q", 1))]) == 2
    conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", stmt))  # no reply
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- pcapng


def follow_all(tshark: Callable[..., str], path: str) -> dict[int, tuple[str, str, bytes, bytes]]:
    """Every TCP stream, in one tshark run: {stream: (node0, node1, bytes 0->1, bytes 1->0)}."""
    streams = sorted({int(s) for s in tshark("-r", path, "-T", "fields", "-e", "tcp.stream")
                      .split() if s})  # fmt: skip
    if not streams:
        return {}
    args = ["-r", path, "-q"]
    for n in streams:
        args += ["-z", f"follow,tcp,raw,{n}"]
    out = tshark(*args)
    result = {}
    for block, n in zip(out.split("Follow: tcp,raw")[1:], streams, strict=True):
        lines = block.splitlines()
        node0 = next(x for x in lines if x.startswith("Node 0:")).split(": ", 1)[1]
        node1 = next(x for x in lines if x.startswith("Node 1:")).split(": ", 1)[1]
        body = block.split("Node 1:", 1)[1].split("\n", 1)[1]
        sent = [b"", b""]
        for line in body.splitlines():
            if line.startswith("====="):
                break
            if line.strip():
                sent[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
        result[n] = (node0, node1, sent[0], sent[1])
    return result


def tcp_bytes_by_port(
    follow: dict[int, tuple[str, str, bytes, bytes]], port: int
) -> tuple[int, int]:
    """(to the server on ``port``, from it) summed over every followed stream."""
    to_server = from_server = 0
    for node0, node1, a, b in follow.values():
        if node1.endswith(f":{port}"):
            to_server, from_server = to_server + len(a), from_server + len(b)
        else:
            assert node0.endswith(f":{port}"), (node0, node1)
            to_server, from_server = to_server + len(b), from_server + len(a)
    return to_server, from_server


@contextlib.contextmanager
def signal_on_exit(proc: subprocess.Popen[Any], sig: int = signal.SIGINT) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- memcached

BIG_VALUE = bytes(range(256)) * 8  # 2048 bytes, binary: shown quoted and cut
# (requests sent in one write, what the last reply ends with); quit has no reply
MEMCACHED_STEPS: list[tuple[list[bytes], bytes]] = [
    ([b"set user:1 0 0 3\r\nann\r\n"], b"STORED\r\n"),
    ([b"add user:1 0 0 1\r\nx\r\n"], b"NOT_STORED\r\n"),
    ([b"set big 5 0 2048\r\n" + BIG_VALUE + b"\r\n"], b"STORED\r\n"),
    ([b"get user:1 nope big\r\n"], b"END\r\n"),
    ([b"gets user:1\r\n"], b"END\r\n"),
    ([b"append user:1 0 0 2\r\n-x\r\n"], b"STORED\r\n"),
    ([b"prepend nope 0 0 1\r\ny\r\n"], b"NOT_STORED\r\n"),
    ([b"replace user:1 0 0 3\r\nbob\r\n"], b"STORED\r\n"),
    ([b"cas user:1 0 0 1 999999\r\nz\r\n"], b"EXISTS\r\n"),
    ([b"set n 0 0 1\r\n5\r\n"], b"STORED\r\n"),
    ([b"incr n 10\r\n"], b"15\r\n"),
    ([b"decr n 3\r\n"], b"12\r\n"),
    ([b"incr nope 1\r\n"], b"NOT_FOUND\r\n"),
    ([b"touch n 100\r\n"], b"TOUCHED\r\n"),
    ([b"gat 100 n\r\n"], b"END\r\n"),
    ([b"gats 100 n user:1\r\n"], b"END\r\n"),
    ([b"delete n\r\n"], b"DELETED\r\n"),
    ([b"delete n\r\n"], b"NOT_FOUND\r\n"),
    ([b"set quiet 0 0 2 noreply\r\nhi\r\n", b"get quiet\r\n"], b"END\r\n"),
    ([b"bogus\r\n"], b"ERROR\r\n"),
    ([b"set k 0 0 x\r\n"], b"CLIENT_ERROR bad command line format\r\n"),
    ([b"version\r\n"], b"\r\n"),
    ([b"verbosity 1\r\n"], b"OK\r\n"),
    ([b"stats\r\n"], b"END\r\n"),
    (
        [
            b"ms m1 2 T0 O1 q\r\nhi\r\n",
            b"mg m1 v O2 q\r\n",
            b"mg nope v O3 q\r\n",
            b"md nope O4 q\r\n",
            b"ma cnt N0 J7 v O5\r\n",
            b"mg m1 s v O6\r\n",
            b"mn\r\n",
        ],
        b"MN\r\n",
    ),  # fmt: skip
    ([b"me m1\r\n"], b"\r\n"),
    ([b"flush_all\r\n"], b"OK\r\n"),
    ([b"quit\r\n"], b""),
]
# what the decoder must show for each request above, in order: (request, reply)
MEMCACHED_EXPECTED = [
    ("set user:1 0 0 3 ann", "STORED"),
    ("add user:1 0 0 1 x", "NOT_STORED"),
    ("set big 5 0 2048 " + '"' + "\\x00\\x01\\x02", "STORED"),
    ("get user:1 nope big", "2/3 hit: user:1=ann, big=" + '"' + "\\x00\\x01\\x02"),
    ("gets user:1", "1/1 hit: user:1=ann cas="),
    ("append user:1 0 0 2 -x", "STORED"),
    ("prepend nope 0 0 1 y", "NOT_STORED"),
    ("replace user:1 0 0 3 bob", "STORED"),
    ("cas user:1 0 0 1 999999 z", "EXISTS"),
    ("set n 0 0 1 5", "STORED"),
    ("incr n 10", "15"),
    ("decr n 3", "12"),
    ("incr nope 1", "NOT_FOUND"),
    ("touch n 100", "TOUCHED"),
    ("gat 100 n", "1/1 hit: n=12"),
    ("gats 100 n user:1", "2/2 hit: n=12 cas="),
    ("delete n", "DELETED"),
    ("delete n", "NOT_FOUND"),
    ("set quiet 0 0 2 noreply hi", ""),
    ("get quiet", "1/1 hit: quiet=hi"),
    ("bogus", "ERROR"),
    ("set k 0 0 x", "CLIENT_ERROR bad command line format"),
    ("version", "VERSION "),
    ("verbosity 1", "OK"),
    ("stats", "STAT pid "),
    ("ms m1 2 T0 O1 q hi", "(HD, quiet)"),
    ("mg m1 v O2 q", "VA 2 O2 hi"),
    ("mg nope v O3 q", "(EN, quiet)"),
    ("md nope O4 q", "NF O4"),
    ("ma cnt N0 J7 v O5", "VA 1 O5 7"),
    ("mg m1 s v O6", "VA 2 s2 O6 hi"),
    ("mn", "MN"),
    ("me m1", "ME m1 "),
    ("flush_all", "OK"),
    ("quit", ""),
]


def memcached_session(sock: str) -> tuple[bytes, bytes]:
    """MEMCACHED_STEPS on one connection, each step in one write and read until its
    reply ends (pipelined where a step holds several requests); returns (sent, received)."""
    sent = received = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.settimeout(10)
        for requests, end in MEMCACHED_STEPS:
            payload = b"".join(requests)
            s.sendall(payload)
            got = b""
            if not end:  # quit: the server closes the connection
                assert s.recv(65536) == b""
            while end and not got.endswith(end):
                part = s.recv(65536)
                assert part, (payload, got)
                got += part
            sent, received = sent + payload, received + got
    return sent, received


def memcached_stats(sock: str) -> tuple[dict[str, int], int, int]:
    """memcached's own counters (``stats``) on a new connection, with the sizes of the
    request and of its reply (the reply's bytes are not in its own bytes_written)."""
    request = b"stats\r\n"
    reply = raw_exchange(sock, request, b"END\r\n")
    stats = {}
    for line in reply.decode().splitlines():
        _, name, value = line.split(" ", 2) if line.startswith("STAT ") else ("", "", "")
        if value.isdigit():
            stats[name] = int(value)
    return stats, len(request), len(reply)
