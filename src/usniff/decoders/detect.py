"""Protocol auto-detection from the first bytes of either side of a connection.

``detect(client, server)`` returns ``"resp"``, ``"mysql"``, ``"postgres"``,
``"http"``, ``"tls"``, ``"unknown"`` (enough bytes seen, nothing matched) or
``None`` (undecided: wait for more bytes).  Only resp and mysql have decoders;
the other names label connections.  Client bytes are tried first: they are
the stronger signal when a capture starts mid-connection.
"""

from __future__ import annotations

import re

from .mysql import COMMANDS

ENOUGH = 64  # bytes seen on both sides after which an undecided connection is "unknown"

_RESP_CLIENT = re.compile(rb"\*[1-9]\d{0,6}\r\n\$\d{1,10}\r\n|[A-Za-z]{2,20}( [^\r\n]*)?\r?\n")
_RESP_SERVER = re.compile(rb"[+\-:][^\r\n]*\r\n|[$*%~>|=!(,](-1|\?|\d{1,10})\r\n|_\r\n|#[tf]\r\n")
_HTTP_CLIENT = re.compile(
    rb"(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|CONNECT|TRACE) \S+ HTTP/\d|PRI \* HTTP/2\.0"
)
_PG_STARTUP = (196608, 80877103, 80877104, 80877102)  # protocol 3.0, SSL, GSSENC, cancel


def _mysql_packet(data: bytes, seq: int) -> int | None:
    """Payload's first byte when ``data`` starts with a plausible packet of sequence ``seq``."""
    if len(data) < 5 or data[3] != seq:
        return None
    n = int.from_bytes(data[:3], "little")
    if n == 0 or (n + 4 > len(data) and len(data) < ENOUGH):
        return None
    return data[4]


CLIENT_PROTOCOL_41 = 0x200


def _mysql_login(data: bytes) -> bool:
    """A MySQL/MariaDB HandshakeResponse41 (the client's first packet, sequence
    1): capabilities with CLIENT_PROTOCOL_41, max packet size, charset, then a
    zero filler (23 bytes; MariaDB puts its extended capabilities in the last
    4).  Seen first when a capture stamps the server's greeting late."""
    if _mysql_packet(data, 1) is None or len(data) < 36:
        return False
    caps = int.from_bytes(data[4:8], "little")
    return bool(caps & CLIENT_PROTOCOL_41) and data[13:32] == bytes(19)


def _client(data: bytes) -> str | None:
    if data[:2] in (b"\x16\x03", b"\x16\x02"):
        return "tls"
    if _HTTP_CLIENT.match(data):
        return "http"
    if _RESP_CLIENT.match(data):
        return "resp"
    first = _mysql_packet(data, 0)
    if (first is not None and first in COMMANDS) or _mysql_login(data):
        return "mysql"
    if len(data) >= 8:
        length, code = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
        if code in _PG_STARTUP and 8 <= length <= 10000:
            return "postgres"
    return None


def _server(data: bytes) -> str | None:
    if data[:2] in (b"\x16\x03", b"\x15\x03"):
        return "tls"
    if _mysql_packet(data, 0) == 0x0A and b"\0" in data[5:70]:
        return "mysql"
    if data.startswith(b"HTTP/1."):
        return "http"
    if _RESP_SERVER.match(data):
        return "resp"
    if data[:1] == b"R" and len(data) >= 9 and int.from_bytes(data[1:5], "big") in range(8, 1024):
        return "postgres"
    return None


def detect(client: bytes, server: bytes) -> str | None:
    for data, guess in ((client, _client), (server, _server)):
        if data:
            found = guess(data)
            if found:
                return found
    if len(client) >= ENOUGH and len(server) >= ENOUGH:
        return "unknown"
    return None
