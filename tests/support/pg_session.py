"""A scripted PostgreSQL session against a real server (tests/support/servers.py start_postgres):
psql (simple queries, an error, LISTEN/NOTIFY, SCRAM and cleartext logins), pgbench
(-i: COPY FROM STDIN; -S: PGBENCH_SELECTS simple-protocol SELECTs), psycopg 3
(prepared statements, a binary parameter, pipeline mode with an error, COPY TO
STDOUT, a cancelled query) and a raw client (SSLRequest answered N, Terminate).
Used by the live tests and by captures/record_live.py."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import threading
import time

import psycopg

from .servers import PG_PASSWORD, PG_PLAIN_USER, PG_USER

PGBENCH_SELECTS = 50
PREPARED_RUNS = 10  # psycopg executes of one prepared statement
PIPELINE_INSERTS = 5
PSQL_SQL = [
    "CREATE TABLE t (id int, v text)",
    "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, NULL)",
    "SELECT * FROM t ORDER BY id",
    "SELECT * FROM no_such_table",
    "LISTEN chan",
    "NOTIFY chan, 'hello there'",
]


def psql(sock: str, *sql: str, user: str = "postgres", password: str = "") -> None:
    args = ["psql", "-h", os.path.dirname(sock), "-U", user, "-X", "-q", "-d", "postgres"]
    for s in sql:
        args += ["-c", s]
    env = dict(os.environ, PGPASSWORD=password) if password else None
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack(">i", len(body) + 4) + body


def raw_ssl_session(sock: str) -> bytes:
    """SSLRequest (answered N), StartupMessage, one Query, Terminate; returns the answer byte."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(struct.pack(">ii", 8, 80877103))
        answer = s.recv(1)
        params = b"user\0postgres\0database\0postgres\0application_name\0raw\0\0"
        s.sendall(struct.pack(">ii", len(params) + 8, 196608) + params)
        _read_until_ready(s)
        s.sendall(_msg(b"Q", b"SELECT 42\0"))
        _read_until_ready(s)
        s.sendall(_msg(b"X", b""))
    return answer


def _read_until_ready(s: socket.socket) -> None:
    data = b""
    while b"Z\0\0\0\x05" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("server closed")
        data += chunk


def psycopg_session(sock: str) -> None:
    dsn = f"host={os.path.dirname(sock)} dbname=postgres user=postgres application_name=usniff-test"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(PREPARED_RUNS):
            conn.execute("SELECT id, v FROM t WHERE id = %s", (i,), prepare=True).fetchall()
        conn.execute("SELECT length(%b)", (b"\x00\x01\x02",)).fetchall()
        with conn.pipeline():
            for i in range(PIPELINE_INSERTS):
                conn.execute("INSERT INTO t VALUES (%s, %s)", (10 + i, "p"))
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO t VALUES (%s, %s)", (20, "q"))
                conn.execute("SELECT 1/0")
                conn.execute("INSERT INTO t VALUES (%s, %s)", (21, "never"))
        except psycopg.Error:
            pass
        with conn.cursor() as cur, cur.copy("COPY t TO STDOUT") as copy:
            for _ in copy:
                pass
        timer = threading.Timer(0.3, conn.cancel)
        timer.start()
        with contextlib.suppress(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
        timer.join()


def pgbench(sock: str) -> None:
    """pgbench -i (a COPY of 100000 rows), then -S: PGBENCH_SELECTS simple-protocol SELECTs."""
    host = ["-h", os.path.dirname(sock), "-U", "postgres"]
    subprocess.run(["pgbench", *host, "-i", "-s", "1", "-q", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["pgbench", *host, "-S", "-t", str(PGBENCH_SELECTS), "-n", "postgres"],
                   check=True, capture_output=True)  # fmt: skip


def postgres_session(sock: str, with_pgbench: bool = True) -> None:
    """The whole session on the server socket ``sock``; ``with_pgbench``: run
    pgbench too (its COPY makes a capture of 1.6 MB)."""
    psql(sock, *PSQL_SQL)
    psql(sock, "SELECT current_user", user=PG_USER, password=PG_PASSWORD)
    psql(sock, "SELECT current_user", user=PG_PLAIN_USER, password=PG_PASSWORD)
    raw_ssl_session(sock)
    if with_pgbench:
        pgbench(sock)
    psycopg_session(sock)
    time.sleep(0.2)
