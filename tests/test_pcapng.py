"""The pcapng writer, checked with the real tshark and with scapy as an
independent second reader."""

from __future__ import annotations

import gc
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import TCP
from scapy.utils import rdpcap

from tests.support.pcap_helpers import (
    MYSQL_EXCHANGE,
    REDIS_EXCHANGE,
    TSHARK,
    Conn,
    expert_problems,
    follow_raw,
    sides,
    tmpfs,
    tshark,
)
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, CaptureStats, Record
from usniff.formats.pcapng import OTHER_PORT, parse_comment
from usniff.outputs._epb import Sink
from usniff.outputs.base import OutputError
from usniff.outputs.pcapng import Framer, PcapngOutput, _Dir

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def write(path: Path, records: list[Record], **kw: object) -> PcapngOutput:
    out = PcapngOutput(str(path), **kw)  # type: ignore[arg-type]
    out.write(records)
    out.close(CaptureStats(records=len(records), lost_records=3, backend="test"))
    return out


def fields(path: Path, *names: str, flt: str = "", extra: tuple[str, ...] = ()) -> list[list[str]]:
    args = ["-r", str(path), *extra, "-T", "fields", "-E", "separator=|"]
    if flt:
        args += ["-Y", flt]
    for name in names:
        args += ["-e", name]
    return [line.split("|") for line in tshark(*args).splitlines()]


def test_redis_is_dissected_and_followed_byte_exact(tmp_path: Path) -> None:
    f = tmp_path / "redis.pcapng"
    write(f, Conn().exchange(REDIS_EXCHANGE))

    assert "Malformed" not in tshark("-r", str(f), "-V")
    assert expert_problems(str(f)) == ""
    commands = [
        [bytes.fromhex(v) for v in row[0].split(",")]
        for row in fields(f, "resp.bulk_string.value", flt="tcp.dstport == 6379 && resp")
    ]
    assert commands == [
        [b"SET", b"key", b"value"],
        [b"GET", b"key"],
        [b"LPUSH", b"list", b"a", b"b", b"c"],
        [b"GET", b"missing"],
    ]
    assert follow_raw(str(f)) == sides(REDIS_EXCHANGE)


def test_mysql_is_dissected_and_followed_byte_exact(tmp_path: Path) -> None:
    f = tmp_path / "mysql.pcapng"
    conn = Conn(path="/run/mysqld/mysqld.sock", client_comm="python3", server_comm="mariadbd")
    write(f, conn.exchange(MYSQL_EXCHANGE))

    assert "Malformed" not in tshark("-r", str(f), "-V")
    assert expert_problems(str(f)) == ""
    rows = fields(f, "mysql.version", "mysql.user", "mysql.query", flt="mysql")
    assert ["5.5.5-10.11.19-MariaDB-0+deb12u1", "", ""] in rows
    assert ["", "root", ""] in rows
    queries = [row[2] for row in rows if row[2]]
    assert queries == [
        "SET NAMES utf8mb4",
        "SET AUTOCOMMIT = 0",
        "SELECT 1 AS one, 'usniff' AS name",
    ]
    assert follow_raw(str(f)) == sides(MYSQL_EXCHANGE)


def test_flow_framing_names_checksums_and_direction(tmp_path: Path) -> None:
    f = tmp_path / "redis.pcapng"
    write(f, Conn().exchange(REDIS_EXCHANGE))
    rows = fields(
        f,
        "tcp.flags.str", "tcp.srcport", "tcp.dstport", "ip.src_host", "ip.dst_host",
        "frame.packet_flags_direction", "ip.checksum.status", "tcp.checksum.status",
        extra=("-N", "n", "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"),
    )  # fmt: skip
    flags = [row[0].replace("\u00b7", "") for row in rows]
    assert flags[:3] == ["S", "AS", "A"]
    assert flags[-2:] == ["AF", "AF"]
    client, server = "redis-cli[4242]", "/run/redis/redis.sock"
    for row in rows:
        to_server = row[2] == "6379"
        assert row[3:5] == ([client, server] if to_server else [server, client])
        assert int(row[1] if to_server else row[2]) >= 49152
        assert int(row[5], 16) == (1 if to_server else 2)  # inbound / outbound
        assert row[6:8] == ["1", "1"]  # "Good"


