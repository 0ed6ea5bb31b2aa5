"""Capture files made by hand, in either byte order, and damaged on purpose.

Shared by tests/test_pcapread_damaged.py (regression files checked against
tshark) and its fuzz test.  Packets come from the real captures in
captures/ (usniff files of a real redis-server and MariaDB, raw IPv4).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

CAPTURES = Path(__file__).resolve().parent.parent / "captures"

BT_SHB, BT_IDB, BT_PB, BT_SPB, BT_NRB, BT_ISB, BT_EPB = 0x0A0D0D0A, 1, 2, 3, 4, 5, 6
BT_CUSTOM = 0x00000BAD
LINKTYPE_RAW = 101
IF_TSRESOL, IF_TSOFFSET = 9, 14


# ---------------------------------------------------------------- pcapng by hand


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


END = b"\0\0\0\0"


def block(e: str, btype: int, body: bytes, total: int | None = None) -> bytes:
    """A block; ``total`` overrides the length written at both ends."""
    n = 12 + len(body) if total is None else total
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str = "<", opts: bytes = b"", major: int = 1) -> bytes:
    return block(e, BT_SHB, struct.pack(e + "IHHq", 0x1A2B3C4D, major, 0, -1) + opts + END)


def idb(e: str = "<", opts: bytes = b"", linktype: int = LINKTYPE_RAW, snaplen: int = 0) -> bytes:
    return block(e, BT_IDB, struct.pack(e + "HHI", linktype, 0, snaplen) + opts + END)


def epb(e: str, iface: int, units: int, data: bytes, opts: bytes = b"") -> bytes:
    head = struct.pack(e + "5I", iface, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(e, BT_EPB, head + data + b"\0" * (-len(data) % 4) + opts + END)


def pb(e: str, iface: int, units: int, data: bytes) -> bytes:
    head = struct.pack(e + "HH4I", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
    return block(e, BT_PB, head + data + b"\0" * (-len(data) % 4) + END)


def spb(e: str, data: bytes) -> bytes:
    return block(e, BT_SPB, struct.pack(e + "I", len(data)) + data + b"\0" * (-len(data) % 4))


def comment(e: str, text: bytes) -> bytes:
    return opt(e, 1, text)


# ---------------------------------------------------------------- real packets


def blocks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, whole block) of a little-endian pcapng file."""
    pos = 0
    while pos + 12 <= len(data):
        btype, total = struct.unpack_from("<II", data, pos)
        yield btype, data[pos : pos + total]
        pos += total


def real_packets(name: str = "redis", n: int = 12) -> list[bytes]:
    """IPv4 packets (no link header) of the first ``n`` EPBs of captures/NAME.pcapng."""
    out = []
    for btype, blk in blocks((CAPTURES / f"{name}.pcapng").read_bytes()):
        if btype == BT_EPB:
            caplen = struct.unpack_from("<I", blk, 20)[0]
            out.append(blk[28 : 28 + caplen])
            if len(out) == n:
                break
    return out


# ---------------------------------------------------------------- byte order


