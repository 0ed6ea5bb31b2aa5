"""Real Redis and MariaDB servers on Unix sockets in a temporary directory.

Reusable by every test tier (offline recorder, live capture tests)::

    with start_redis(tmp) as sock: ...
    with start_mariadb(tmp) as sock: ...   # root@localhost, no password

``redis_net_bytes`` / ``mariadb_bytes`` read the servers' own byte counters
(INFO stats total_net_input_bytes/total_net_output_bytes, SHOW GLOBAL STATUS
Bytes_received/Bytes_sent) so captures can be checked against the server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            return
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not accept connections within {timeout}s")


@contextlib.contextmanager
def _running(args: list[str], sock: Path, timeout: float, log: Path) -> Iterator[str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_socket(sock, proc, timeout)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def start_redis(tmpdir: str | os.PathLike[str], *extra: str) -> Iterator[str]:
    """Run redis-server on ``tmpdir/redis.sock``; yield the socket path."""
    d = Path(tmpdir)
    sock = d / "redis.sock"
    args = [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "777"]
    args += ["--save", "", "--appendonly", "no", "--dir", str(d), *extra]
    with _running(args, sock, 10, d / "redis.log") as path:
        yield path


@contextlib.contextmanager
def start_mariadb(tmpdir: str | os.PathLike[str], *extra: str) -> Iterator[str]:
    """Initialise a datadir and run mariadbd on ``tmpdir/mysqld.sock``; yield the socket path."""
    d = Path(tmpdir)
    datadir, sock = d / "mysql-data", d / "mysqld.sock"
    if not datadir.exists():
        subprocess.run(
            [MARIADB_INSTALL_DB, "--no-defaults", f"--datadir={datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    args = [MARIADBD, "--no-defaults", "--skip-networking", f"--socket={sock}",
            f"--datadir={datadir}", "--user=root", f"--pid-file={d / 'mysqld.pid'}",
            "--innodb-buffer-pool-size=16M", "--skip-log-bin", *extra]  # fmt: skip
    with _running(args, sock, 60, d / "mysqld.log") as path:
        yield path


MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"


@contextlib.contextmanager
def start_memcached(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """Run memcached on ``tmpdir/memcached.sock`` (text protocol); yield the socket path."""
    d = Path(tmpdir)
    sock = d / "memcached.sock"
    args = [MEMCACHED, "-s", str(sock), "-a", "0777", "-u", "root", "-m", "16"]
    with _running(args, sock, 10, d / "memcached.log") as path:
        yield path


def redis_net_bytes(sock: str) -> tuple[int, int]:
    """(total_net_input_bytes, total_net_output_bytes) as the server counts them."""
    client = redis.Redis(unix_socket_path=sock)
    try:
        stats = client.info("stats")
        return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])
    finally:
        client.close()


def mariadb_bytes(sock: str, user: str = "root", password: str = "") -> tuple[int, int]:
    """(Bytes_received, Bytes_sent) from SHOW GLOBAL STATUS."""
    conn = pymysql.connect(unix_socket=sock, user=user, password=password)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN ('Bytes_received','Bytes_sent')")
            values = dict(cur.fetchall())
        return int(values["Bytes_received"]), int(values["Bytes_sent"])
    finally:
        conn.close()


PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))
PG_USER = "app"  # a user with a password, authenticated by SCRAM-SHA-256
PG_PASSWORD = "pg-secret-123"
PG_PLAIN_USER = "plain"  # a user authenticated by a cleartext password
PG_HBA = f"""\
local all {PG_USER} scram-sha-256
local all {PG_PLAIN_USER} password
local all all trust
"""


@contextlib.contextmanager
def start_postgres(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    """initdb and run postgres (as the ``postgres`` user, which owns the data) with
    its socket in ``tmpdir/pg`` and pg_stat_statements loaded; the users PG_USER and
    PG_PLAIN_USER have the password PG_PASSWORD.  Yields the socket's path
    (``SOCKDIR/.s.PGSQL.5432``; clients are given SOCKDIR, ``psql -h SOCKDIR``)."""
    d = Path(tmpdir) / "pg"
    data = d / "data"
    d.mkdir(exist_ok=True)
    for p in (Path(tmpdir), d):
        p.chmod(0o777)  # the postgres user must reach the directory
    shutil.chown(d, "postgres")
    if not data.exists():
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_postgres, *initdb], check=True, capture_output=True)
        (data / "pg_hba.conf").write_text(PG_HBA)
    args = ["runuser", "-u", "postgres", "--", str(PG_BIN / "postgres"), "-D", str(data),
            "-k", str(d), "-c", "listen_addresses=", "-c", "fsync=off",
            "-c", "shared_preload_libraries=pg_stat_statements"]  # fmt: skip
    with _running(args, d / ".s.PGSQL.5432", 60, d / "postgres.log") as sock:
        setup = (
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;"
            f"CREATE ROLE {PG_USER} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}';"
            f"CREATE ROLE {PG_PLAIN_USER} LOGIN PASSWORD '{PG_PASSWORD}';"
        )
        subprocess.run(["psql", "-h", str(d), "-U", "postgres", "-q", "-c", setup, "postgres"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        yield sock
