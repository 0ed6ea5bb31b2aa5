"""Every protocol usniff knows, declared once.

The CLI's ``--protocol`` choices, auto-detection, the Wireshark port of the
pcapng flows, the offline reader's well-known ports and the extcap's choices
all come from :data:`PROTOCOLS`.  A protocol is one module under
``usniff/decoders/`` (its sans-IO decoder and its detectors) plus one entry
here; a protocol without a decoder is still detected (and its connections are
shown as raw records, and dissected by Wireshark).

Detection (:func:`detect`) asks, in the order of :data:`PROTOCOLS`: the
client's first bytes alone, then the server's alone (protocols whose server
speaks first), then, once both sides have sent, the exchange.  A protocol is
named only on evidence another protocol would not give (docs/decoders.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import dbus, fastcgi, http2
from . import detect as d
from . import http as h
from . import memcached as mc
from . import postgres as pg
from .base import Decoder
from .http import HttpDecoder
from .mysql import MysqlDecoder
from .postgres import PostgresDecoder
from .resp import RespDecoder

Detector = Callable[[bytes], bool]
Exchange = Callable[[bytes, bytes], bool | None]  # None: not sure yet, wait for more bytes


@dataclass(frozen=True)
class Protocol:
    name: str  # --protocol choice, and "protocol" in the decoded output
    port: int  # the server port of its pcapng flows, where Wireshark's dissector listens
    wireshark: str  # Wireshark's name for it (display filter)
    decoder: Callable[..., Decoder] | None = None  # called with redact=
    client_first: Detector | None = None  # the client's first bytes identify it alone
    server_first: Detector | None = None  # the server's first bytes identify it alone
    exchange: Exchange | None = None  # a request and its reply identify it together
    # stock Wireshark dissects it on ``port`` unasked; False: only with -d tcp.port==PORT,NAME
    wireshark_port: bool = True


PROTOCOLS: tuple[Protocol, ...] = (
    Protocol("tls", 443, "tls", client_first=d.tls_hello, server_first=d.tls_server),
    Protocol("http", 80, "http", HttpDecoder, client_first=h.request_line),
    Protocol(
        "http2",
        80,  # Wireshark's http dissector hands a connection starting with the preface to http2
        "http2",
        http2.Http2Decoder,
        client_first=http2.h2_preface,
        server_first=http2.server_settings,
    ),
    Protocol("resp", 6379, "resp", RespDecoder, client_first=d.resp_array, exchange=d.resp_inline),
    Protocol(
        "mysql",
        3306,
        "mysql",
        MysqlDecoder,
        client_first=d.mysql_login,
        server_first=d.mysql_greeting,
        exchange=d.mysql_command,
    ),  # fmt: skip
    Protocol(
        "postgres",
        5432,
        "pgsql",
        PostgresDecoder,
        client_first=d.pg_startup,
        server_first=d.pg_authentication,
        exchange=pg.query_exchange,
    ),
    Protocol(
        "memcached",
        11211,
        "memcache",
        mc.MemcachedDecoder,
        client_first=mc.client_first,
        exchange=mc.exchange,
    ),
    Protocol("memcached-binary", 11211, "memcache", client_first=mc.binary_request),
    Protocol(
        "fastcgi",
        9000,  # php-fpm's customary port; Wireshark's fcgi dissector has none
        "fcgi",
        fastcgi.FastcgiDecoder,
        client_first=fastcgi.begin_request,
        exchange=fastcgi.record_exchange,
        wireshark_port=False,
    ),
    Protocol(
        "dbus",
        7451,  # no dissector listens here: -d ...,dbus misreads the SASL bytes (docs/decoders.md)
        "dbus",
        dbus.DbusDecoder,
        client_first=dbus.auth,
        exchange=dbus.messages,
    ),
)
BY_NAME = {p.name: p for p in PROTOCOLS}
DECODABLE = tuple(p.name for p in PROTOCOLS if p.decoder is not None)
CHOICES = ("auto", *DECODABLE)  # what decoding can be asked for (auto: detect the protocol)


# (port, Wireshark dissector) where stock Wireshark needs to be told (usniff's Lua plugin
# does it; so do tshark's -d options, DECODE_AS)
WIRESHARK_PORTS = tuple((p.port, p.wireshark) for p in PROTOCOLS if not p.wireshark_port)
DECODE_AS = {f"tcp.port=={port}": name for port, name in WIRESHARK_PORTS}


def detect(client: bytes, server: bytes) -> str | None:
    """The protocol of a connection whose sides began with ``client`` and
    ``server`` (up to ``detect.ENOUGH`` bytes each): a name from PROTOCOLS,
    ``"unknown"`` (both sides seen, nothing matched), or None (wait for more)."""
    for p in PROTOCOLS:
        if client and p.client_first is not None and p.client_first(client):
            return p.name
    for p in PROTOCOLS:
        if server and p.server_first is not None and p.server_first(server):
            return p.name
    if not client or not server:
        return None  # one side alone proves nothing more: wait for the other
    undecided = False
    for p in PROTOCOLS:
        if p.exchange is not None:
            verdict = p.exchange(client, server)
            if verdict:
                return p.name
            undecided |= verdict is None
    return None if undecided else "unknown"
