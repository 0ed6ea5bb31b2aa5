"""How -w opens its files: never through a link another user planted, never
another user's file (the attacker is a real unprivileged user, `nobody`)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pcap_helpers import REDIS_EXCHANGE, Conn, tmpfs
from tests.support.tshark import tshark
from usniff.events import CaptureStats
from usniff.outputs.base import OutputError
from usniff.outputs.pcapng import ISB_ROOM, PcapngOutput

VICTIM = b"root:x:0:0:root:/root:/bin/bash\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting as another user needs root")


def as_nobody(*cmd: str) -> None:
    """Run a command as the unprivileged user `nobody`."""
    subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd], check=True
    )


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp."""
    path = Path(tempfile.mkdtemp(prefix="usniff-shared-", dir="/tmp"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    f = tmp_path / "passwd"
    f.write_bytes(VICTIM)
    f.chmod(0o644)
    return f


def untouched(victim: Path) -> bool:
    return victim.read_bytes() == VICTIM and stat.S_IMODE(victim.stat().st_mode) == 0o644


@needs_root
def test_planted_symlink_is_refused(shared_dir: Path, victim: Path) -> None:
    name = shared_dir / "cap.pcapng"
    as_nobody("ln", "-s", str(victim), str(name))
    with pytest.raises(OutputError, match="refusing to write .*: it is a symbolic link"):
        PcapngOutput(str(name))
    assert untouched(victim)
    assert name.is_symlink()


@needs_root
def test_planted_symlink_at_a_rotated_name_stops_the_capture(
    shared_dir: Path, victim: Path
) -> None:
    name = shared_dir / "cap.pcapng"
    as_nobody("ln", "-s", str(victim), f"{name}1")
    out = PcapngOutput(str(name), rotate_bytes=2000)
    conn = Conn()
    with pytest.raises(OutputError, match=r"refusing to write .*cap\.pcapng1: it is a symbolic"):
        for _ in range(20):
            out.write(conn.exchange(REDIS_EXCHANGE, close=False))
    out.close(CaptureStats())
    assert untouched(victim)
    assert name.stat().st_size > 0  # the first file is complete and kept


@needs_root
def test_another_users_file_is_not_truncated(shared_dir: Path) -> None:
    name = shared_dir / "cap.pcapng"
    as_nobody("sh", "-c", f"echo theirs > {name}")
    with pytest.raises(OutputError, match="it belongs to uid 65534"):
        PcapngOutput(str(name))
    assert name.read_bytes() == b"theirs\n"


def test_hard_linked_file_is_not_truncated(tmp_path: Path, victim: Path) -> None:
    name = tmp_path / "cap.pcapng"
    os.link(victim, name)
    with pytest.raises(OutputError, match="it has 2 hard links"):
        PcapngOutput(str(name))
    assert untouched(victim)


def test_own_file_is_truncated_and_reused(tmp_path: Path) -> None:
    """Running the same command again overwrites the previous capture, like tcpdump."""
    name = tmp_path / "cap.pcapng"
    name.write_bytes(b"x" * 100_000)
    out = PcapngOutput(str(name))
    out.close(CaptureStats())
    data = name.read_bytes()
    assert data[:4] == b"\x0a\x0d\x0d\x0a" and len(data) < 2000


def test_links_nobody_else_could_plant_are_followed(shared_dir: Path, tmp_path: Path) -> None:
    """-w /dev/stdout (here /proc/self/fd/N of a pipe: a link in a directory only
    root can write) and the operator's own link, even in a shared directory."""
    read_end, write_end = os.pipe()
    out = PcapngOutput(f"/proc/self/fd/{write_end}")
    out.write(Conn().exchange(REDIS_EXCHANGE))
    out.close(CaptureStats())
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        piped = tmp_path / "piped.pcapng"
        piped.write_bytes(pipe.read())
    assert len(tshark("-r", str(piped)).splitlines()) == 3 + len(REDIS_EXCHANGE) + 2
    target = tmp_path / "target.pcapng"
    target.write_bytes(b"previous capture")
    (shared_dir / "mine.pcapng").symlink_to(target)
    out = PcapngOutput(str(shared_dir / "mine.pcapng"))
    out.close(CaptureStats())
    assert target.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_own_device_is_written_as_it_is() -> None:
    """`-w /dev/null` (measuring without disk I/O) neither truncates nor chmods the device."""
    before = os.stat("/dev/null")
    if before.st_uid != os.geteuid():
        pytest.skip("/dev/null belongs to another user here")
    out = PcapngOutput("/dev/null")
    out.write(Conn().exchange(REDIS_EXCHANGE))
    out.close(CaptureStats())
    assert os.stat("/dev/null").st_mode == before.st_mode


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 2 MiB tmpfs: the disk that fills up."""
    with tempfile.TemporaryDirectory(prefix="usniff-full-") as mnt, tmpfs(Path(mnt), "2m"):
        yield Path(mnt)


# payload sizes: the disk fills at another point of a block each time, the statistics
# block must still end the file (a cut-off block had left it too little room at times)
@pytest.mark.parametrize("size", [1000, 1013, 1200, 1999, 3333, 4000, 5000, 7001, 9000, 16000])
def test_full_disk_writes_what_fits_and_counts_the_rest_as_lost(small_fs: Path, size: int) -> None:
    f = small_fs / "full.pcapng"
    out = PcapngOutput(str(f))
    conn = Conn()
    records = [conn.send(n % 2 == 1, bytes([n % 251]) * size) for n in range(5_000_000 // size)]
    with pytest.raises(OutputError, match="disk full writing"):
        out.write(records)  # framed and written 1 MiB at a time
    stats = CaptureStats(records=len(records), bytes=sum(r.length for r in records))
    out.close(stats)
    # the disk is used up to its last page or so, not up to the last whole 1 MiB write:
    # less the cut-off packet's block and the room left for the statistics block
    assert f.stat().st_size > 2 * 1024 * 1024 - 8192 - (size + 80) - ISB_ROOM
    # tshark reads every packet, and what it sees + what the summary calls lost = all bytes
    in_file = [int(n) for n in tshark("-r", str(f), "-T", "fields", "-e", "tcp.len").split()]
    assert stats.unwritten_bytes == stats.lost_bytes == stats.bytes - sum(in_file) > 0
    # the file ends with the statistics block, which says so too
    data = f.read_bytes()
    trailer = int.from_bytes(data[-4:], "little")
    isb = data[-trailer:]
    assert int.from_bytes(isb[:4], "little") == 5
    assert f"unwritten_bytes={stats.unwritten_bytes}".encode() in isb
    delivered = isb.index(b"\x08\x00\x08\x00")  # isb_usrdeliv: packets in the file
    assert int.from_bytes(isb[delivered + 4 : delivered + 12], "little") == len(in_file)
