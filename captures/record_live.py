"""Record captures/{redis,mysql,postgres,http,memcached,fastcgi,grpc,dbus}.pcapng with usniff
itself (needs root).

    sudo .venv/bin/python -m captures.record_live [redis|mysql|postgres|http|memcached|fastcgi
                                                   |grpc|dbus ...]

Starts a real redis-server, mariadbd and memcached in a temporary directory, starts
``usniff --path SOCKET -w FILE`` (waiting for its ``capturing with the`` line),
runs the scripted sessions of tests/support/live_helpers.py (redis-cli, redis-cli
--pipe, SUBSCRIBE/PUBLISH, BLPOP, AUTH, redis-benchmark; the mariadb client and
pymysql with multi-statements and COM_STMT_*; psql, psycopg and a raw client of
tests/support/pg_session.py; curl against podman's Docker API, tests/support/http_session.py;
memcached_session's text and meta commands; nginx, cgi-fcgi and a GET_VALUES to php-fpm,
tests/support/php_session.py; a grpcio client and server, tests/support/grpc_session.py;
busctl, dbus-send and dbus-fast clients of a dbus-fast service on a private dbus-daemon,
tests/support/dbus_session.py), then stops usniff with SIGTERM.
tests/test_captures_offline.py, tests/test_http.py, tests/test_fastcgi.py,
tests/test_http2.py and tests/test_dbus.py decode the files with ``usniff read`` (no root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support.dbus_session import served_session, start_dbus
from tests.support.grpc_session import run_client, start_grpc_server
from tests.support.http_session import http_session
from tests.support.live_helpers import (
    create_redis_user,
    memcached_session,
    mysql_session,
    redis_session,
)
from tests.support.pg_session import postgres_session
from tests.support.php_session import php_session
from tests.support.servers import (
    start_mariadb,
    start_memcached,
    start_php_app,
    start_podman,
    start_postgres,
    start_redis,
)
from tests.support.usniff import USNIFF, Usniff

HERE = Path(__file__).resolve().parent

MAX_SIZE = 300_000
BENCHMARK_REQUESTS = 64  # redis-benchmark -n: that many SETs and GETs (a multiple of -c*-P)


def problems(path: Path, protocol: str) -> list[str]:
    """What `usniff read` could not decode (the file is not kept then)."""
    out = subprocess.run([USNIFF, "read", str(path), "--protocol", protocol, "--format", "json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    found = []
    for line in out.stdout.splitlines():
        ev = json.loads(line)
        if ev["type"] == "notice" and ev["kind"] in ("undecodable", "unpaired"):
            found.append(ev["summary"])
        elif (
            ev["type"] == "transaction"
            and ev["ts_reply"] is None
            and ev["command"] not in ("COM_QUIT", "TERMINATE", "CANCEL")
            and not ev["details"].get("reply_suppressed")  # memcached noreply, quit
            and not ev["details"].get("quiet")  # memcached meta q: its reply code suppressed
            and not ev["request"].startswith("CLOSE ")
        ):
            found.append(f"no reply: {ev['request']}")
    return found


def record(
    out: Path, start: Callable[..., object], session: Callable[[str], object], protocol: str
) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="usniff-rec-", dir="/tmp") as tmp,
        start(tmp) as sock,  # type: ignore[attr-defined]
    ):
        if start is start_redis:
            create_redis_user(sock)
        with Usniff("--path", sock, "-w", str(out)) as usniff:
            session(sock)
            result = usniff.stop()
    if result.returncode != 0 or " 0 bytes lost" not in result.stderr:
        raise SystemExit(f"usniff failed: {result.stderr}")
    if bad := problems(out, protocol):
        out.unlink()
        raise SystemExit(f"{out}: not kept, usniff read reports {bad}")
    os.chmod(out, 0o644)  # usniff writes 0600; these files are meant to be shared
    size = out.stat().st_size
    if size >= MAX_SIZE:
        raise SystemExit(f"{out}: {size} bytes, keep it under {MAX_SIZE}")
    print(f"{out}: {size} bytes; {result.stderr.strip().splitlines()[-1]}")


def main(names: list[str]) -> None:
    """Record the captures of ``names`` (redis, mysql, postgres, http, memcached, fastcgi,
    grpc, dbus; all when empty)."""
    if not names or "redis" in names:
        record(HERE / "redis.pcapng", start_redis,
               lambda sock: redis_session(sock, benchmark_requests=BENCHMARK_REQUESTS),
               "resp")  # fmt: skip
    if not names or "mysql" in names:
        record(HERE / "mysql.pcapng", start_mariadb, mysql_session, "mysql")
    if not names or "postgres" in names:
        record(HERE / "postgres.pcapng", start_postgres,
               lambda sock: postgres_session(sock, with_pgbench=False), "postgres")  # fmt: skip
    if not names or "http" in names:
        record(HERE / "http.pcapng", start_podman, http_session, "http")
    if not names or "memcached" in names:
        record(HERE / "memcached.pcapng", start_memcached, memcached_session, "memcached")
    if not names or "fastcgi" in names:
        record(HERE / "fastcgi.pcapng", start_php_app, php_session, "fastcgi")
    if not names or "grpc" in names:
        record(HERE / "grpc.pcapng", start_grpc_server, run_client, "http2")
    if not names or "dbus" in names:
        record(HERE / "dbus.pcapng", start_dbus, served_session, "dbus")


if __name__ == "__main__":
    main(sys.argv[1:])
