"""Byte views of captured records: text (tcpdump-like) and JSON lines."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import TextIO

from usniff.containers import Containers
from usniff.events import FLAG_TRUNCATED, CaptureStats, Record, sender_is_server
from usniff.outputs.base import clock_text
from usniff.printable import printable

PREVIEW = 64  # bytes shown by default (use -A or -X for all)


_SIDE = {True: "server", False: "client", None: "peer"}


def direction(rec: Record) -> str:
    """Which end sent it (:func:`usniff.events.sender_is_server`)."""
    return _SIDE[sender_is_server(rec)]


def escaped(data: bytes, limit: int = PREVIEW) -> str:
    text = data[:limit].decode("latin-1").encode("unicode_escape").decode("ascii")
    text = text.replace('"', '\\"')
    return f'"{text}"' + ("..." if len(data) > limit else "")


def ascii_view(data: bytes) -> str:
    """tcpdump -A: printable bytes and newlines as is, the rest as '.'."""
    return "".join(chr(b) if 32 <= b < 127 or b in (10, 9) else "." for b in data)


def hex_view(data: bytes) -> str:
    """tcpdump -X: offset, 16 bytes of hex in pairs, ASCII."""
    lines = []
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        hexpart = " ".join(row[j : j + 2].hex() for j in range(0, len(row), 2))
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"\t0x{i:04x}:  {hexpart:<39}  {text}")
    return "\n".join(lines)


def header(rec: Record, label: Callable[[int], str] | None = None) -> str:
    """The record's header line, terminal-safe (a process name or path may hold any byte).
    ``label`` names a cgroup's container: shown as ``comm[pid/tid]@container``."""
    clock = clock_text(rec.ts)
    peer = rec.peer_inode or "-"
    where = rec.path or "(unnamed)"
    own = peer_in = ""
    if label is not None:
        own = f"@{name}" if rec.cgroup and (name := label(rec.cgroup)) else ""
        peer_in = f"@{name}" if rec.peer_cgroup and (name := label(rec.peer_cgroup)) else ""
    to = f" to {rec.peer_comm or '?'}[{rec.peer_pid}]{peer_in}" if rec.peer_pid else ""
    head = (
        f"{clock} {rec.comm}[{rec.pid}/{rec.tid}]{own} {rec.sock_type} ino {rec.inode}>{peer}{to} "
        f"{where} {direction(rec)} off {rec.offset}"
    )
    if rec.kind == "lost":
        return printable(f"{head} LOST {rec.lost} bytes")
    if rec.kind == "close":
        return printable(f"{head} CLOSED")
    cut = f" (kept {len(rec.data)})" if rec.flags & FLAG_TRUNCATED else ""
    return printable(f"{head} len {rec.length}{cut}")


class TextOutput:
    """One header line per record, then the bytes: preview, -A or -X."""

    def __init__(
        self, stream: TextIO, view: str = "preview", containers: Containers | None = None
    ) -> None:
        self.stream = stream
        self.view = view
        self._label = (containers or Containers()).label

    def write(self, batch: Sequence[Record], limit: int = 0) -> int:
        if limit:
            batch = batch[:limit]
        out = []
        for rec in batch:
            line = header(rec, self._label)
            if rec.kind == "lost" or not rec.data:
                out.append(line)
            elif self.view == "ascii":
                out.append(line + "\n" + ascii_view(rec.data))
            elif self.view == "hex":
                out.append(line + "\n" + hex_view(rec.data))
            else:
                out.append(line + " " + escaped(rec.data))
        if out:
            self.stream.write("\n".join(out) + "\n")
        return len(out)

    def flush(self) -> None:
        self.stream.flush()

    def close(self, stats: CaptureStats) -> int:
        self.stream.flush()
        return 0


def record_json(rec: Record, containers: Containers | None = None) -> dict[str, object]:
    """The record as a JSON object; ``containers`` names its cgroups."""
    obj: dict[str, object] = {
        "ts": round(rec.ts, 6),
        "pid": rec.pid,
        "tid": rec.tid,
        "uid": rec.uid,
        "comm": rec.comm,
        "inode": rec.inode,
        "peer_inode": rec.peer_inode,
        "peer_pid": rec.peer_pid,
        "peer_comm": rec.peer_comm,
        "sock_id": rec.sock_id,
        "peer_id": rec.peer_id,
        "path": rec.path,
        "direction": direction(rec),
        "type": rec.sock_type,
        "offset": rec.offset,
        "len": rec.length,
    }
    for prefix, cgroup in (("", rec.cgroup), ("peer_", rec.peer_cgroup)):
        if cgroup:
            obj[prefix + "cgroup"] = cgroup
            if containers is not None:
                ident = containers.identity(cgroup)
                named = (("cgroup_path", ident.path), ("container", ident.label),
                         ("container_id", ident.container_id), ("pod", ident.pod))  # fmt: skip
                for key, value in named:
                    if value:
                        obj[prefix + key] = value
    if rec.kind == "lost":
        obj["lost"] = rec.lost
    elif rec.kind == "close":
        obj["closed"] = True
    else:
        obj["data"] = base64.b64encode(rec.data).decode("ascii")
        if rec.flags & FLAG_TRUNCATED:
            obj["caplen"] = len(rec.data)
    return obj


class JsonOutput:
    """One JSON object per record (jq-friendly)."""

    def __init__(self, stream: TextIO, containers: Containers | None = None) -> None:
        self.stream = stream
        self._containers = containers or Containers()

    def write(self, batch: Sequence[Record], limit: int = 0) -> int:
        if limit:
            batch = batch[:limit]
        if batch:
            c = self._containers
            self.stream.write("".join(json.dumps(record_json(r, c)) + "\n" for r in batch))
        return len(batch)

    def flush(self) -> None:
        self.stream.flush()

    def close(self, stats: CaptureStats) -> int:
        self.stream.flush()
        return 0
