"""Protocol auto-detection from the first bytes of either side of a connection.

The detectors of the protocols in ``decoders/registry.py``, whose
``detect(client, server)`` asks them in turn; connections of a protocol
without a decoder are shown as raw records.

A protocol is named only on evidence a different protocol would not give:
a wrong guess shows an echo server's lines as Redis commands, so weak signals
need the other side's confirmation.

* RESP: a request array (``*N\\r\\n$M\\r\\n``); or an inline command whose first
  word is a Redis command name *and* a RESP-shaped reply (memcached's
  ``set k 0 0 3`` is answered ``STORED``, an echo server repeats the line).
  Replies alone never decide: a capture that sees only the server's side is
  shown raw.
* MySQL: a server greeting (protocol 10, version, connection id, filler);
  the client's HandshakeResponse41; or, mid-connection, a command packet
  answered by a packet of sequence 1 (OK, ERR, EOF or a column count).
* PostgreSQL: a StartupMessage (or SSL, GSSENC, cancel request); the server's
  AuthenticationRequest; or, mid-connection, a Query, Parse, Bind or FunctionCall
  answered by backend messages (``postgres.query_exchange``).
"""

from __future__ import annotations

import re

from .mysql import COMMANDS

ENOUGH = 64  # bytes kept of each side for detection

# The top-level command names of Redis 7.0 (`COMMAND LIST`): an inline command
# must start with one of them to count as evidence of RESP.
_REDIS_COMMANDS = frozenset(
    b"""
    ACL APPEND ASKING AUTH BGREWRITEAOF BGSAVE BITCOUNT BITFIELD BITFIELD_RO BITOP BITPOS BLMOVE
    BLMPOP BLPOP BRPOP BRPOPLPUSH BZMPOP BZPOPMAX BZPOPMIN CLIENT CLUSTER COMMAND CONFIG COPY
    DBSIZE DEBUG DECR DECRBY DEL DISCARD DUMP ECHO EVAL EVALSHA EVALSHA_RO EVAL_RO EXEC EXISTS
    EXPIRE EXPIREAT EXPIRETIME FAILOVER FCALL FCALL_RO FLUSHALL FLUSHDB FUNCTION GEOADD GEODIST
    GEOHASH GEOPOS GEORADIUS GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO GEORADIUS_RO GEOSEARCH
    GEOSEARCHSTORE GET GETBIT GETDEL GETEX GETRANGE GETSET HDEL HELLO HEXISTS HGET HGETALL
    HINCRBY HINCRBYFLOAT HKEYS HLEN HMGET HMSET HRANDFIELD HSCAN HSET HSETNX HSTRLEN HVALS INCR
    INCRBY INCRBYFLOAT INFO KEYS LASTSAVE LATENCY LCS LINDEX LINSERT LLEN LMOVE LMPOP LOLWUT
    LPOP LPOS LPUSH LPUSHX LRANGE LREM LSET LTRIM MEMORY MGET MIGRATE MODULE MONITOR MOVE MSET
    MSETNX MULTI OBJECT PERSIST PEXPIRE PEXPIREAT PEXPIRETIME PFADD PFCOUNT PFDEBUG PFMERGE
    PFSELFTEST PING PSETEX PSUBSCRIBE PSYNC PTTL PUBLISH PUBSUB PUNSUBSCRIBE QUIT RANDOMKEY
    READONLY READWRITE RENAME RENAMENX REPLCONF REPLICAOF RESET RESTORE RESTORE-ASKING ROLE RPOP
    RPOPLPUSH RPUSH RPUSHX SADD SAVE SCAN SCARD SCRIPT SDIFF SDIFFSTORE SELECT SET SETBIT SETEX
    SETNX SETRANGE SHUTDOWN SINTER SINTERCARD SINTERSTORE SISMEMBER SLAVEOF SLOWLOG SMEMBERS
    SMISMEMBER SMOVE SORT SORT_RO SPOP SPUBLISH SRANDMEMBER SREM SSCAN SSUBSCRIBE STRLEN
    SUBSCRIBE SUBSTR SUNION SUNIONSTORE SUNSUBSCRIBE SWAPDB SYNC TIME TOUCH TTL TYPE UNLINK
    UNSUBSCRIBE UNWATCH WAIT WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL XGROUP XINFO XLEN XPENDING
    XRANGE XREAD XREADGROUP XREVRANGE XSETID XTRIM ZADD ZCARD ZCOUNT ZDIFF ZDIFFSTORE ZINCRBY
    ZINTER ZINTERCARD ZINTERSTORE ZLEXCOUNT ZMPOP ZMSCORE ZPOPMAX ZPOPMIN ZRANDMEMBER ZRANGE
    ZRANGEBYLEX ZRANGEBYSCORE ZRANGESTORE ZRANK ZREM ZREMRANGEBYLEX ZREMRANGEBYRANK
    ZREMRANGEBYSCORE ZREVRANGE ZREVRANGEBYLEX ZREVRANGEBYSCORE ZREVRANK ZSCAN ZSCORE ZUNION
    ZUNIONSTORE
    """.split()
)
_RESP_ARRAY = re.compile(rb"\*[1-9]\d{0,6}\r\n\$\d{1,10}\r\n")
_INLINE = re.compile(rb"([A-Za-z][A-Za-z_-]{1,30})(?: [^\r\n]*)?\r?\n")
_RESP_REPLY = re.compile(rb"[+\-:][^\r\n]*\r\n|[$*%~>|=!(,](-1|\?|\d{1,10})\r\n|_\r\n|#[tf]\r\n")
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


