"""Offline: `usniff read` of tcpdump's captures (not usniff's) of PostgreSQL, HTTP,
FastCGI and memcached over TCP (no root).

captures/tcp_*.pcap were written by tcpdump on loopback while the scripted sessions of
captures/record_live.py ran against the same real servers listening on TCP
(captures/record_tcpdump.py): IPv6 and IPv4, link types Ethernet, Linux cooked v1 and
v2.  Ground truth: usniff's own capture of the same session (captures/*.pcapng, where
usniff saw the processes' bytes), the sessions' counts, and Wireshark's reassembly of
the same file.  The reordered, retransmitted and BSD-loopback variants are rewritten
from the real files here.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_session import PINGS, SECRETS
from tests.support.live_helpers import MEMCACHED_EXPECTED
from tests.support.pg_session import PIPELINE_INSERTS, PREPARED_RUNS
from tests.support.php_session import CONCURRENT, COOKIE, PASSWORD, TOKEN
from tests.support.servers import PG_PASSWORD
from tests.support.tshark import TSHARK, follow_all
from usniff.cli.read import Packet, _segment, read_records

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
USNIFF = str(Path(sys.executable).with_name("usniff"))
# name -> link type, IP version, the secrets --redact must hide
FILES: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "postgres": (1, 6, (PG_PASSWORD,)),  # Ethernet (tcpdump -i lo)
    "memcached": (1, 4, ()),
    "http": (276, 4, SECRETS),  # LINUX_SLL2 (tcpdump -i any)
    # LINUX_SLL; curl -u sends the password in base64 (HTTP_AUTHORIZATION)
    "fastcgi": (113, 4, (base64.b64encode(f"ann:{PASSWORD}".encode()).decode(), COOKIE, TOKEN)),
}
NAMES = list(FILES)
# every request of the sessions, by --stats key, where the session fixes the count
SENT = {
    "postgres": {"SELECT id, v FROM t WHERE id = $1": PREPARED_RUNS,
                 "INSERT INTO t VALUES ($1, $2)": PIPELINE_INSERTS + 2, "STARTUP": 5},
    "memcached": {"set": 5, "mg": 3, "get": 2, "quit": 1},
    "http": {"GET /v1.41/_ping": PINGS + 2, "POST /v1.41/volumes/create": 2},
    "fastcgi": {"/slow.php": 1 + CONCURRENT, "/post.php": 2, "/hello.php": 2},
}  # fmt: skip


@functools.cache
def read(path: Path, *extra: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [USNIFF, "read", str(path), "--format", "json", "--protocol", "auto", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr
    return tuple(json.loads(line) for line in out.stdout.splitlines())


def txs(path: Path, *extra: str) -> list[dict[str, Any]]:
    return [e for e in read(path, *extra) if e["type"] == "transaction"]


def summary(path: Path) -> Counter[tuple[object, ...]]:
    """What a person compares: each request's protocol, --stats key, error, whether
    it was answered, and its size (HTTP's Host header names the TCP address)."""
    return Counter(
        (t["protocol"], t["command"], t["error"], t["latency"] is None,
         t["bytes_in"] if t["protocol"] != "http" else 0)
        for t in txs(path)
    )  # fmt: skip


def tcp(name: str) -> Path:
    return CAPTURES / f"tcp_{name}.pcap"


def test_files_are_small_tcpdump_captures_of_each_link_type() -> None:
    for name, (linktype, version, _) in FILES.items():
        data = tcp(name).read_bytes()
        assert len(data) < 300_000 and data[:4] == b"\xd4\xc3\xb2\xa1"  # tcpdump's pcap
        assert struct.unpack_from("<I", data, 20)[0] == linktype, name
        path = txs(tcp(name))[0]["path"]
        assert path.startswith("[::1]:" if version == 6 else "127.0.0.1:"), (name, path)


@pytest.mark.parametrize("name", NAMES)
def test_every_request_decoded_as_from_usniffs_own_capture(name: str) -> None:
    """The same session seen by tcpdump over TCP and by usniff over a Unix socket
    decodes to the same requests, errors and answers; every request the session
    sent is there."""
    events = read(tcp(name))
    assert not [e for e in events if e["type"] == "record" or e.get("kind") in
                ("undecodable", "unpaired", "gap")]  # fmt: skip
    got, own = summary(tcp(name)), summary(CAPTURES / f"{name}.pcapng")
    commands = Counter(t["command"] for t in txs(tcp(name)))
    if name == "postgres":  # over TCP libpq asks for TLS first (sslmode=prefer), answered N
        ssl = ("postgres", "SSLRequest", False, False, 8)
        assert got.pop(ssl) == commands["STARTUP"] and own.pop(ssl) == 1  # the raw client's
    assert got == own
    assert {k: commands[k] for k in SENT[name]} == SENT[name]
    for tx in txs(tcp(name)):
        assert tx["protocol"] == name and tx["client_pid"] == 0, tx  # no process in a pcap
        if tx["latency"] is not None:
            assert 0 <= tx["latency"] < 5, tx


def test_memcached_requests_in_order_with_their_replies() -> None:
    got = txs(tcp("memcached"))
    assert len(got) == len(MEMCACHED_EXPECTED)
    for tx, (request, reply) in zip(got, MEMCACHED_EXPECTED, strict=True):
        assert tx["request"].startswith(request), tx
        assert tx["reply"].startswith(reply) if reply else tx["reply"] == "", tx


@pytest.mark.parametrize("name", NAMES)
def test_stats_counts_equal_the_requests(name: str) -> None:
    out = subprocess.run([USNIFF, "read", str(tcp(name)), "--stats"], capture_output=True,
                         text=True, check=True, env=dict(os.environ, COLUMNS="300"))  # fmt: skip
    counts = Counter(t["command"] for t in txs(tcp(name)))
    rows = {}
    for line in (out.stdout + out.stderr).splitlines():  # the table goes to stderr
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 4 and cells[1] == name:
            rows[cells[2]] = int(cells[3])
    assert rows == counts


@pytest.mark.parametrize("name", [n for n in NAMES if FILES[n][2]])
def test_redact_hides_every_secret(name: str) -> None:
    secrets = FILES[name][2]
    data = tcp(name).read_bytes()
    assert all(s.encode() in data for s in secrets)  # what --redact has to hide is there
    text = subprocess.run([USNIFF, "read", str(tcp(name)), "--redact"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    for out in (text, json.dumps(read(tcp(name), "--redact"))):
        assert not [s for s in secrets if s in out]


# --------------------------------------------------------------------------- reassembly


def followed(path: Path) -> list[tuple[bytes, bytes]]:
    """Every TCP stream's bytes as Wireshark's "Follow TCP stream" has them:
    (client -> server, server -> client), sorted (node 0 sent the SYN)."""
    return sorted((a, b) for _, _, a, b in follow_all(str(path)).values())


def by_connection(path: Path) -> list[tuple[bytes, bytes]]:
    """usniff's reassembly of every flow, as followed() has Wireshark's; no loss."""
    records = list(read_records(str(path)))
    assert not [r for r in records if r.kind == "lost"]
    flows: dict[int, list[bytes]] = {}
    for rec in sorted((r for r in records if r.kind == "data"), key=lambda r: r.offset):
        client = rec.peer_id if rec.path_is_own else rec.sock_id
        flows.setdefault(client, [b"", b""])[rec.path_is_own] += rec.data
    return sorted((c, s) for c, s in flows.values())


@pytest.mark.skipif(TSHARK is None, reason="setup.sh installs tshark")
@pytest.mark.parametrize("name", NAMES)
def test_reassembly_equals_wiresharks(name: str) -> None:
    assert by_connection(tcp(name)) == followed(tcp(name))


def packets(path: Path) -> tuple[bytes, list[Packet]]:
    """The file header and packets of a classic little-endian pcap file."""
    data = path.read_bytes()
    linktype = struct.unpack_from("<I", data, 20)[0]
    pos, found = 24, []
    while pos < len(data):
        sec, usec, caplen, origlen = struct.unpack_from("<4I", data, pos)
        found.append(Packet(sec + usec / 1e6, linktype, data[pos + 16 : pos + 16 + caplen],
                            origlen))  # fmt: skip
        pos += 16 + caplen
    return data[:24], found


def write(path: Path, header: bytes, pkts: list[Packet]) -> None:
    with path.open("wb") as f:
        f.write(header[:20] + struct.pack("<I", pkts[0].linktype if pkts else 1))
        for p in pkts:
            sec = int(p.ts)
            f.write(struct.pack("<4I", sec, round((p.ts - sec) * 1e6), len(p.data), p.origlen))
            f.write(p.data)


def _direction(pkt: Packet) -> tuple[bytes, int] | None:
    """The sender of a packet that carries TCP payload."""
    seg = _segment(pkt)
    return (seg.src, seg.sport) if seg is not None and seg.length else None


def disorder(pkts: list[Packet]) -> list[Packet]:
    """What a capture point behind a lossy link sees: each pair of data segments a
    sender sent back to back arrives swapped (the first was lost and came again
    later), and every data segment is retransmitted after the next packet."""
    out = list(pkts)
    i = 0
    while i + 1 < len(out):
        a, b = _direction(out[i]), _direction(out[i + 1])
        if a is not None and a == b:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 2
        else:
            i += 1
    again: list[Packet] = []
    for i, pkt in enumerate(out):
        again.append(pkt)
        if i and _direction(out[i - 1]):
            again.append(out[i - 1])
    return again


def test_reordered_and_retransmitted_segments_decode_the_same(tmp_path: Path) -> None:
    """Segments swapped and sent twice (fastcgi: php-fpm's replies to a 100 kB POST
    come in several segments back to back) decode exactly as the clean capture:
    the bytes of every stream, and every request."""
    header, pkts = packets(tcp("fastcgi"))
    shuffled = disorder(pkts)
    swapped = sum(a is not b for a, b in zip(pkts, shuffled, strict=False))
    assert swapped > 10 and len(shuffled) > len(pkts) + 20
    f = tmp_path / "lossy.pcap"
    write(f, header, shuffled)
    assert by_connection(f) == by_connection(tcp("fastcgi"))
    clean = [(t["request"], t["reply"], t["bytes_in"], t["bytes_out"]) for t in
             txs(tcp("fastcgi"))]  # fmt: skip
    assert sorted(clean) == sorted(
        (t["request"], t["reply"], t["bytes_in"], t["bytes_out"]) for t in txs(f)
    )


def test_segment_never_seen_is_a_loss_of_its_size(tmp_path: Path) -> None:
    """A data segment missing from the file (never retransmitted into it): its bytes
    are one loss of exactly its size, said by `usniff read`, and decoding goes on."""
    header, pkts = packets(tcp("memcached"))
    data = [i for i, p in enumerate(pkts) if _direction(p)]
    victim = data[len(data) // 2]
    seg = _segment(pkts[victim])
    assert seg is not None
    f = tmp_path / "hole.pcap"
    write(f, header, pkts[:victim] + pkts[victim + 1 :])
    lost = [r for r in read_records(str(f)) if r.kind == "lost"]
    assert [r.lost for r in lost] == [seg.length]
    out = subprocess.run([USNIFF, "read", str(f), "--protocol", "auto", "--format", "json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert (
        out.stderr
        == f"usniff: {seg.length} bytes lost in capture, {seg.length} bytes in 1 stream gaps\n"
    )
    assert out.stdout.count('"type":"transaction"') > 20


def test_bsd_loopback_link_type(tmp_path: Path) -> None:
    """DLT_NULL (tcpdump -i lo0 on BSD and macOS): the same packets behind a 4-byte
    address family instead of an Ethernet header read the same, by tshark too."""
    header, pkts = packets(tcp("memcached"))
    null = [Packet(p.ts, 0, struct.pack("<I", 2) + p.data[14:], p.origlen - 10) for p in pkts]
    f = tmp_path / "null.pcap"
    write(f, header, null)
    assert summary(f) == summary(tcp("memcached"))
    if TSHARK:
        assert followed(f) == followed(tcp("memcached"))


@pytest.mark.parametrize("name", NAMES)
def test_connections_seen_without_their_handshake(name: str, tmp_path: Path) -> None:
    """tcpdump started after the clients connected (kept-alive connections): no SYN
    in the file, the server on a port no protocol is known by.  The first payload
    says which side is the client; the file decodes as with the handshakes."""
    header, pkts = packets(tcp(name))
    f = tmp_path / "late.pcap"
    write(f, header, [p for p in pkts if not (seg := _segment(p)) or not seg.flags & 0x02])
    assert summary(f) == summary(tcp(name))