def test_large_payloads_checksums_and_bytes(tmp_path: Path) -> None:
    """Sizes around the C checksum's word boundaries and the by-reference
    threshold (SPLICE_MIN), odd and even, and one record larger than a segment."""
    f = tmp_path / "big.pcapng"
    sizes = (1023, 1024, 1025, 4095, 4096, 32768, 70001)
    exchange = [(i % 2 == 1, os.urandom(n)) for i, n in enumerate(sizes)]
    write(f, Conn(path="@big").exchange(exchange))
    rows = fields(
        f, "ip.checksum.status", "tcp.checksum.status", "tcp.len", flt="tcp.len > 0",
        extra=("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE"),
    )  # fmt: skip
    assert sorted(int(r[2]) for r in rows) == sorted([*sizes[:-1], 65495, 70001 - 65495])
    assert all(r[:2] == ["1", "1"] for r in rows), rows  # "Good"
    assert follow_raw(str(f)) == sides(exchange)


def test_scapy_reads_packets_payloads_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "redis.pcapng"
    records = Conn().exchange(REDIS_EXCHANGE)
    write(f, records)
    packets = rdpcap(str(f))
    assert len(packets) == 3 + len(REDIS_EXCHANGE) + 2
    data = [p for p in packets if len(p[TCP].payload)]
    assert [bytes(p[TCP].payload) for p in data] == [d for _, d in REDIS_EXCHANGE]
    for pkt, rec in zip(data, records, strict=False):
        info = parse_comment(pkt.comments[0].decode())
        assert info["pid"] == str(rec.pid) and info["comm"] == rec.comm
        assert info["inode"] == str(rec.inode) and info["peer"] == str(rec.peer_inode)
        assert info["path"] == rec.path


def test_unknown_protocol_uses_the_fixed_port(tmp_path: Path) -> None:
    f = tmp_path / "x.pcapng"
    write(f, Conn(path="@abstract").exchange([(False, b"\x00\x01hello"), (True, b"\x02bye")]))
    assert fields(f, "tcp.dstport", flt="tcp.len > 0")[0] == [str(OTHER_PORT)]


def test_loss_is_a_sequence_gap_with_a_comment(tmp_path: Path) -> None:
    f = tmp_path / "loss.pcapng"
    conn = Conn()
    first, second = REDIS_EXCHANGE[0][1], REDIS_EXCHANGE[2][1]
    write(f, [conn.send(False, first), conn.lose(False, 1000), conn.send(False, second)])
    rows = fields(f, "tcp.seq", "tcp.len", "frame.comment", "tcp.analysis.lost_segment")
    gap = rows[4]  # after the handshake and the first request
    assert gap[:2] == [str(1 + len(first) + 1000), "0"]
    assert f"1000 bytes lost at stream offset {len(first)}" in gap[2]
    assert gap[3]  # Wireshark: "previous segment(s) not captured"
    assert rows[5][:2] == [str(1 + len(first) + 1000), str(len(second))]


def test_large_record_is_split_and_reassembled(tmp_path: Path) -> None:
    f = tmp_path / "big.pcapng"
    value = bytes(range(256)) * 600  # 153600 bytes
    big = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n" % (len(value), value)
    pairs = [(False, big), (True, b"+OK\r\n")]
    write(f, Conn().exchange(pairs))
    assert [int(r[0]) for r in fields(f, "tcp.len", flt="tcp.len > 0")] == [
        65495, 65495, len(big) - 2 * 65495, 5,
    ]  # fmt: skip
    assert expert_problems(str(f)) == ""
    lengths = fields(f, "resp.bulk_string.length", flt="resp.bulk_string.length > 1000")
    assert lengths == [[f"3,3,{len(value)}"]]  # reassembled from the three segments
    assert follow_raw(str(f)) == sides(pairs)


def test_snaplen_truncated_record_keeps_original_length(tmp_path: Path) -> None:
    f = tmp_path / "snap.pcapng"
    conn = Conn(path="/tmp/app.sock")
    request = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4960\r\n" + b"x" * 4960 + b"\r\n"
    write(f, [conn.send(False, request, keep=64)], snaplen=64)
    assert fields(f, "frame.cap_len", "frame.len", flt="tcp.len > 0") == [
        ["104", str(40 + len(request))]
    ]
    verbose = tshark("-r", str(f), "-V", "-Y", "tcp.len > 0")
    assert f"{40 + len(request)} bytes on wire" in verbose and "104 bytes captured" in verbose
    assert "SET key [partial] BulkString(4960)" in tshark("-r", str(f), "-Y", "tcp.len > 0")


