"""Overhead of ``usniff --stats`` on real PostgreSQL, MariaDB, memcached, podman and php-fpm
servers.

    python -m bench servers [--quick] [--rounds N] [--seconds S]

Each server runs on a Unix socket in a temporary directory (tests/servers.py) under a
steady load, alternately untraced and traced by ``usniff --path SOCK --stats`` (live
decoding, the statistics table at the end), ``--rounds`` times; every figure is the
median over the rounds, and the traced rate is given as a ratio to the untraced one.

Loads (one closed-loop client each, pinned to the second CPU like bench/overhead.py;
the servers are not pinned, php-fpm, nginx and postgres being several processes):

* PostgreSQL: ``pgbench -S`` (4 clients) over the socket, after ``pgbench -i -s 1``;
* MariaDB: ``mariadb-slap`` (4 clients) sending ``SELECT 1``, runs of SLAP_QUERIES
  until the round's time is up;
* memcached: a Python client, ``set`` then ``get`` of one key, on one connection;
* podman's Docker API: a Python client, ``GET /v1.41/_ping`` on one kept-alive connection;
* nginx -> php-fpm: the same client, ``GET /hello.php`` from nginx, the trace on
  php-fpm's socket (FastCGI).

Completeness: in each traced round, usniff's --stats count of the load's operation
equals what the client sent (pgbench's "number of transactions actually processed",
the queries mariadb-slap was told to send).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import (
    connect,
    nginx_socket,
    start_mariadb,
    start_memcached,
    start_php_app,
    start_podman,
    start_postgres,
)

from .common import Usniff, median, table
from .overhead import CLIENT_CPU, SLAP

CONFIGS = ("untraced", "usniff --stats")


@dataclass(frozen=True)
class Service:
    name: str
    load: str  # what the client does
    start: Callable[[str], AbstractContextManager[str]]
    prepare: Callable[[str], None]  # once, untraced
    run: Callable[[str, float], int]  # requests completed in about ``seconds``
    stats_key: tuple[str, str]  # (protocol, --stats command) of the load's requests


def _pg_host(sock: str) -> list[str]:
    return ["-h", os.path.dirname(sock), "-U", "postgres"]


def _pgbench_init(sock: str) -> None:
    subprocess.run(["pgbench", *_pg_host(sock), "-i", "-s", "1", "-q", "postgres"],
                   check=True, capture_output=True)  # fmt: skip


def _pgbench(sock: str, seconds: float) -> int:
    out = subprocess.run(
        ["pgbench", *_pg_host(sock), "-S", "-n", "-c", "4", "-j", "1",
         "-T", str(max(1, round(seconds))), "postgres"],
        check=True, capture_output=True, text=True, preexec_fn=_on_client_cpu,
    ).stdout  # fmt: skip
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    if m is None:
        raise RuntimeError(f"unexpected pgbench output: {out!r}")
    return int(m[1])


SLAP_QUERIES = 4000  # per mariadb-slap run: 1000 for each of its 4 clients


def _slap_init(sock: str) -> None:
    subprocess.run(["mariadb", f"--socket={sock}", "--user=root", "-e", "CREATE DATABASE slap"],
                   check=True, capture_output=True)  # fmt: skip


def _slap(sock: str, seconds: float) -> int:
    """mariadb-slap runs of SELECT 1 until ``seconds`` are up; the queries sent."""
    sent, t0 = 0, time.monotonic()
    while not sent or time.monotonic() - t0 < seconds:
        subprocess.run(
            [SLAP, f"--socket={sock}", "--user=root", "--concurrency=4", "--iterations=1",
             "--query=SELECT 1", f"--number-of-queries={SLAP_QUERIES}", "--create-schema=slap",
             "--no-drop"],
            check=True, capture_output=True, preexec_fn=_on_client_cpu,
        )  # fmt: skip
        sent += SLAP_QUERIES
    return sent


def _on_client_cpu() -> None:
    os.sched_setaffinity(0, CLIENT_CPU)


@contextlib.contextmanager
def _client_cpu() -> Iterator[None]:
    """This process on the client's CPU for the block (the Python clients)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, CLIENT_CPU)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _memcached(sock: str, seconds: float) -> int:
    """set + get of one key on one connection; requests completed (2 per pair)."""
    n = 0
    with _client_cpu(), connect(sock, timeout=10) as s:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s.sendall(b"set bench 0 0 5\r\nvalue\r\n")
            _read_until(s, b"STORED\r\n")
            s.sendall(b"get bench\r\n")
            _read_until(s, b"END\r\n")
            n += 2
    return n


