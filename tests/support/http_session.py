"""The scripted HTTP session against podman's Docker-compatible API (tests/support/servers.py
``start_podman``), with curl's own account of every exchange as ground truth.

Used by tests/test_live_http.py and captures/record_live.py.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass

from .live_helpers import wait_until

API = "http://d/v1.41"
MISSING_ID = "0123456789abcdef0123"  # a container id no podman has: 404
AUTH_TOKEN = "Bearer tok-s3cr3t-1"  # sent in Authorization (masked by --redact)
REGISTRY_AUTH = "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InJlZy1zM2NyM3QifQ"  # X-Registry-Auth
COOKIE = "session=cookie-s3cr3t"
SECRETS = (AUTH_TOKEN.split()[1], REGISTRY_AUTH, COOKIE.split("=")[1])
VOLUME_BODY = '{"Name":"usniff-vol"}'
PINGS = 40  # GET /_ping on one keep-alive connection


@dataclass(frozen=True)
class Sent:
    """One request as curl saw it: ``%{http_code} %{size_download}``."""

    method: str
    target: str
    status: int
    size: int


def curl(sock: str, *args: str, urls: tuple[str, ...]) -> list[Sent]:
    """curl over ``sock``: one connection for all ``urls`` (keep-alive); what curl got."""
    method = "GET"
    if "-X" in args:
        method = args[args.index("-X") + 1]
    cmd = ["curl", "-sS", "--unix-socket", sock, *args]
    for url in urls:
        cmd += [f"{API}{url}", "-o", "/dev/null", "-w", "%{http_code} %{size_download}\\n"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    codes = out.split()
    assert len(codes) == 2 * len(urls), out
    return [
        Sent(method, f"/v1.41{url}", int(codes[2 * i]), int(codes[2 * i + 1]))
        for i, url in enumerate(urls)
    ]


def pipelined(sock: str, targets: tuple[str, ...]) -> bytes:
    """GETs of ``targets`` written in one send() on one connection, the last with
    ``Connection: close``; everything the server sent back."""
    last = len(targets) - 1
    requests = b"".join(
        b"GET /v1.41%s HTTP/1.1\r\nHost: d\r\n%s\r\n"
        % (t.encode(), b"Connection: close\r\n" if i == last else b"")
        for i, t in enumerate(targets)
    )
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.settimeout(10)
        s.sendall(requests)
        got = b""
        while part := s.recv(65536):
            got += part
    return got


def http_session(sock: str) -> tuple[list[Sent], bytes]:
    """The session; returns curl's account of each exchange, in the order they were
    sent, and the body bytes the event stream delivered."""
    sent: list[Sent] = []
    sent += curl(sock, urls=("/version", "/info", "/images/json"))  # one keep-alive connection
    sent += curl(sock, urls=("/_ping",) * PINGS)
    sent += curl(sock, urls=(f"/containers/{MISSING_ID}/json",))
    sent += curl(sock, "-X", "POST", "-H", "Content-Type: application/json", "-d", VOLUME_BODY,
                 urls=("/volumes/create",))  # fmt: skip
    sent += curl(sock, "-X", "GET", "-H", f"Authorization: {AUTH_TOKEN}", "-H",
                 f"X-Registry-Auth: {REGISTRY_AUTH}", "-b", COOKIE, urls=("/_ping",))  # fmt: skip
    # an event stream read while a volume is created and removed
    events = subprocess.Popen(
        ["curl", "-sS", "-N", "--unix-socket", sock, f"{API}/events"], stdout=subprocess.PIPE
    )
    sent.append(Sent("GET", "/v1.41/events", 200, -1))  # its size: the bytes read below
    try:
        time.sleep(0.5)  # the stream is open (its headers are not flushed before an event)
        body = "-d", '{"Name":"usniff-ev"}'
        sent += curl(sock, "-X", "POST", "-H", "Content-Type: application/json",
                     "-H", "Expect: 100-continue", *body, urls=("/volumes/create",))  # fmt: skip
        sent += curl(sock, "-X", "DELETE", urls=("/volumes/usniff-ev",))
        assert events.stdout is not None
        lines = [events.stdout.readline(), events.stdout.readline()]
        wait_until(lambda: all(b'"usniff-ev"' in x for x in lines), 10, "two events")
    finally:
        events.terminate()
        events.wait(10)
    got = pipelined(sock, ("/_ping", "/version"))
    assert got.count(b"HTTP/1.1 200 OK") == 2, got
    sent += [Sent("GET", "/v1.41/_ping", 200, 2), Sent("GET", "/v1.41/version", 200, -1)]
    return sent, b"".join(lines)
