"""memcached decoded live (issue 18): the real `usniff` CLI, the real kernel, a real
memcached on a private Unix socket, driven by a raw Python client (text and meta
commands, pipelined with quiet flags and opaque tokens).

Ground truth: the client's own requests (MEMCACHED_STEPS), the bytes it sent and
received, memcached's own counters (``stats``) and tshark's dissection of the pcapng.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.live_helpers import (
    MEMCACHED_EXPECTED,
    MEMCACHED_STEPS,
    USNIFF,
    Usniff,
    follow_all,
    memcached_session,
    memcached_stats,
    raw_exchange,
)
from tests.support.pcap_helpers import TSHARK, tshark
from tests.support.servers import start_memcached

pytestmark = pytest.mark.root
SELF_COMM = Path("/proc/self/comm").read_text().strip()


@dataclass
class Run:
    sock: str
    text: str
    stderr: str
    sent: bytes
    received: bytes
    stats: dict[str, int]
    stats_request: int
    stats_reply: int

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines()]

    @property
    def txs(self) -> list[dict[str, Any]]:
        return sorted(
            (e for e in self.events if e["type"] == "transaction"), key=lambda t: t["ts_request"]
        )


def _run(tmp: str, *args: str) -> Run:
    with start_memcached(tmp) as sock, Usniff("--path", sock, *args) as usniff:
        sent, received = memcached_session(sock)
        stats, request, reply = memcached_stats(sock)
        result = usniff.stop()
    assert result.returncode == 0 and " 0 bytes lost" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return Run(sock, result.text, result.stderr, sent, received, stats, request, reply)


@pytest.fixture(scope="module")
def json_run() -> Iterator[Run]:
    with tempfile.TemporaryDirectory(prefix="usniff-mc-") as tmp:
        yield _run(tmp, "--format", "json", "--stats", "--redact")  # nothing to mask: no change


@pytest.fixture(scope="module")
def pcapng_run() -> Iterator[tuple[Run, str]]:
    with tempfile.TemporaryDirectory(prefix="usniff-mc-") as tmp:
        path = str(Path(tmp) / "mc.pcapng")
        yield _run(tmp, "-w", path), path


def session_txs(run: Run) -> list[dict[str, Any]]:
    """The transactions of the scripted session's connection (not the stats one)."""
    first = next(t for t in run.txs if t["request"] == "set user:1 0 0 3 ann")
    return [t for t in run.txs if t["conn"] == first["conn"]]


def assert_session(txs: list[dict[str, Any]], sock: str) -> None:
    got = [(t["request"], t["reply"]) for t in txs]
    assert len(got) == len(MEMCACHED_EXPECTED), got
    for (request, reply), (want_request, want_reply) in zip(got, MEMCACHED_EXPECTED, strict=True):
        assert request.startswith(want_request), (request, want_request)
        assert reply.startswith(want_reply) if want_reply else reply == "", (reply, want_reply)
    for tx in txs:
        assert tx["protocol"] == "memcached" and tx["path"] == sock, tx
        # memcached names its worker threads, which do the socket I/O
        assert tx["server_comm"] == "mc-worker" and tx["client_comm"] == SELF_COMM, tx
        assert tx["bytes_in"] > 0 and not tx["unanswered"], tx
        answered = not tx["details"].get("reply_suppressed") and not tx["reply"].startswith("(")
        if answered:  # a reply came: its bytes and the latency are there
            assert tx["bytes_out"] > 0 and tx["latency"] is not None, tx
            assert 0 < tx["latency"] < 5, tx
        else:
            assert tx["bytes_out"] == 0 and tx["latency"] is None, tx
    errors = [t["request"] for t in txs if t["error"]]
    assert errors == ["bogus", "set k 0 0 x"], errors


def test_every_request_paired_in_order(json_run: Run) -> None:
    assert_session(session_txs(json_run), json_run.sock)
    assert not [e for e in json_run.events if e["type"] != "transaction"]


def test_bytes_equal_the_clients_and_the_servers_counters(json_run: Run) -> None:
    txs = session_txs(json_run)
    assert sum(t["bytes_in"] for t in txs) == len(json_run.sent)
    assert sum(t["bytes_out"] for t in txs) == len(json_run.received)
    everything = json_run.txs  # the session and the final stats connection
    assert sum(t["bytes_in"] for t in everything) == json_run.stats["bytes_read"]
    # the final stats reply is not in the bytes_written it reports
    out = sum(t["bytes_out"] for t in everything) - json_run.stats_reply
    assert out == json_run.stats["bytes_written"]


