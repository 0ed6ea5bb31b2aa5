"""The pcapng layout usniff writes and reads: block types, option codes, the
synthetic TCP/UDP numbers and the per-packet comment.

The writer (:mod:`usniff.outputs.pcapng`) and the reader (:mod:`usniff.cli.read`)
both take them from here, so a file written by one is what the other expects
(framing: docs/pcapng.md).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable

from usniff.containers import Identity
from usniff.events import Record

LINKTYPE_RAW = 101  # raw IPv4/IPv6 packets, no link-layer header
OTHER_PORT = 7450  # unassigned by IANA, no Wireshark dissector registered on it
MASK32 = 0xFFFFFFFF

# block types
BT_SHB = 0x0A0D0D0A
BT_IDB = 1
BT_PB = 2  # obsolete Packet Block, still written by old tools
BT_SPB = 3
BT_NRB = 4
BT_ISB = 5
BT_EPB = 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D

# option codes
OPT_END = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_TSOFFSET = 14
EPB_FLAGS = 2
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_USRDELIV = 8
NRB_IPV4 = 1
NRB_IPV6 = 2
EPB_INBOUND = 1  # epb_flags direction bits: towards the server
EPB_OUTBOUND = 2  # from the server

# the packets' IPv4 and TCP numbers
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
IPPROTO_TCP = 6
IPPROTO_UDP = 17

END_OPTS = b"\0\0\0\0"


def option(code: int, value: bytes) -> bytes:
    """One pcapng option, padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def block(btype: int, body: bytes) -> bytes:
    """A whole block: type, total length, ``body``, total length."""
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


# ---------------------------------------------------------------- comments

_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def record_comment(rec: Record, who: Callable[[int], Identity] | None = None) -> str:
    """The per-packet comment; :func:`parse_comment` reads it back.  ``who``
    names the record's cgroups (``cgroup_path``, ``container``, ``pod``)."""
    text = (
        f"pid={rec.pid} tid={rec.tid} uid={rec.uid} comm={json.dumps(rec.comm)} "
        f"inode={rec.inode} peer={rec.peer_inode}"
    )
    if rec.peer_pid:
        text += f" peer_pid={rec.peer_pid}"
    if rec.peer_comm:
        text += f" peer_comm={json.dumps(rec.peer_comm)}"
    if rec.sock_type != "stream":
        text += f" type={rec.sock_type}"
    for prefix, cgroup in (("", rec.cgroup), ("peer_", rec.peer_cgroup)):
        if cgroup:
            text += _cgroup_text(prefix, who(cgroup) if who else Identity(cgroup))
    return f"{text} path={json.dumps(rec.path)}"


def _cgroup_text(prefix: str, ident: Identity) -> str:
    text = f" {prefix}cgroup={ident.cgroup}"
    for key, value in (("cgroup_path", ident.path), ("container", ident.label), ("pod", ident.pod)):
        if value:
            text += f" {prefix}{key}={json.dumps(value)}"
    return text


def comment_identity(fields: dict[str, str], prefix: str = "") -> Identity | None:
    """The cgroup a comment's fields name (``prefix`` "peer_" for the peer's), if any."""
    cgroup = fields.get(prefix + "cgroup", "")
    if not (cgroup.isascii() and cgroup.isdigit() and len(cgroup) < 21):
        return None
    return Identity(
        int(cgroup),
        path=fields.get(prefix + "cgroup_path", ""),
        name=fields.get(prefix + "container", ""),
        pod=fields.get(prefix + "pod", ""),
    )


def parse_comment(text: str) -> dict[str, str]:
    """``key=value`` pairs of a comment (quoted values are JSON strings)."""
    return {k: json.loads(v) if v.startswith('"') else v for k, v in _FIELD.findall(text)}
