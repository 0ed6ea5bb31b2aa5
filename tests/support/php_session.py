"""The scripted FastCGI session and what its clients saw (the FastCGI tests' ground truth).

nginx (``fastcgi_keep_conn on``: several requests per connection to php-fpm)
serves curl's requests for the PHP app of tests/support/servers.py: a 200 with a query,
a 404 (missing script), a PHP warning on stderr, a slow script, a 418, a PHP
fatal error (500), a 100 kB POST, credentials for --redact, three slow requests
at once (on more than one connection).  cgi-fcgi (libfcgi) POSTs to php-fpm
directly, and a raw client asks php-fpm for its FCGI_ variables (GET_VALUES).
"""

from __future__ import annotations

import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .servers import nginx_socket

PASSWORD, COOKIE, TOKEN = "pw-secret-1", "cookie-secret-2", "tok-secret-3"  # --redact hides them
POST_BODY = bytes(range(256)) * 400  # 102400 bytes: several STDIN records
CONCURRENT = 3  # slow.php requests at once: more than one connection to php-fpm
MGMT_NAMES = (b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS")


@dataclass(frozen=True)
class Sent:
    """A request as its client made it, and the answer as the client got it."""

    client: str  # "curl" or "cgi-fcgi"
    method: str
    uri: str  # REQUEST_URI
    script: str  # the --stats key
    status: int
    body_bytes: int
    content_type: str
    stdin_bytes: int = 0


@dataclass
class Session:
    requests: list[Sent]
    get_values: dict[str, str]  # php-fpm's GET_VALUES_RESULT, parsed by the client


def _curl(nginx: str, uri: str, *extra: str, stdin: bytes = b"") -> Sent:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{content_type}",
         "--unix-socket", nginx, *extra, f"http://localhost{uri}"],
        input=stdin, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    code, size, ctype = out.stdout.decode().split(" ", 2)
    method = "POST" if stdin else "GET"
    return Sent("curl", method, uri, uri.split("?")[0], int(code), int(size), ctype, len(stdin))


def _cgi_fcgi(fpm: str, app: Path, body: bytes) -> Sent:
    env = {"REQUEST_METHOD": "POST", "SCRIPT_FILENAME": str(app / "post.php"),
           "SCRIPT_NAME": "/post.php", "REQUEST_URI": "/post.php?via=libfcgi",
           "QUERY_STRING": "via=libfcgi", "CONTENT_LENGTH": str(len(body))}  # fmt: skip
    out = subprocess.run(["cgi-fcgi", "-bind", "-connect", fpm], input=body, env=env,
                         capture_output=True, timeout=30, check=True)  # fmt: skip
    head, _, rest = out.stdout.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
    assert rest == f"{len(body)} ".encode() + rest.split(b" ")[1], out.stdout
    status = int(headers.get("Status", "200").split()[0])
    return Sent("cgi-fcgi", "POST", env["REQUEST_URI"], "/post.php", status, len(rest),
                headers["Content-type"], len(body))  # fmt: skip


def _get_values(fpm: str) -> dict[str, str]:
    """FCGI_GET_VALUES on a connection of its own; the answer parsed here."""
    body = b"".join(bytes([len(name), 0]) + name for name in MGMT_NAMES)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(fpm)
        s.settimeout(10)
        s.sendall(struct.pack(">BBHHBB", 1, 9, 0, len(body), 0, 0) + body)
        got = b""
        while len(got) < 8 or len(got) < 8 + sum(struct.unpack_from(">HB", got, 4)):
            part = s.recv(4096)
            assert part, got
            got += part
    assert got[:4] == b"\x01\x0a\x00\x00", got  # GET_VALUES_RESULT, request id 0
    content, values = got[8 : 8 + struct.unpack_from(">H", got, 4)[0]], {}
    while content:  # the names are short: 1-byte lengths
        n, v = content[0], content[1]
        values[content[2 : 2 + n].decode()] = content[2 + n : 2 + n + v].decode()
        content = content[2 + n + v :]
    return values


def php_session(fpm: str) -> Session:
    nginx = nginx_socket(fpm)
    sent = [
        _curl(nginx, "/hello.php?name=ann"),
        _curl(nginx, "/nope.php"),
        _curl(nginx, "/warn.php"),
        _curl(nginx, "/slow.php"),
        _curl(nginx, "/teapot.php"),
        _curl(nginx, "/fail.php"),
        _curl(nginx, "/post.php?x=1", "--data-binary", "@-", stdin=POST_BODY),
        _curl(
            nginx,
            f"/hello.php?name=bob&token={TOKEN}",
            "-u",
            f"ann:{PASSWORD}",
            "-H",
            f"Cookie: sid={COOKIE}",
        ),  # fmt: skip
    ]
    assert [s.status for s in sent] == [200, 404, 200, 200, 418, 500, 200, 200], sent
    slow = [
        subprocess.Popen(
            [
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download} %{content_type}",
                "--unix-socket",
                nginx,
                f"http://localhost/slow.php?n={i}",
            ],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        for i in range(CONCURRENT)
    ]
    for i, proc in enumerate(slow):
        out, _ = proc.communicate(timeout=30)
        code, size, ctype = out.decode().split(" ", 2)
        sent.append(
            Sent("curl", "GET", f"/slow.php?n={i}", "/slow.php", int(code), int(size), ctype)
        )
    sent.append(_cgi_fcgi(fpm, Path(fpm).parent / "app", b"hello from libfcgi"))
    return Session(sent, _get_values(fpm))