_VERSION = re.compile(rb"[\x20-\x7e]{1,60}\0")


def _mysql_greeting(data: bytes) -> bool:
    """A Handshake v10: protocol byte 10, a printable NUL-terminated server
    version, connection id, 8 bytes of scramble and a zero filler byte."""
    if _mysql_packet(data, 0) != 0x0A:
        return False
    version = _VERSION.match(data, 5)
    if version is None:
        return False
    filler = version.end() + 4 + 8
    return len(data) > filler and data[filler] == 0


def _mysql_reply(data: bytes) -> bool:
    """A first reply packet (sequence 1): OK, ERR, EOF or a resultset's column count."""
    first = _mysql_packet(data, 1)
    return first is not None and (first in (0x00, 0xFF, 0xFE) or 1 <= first <= 0xFA)


def _inline_command(client: bytes) -> bool | None:
    """A complete inline command line starting with a Redis command name? None: line incomplete."""
    line = _INLINE.match(client)
    if line is None:
        incomplete = client[:1].isalpha() and b"\n" not in client and len(client) < ENOUGH
        return None if incomplete else False
    return line[1].upper() in _REDIS_COMMANDS


# ------------------------------------------------ detectors (decoders/registry.py)


def tls_hello(client: bytes) -> bool:
    return client[:2] in (b"\x16\x03", b"\x16\x02")


def tls_server(server: bytes) -> bool:
    return server[:2] in (b"\x16\x03", b"\x15\x03")


def resp_array(client: bytes) -> bool:
    return _RESP_ARRAY.match(client) is not None


def resp_inline(client: bytes, server: bytes) -> bool | None:
    """An inline command (a Redis command name) answered in RESP."""
    inline = _inline_command(client)
    if inline and _RESP_REPLY.match(server):
        return True
    return None if inline is None else False


mysql_login = _mysql_login
mysql_greeting = _mysql_greeting


def mysql_command(client: bytes, server: bytes) -> bool:
    """A command packet (sequence 0) answered by a first reply packet (mid-connection)."""
    first = _mysql_packet(client, 0)
    return first is not None and first in COMMANDS and _mysql_reply(server)


def pg_startup(client: bytes) -> bool:
    """StartupMessage (protocol 3.0), SSLRequest, GSSENCRequest or CancelRequest."""
    if len(client) < 8:
        return False
    length, code = int.from_bytes(client[:4], "big"), int.from_bytes(client[4:8], "big")
    return code in _PG_STARTUP and 8 <= length <= 10000


def pg_authentication(server: bytes) -> bool:
    """An AuthenticationRequest ('R'), the server's first message."""
    return (
        server[:1] == b"R"
        and len(server) >= 9
        and int.from_bytes(server[1:5], "big") in range(8, 1024)
    )