def test_datagrams_become_udp_packets(tmp_path: Path) -> None:
    f = tmp_path / "dgram.pcapng"
    conn = Conn(path="/dev/log", sock_type="dgram", client_comm="logger")
    parts = [
        conn.send(False, b"<13>Nov 24 "),
        conn.send(False, b"usniff: "),
        conn.send(False, b"hi"),
    ]
    parts[0].flags, parts[1].flags, parts[2].flags = FLAG_MSG_START, 0, FLAG_MSG_END
    big = conn.send(False, b"y" * 70000)
    write(f, [*parts, big, conn.send(True, b"ack")])
    rows = fields(f, "udp.length", "data.data", "frame.comment")
    assert bytes.fromhex(rows[0][1]) == b"<13>Nov 24 usniff: hi"
    assert [r[0] for r in rows] == ["29", str(8 + 65507), str(8 + 70000 - 65507), "11"]
    assert "part 1/2 of one 70000-byte datagram" in rows[1][2]
    assert "type=dgram" in rows[0][2]
    assert expert_problems(str(f)) == ""


def test_socketpair_lower_id_is_the_client(tmp_path: Path) -> None:
    """No side owns an address: the lower id is the client, as in streams (events.server_id)."""
    f = tmp_path / "pair.pcapng"
    write(f, Conn(path="", client_inode=9, server_inode=8).exchange([(False, b"a"), (True, b"b")]))
    rows = fields(f, "ip.src_host", "ip.dst_host", "tcp.srcport", flt="tcp.len > 0",
                  extra=("-N", "n"))  # fmt: skip
    assert rows[0][:2] == ["socket:9", "socket:8"] and int(rows[0][2]) == OTHER_PORT


def test_statistics_block_and_section_header(tmp_path: Path) -> None:
    f = tmp_path / "redis.pcapng"
    write(f, Conn().exchange(REDIS_EXCHANGE))
    info = subprocess.run(["capinfos", str(f)], capture_output=True, text=True, check=True).stdout
    assert "Capture application: usniff " in info
    assert f"Capture oper-sys:    {os.uname().sysname} {os.uname().release}" in info
    assert "Number of stat entries = 1" in info


def test_rotation_by_size_keeps_every_file_complete(tmp_path: Path) -> None:
    f = tmp_path / "rot.pcapng"
    conn = Conn()
    pairs = REDIS_EXCHANGE * 6
    out = PcapngOutput(str(f), rotate_bytes=1500)
    for rec in conn.exchange(pairs):
        out.write([rec])
    out.close(CaptureStats())
    names = [f"rot.pcapng{n}" if n else "rot.pcapng" for n in range(len(os.listdir(tmp_path)))]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    assert len(names) > 3
    client = server = b""
    for name in names:
        path = str(tmp_path / name)
        assert expert_problems(path) == ""
        assert fields(Path(path), "tcp.flags.str")[0][0].endswith("S\u00b7")  # starts with a SYN
        c, s = follow_raw(path)
        client, server = client + c, server + s
        assert os.path.getsize(path) < 1500 + 1000
    assert (client, server) == sides(pairs)


