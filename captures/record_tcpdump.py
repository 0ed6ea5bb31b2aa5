"""Record captures/tcp_{postgres,http,memcached,fastcgi}.pcap with tcpdump (needs root).

    sudo .venv/bin/python -m captures.record_tcpdump [postgres|http|memcached|fastcgi ...]

The same scripted sessions as captures/record_live.py, against the same real servers
listening on TCP on loopback instead of a Unix socket, captured by tcpdump (not by
usniff): what an SRE has when the service runs over TCP.  The captures differ in what
the reader must handle: PostgreSQL over IPv6 on ``lo`` (Ethernet link type), memcached
over IPv4 on ``lo``, podman's API on ``any`` (Linux cooked v2), php-fpm behind nginx on
``any`` with Linux cooked v1.  tests/test_tcpdump_captures.py decodes them with
``usniff read`` and compares with what the clients sent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from captures.record_live import problems
from tests.support.http_session import http_session
from tests.support.live_helpers import memcached_session
from tests.support.pg_session import postgres_session
from tests.support.php_session import php_session
from tests.support.servers import (
    free_port,
    start_memcached,
    start_php_app,
    start_podman,
    start_postgres,
)

HERE = Path(__file__).resolve().parent

MAX_SIZE = 300_000

Start = Callable[[str, int], AbstractContextManager[str]]


def _postgres(tmp: str, port: int) -> AbstractContextManager[str]:
    return start_postgres(tmp, "::1", port)


# name -> (server, session, interface, link type, --protocol for the check)
CAPTURES: dict[str, tuple[Start, Callable[[str], object], str, str, str]] = {
    "postgres": (_postgres, lambda a: postgres_session(a, with_pgbench=False), "lo", "EN10MB",
                 "postgres"),
    "memcached": (start_memcached, memcached_session, "lo", "EN10MB", "memcached"),
    "http": (start_podman, http_session, "any", "LINUX_SLL2", "http"),
    "fastcgi": (start_php_app, php_session, "any", "LINUX_SLL", "fastcgi"),
}  # fmt: skip


class Tcpdump:
    """tcpdump -w FILE of one TCP port, running between __enter__ and stop()."""

    def __init__(self, out: Path, interface: str, linktype: str, port: int) -> None:
        self.args = ["tcpdump", "-Z", "root", "-i", interface, "-y", linktype, "-s", "0",
                     "-B", "65536", "-U", "--immediate-mode", "-n", "-w", str(out),
                     f"tcp port {port}"]  # fmt: skip

    def __enter__(self) -> Tcpdump:
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "listening on" in line:
                return self
        raise SystemExit(f"tcpdump did not start: {self.proc.wait()}")

    def stop(self) -> str:
        """Stop it; its account of the capture (``N packets captured ... dropped``)."""
        time.sleep(0.5)  # the last ACKs and FINs
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def record(name: str) -> None:
    start, session, interface, linktype, protocol = CAPTURES[name]
    out = HERE / f"tcp_{name}.pcap"
    port = free_port("::1" if start is _postgres else "127.0.0.1")
    with (
        tempfile.TemporaryDirectory(prefix="usniff-tcp-", dir="/tmp") as tmp,
        start(tmp, port) as address,
        Tcpdump(out, interface, linktype, port) as tcpdump,
    ):
        session(address)
        account = tcpdump.stop()
    if not re.search(r"^0 packets dropped by kernel$", account, re.M):
        raise SystemExit(f"tcpdump lost packets: {account}")
    if bad := problems(out, protocol):
        out.unlink()
        raise SystemExit(f"{out}: not kept, usniff read reports {bad}")
    os.chmod(out, 0o644)
    size = out.stat().st_size
    if size >= MAX_SIZE:
        raise SystemExit(f"{out}: {size} bytes, keep it under {MAX_SIZE}")
    print(f"{out}: {size} bytes; {' '.join(account.split())}")


def main(names: list[str]) -> None:
    for name in names or list(CAPTURES):
        record(name)


if __name__ == "__main__":
    main(sys.argv[1:])
