"""The offline reader: usniff's own files round-trip; real TCP captures of a
real redis-server (made by tshark) reassemble to the bytes Wireshark sees."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pcap_helpers import MYSQL_EXCHANGE, REDIS_EXCHANGE, TSHARK, Conn, follow_raw

from usniff.cli.read import PcapReadError, dissect_wireshark, read_records
from usniff.events import FLAG_MSG_END, FLAG_MSG_START, CaptureStats, Record
from usniff.outputs.pcapng import PcapngOutput


def write(path: Path, records: list[Record]) -> None:
    out = PcapngOutput(str(path))
    out.write(records)
    out.close(CaptureStats())


def comparable(rec: Record) -> tuple[object, ...]:
    return (
        rec.pid, rec.tid, rec.uid, rec.comm, rec.inode, rec.peer_inode, rec.sock_type,
        rec.path, rec.path_is_own, rec.offset, rec.length, rec.data, rec.lost, rec.flags,
        rec.kind, rec.peer_pid,
    )  # fmt: skip


def test_own_files_round_trip(tmp_path: Path) -> None:
    redis = Conn()
    mysql = Conn(
        path="/run/mysqld/mysqld.sock", client_inode=81, server_inode=80, client_comm="php-fpm"
    )
    records = [
        *redis.exchange(REDIS_EXCHANGE[:4], close=False),
        redis.lose(True, 500),
        redis.send(True, b"$5\r\nvalue\r\n"),
        redis.send(False, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3000\r\n" + b"v" * 3002, keep=32),
        *mysql.exchange(MYSQL_EXCHANGE),
        redis.close(False),
    ]
    f = tmp_path / "own.pcapng"
    write(f, records)
    back = list(read_records(str(f)))
    assert [comparable(r) for r in back] == [comparable(r) for r in records]
    assert all(abs(a.ts - b.ts) < 2e-6 for a, b in zip(back, records, strict=True))


def test_own_datagrams_round_trip(tmp_path: Path) -> None:
    conn = Conn(path="/dev/log", sock_type="dgram", client_comm="logger")
    one = conn.send(False, b"<13>hello")
    head, tail = conn.send(False, b"<13>two "), conn.send(False, b"parts")
    head.flags, tail.flags = FLAG_MSG_START, FLAG_MSG_END
    f = tmp_path / "dgram.pcapng"
    write(f, [one, head, tail])
    back = list(read_records(str(f)))
    assert [(r.sock_type, r.comm, r.path, r.offset, r.data, r.flags) for r in back] == [
        ("dgram", "logger", "/dev/log", 0, b"<13>hello", FLAG_MSG_START | FLAG_MSG_END),
        ("dgram", "logger", "/dev/log", 9, b"<13>two parts", FLAG_MSG_START | FLAG_MSG_END),
    ]


def test_not_a_capture_file(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(b"hello world")
    with pytest.raises(PcapReadError):
        list(read_records(str(f)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server did not listen on {port}")


@pytest.fixture(scope="module")
def redis_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tshark capture on lo of redis-cli talking to a real redis-server."""
    server_bin, cli_bin = shutil.which("redis-server"), shutil.which("redis-cli")
    if not (server_bin and cli_bin and TSHARK):
        pytest.skip("needs redis-server, redis-cli and tshark")
    tmp = tmp_path_factory.mktemp("redis")
    port = free_port()
    server = subprocess.Popen(
        [server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    capture = tmp / "redis.pcapng"
    try:
        wait_for_port(port, time.monotonic() + 10)  # this connection is captured by no one
        sniffer = subprocess.Popen(
            [TSHARK, "-i", "lo", "-w", str(capture), "-f", f"tcp port {port}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert sniffer.stderr
            for line in sniffer.stderr:
                if "Capture started" in line:
                    break
            time.sleep(0.5)  # dumpcap announces before its filter is attached
            commands = "SET key value\nGET key\nLPUSH list a b c\nSET big " + "x" * 300_000
            commands += "\nSTRLEN big\nGET big\nGET missing\n"
            subprocess.run(
                [cli_bin, "-p", str(port)], input=commands.encode(), check=True,
                stdout=subprocess.DEVNULL, timeout=30,
            )  # fmt: skip
            time.sleep(1)
        finally:
            sniffer.terminate()
            sniffer.communicate(timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return capture


def by_direction(records: list[Record]) -> tuple[bytes, bytes]:
    data = [r for r in records if r.kind == "data"]
    return (
        b"".join(r.data for r in data if not r.path_is_own),
        b"".join(r.data for r in data if r.path_is_own),
    )


def test_real_tcp_capture_reassembles_like_wireshark(redis_capture: Path) -> None:
    records = list(read_records(str(redis_capture)))
    client, server = by_direction(records)
    assert (client, server) == follow_raw(str(redis_capture))
    assert b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET" in client
    assert b"$300000\r\n" + b"x" * 300_000 + b"\r\n" in server
    assert not [r for r in records if r.kind == "lost"]
    # offsets are contiguous per direction, server side on the redis port
    for own in (False, True):
        side = [r for r in records if r.kind == "data" and r.path_is_own == own]
        assert [r.offset for r in side] == [
            sum(r.length for r in side[:i]) for i in range(len(side))
        ]
        assert len({r.inode for r in side}) == 1
    assert {r.path for r in records} == {f"127.0.0.1:{records[0].path.rsplit(':', 1)[1]}"}
    assert [r.kind for r in records[-2:]] == ["close", "close"]


def test_real_capture_as_classic_pcap(redis_capture: Path, tmp_path: Path) -> None:
    pcap = tmp_path / "redis.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(redis_capture), str(pcap)], check=True)
    assert [comparable(r) for r in read_records(str(pcap))] == [
        comparable(r) for r in read_records(str(redis_capture))
    ]


def test_dissect_wireshark_lists_resp_and_mysql_fields(tmp_path: Path) -> None:
    if not TSHARK:
        pytest.skip("tshark is not installed")
    f = tmp_path / "both.pcapng"
    mysql = Conn(path="/run/mysqld/mysqld.sock", client_inode=81, server_inode=80)
    write(f, [*Conn().exchange(REDIS_EXCHANGE[:2]), *mysql.exchange(MYSQL_EXCHANGE)])
    packets = list(dissect_wireshark(str(f)))
    assert packets[0].protocol == "resp"
    assert packets[0].fields["bulk_string"] == "SET, key, value"
    assert packets[1].fields["string"] == "OK"
    queries = [p.fields["query"] for p in packets if p.protocol == "mysql" and "query" in p.fields]
    assert queries[-1] == "SELECT 1 AS one, 'usniff' AS name"
