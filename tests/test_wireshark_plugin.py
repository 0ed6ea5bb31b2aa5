"""usniff's Wireshark Lua plugin in the real tshark: its usniff.* fields equal the
packet comments as usniff's own codec reads them, and FastCGI is dissected on
usniff's port with no option typed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.pcap_helpers import REDIS_EXCHANGE, Conn
from tests.support.tshark import TSHARK, follow_all
from usniff.cli.main import main
from usniff.containers import Containers, Identity
from usniff.events import CaptureStats
from usniff.formats.pcapng import parse_comment
from usniff.outputs.pcapng import PcapngOutput

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
FIELDS = ("pid", "tid", "uid", "comm", "inode", "peer_inode", "peer_pid", "peer_comm", "path",
          "cgroup", "cgroup_path", "container", "pod", "peer_cgroup", "peer_cgroup_path",
          "peer_container", "peer_pod")  # fmt: skip


def tshark(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert TSHARK
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([TSHARK, *args], capture_output=True, text=True, env=env, timeout=120)


def install(home: Path) -> None:
    result = CliRunner(env={"HOME": str(home)}).invoke(main, ["wireshark", "--install"])
    assert result.exit_code == 0, result.output
    assert (home / ".local/lib/wireshark/plugins/usniff.lua").is_file()


def plugin_fields(home: Path, capture: Path) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Per packet: the usniff.* fields the plugin gives, and the comment as
    usniff's codec parses it (the comment text as tshark reads it)."""
    args = ["-r", str(capture), "-T", "fields", "-E", "separator=\x1f", "-E", "occurrence=l"]
    for name in ("frame.comment", *(f"usniff.{k}" for k in FIELDS)):
        args += ["-e", name]
    out = tshark(home, *args)
    assert out.returncode == 0, out.stderr
    rows = []
    for line in out.stdout.splitlines():
        comment, *values = line.split("\x1f")
        got = {k: v for k, v in zip(FIELDS, values, strict=True) if v}
        want = {k: str(v) for k, v in parse_comment(comment).items() if k in FIELDS}
        if "peer" in parse_comment(comment):
            want["peer_inode"] = parse_comment(comment)["peer"]
        rows.append((got, want))
    return rows


@pytest.mark.parametrize("name", ["fastcgi", "redis", "mysql", "postgres", "http", "memcached"])
def test_fields_equal_the_comments(tmp_path: Path, name: str) -> None:
    install(tmp_path)
    rows = plugin_fields(tmp_path, CAPTURES / f"{name}.pcapng")
    with_meta = [(got, want) for got, want in rows if "pid" in want]
    assert with_meta, "no packet carries usniff's metadata"
    for got, want in with_meta:
        assert got == want


def test_escaped_names_and_paths_round_trip(tmp_path: Path) -> None:
    """Quotes, backslashes, non-ASCII (BMP and beyond) in process names and paths."""
    f = tmp_path / "odd.pcapng"
    conn = Conn(client_comm='a"b\\c é', server_comm="srv\U0001f600", path='/tmp/sp ace/"q".sock')
    out = PcapngOutput(str(f))
    out.write(conn.exchange(REDIS_EXCHANGE))
    out.close(CaptureStats())
    install(tmp_path)
    rows = [(g, w) for g, w in plugin_fields(tmp_path, f) if "pid" in w]
    assert {g["comm"] for g, _ in rows} == {'a"b\\c é', "srv\U0001f600"}
    for got, want in rows:
        assert got == want
    sel = tshark(tmp_path, "-r", str(f), "-Y", 'usniff.comm == "a\\"b\\\\c é"')
    assert sel.returncode == 0 and len(sel.stdout.splitlines()) == sum(
        g["comm"] == 'a"b\\c é' for g, _ in rows
    )


