"""The extcap interface, as the real tshark sees it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pcap_helpers import REDIS_EXCHANGE, TSHARK, Conn, tshark

from usniff.cli import extcap
from usniff.events import CaptureStats
from usniff.outputs.base import Output

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert extcap.main(list(argv)) == 0
    return capsys.readouterr().out


def test_protocol_answers(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_main(capsys, "--extcap-interfaces")
    assert "interface {value=usniff}{display=Unix sockets (usniff)}" in out
    assert run_main(capsys, "--extcap-dlts", "--extcap-interface", "usniff").startswith(
        "dlt {number=101}"
    )
    config = run_main(capsys, "--extcap-config", "--extcap-interface", "usniff")
    assert "{call=--path}" in config and "{call=--pid}" in config
    assert "value {arg=2}{value=resp}{display=resp}{default=false}" in config
    assert extcap.main(["--extcap-dlts", "--extcap-interface", "eth0"]) == 1


@pytest.fixture
def installed() -> object:
    """The launcher in Wireshark's own extcap directory (tshark ignores
    WIRESHARK_EXTCAP_DIR when run as root, and the venv's python is not
    reachable by other users here)."""
    directory = extcap.extcap_dir()
    if not os.access(os.path.dirname(directory.rstrip("/")) or "/", os.W_OK):
        pytest.skip(f"cannot write to Wireshark's extcap directory {directory}")
    path = extcap.install(directory)
    yield path
    os.unlink(path)


def test_tshark_lists_and_configures_the_interface(installed: str) -> None:
    assert os.access(installed, os.X_OK)
    assert "usniff (Unix sockets (usniff))" in tshark("-D")
    assert "RAW (Unix sockets as TCP/IPv4)" in tshark("-i", "usniff", "-L")


def test_capture_writes_pcapng_into_the_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    seen: list[extcap.CaptureOptions] = []

    def source(options: extcap.CaptureOptions, output: Output) -> None:
        seen.append(options)
        output.write(Conn().exchange(REDIS_EXCHANGE))
        output.close(CaptureStats())

    assert TSHARK
    reader = subprocess.Popen(
        [TSHARK, "-r", str(fifo), "-Y", "resp", "-T", "fields", "-e", "resp.bulk_string.value"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    argv = ["--capture", "--extcap-interface", "usniff", "--fifo", str(fifo), "--path", "/run/x"]
    try:
        assert extcap.main(argv, source) == 0
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait()
    assert seen[0].path == "/run/x" and seen[0].pid is None
    assert out.splitlines()[0] == "534554,6b6579,76616c7565"


@pytest.fixture
def extcap_dir(tmp_path: Path) -> str:
    """A private extcap directory holding only the launcher (tshark run as
    root reads only its global directory: `in_extcap_dir` bind-mounts this one
    over it, in a mount namespace of its own)."""
    directory = tmp_path / "extcap"
    extcap.install(str(directory))
    return str(directory)


def in_extcap_dir(directory: str, *argv: str) -> list[str]:
    """``argv`` run with ``directory`` as Wireshark's extcap directory."""
    target = extcap.extcap_dir()
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private",
            "sh", "-c", script, "sh", directory, target, *argv]  # fmt: skip


@pytest.mark.root
def test_tshark_autostop_ends_the_capture_quietly(extcap_dir: str, tmp_path: Path) -> None:
    # tshark -a duration:3 closes the fifo, then stops the launcher: the
    # pcapng's last blocks meet a closed pipe.  That once ended in a Python
    # BrokenPipeError traceback that tshark showed as "Error by extcap pipe".
    assert TSHARK
    marker = b"usniff-extcap-marker"
    out = tmp_path / "out.pcapng"
    tshark_run = subprocess.Popen(
        in_extcap_dir(extcap_dir, TSHARK, "-i", "usniff", "-a", "duration:3", "-w", str(out)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    a, b = socket.socketpair()
    try:
        while tshark_run.poll() is None:  # traffic for the whole capture
            a.sendall(marker)
            b.recv(len(marker))
            time.sleep(0.05)
        _, err = tshark_run.communicate(timeout=60)
    finally:
        a.close()
        b.close()
        if tshark_run.poll() is None:
            tshark_run.kill()
    assert tshark_run.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    # and the capture before the stop reached tshark intact
    found = tshark("-r", str(out), "-Y", f'tcp.payload contains "{marker.decode()}"')
    assert found.count("\n") >= 2, found
