"""Server-side prepared statements through pymysql's packet layer.

pymysql has no client API for COM_STMT_*; the captures and the live tests
drive them with these helpers (real server, real packets).
"""

from __future__ import annotations

import struct

import pymysql

COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE, COM_STMT_RESET = (
    0x03, 0x16, 0x17, 0x19, 0x1A,
)  # fmt: skip


def stmt_prepare(conn: pymysql.connections.Connection, sql: str) -> tuple[int, int, int]:
    """COM_STMT_PREPARE; returns (statement id, parameters, columns)."""
    conn._execute_command(COM_STMT_PREPARE, sql)
    first = conn._read_packet()
    if first.is_error_packet():
        first.raise_for_error()
    stmt_id, ncols, nparams = struct.unpack_from("<IHH", first.get_all_data(), 1)
    for count in (nparams, ncols):
        for _ in range(count):
            conn._read_packet()
        if count:
            conn._read_packet()  # EOF (pymysql does not set CLIENT_DEPRECATE_EOF)
    return stmt_id, nparams, ncols


def stmt_execute(
    conn: pymysql.connections.Connection, stmt_id: int, params: list[tuple[int, bytes | None]]
) -> int:
    """COM_STMT_EXECUTE with (type, encoded value or None) params; returns rows read."""
    body = struct.pack("<IBI", stmt_id, 0, 1)
    if params:
        nulls = bytearray((len(params) + 7) // 8)
        for i, (_, value) in enumerate(params):
            if value is None:
                nulls[i // 8] |= 1 << (i % 8)
        body += bytes(nulls) + b"\x01" + b"".join(struct.pack("<BB", t, 0) for t, _ in params)
        body += b"".join(v for _, v in params if v is not None)
    conn._execute_command(COM_STMT_EXECUTE, body)
    first = conn._read_packet()
    if first.is_ok_packet():
        return 0
    ncols = first.read_length_encoded_integer()
    for _ in range(ncols + 1):  # column definitions, EOF
        conn._read_packet()
    rows = 0
    while not conn._read_packet().is_eof_packet():
        rows += 1
    return rows