def _read_until(s: Any, end: bytes) -> None:
    got = b""
    while not got.endswith(end):
        part = s.recv(65536)
        if not part:
            raise ConnectionError(f"server closed before {end!r}")
        got += part


class _UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (keep-alive, chunked bodies)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = connect(self._path, timeout=10)


def _http_gets(target: str) -> Callable[[str, float], int]:
    def run(sock: str, seconds: float) -> int:
        n = 0
        conn = _UnixHTTPConnection(sock)
        with _client_cpu():
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.request("GET", target)
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"GET {target}: {reply.status}")
                n += 1
        conn.close()
        return n

    return run


def _nothing(sock: str) -> None:
    pass


SERVICES = (
    Service("postgres", "pgbench -S -c 4", start_postgres, _pgbench_init, _pgbench,
            ("postgres", "SELECT abalance FROM pgbench_accounts WHERE aid = ?;")),
    Service("mariadb", "mariadb-slap -c 4, SELECT 1", start_mariadb, _slap_init, _slap,
            ("mysql", "SELECT ?")),
    Service("memcached", "set+get, 1 connection", start_memcached, _nothing, _memcached,
            ("memcached", "get")),
    Service("podman", "GET /_ping, keep-alive", start_podman, _nothing,
            _http_gets("/v1.41/_ping"), ("http", "GET /v1.41/_ping")),
    Service("php-fpm", "GET /hello.php via nginx", start_php_app, _nothing,
            _http_gets("/hello.php"), ("fastcgi", "/hello.php")),
)  # fmt: skip


def _counts(text: str, protocol: str) -> dict[str, int]:
    """--stats table rows: command -> count."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 4 and cells[1] == protocol and cells[3].isdigit():
            rows[cells[2]] = int(cells[3])
    return rows


def _round(service: Service, config: str, sock: str, work: Path, seconds: float) -> dict[str, Any]:
    client = nginx_socket(sock) if service.name == "php-fpm" else sock
    if config == "untraced":
        t0 = time.monotonic()
        n = service.run(client, seconds)
        return {"rate": n / (time.monotonic() - t0), "sent": n}
    stats = work / "stats.txt"
    with Usniff(["--path", sock, "--stats"], work, stdout=str(stats)) as u:
        t0 = time.monotonic()
        n = service.run(client, seconds)
        rate = n / (time.monotonic() - t0)
    protocol, key = service.stats_key
    counted = _counts(stats.read_text() + u.result.stderr, protocol).get(key, 0)
    sent = n // 2 if service.name == "memcached" else n  # the gets of set+get pairs
    return {"rate": rate, "sent": sent, "counted": counted, "lost": u.result.lost_bytes}


def run(rounds: int, seconds: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    os.environ["COLUMNS"] = "300"  # usniff's --stats table: statement keys not cut
    results = []
    for service in SERVICES:
        with (
            tempfile.TemporaryDirectory(prefix="usb-", dir="/tmp") as tmp,
            service.start(tmp) as sock,
        ):
            service.prepare(sock)
            service.run(nginx_socket(sock) if service.name == "php-fpm" else sock, 0.5)  # warm
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
            for r in range(rounds):
                for config in CONFIGS:
                    res = _round(service, config, sock, Path(tmp), seconds)
                    runs[config].append(res)
                    log(f"servers {service.name} round {r + 1} {config}: {res}")
        results.append({"service": service.name, "load": service.load, "runs": runs})
    return results


def _rates(res: dict[str, Any]) -> tuple[float, float]:
    """Median untraced and traced request rates."""
    return tuple(median([r["rate"] for r in res["runs"][c]]) for c in CONFIGS)  # type: ignore[return-value]


def key(results: list[dict[str, Any]]) -> list[str]:
    return [f"{res['service']} --stats {_rates(res)[1] / _rates(res)[0]:.2f}" for res in results]


def report(results: list[dict[str, Any]]) -> str:
    rows = []
    for res in results:
        untraced, traced = _rates(res)
        traced_runs = res["runs"]["usniff --stats"]
        complete = all(r["counted"] == r["sent"] for r in traced_runs)
        counts = ", ".join(f"{r['counted']}/{r['sent']}" for r in traced_runs)
        rows.append([res["service"], res["load"], untraced, traced, traced / untraced,
                     f"{'yes' if complete else 'NO'} ({counts})"])  # fmt: skip
    headers = ["server", "load", "untraced req/s", "--stats req/s", "ratio",
               "--stats count = sent (per round)"]  # fmt: skip
    return table(headers, rows)
