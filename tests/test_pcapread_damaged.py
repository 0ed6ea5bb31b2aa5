"""`usniff read` on odd and damaged files: everything readable is read, the
damage is named with its byte offset, the exit status is 1, and there is
never a traceback.

Each hand-made file (tests/pcap_damage.py builds them from packets of the
real captures) is also read by the real tshark: where tshark reads it
without complaint, usniff reads the same packets (lengths, times) and calls
it undamaged; where tshark reports damage, usniff does too, having read at
least the packets tshark read before it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from pcap_damage import (
    BT_CUSTOM,
    BT_EPB,
    BT_IDB,
    CAPTURES,
    END,
    IF_TSOFFSET,
    IF_TSRESOL,
    block,
    comment,
    epb,
    idb,
    opt,
    pb,
    real_packets,
    shb,
    spb,
    to_big_endian,
    to_pcap,
)
from pcap_helpers import TSHARK

from usniff.cli.read import Packet, PcapReadError, read_packets

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

USNIFF = str(Path(sys.executable).with_name("usniff"))
T0 = 1_700_000_000_000_000  # microseconds
LE, BE = "<", ">"
_P = real_packets()  # a Redis connection: handshake, then SET/GET and replies


def packets(e: str, n: int = 3, iface: int = 0, base: int = T0, opts: bytes = b"") -> bytes:
    return b"".join(epb(e, iface, base + i * 125, _P[3 + i], opts) for i in range(n))


def usniff_comment(fields: bytes) -> bytes:
    return comment(LE, fields + b' inode=12 peer=13 path="/run/redis.sock"')


def _redis() -> bytes:
    return (CAPTURES / "redis.pcapng").read_bytes()


# name -> (file, what usniff must say about it: None = not damaged)
CASES: dict[str, tuple[Callable[[], bytes], str | None]] = {
    "comment_pid_not_an_integer": (
        lambda: shb() + idb() + epb(LE, 0, T0, _P[3], usniff_comment(b'pid=abc comm="x"')),
        None,
    ),
    "comment_not_json": (
        lambda: shb() + idb() + epb(LE, 0, T0, _P[3], usniff_comment(b'pid=1 comm="\\x"')),
        None,
    ),
    "comment_lone_surrogate": (
        lambda: shb() + idb() + epb(LE, 0, T0, _P[3], usniff_comment(b'pid=1 comm="\\ud800"')),
        None,
    ),
    "undefined_interface": (
        lambda: shb() + idb() + packets(LE, 2) + epb(LE, 3, T0 + 500, _P[2]) + packets(LE, 2),
        "packet for undescribed interface 3 at byte 252",
    ),
    "block_length_under_12": (
        lambda: shb() + idb() + packets(LE, 2) + struct.pack("<II", BT_EPB, 8) + packets(LE, 1),
        "block of type 6 with an impossible length (8) at byte 252",
    ),
    "empty_if_tsresol": (lambda: shb() + idb(LE, opt(LE, IF_TSRESOL, b"")) + packets(LE), None),
    "empty_idb": (
        lambda: shb() + block(LE, BT_IDB, b"") + packets(LE),
        "interface description block of 12 bytes at byte 32; "
        "packet for undescribed interface 0 at byte 44 (and 2 more like it)",
    ),
    "year_294247": (
        lambda: shb() + idb() + epb(LE, 0, (1 << 63) - 1, _P[3]) + packets(LE, 2),
        None,
    ),
    "truncated": (
        lambda: _redis()[: len(_redis()) // 2 + 37],
        "cut short at byte 21479, in the middle of a block that starts at byte 21468 "
        "and should be 84 bytes long",
    ),
    "big_endian": (lambda: to_big_endian(_redis()), None),
    "block_length_past_the_end": (
        lambda: shb() + idb() + packets(LE, 2) + block(LE, BT_EPB, b"\0" * 40, total=4000),
        "cut short at byte 304, in the middle of a block that starts at byte 252 "
        "and should be 4000 bytes long",
    ),
    "trailer_mismatch": (
        lambda: shb() + idb() + packets(LE, 2) + epb(LE, 0, T0, _P[5])[:-4] + b"\4\0\0\0",
        "block length 84 at the start of a block, 4 at its end at byte 252",
    ),
    "junk_after_the_header": (
        lambda: shb() + idb() + bytes(range(256)) * 3,
        "cut short at byte 824, in the middle of a block that starts at byte 56 "
        "and should be 117835012 bytes long",
    ),
    "two_sections_both_byte_orders": (
        lambda: (
            shb()
            + idb()
            + packets(LE, 2)
            + shb(BE)
            + idb(BE, opt(BE, IF_TSRESOL, b"\x09"))
            + packets(BE, 2, base=T0 * 1000)
        ),
        None,
    ),
    "tsresol_power_of_two_and_tsoffset": (
        lambda: (
            shb()
            + idb(
                LE,
                opt(LE, IF_TSRESOL, b"\x94") + opt(LE, IF_TSOFFSET, struct.pack("<q", 17 * 10**8)),
            )
            + packets(LE, 3, base=5 << 20)
        ),
        None,
    ),
    "unknown_blocks_and_options": (
        lambda: (
            shb(LE, opt(LE, 0x8BAD, b"xyz"))
            + block(LE, BT_CUSTOM, b"\0\0\x7e\x7ecustom!!")
            + idb(LE, opt(LE, 0x4321, b"\1\2\3"))
            + block(LE, 0x2A, b"abcd")
            + packets(LE, 3, opts=opt(LE, 0x7777, b"q"))
        ),
        None,
    ),
    "simple_packet_blocks": (lambda: shb() + idb() + spb(LE, _P[3]) + spb(LE, _P[4]), None),
    "obsolete_packet_blocks": (
        lambda: shb() + idb() + pb(LE, 0, T0, _P[3]) + pb(LE, 0, T0 + 100, _P[4]),
        None,
    ),
    "pcap_microseconds": (lambda: to_pcap(_redis()), None),
    "pcap_big_endian_nanoseconds": (lambda: to_pcap(_redis(), BE, nanoseconds=True), None),
    "pcap_truncated": (
        lambda: to_pcap(_redis())[:5000],
        "cut short at byte 5000, in the middle of a packet that starts at byte 4147",
    ),
    "pcap_junk_after_the_header": (
        lambda: to_pcap(_redis())[:24] + bytes(range(256)) * 2,
        "packet of 185207048 captured bytes (more than 262144) at byte 24",
    ),
    "option_past_its_block": (
        lambda: shb() + idb(LE, struct.pack("<HH", 2, 200) + b"abcd") + packets(LE, 2),
        "option 2 of 200 bytes runs past its block at byte 32",
    ),
    "section_version_2": (
        lambda: shb(major=2) + idb() + packets(LE, 2),
        "section of pcapng version 2 (only version 1 is known) at byte 0",
    ),
    "captured_length_past_its_block": (
        lambda: (
            shb()
            + idb()
            + block(LE, BT_EPB, struct.pack("<5I", 0, 0, 0, 500, 500) + _P[3] + b"\0\0" + END)
            + packets(LE, 1)
        ),
        "packet whose captured length 500 runs past its block at byte 56",
    ),
    "section_header_only": (lambda: shb(), None),
}


def tshark_read(path: Path) -> tuple[list[tuple[int, int, str]], str]:
    """(cap_len, len, time) per packet and the error tshark reports ("" if none).
    Only raw-IP packets: tshark also lists a custom block as a record."""
    proc = subprocess.run(
        [TSHARK or "tshark", "-r", str(path), "-Y", "raw", "-T", "fields",
         "-e", "frame.cap_len", "-e", "frame.len", "-e", "frame.time_epoch"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    error = " ".join(line for line in proc.stderr.splitlines() if not line.startswith("Running"))
    assert (proc.returncode != 0) == bool(error), proc
    return [(int(a), int(b), t) for a, b, t in rows], error


def usniff_read(path: Path) -> tuple[list[Packet], str]:
    got: list[Packet] = []
    try:
        for pkt in read_packets(str(path)):
            got.append(pkt)
    except PcapReadError as e:
        return got, str(e)
    return got, ""


def same_time(ours: float, theirs: str) -> bool:
    # an SPB has no time (tshark: blank); 2**64-1 seconds is -1 to tshark (signed)
    if not theirs or theirs == "-1.000000000":
        return True
    return abs(Decimal(ours) - Decimal(theirs)) <= max(
        Decimal("1e-6"), abs(Decimal(theirs)) / 10**15
    )


@pytest.mark.parametrize("name", CASES)
def test_hand_made_file_is_read_like_tshark_reads_it(name: str, tmp_path: Path) -> None:
    make, damage = CASES[name]
    path = tmp_path / f"{name}.pcapng"
    path.write_bytes(make())
    theirs, tshark_error = tshark_read(path)
    ours, our_error = usniff_read(path)
    if damage is None:
        assert not tshark_error and not our_error
        assert len(ours) == len(theirs) > 0 or name == "section_header_only"
    else:
        assert tshark_error, "tshark reads it: usniff must too"
        assert our_error == f"{path}: damaged: {damage}; {len(ours)} packets read"
        assert len(ours) >= len(theirs)
    for pkt, (caplen, origlen, ts) in zip(ours, theirs, strict=False):
        assert (len(pkt.data), pkt.origlen) == (caplen, origlen)
        assert same_time(pkt.ts, ts), (pkt.ts, ts)
    # the command line: the records, then the damage as the last word, exit 1, no traceback
    proc = subprocess.run([USNIFF, "read", str(path)], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == (1 if damage else 0), proc.stderr
    if damage:
        assert proc.stderr.strip().splitlines()[-1] == f"Error: {our_error}"


def test_big_endian_file_gives_the_same_records_as_little_endian(tmp_path: Path) -> None:
    big = tmp_path / "big.pcapng"
    big.write_bytes(to_big_endian(_redis()))
    for args in (["-A"], ["--format", "json"]):
        little, swapped = (
            subprocess.run([USNIFF, "read", str(f), *args], capture_output=True, text=True,
                           timeout=60, check=True)
            for f in (CAPTURES / "redis.pcapng", big)
        )  # fmt: skip
        assert swapped.stdout == little.stdout and len(little.stdout) > 10_000


FUZZ_FILES = int(os.environ.get("USNIFF_FUZZ_FILES", "100000"))
FUZZ_MEMORY = 1 << 30  # address space of the fuzzing process (a 4 GiB block must not be read)


def test_fuzz_damaged_files_never_raise_anything_but_the_readers_error() -> None:
    """>= 100k mutated and cut-short files made from the real captures
    (pcapng both byte orders, pcap both byte orders and time units), read in
    a child process limited to 1 GiB of address space; every 50th also
    through `usniff read` in one of six output modes.  ~95 s here."""
    code = (
        "import json, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({FUZZ_MEMORY}, {FUZZ_MEMORY}))\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pcap_damage import fuzz\n"
        f"result = fuzz(17, {FUZZ_FILES}, 50, sys.argv[1])\n"
        "result['maxrss_kib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps(result))\n"
    )
    workdir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code, tmp], capture_output=True, text=True, timeout=600
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert not result["failures"], "\n".join(result["failures"])
    assert result["files"] == FUZZ_FILES >= 100_000 or "USNIFF_FUZZ_FILES" in os.environ
    assert result["damaged"] > FUZZ_FILES // 2  # the mutations do damage most files
    assert result["cli_runs"] == -(-FUZZ_FILES // 50)
    # memory is bounded by the child's address-space limit (a MemoryError would be a
    # failure above); its peak RSS was 44-533 MiB from run to run, so only reported
    print(f"fuzz child peak RSS {result['maxrss_kib'] // 1024} MiB")


@pytest.mark.parametrize("form", ["pcapng", "pcap", "pcapng_cut_short", "pcap_cut_short"])
def test_a_pipe_reads_like_the_file(form: str, tmp_path: Path) -> None:
    """`tcpdump -w - | usniff read /dev/stdin`: no seeking, same records, same damage."""
    data = to_pcap(_redis()) if form.startswith("pcap_") or form == "pcap" else _redis()
    if form.endswith("cut_short"):
        data = data[: len(data) - 7]
    path = tmp_path / "file.pcapng"
    path.write_bytes(data)
    from_file = subprocess.run([USNIFF, "read", str(path), "-A"], capture_output=True, timeout=60)
    from_pipe = subprocess.run(
        [USNIFF, "read", "/dev/stdin", "-A"], input=data, capture_output=True, timeout=60
    )
    assert from_pipe.stdout == from_file.stdout and len(from_file.stdout) > 1000
    assert from_pipe.returncode == from_file.returncode == (1 if "cut" in form else 0)
    assert from_pipe.stderr.replace(b"/dev/stdin", str(path).encode()) == from_file.stderr