def test_large_batch_is_written_out_as_it_is_framed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that frames to many times FLUSH_BYTES goes out in writes of about
    FLUSH_BYTES each, also across a rotation, and the files hold the same bytes
    as when every record is written on its own."""
    import usniff.outputs.pcapng as pcapng

    pairs = [(i % 2 == 1, bytes([65 + i % 26]) * (300 + i % 7)) for i in range(600)]
    records = Conn().exchange(pairs)
    clock = iter(range(1_700_000_000, 1_700_000_100)).__next__
    single = tmp_path / "single"
    single.mkdir()
    out = PcapngOutput(str(single / "f.pcapng"), rotate_bytes=120_000, clock=clock)
    for rec in records:
        out.write([rec])
    out.close(CaptureStats())

    flush = 16_384
    monkeypatch.setattr(pcapng, "FLUSH_BYTES", flush)
    sizes: list[int] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[bytes]) -> int:
        n = real_writev(fd, buffers)
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "writev", writev)
    clock = iter(range(1_700_000_000, 1_700_000_100)).__next__
    batched = tmp_path / "batched"
    batched.mkdir()
    out = PcapngOutput(str(batched / "f.pcapng"), rotate_bytes=120_000, clock=clock)
    out.write(records)
    written_before_close = sum(sizes)
    out.close(CaptureStats())

    assert written_before_close > 200_000  # the batch itself frames to ~250 KB
    assert len(sizes) > 12 and max(sizes) < flush + 1_000  # at most one record over
    names = sorted(os.listdir(single))
    assert len(names) > 1 and sorted(os.listdir(batched)) == names
    for name in names:
        assert (batched / name).read_bytes() == (single / name).read_bytes()
    client = server = b""
    for name in names:
        c, s = follow_raw(str(batched / name))
        client, server = client + c, server + s
    assert (client, server) == sides(pairs)


def test_rotation_ring_keeps_count_files(tmp_path: Path) -> None:
    f = tmp_path / "ring.pcapng"
    conn = Conn()
    out = PcapngOutput(str(f), rotate_bytes=1000, rotate_count=3)
    records = conn.exchange(REDIS_EXCHANGE * 4, close=False)
    last = conn.send(False, b"*1\r\n$4\r\nLAST\r\n")
    for rec in [*records, last]:
        out.write([rec])
    out.close(CaptureStats())
    assert sorted(os.listdir(tmp_path)) == ["ring.pcapng0", "ring.pcapng1", "ring.pcapng2"]
    assert out.name in {str(tmp_path / n) for n in os.listdir(tmp_path)}
    assert follow_raw(out.name)[0].endswith(last.data)
    for name in os.listdir(tmp_path):
        assert expert_problems(str(tmp_path / name)) == ""


def test_rotation_by_time_uses_strftime_names(tmp_path: Path) -> None:
    t0 = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))
    conn = Conn(ts=t0)
    records = conn.exchange(REDIS_EXCHANGE, close=False)
    for i, rec in enumerate(records):
        rec.ts = t0 + 10 * i  # 80 seconds in all
    out = PcapngOutput(
        str(tmp_path / "cap-%H%M%S.pcapng"), rotate_seconds=30, rotate_count=2, clock=lambda: t0
    )
    out.write(records)
    out.close(CaptureStats())
    # files opened at 12:00:00, 12:00:30, 12:01:00; -W 2 keeps the newest two
    assert sorted(os.listdir(tmp_path)) == ["cap-120030.pcapng", "cap-120100.pcapng"]
    last = tmp_path / "cap-120100.pcapng"
    assert follow_raw(str(last)) == sides(REDIS_EXCHANGE[6:])


def test_rotation_by_time_refuses_names_that_repeat(tmp_path: Path) -> None:
    # tcpdump -G without a time in the name overwrites each file with the next
    for name, seconds, why in (
        ("cap.pcapng", 1, "needs a time in the -w name"),
        ("cap-%H%M.pcapng", 1, "can stay the same for 1 s"),
        ("cap-%S.pcapng", 60, "can stay the same for 60 s"),  # 12:00:07, 12:01:07
    ):
        with pytest.raises(ValueError, match=why):
            PcapngOutput(str(tmp_path / name), rotate_seconds=seconds)
    assert os.listdir(tmp_path) == []  # refused before any file is created
    PcapngOutput(str(tmp_path / "cap-%H%M.pcapng"), rotate_seconds=60).close(CaptureStats())


def test_rotation_refuses_stdout() -> None:
    with pytest.raises(ValueError):
        PcapngOutput("-", rotate_bytes=1000)


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.support.pcap_helpers import Conn, REDIS_EXCHANGE
from usniff.events import CaptureStats
from usniff.outputs.pcapng import PcapngOutput
out = PcapngOutput({path!r})
conn = Conn()
out.write(conn.exchange(REDIS_EXCHANGE, close=False))
{tail}
"""


def run_writer(path: str, tail: str) -> subprocess.Popen[bytes]:
    code = WRITER.format(root=str(Path(__file__).parents[1]), path=path, tail=tail)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_stdout_output_pipes_into_tshark() -> None:
    writer = run_writer("-", "out.close(CaptureStats())")
    assert TSHARK
    reader = subprocess.run(
        [TSHARK, "-r", "-", "-T", "fields", "-e", "resp.bulk_string.value", "-Y", "resp"],
        stdin=writer.stdout,
        capture_output=True,
        check=True,
    )
    assert writer.wait() == 0
    lines = reader.stdout.splitlines()
    assert lines[0] == b"534554,6b6579,76616c7565"  # SET key value
    assert len(lines) == len(REDIS_EXCHANGE)


def test_sigkill_after_flush_leaves_a_readable_file(tmp_path: Path) -> None:
    f = tmp_path / "killed.pcapng"
    tail = """out.flush()
print("flushed", out.packets, flush=True)
out.write(conn.exchange(REDIS_EXCHANGE))
time.sleep(60)
"""
    proc = run_writer(str(f), tail)
    assert proc.stdout
    line = proc.stdout.readline().split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert line[0] == b"flushed"
    assert len(tshark("-r", str(f)).splitlines()) == int(line[1]) == 3 + len(REDIS_EXCHANGE)
    assert follow_raw(str(f)) == sides(REDIS_EXCHANGE)