def test_counts_equal_the_servers_counters(json_run: Run) -> None:
    """memcached counts keys of get/gets and mg requests in cmd_get, keys of
    gat/gats in cmd_touch, storage commands and ms in cmd_set."""
    txs, stats = json_run.txs, json_run.stats
    by = Counter(t["command"] for t in txs)
    keys: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for t in txs:
        keys[t["command"]] += t["details"].get("keys", 0)
        hits[t["command"]] += t["details"].get("hits", 0)
    mg_hits = sum(t["command"] == "mg" and t["reply"][:2] in ("VA", "HD") for t in txs)
    assert keys["get"] + keys["gets"] + by["mg"] == stats["cmd_get"]
    assert hits["get"] + hits["gets"] + mg_hits == stats["get_hits"]
    assert by["touch"] + keys["gat"] + keys["gats"] == stats["cmd_touch"]
    storage = ("set", "add", "replace", "append", "prepend", "cas", "ms")
    parsed = [t for t in txs if not t["reply"].startswith("CLIENT_ERROR bad command line")]
    assert sum(t["command"] in storage for t in parsed) == stats["cmd_set"]
    assert by["flush_all"] == stats["cmd_flush"]


def test_stats_table_counts_per_command(json_run: Run) -> None:
    rows = {}
    for line in json_run.stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 11 and cells[0] == "memcached":
            rows[cells[1]] = (int(cells[2]), int(cells[3]))
    sent: Counter[str] = Counter()
    for requests, _ in MEMCACHED_STEPS:
        for request in requests:
            word = request.split()[0].decode()
            sent["(unknown)" if word == "bogus" else word] += 1
    sent["stats"] += 1  # memcached_stats
    assert {k: v[0] for k, v in rows.items()} == dict(sent), rows
    assert rows["(unknown)"][1] == 1 and rows["set"][1] == 1  # ERROR, CLIENT_ERROR


def test_text_output(tmp_path: Path) -> None:
    with start_memcached(tmp_path) as sock, Usniff("--path", sock) as usniff:
        memcached_session(sock)
        result = usniff.stop()
    lines = result.text.splitlines()
    assert len(lines) == len(MEMCACHED_EXPECTED), lines
    assert re.search(r" -> mc-worker\[\d+\]  get user:1 nope big  2/3 hit: user:1=ann, big=\"\\x00"
                     r".*  \d+\.\d{3} ms$", "\n".join(lines), re.M), lines  # fmt: skip
    assert any(line.endswith("mg nope v O3 q  (EN, quiet)  -") for line in lines), lines
    assert "SET" not in result.text and "unanswered" not in result.text


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_pcapng_dissected_by_tshark_and_read_back(pcapng_run: tuple[Run, str]) -> None:
    run, path = pcapng_run
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    commands = tshark("-r", path, "-Y", "memcache.command", "-T", "fields", "-e",
                      "memcache.command").split()  # fmt: skip
    assert {"set", "get", "gets", "incr", "delete", "stats"} <= set(commands), commands
    assert commands.count("set") >= 3
    streams = follow_all(tshark, path).values()
    # every connection on memcache's port, with the bytes the clients sent and received
    assert all(node1.endswith(":11211") for _, node1, _, _ in streams), streams
    flows = sorted((len(a), len(b)) for _, _, a, b in streams)
    assert flows == sorted(
        [(len(run.sent), len(run.received)), (run.stats_request, run.stats_reply)]
    )
    assert (run.sent, run.received) in [(a, b) for _, _, a, b in streams]
    out = subprocess.run([USNIFF, "read", path, "--format", "json", "--protocol", "auto"],
                         capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    events = [json.loads(line) for line in out.stdout.splitlines()]
    read = Run(run.sock, out.stdout, out.stderr, run.sent, run.received, {}, 0, 0)
    assert {e["type"] for e in events} == {"transaction"}
    assert_session(session_txs(read), run.sock)


def test_binary_protocol_named_shown_raw_and_dissected(tmp_path: Path) -> None:
    """A binary-protocol GET (the protocol of SASL): named, not decoded; in the pcapng on
    memcache's port, where tshark dissects it."""
    request = struct.pack(">BBHBBHIIQ", 0x80, 0x00, 3, 0, 0, 0, 3, 7, 0) + b"foo"
    path = str(tmp_path / "bin.pcapng")
    with start_memcached(tmp_path) as sock:
        with Usniff("--path", sock, "--format", "json", "--protocol", "auto") as usniff:
            reply = raw_exchange(sock, request, b"Not found")
            result = usniff.stop()
        with Usniff("--path", sock, "-w", path) as writer:
            raw_exchange(sock, request, b"Not found")
            writer.stop()
    events = [json.loads(line) for line in result.text.splitlines()]
    assert [(e["type"], e["direction"], e.get("not_decoded")) for e in events] == [
        ("record", "client", "memcached-binary, no decoder"),
        ("record", "server", "memcached-binary, no decoder"),
    ]
    assert reply[0] == 0x81
    magic = tshark("-r", path, "-Y", "memcache", "-T", "fields", "-e", "memcache.magic")
    assert magic.split() == ["128", "129"], magic
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