def test_container_fields_and_filter(tmp_path: Path) -> None:
    """The cgroup and container a record's comment names, as fields and in a filter."""
    f = tmp_path / "containers.pcapng"
    names = Containers(root="")
    names.learn(Identity(2**40 + 7, "/machine.slice/libpod-ab.scope", name="web-1", pod="ns/p"))
    names.learn(Identity(99, "/system.slice/redis.service"))
    records = Conn().exchange(REDIS_EXCHANGE)
    for rec in records:
        client = not rec.path_is_own
        rec.cgroup, rec.peer_cgroup = (2**40 + 7, 99) if client else (99, 2**40 + 7)
    out = PcapngOutput(str(f), containers=names)
    out.write(records)
    out.close(CaptureStats())
    install(tmp_path)
    rows = [(g, w) for g, w in plugin_fields(tmp_path, f) if "pid" in w]
    assert {(g["container"], g["cgroup"]) for g, _ in rows if "container" in g} == {
        ("web-1", str(2**40 + 7))
    }
    for got, want in rows:
        assert got == want
    sel = tshark(tmp_path, "-r", str(f), "-Y", 'usniff.container == "web-1"')
    peer = tshark(tmp_path, "-r", str(f), "-Y", 'usniff.peer_container == "web-1"')
    client = sum("container" in g for g, _ in rows)
    assert len(sel.stdout.splitlines()) == client > 0
    assert len(peer.stdout.splitlines()) == len(rows) - client > 0


def test_filter_selects_exactly_the_process_and_fastcgi_is_dissected(tmp_path: Path) -> None:
    capture = CAPTURES / "fastcgi.pcapng"
    without = tshark(tmp_path, "-r", str(capture), "-Y", 'usniff.comm == "php-fpm8.2"')
    assert without.returncode != 0  # stock Wireshark has no usniff.* fields
    assert tshark(tmp_path, "-r", str(capture), "-Y", "fcgi").stdout == ""
    install(tmp_path)
    php = [
        got for got, want in plugin_fields(tmp_path, capture) if want.get("comm") == "php-fpm8.2"
    ]
    sel = tshark(tmp_path, "-r", str(capture), "-Y", 'usniff.comm == "php-fpm8.2"')
    assert sel.returncode == 0 and len(sel.stdout.splitlines()) == len(php) > 0
    fcgi = tshark(tmp_path, "-r", str(capture), "-Y", "fcgi")
    assert fcgi.returncode == 0 and fcgi.stdout.count("FCGI") >= 4
    malformed = tshark(tmp_path, "-r", str(capture), "-Y", "_ws.malformed")
    assert malformed.stdout == ""


def test_uninstall_and_show(tmp_path: Path) -> None:
    install(tmp_path)
    runner = CliRunner(env={"HOME": str(tmp_path)})
    shown = runner.invoke(main, ["wireshark", "--show"])
    assert '{ 9000, "fcgi" }' in shown.output  # the registry's FastCGI port
    gone = runner.invoke(main, ["wireshark", "--uninstall"])
    assert (
        gone.exit_code == 0 and not (tmp_path / ".local/lib/wireshark/plugins/usniff.lua").exists()
    )
    assert runner.invoke(main, ["wireshark"]).exit_code == 2  # no action: a usage error


def _dbus_messages(data: bytes) -> int:
    """D-Bus messages in one direction's bytes: the SASL lines (and the client's
    credentials byte) skipped, then each message's length from its header."""
    if data.startswith(b"\0"):
        data = data[1:]
    count, at = 0, 0
    while at < len(data):
        if data[at : at + 1] in (b"l", b"B") and data[at + 3 : at + 4] == b"\x01":
            order = "little" if data[at : at + 1] == b"l" else "big"
            body = int.from_bytes(data[at + 4 : at + 8], order)
            header = 16 + int.from_bytes(data[at + 12 : at + 16], order)
            at += header + (-header % 8) + body
            count += 1
        else:
            at = data.index(b"\r\n", at) + 2
    return count


def test_dbus_messages_are_dissected_after_the_sasl_lines(tmp_path: Path) -> None:
    capture = str(CAPTURES / "dbus.pcapng")
    assert tshark(tmp_path, "-r", capture, "-Y", "dbus").stdout == ""  # stock: plain TCP
    install(tmp_path)
    want = sum(_dbus_messages(a) + _dbus_messages(b) for _, _, a, b in follow_all(capture).values())
    serials = tshark(tmp_path, "-r", capture, "-T", "fields", "-e", "dbus.serial")
    got = sum(len(line.split(",")) for line in serials.stdout.splitlines() if line)
    assert got == want > 50
    sasl = tshark(tmp_path, "-r", capture, "-Y", "usniff_dbus_sasl", "-T", "fields",
                  "-e", "usniff_dbus_sasl.line")  # fmt: skip
    assert "BEGIN" in sasl.stdout.split() and any(
        line.startswith("AUTH EXTERNAL") for line in sasl.stdout.splitlines()
    )
    malformed = tshark(tmp_path, "-r", capture, "-Y", "_ws.malformed")
    assert malformed.returncode == 0 and malformed.stdout == ""
