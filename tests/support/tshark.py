"""tshark, the independent dissector the tests check usniff's pcapng against.

One runner (:func:`tshark`: a non-zero exit or any error output fails the
test) and one reader of its "Follow stream" output (:func:`follow_raw` for one
stream, :func:`follow_all` for every TCP stream of a file in one run).
"""

from __future__ import annotations

import shutil
import subprocess

TSHARK = shutil.which("tshark")
Follow = tuple[str, str, bytes, bytes]  # node 0, node 1, bytes 0 -> 1, bytes 1 -> 0


def tshark(*args: str) -> str:
    """Run the real tshark; fail the test on a non-zero exit or error output."""
    assert TSHARK, "tshark not installed"
    proc = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=120, check=False)
    errors = [
        line for line in proc.stderr.splitlines() if line and not line.startswith("Running as")
    ]
    assert proc.returncode == 0 and not errors, (proc.returncode, proc.stderr)
    return proc.stdout


def _follow(block: str) -> Follow:
    """One stream of ``-z follow,PROTO,raw,N`` output: its nodes and both sides' bytes
    (hex lines, the second node's indented by a tab)."""
    lines = block.splitlines()
    node0 = next(x for x in lines if x.startswith("Node 0:")).split(": ", 1)[1]
    node1 = next(x for x in lines if x.startswith("Node 1:")).split(": ", 1)[1]
    body = block.split("Node 1:", 1)[1].split("\n", 1)[1]
    sent = [b"", b""]
    for line in body.splitlines():
        if line.startswith("====="):
            break
        if line.strip():
            sent[1 if line.startswith("\t") else 0] += bytes.fromhex(line.strip())
    return node0, node1, sent[0], sent[1]


def follow_raw(path: str, stream: int = 0, proto: str = "tcp") -> tuple[bytes, bytes]:
    """Bytes Wireshark's "Follow stream" reassembles: (node 0 -> 1, node 1 -> 0)."""
    out = tshark("-r", path, "-q", "-z", f"follow,{proto},raw,{stream}")
    _, _, a, b = _follow(out.split(f"Follow: {proto},raw", 1)[1])
    return a, b


def follow_all(path: str) -> dict[int, Follow]:
    """Every TCP stream, in one tshark run: {stream: (node0, node1, bytes 0->1, bytes 1->0)}."""
    streams = sorted({int(s) for s in tshark("-r", path, "-T", "fields", "-e", "tcp.stream")
                      .split() if s})  # fmt: skip
    if not streams:
        return {}
    args = ["-r", path, "-q"]
    for n in streams:
        args += ["-z", f"follow,tcp,raw,{n}"]
    blocks = tshark(*args).split("Follow: tcp,raw")[1:]
    return {n: _follow(block) for block, n in zip(blocks, streams, strict=True)}


def expert_problems(path: str) -> str:
    """Expert-info entries of severity warning or error (empty when clean)."""
    out = tshark("-r", path, "-q", "-z", "expert,warn")
    return "\n".join(
        line
        for line in out.splitlines()
        if line.startswith(("Errors", "Warns")) or "Malformed" in line
    )


def tcp_bytes_by_port(
    follow: dict[int, tuple[str, str, bytes, bytes]], port: int
) -> tuple[int, int]:
    """(to the server on ``port``, from it) summed over every followed stream."""
    to_server = from_server = 0
    for node0, node1, a, b in follow.values():
        if node1.endswith(f":{port}"):
            to_server, from_server = to_server + len(a), from_server + len(b)
        else:
            assert node0.endswith(f":{port}"), (node0, node1)
            to_server, from_server = to_server + len(b), from_server + len(a)
    return to_server, from_server