def test_files_are_created_mode_0600(tmp_path: Path) -> None:
    old = tmp_path / "old.pcapng"
    old.write_bytes(b"")
    old.chmod(0o644)
    previous = os.umask(0)
    try:
        write(old, [])
        write(tmp_path / "new.pcapng", [])
    finally:
        os.umask(previous)
    for name in ("old.pcapng", "new.pcapng"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_uncreatable_file_raises_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot create"):
        PcapngOutput(str(tmp_path / "missing" / "x.pcapng"))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> object:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with tmpfs(mnt, "64k"):
        yield mnt


def test_full_disk_raises_and_leaves_a_readable_file(tiny_fs: Path, tmp_path: Path) -> None:
    f = tiny_fs / "full.pcapng"
    out = PcapngOutput(str(f))
    conn = Conn()
    with pytest.raises(OutputError) as info:
        for _ in range(1000):
            out.write(conn.exchange(REDIS_EXCHANGE, close=False))
            out.flush()
    message = str(info.value)
    assert message.startswith(f"disk full writing {f}: ")
    assert "capture stopped" in message
    readable = int(message.rsplit("packet ", 1)[1])
    with pytest.raises(OutputError):
        out.write([conn.send(False, b"more")])
    out.close(CaptureStats())
    copy = tmp_path / "copy.pcapng"
    copy.write_bytes(f.read_bytes())
    assert len(tshark("-r", str(copy)).splitlines()) == readable > 100


def test_closed_flows_are_forgotten() -> None:
    """A flow is forgotten when both sockets closed, or one closed and the
    other never sent; rotation then re-announces only the open ones."""
    framer, buf = Framer(), Sink()
    for i in range(500):
        conn = Conn(client_inode=100_000 + 2 * i, server_inode=100_001 + 2 * i)
        records = [conn.send(False, b"*1\r\n$4\r\nPING\r\n")]
        if i % 2:
            records.append(conn.send(True, b"+PONG\r\n"))
            records.append(conn.close(True))
        records.append(conn.close(False))
        for r in records:
            framer.add(buf, r)
    assert framer.open_flows == 0
    still = Conn(client_inode=5, server_inode=6)
    framer.add(buf, still.send(False, b"x"))
    assert framer.open_flows == 2


def test_forgotten_flows_are_freed_without_the_cyclic_gc() -> None:
    """A flow's two directions refer to each other: forgotten, they must be
    unlinked, since the capture runs the cyclic GC rarely (cli.loop.GC_YOUNG):
    ~1.5 KB per connection stayed until a full collection."""
    gc.collect()
    gc.disable()
    try:
        framer, buf = Framer(), Sink()
        for i in range(200):
            conn = Conn(client_inode=100_000 + 2 * i, server_inode=100_001 + 2 * i)
            for r in conn.exchange([(False, b"*1\r\n$4\r\nPING\r\n"), (True, b"+PONG\r\n")]):
                framer.add(buf, r)
        alive = sum(isinstance(o, _Dir) for o in gc.get_objects())
    finally:
        gc.enable()
    assert framer.open_flows == 0 and alive == 0, alive


def test_connection_whose_first_bytes_were_lost_keeps_its_protocols_port(tmp_path: Path) -> None:
    """Its own first bytes cannot say the protocol (a loss record, not data):
    the port of earlier connections to the same path does, and a comment says so."""
    first, second = Conn(), Conn(client_inode=80001, server_inode=80000, client_pid=4343)
    records = first.exchange(REDIS_EXCHANGE) + [
        second.lose(False, 100),
        second.send(False, b"*1\r\n$4\r\nPING\r\n"),
        second.send(True, b"+PONG\r\n"),
    ]
    f = tmp_path / "lost.pcapng"
    write(f, records)
    ports = {
        tuple(row)
        for row in fields(
            f, "tcp.stream", "tcp.dstport", flt="tcp.flags.syn == 1 && tcp.flags.ack == 0"
        )
    }
    assert ports == {("0", "6379"), ("1", "6379")}, ports
    comments = [
        row[0] for row in fields(f, "frame.comment", flt="tcp.stream == 1 && tcp.flags.syn == 1")
    ]
    assert any("earlier connections to /run/redis/redis.sock" in c for c in comments), comments
    assert fields(f, "resp.string", flt="tcp.stream == 1 && resp.string") == [["PONG"]]
