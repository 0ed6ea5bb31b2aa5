"""The machine's Unix sockets, as `ss -xp` shows them (NETLINK_SOCK_DIAG).

Used by `usniff list` and by capture when a socket's own announcement was
lost.  The kernel answers inode, type, state, bound name, peer inode, the
socket file's (dev, inode) and the queue lengths; pid/comm come from /proc/*/fd.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_RQLEN = 1, 2, 4, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN = 0, 1, 2, 4
STATES = {1: "ESTAB", 7: "UNCONN", 10: "LISTEN", 2: "SYN_SENT", 8: "CLOSE_WAIT"}
TYPES = {1: "stream", 2: "dgram", 5: "seqpacket"}


@dataclass
class UnixSocket:
    inode: int
    type: str
    state: str
    path: str = ""
    peer: int = 0
    vfs: tuple[int, int] | None = None  # (dev, inode) of the socket file
    procs: list[tuple[int, str]] = field(default_factory=list)
    name: bytes = b""  # the bound address as bound: b"\0..." for an abstract name
    # Recv-Q, Send-Q as `ss -x` shows them: bytes queued (a listener: pending
    # connections and its backlog); None where the kernel did not say
    queues: tuple[int, int] | None = None


def _dump() -> list[UnixSocket]:
    req = struct.pack(
        "<BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
        0xFFFFFFFF, 0xFFFFFFFF,
    )  # fmt: skip
    flags = NLM_F_REQUEST | NLM_F_DUMP
    msg = struct.pack("<IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, flags, 1, 0)
    out: list[UnixSocket] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.sendall(msg + req)
        while True:
            buf = nl.recv(1 << 20)
            pos = 0
            while pos + 16 <= len(buf):
                ln, typ = struct.unpack_from("<IH", buf, pos)
                if typ == NLMSG_DONE:
                    return out
                if typ == NLMSG_ERROR:
                    err = -struct.unpack_from("<i", buf, pos + 16)[0]
                    raise OSError(err, f"sock_diag: {os.strerror(err)}")
                out.append(_parse(buf[pos + 16 : pos + ln]))
                pos += (ln + 3) & ~3


def _parse(m: bytes) -> UnixSocket:
    _fam, typ, state, _pad, ino = struct.unpack_from("<BBBBI", m, 0)
    s = UnixSocket(ino, TYPES.get(typ, str(typ)), STATES.get(state, str(state)))
    pos = 16
    while pos + 4 <= len(m):
        alen, atype = struct.unpack_from("<HH", m, pos)
        val = m[pos + 4 : pos + alen]
        if atype == UNIX_DIAG_NAME:
            _set_name(s, val)
        elif atype == UNIX_DIAG_PEER:
            s.peer = struct.unpack("<I", val[:4])[0]
        elif atype == UNIX_DIAG_VFS:
            ino_, dev = struct.unpack("<II", val[:8])
            s.vfs = (dev, ino_)
        elif atype == UNIX_DIAG_RQLEN:
            s.queues = struct.unpack("<II", val[:8])
        if alen < 4:
            break
        pos += (alen + 3) & ~3
    return s


def _set_name(s: UnixSocket, name: bytes) -> None:
    """A file's name ends at its first NUL (C programs often count the
    terminating NUL in addrlen, and the kernel keeps it); every byte of an
    abstract name counts."""
    if name[:1] != b"\0":
        name = name.split(b"\0", 1)[0]
    s.name = name
    text = name.decode(errors="replace")
    s.path = "@" + text[1:] if name[:1] == b"\0" else text


def printable(text: str | bytes) -> str:
    """``text`` safe to print: a byte that is not part of a printable UTF-8
    character becomes ``\\xNN`` (and ``\\`` itself ``\\\\``).  Names are chosen by
    whoever bound the socket or named the process; printed raw, they could
    move the cursor or rewrite the terminal of the root user reading them."""
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            raw = os.fsencode(ch) if "\udc80" <= ch <= "\udcff" else ch.encode()
            out.append("".join(f"\\x{b:02x}" for b in raw))
    return "".join(out)


def _owners() -> dict[int, list[tuple[int, str]]]:
    """socket inode -> [(pid, comm)] from /proc/*/fd."""
    owners: dict[int, list[tuple[int, str]]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = os.fsdecode(f.read().removesuffix(b"\n"))
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                entry = (int(pid), comm)
                lst = owners.setdefault(int(target[8:-1]), [])
                if entry not in lst:
                    lst.append(entry)
    return owners


def _proc_net_unix() -> list[UnixSocket]:
    """Fallback when the unix_diag module is unavailable: no peers, no VFS ids."""
    out = []
    with open("/proc/net/unix", errors="surrogateescape") as f:
        next(f)
        for line in f:
            fields = line.split(maxsplit=7)
            if len(fields) < 7:
                continue
            flags, typ = int(fields[3], 16), int(fields[4], 16)
            state, ino = int(fields[5], 16), int(fields[6])
            path = fields[7].rstrip("\n") if len(fields) > 7 else ""
            name = "LISTEN" if flags & _SO_ACCEPTCON else _PROC_STATES.get(state, str(state))
            sock = UnixSocket(ino, TYPES.get(typ, str(typ)), name)
            raw = os.fsencode(path)
            _set_name(sock, b"\0" + raw[1:] if path.startswith("@") else raw)
            out.append(sock)
    return out


_SO_ACCEPTCON = 0x10000  # a listening socket, in /proc/net/unix's Flags
_PROC_STATES = {1: "UNCONN", 2: "SYN_SENT", 3: "ESTAB", 4: "CLOSING"}  # SS_* in /proc


def _sockets() -> list[UnixSocket]:
    try:
        return _dump()
    except OSError:  # e.g. unix_diag not loadable
        return _proc_net_unix()


def list_sockets(with_procs: bool = True) -> list[UnixSocket]:
    socks = _sockets()
    if with_procs:
        owners = _owners()
        for s in socks:
            s.procs = owners.get(s.inode, [])
    return socks


def bound() -> tuple[set[tuple[int, int]], set[bytes]] | None:
    """(dev, inode) of every socket file a socket is bound to now, and every
    bound name; None without sock_diag (/proc/net/unix has no file ids)."""
    try:
        socks = _dump()
    except OSError:
        return None
    return {s.vfs for s in socks if s.vfs}, {s.name for s in socks if s.name}


def receivers() -> dict[str, tuple[int, int, str]]:
    """Bound address -> (inode, pid, comm) of every bound datagram socket alive now
    (pid 0 and comm "" when no process holds it open)."""
    socks = [s for s in _sockets() if s.path and s.type == "dgram"]
    owners = _owners() if socks else {}
    out = {}
    for s in socks:
        pid, comm = (owners.get(s.inode) or [(0, "")])[0]
        out[s.path] = (s.inode, pid, comm)
    return out


def inodes() -> set[int]:
    """Inodes of every Unix socket alive now."""
    return {s.inode for s in _sockets()}


def addresses() -> dict[int, str]:
    """Bound address of every Unix socket alive now, by inode ("" when unbound)."""
    try:
        return {s.inode: s.path for s in _sockets()}
    except OSError:
        return {}