def _swap_options(body: bytes, widths: dict[int, str]) -> bytes:
    """Options of a little-endian block in big-endian; values of the codes in
    ``widths`` (struct format of their numbers) swapped, others kept."""
    out = bytearray()
    pos = 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from("<HH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if code in widths:
            fmt = widths[code]
            value = struct.pack(">" + fmt, *struct.unpack("<" + fmt, value))
        out += struct.pack(">HH", code, length) + value
        out += b"\0" * (-length % 4)
        pos += 4 + length + (-length % 4)
        if code == 0:
            break
    return bytes(out)


def to_big_endian(data: bytes) -> bytes:
    """A little-endian pcapng file (SHB, IDB, NRB, EPB, ISB as usniff writes
    them) rewritten in big-endian byte order."""
    out = bytearray()
    for btype, blk in blocks(data):
        body = blk[8:-4]
        if btype == BT_SHB:
            new = struct.pack(">IHHq", *struct.unpack_from("<IHHq", body)) + _swap_options(
                body[16:], {}
            )
        elif btype == BT_IDB:
            new = struct.pack(">HHI", *struct.unpack_from("<HHI", body)) + _swap_options(
                body[8:], {IF_TSOFFSET: "q"}
            )
        elif btype == BT_EPB:
            fields = struct.unpack_from("<5I", body)
            padded = fields[3] + (-fields[3] % 4)
            new = (
                struct.pack(">5I", *fields)
                + body[20 : 20 + padded]
                + _swap_options(body[20 + padded :], {2: "I"})
            )
        elif btype == BT_NRB:
            new = _swap_options(body, {})  # records: same layout as options, values in order
        elif btype == BT_ISB:
            new = struct.pack(">3I", *struct.unpack_from("<3I", body)) + _swap_options(
                body[12:], {2: "II", 3: "II", 4: "Q", 5: "Q", 8: "Q"}
            )
        else:
            raise ValueError(f"block type {btype} not converted")
        out += block(">", btype, new)
    return bytes(out)


# ---------------------------------------------------------------- classic pcap


def to_pcap(data: bytes, endian: str = "<", nanoseconds: bool = False) -> bytes:
    """The packets of a little-endian usniff pcapng file (raw IP, microsecond
    timestamps) as a classic pcap file."""
    magic = 0xA1B23C4D if nanoseconds else 0xA1B2C3D4
    out = bytearray(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
    for btype, blk in blocks(data):
        if btype != BT_EPB:
            continue
        _, hi, lo, caplen, origlen = struct.unpack_from("<5I", blk, 8)
        usec = (hi << 32) | lo
        frac = usec % 1_000_000 * (1000 if nanoseconds else 1)
        out += struct.pack(endian + "4I", usec // 1_000_000, frac, caplen, origlen)
        out += blk[28 : 28 + caplen]
    return bytes(out)


# ---------------------------------------------------------------- mutations


def window(data: bytes, rng: random.Random, most: int = 12) -> bytes:
    """The first blocks (SHB, IDB, names) of a little-endian pcapng file and a
    run of up to ``most`` consecutive blocks from anywhere after them."""
    every = [blk for _, blk in blocks(data)]
    head = 2
    start = rng.randrange(head, len(every))
    return b"".join(every[:head] + every[start : start + rng.randint(1, most)])


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy: cut short, bytes flipped / replaced / inserted /
    deleted, 32-bit fields set to edge values, or junk appended."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if not buf:
            break
        pos = rng.randrange(len(buf))
        kind = rng.randrange(8)
        if kind == 0:
            return bytes(buf[: rng.randrange(len(buf))])  # cut short
        if kind == 1:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:
            buf[pos] = rng.randrange(256)
        elif kind == 3:
            word = rng.choice((0, 1, 7, 8, 11, 12, 13, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF))
            aligned = pos - pos % 4
            buf[aligned : aligned + 4] = word.to_bytes(4, rng.choice(("little", "big")))
        elif kind == 4:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif kind == 5:
            del buf[pos : pos + rng.randint(1, 8)]
        elif kind == 6:
            buf += rng.randbytes(rng.randint(1, 64))  # junk after the end
        else:
            size = rng.randint(1, 16)  # a copy of another run of bytes
            src = rng.randrange(len(buf))
            buf[pos : pos + size] = buf[src : src + size]
    return bytes(buf)


def damaged_file(rng: random.Random, captures: list[bytes]) -> bytes:
    """One fuzz input: a real capture (usually a window of it), in one of the
    five encodings (pcapng either byte order, pcap either byte order, micro-
    or nanoseconds), then mutated."""
    data = rng.choice(captures)
    if rng.random() < 0.95:
        data = window(data, rng)
    form = rng.randrange(5)
    if form == 1:
        data = to_big_endian(data)
    elif form >= 2:
        data = to_pcap(data, "<" if form == 2 else ">", nanoseconds=form == 4)
    return mutate(data, rng)


def fuzz(seed: int, count: int, cli_every: int, workdir: str) -> dict[str, object]:
    """Read ``count`` damaged files with :func:`usniff.cli.read.read_records`
    and every ``cli_every``-th one with ``usniff read`` (in-process, each
    output mode in turn).  Returns counts and the first failures: any
    exception but PcapReadError, or an exit status that does not say
    whether the file was damaged."""
    import traceback

    from click.testing import CliRunner

    from usniff.cli.main import main
    from usniff.cli.read import PcapReadError, read_records

    modes = [[], ["-A"], ["-X"], ["--format", "json"], ["--stats"], ["--protocol", "mysql"]]
    rng = random.Random(seed)
    captures = [(CAPTURES / f"{name}.pcapng").read_bytes() for name in ("redis", "mysql")]
    path = str(Path(workdir) / f"fuzz-{seed}.bin")
    runner = CliRunner()
    failures: list[str] = []
    damaged = cli_runs = 0
    for n in range(count):
        with open(path, "wb") as f:
            f.write(damaged_file(rng, captures))
        is_damaged = False
        try:
            for _ in read_records(path):
                pass
        except PcapReadError:
            is_damaged = True
        except Exception:  # noqa: BLE001 (what the test looks for)
            failures.append(f"input {n}: {traceback.format_exc()}")
        damaged += is_damaged
        if n % cli_every == 0:
            cli_runs += 1
            result = runner.invoke(main, ["read", path, *modes[cli_runs % len(modes)]])
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                exc = result.exception
                failures.append(f"input {n} (cli): {''.join(traceback.format_exception(exc))}")
            elif result.exit_code != is_damaged or is_damaged != (
                f"Error: {path}: " in result.output
            ):
                failures.append(f"input {n} (cli): exit {result.exit_code}: {result.output[-300:]}")
        if len(failures) >= 5:
            break
    return {"files": n + 1, "damaged": damaged, "cli_runs": cli_runs, "failures": failures}
