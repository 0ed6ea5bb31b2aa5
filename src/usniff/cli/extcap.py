"""Wireshark extcap: "Unix sockets (usniff)" in Wireshark's interface list.

Wireshark runs the launcher that :func:`install` puts into its extcap
directory (``usniff extcap --install``) with ``--extcap-interfaces``,
``--extcap-dlts``, ``--extcap-config`` to learn about the interface, then with
``--capture --fifo PATH`` to capture: we write pcapng into the fifo until
Wireshark stops us with SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from usniff import __version__
from usniff.decoders.registry import DECODABLE
from usniff.outputs.base import Output, OutputError
from usniff.outputs.pcapng import LINKTYPE_RAW, PcapngOutput

INTERFACE = "usniff"
DISPLAY = "Unix sockets (usniff)"
LAUNCHER = "usniff-extcap"
PROTOCOLS = ("auto", *DECODABLE)


@dataclass
class CaptureOptions:
    """What the user chose in Wireshark's interface options dialog."""

    path: str | None = None
    pid: int | None = None
    protocol: str = "auto"
    capture_filter: str | None = None


CaptureFunction = Callable[[CaptureOptions, Output], None]


def interfaces_text() -> str:
    return (
        f"extcap {{version={__version__}}}{{help=https://github.com/usniff/usniff}}\n"
        f"interface {{value={INTERFACE}}}{{display={DISPLAY}}}\n"
    )


def dlts_text() -> str:
    return f"dlt {{number={LINKTYPE_RAW}}}{{name=RAW}}{{display=Unix sockets as TCP/IPv4}}\n"


def config_text() -> str:
    lines = [
        "arg {number=0}{call=--path}{display=Socket path}{type=string}"
        "{tooltip=Only this socket (file path, or @name for an abstract socket); empty: all}",
        "arg {number=1}{call=--pid}{display=Process ID}{type=integer}{range=0,4194304}"
        "{default=0}{tooltip=Only sockets of this process; 0: all}",
        "arg {number=2}{call=--protocol}{display=Protocol}{type=selector}"
        "{tooltip=Protocol to decode (auto: guess from the first bytes)}",
    ]
    lines += [
        f"value {{arg=2}}{{value={p}}}{{display={p}}}{{default={str(p == 'auto').lower()}}}"
        for p in PROTOCOLS
    ]
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="usniff extcap", description=DISPLAY)
    parser.add_argument("--extcap-interfaces", action="store_true")
    parser.add_argument("--extcap-dlts", action="store_true")
    parser.add_argument("--extcap-config", action="store_true")
    parser.add_argument("--extcap-interface")
    parser.add_argument("--extcap-version")
    parser.add_argument("--extcap-capture-filter")
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--fifo")
    parser.add_argument("--path")
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="auto")
    parser.add_argument("--install", action="store_true", help="install the Wireshark launcher")
    parser.add_argument("--install-dir", help="extcap directory (default: Wireshark's)")
    return parser


def _default_capture() -> CaptureFunction:
    module = importlib.import_module("usniff.cli.loop")
    run: CaptureFunction = module.run_capture
    return run


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # Wireshark's "stop": unwinds run_capture's finally blocks


def main(argv: Sequence[str] | None = None, capture: CaptureFunction | None = None) -> int:
    """Entry point of the launcher; ``capture`` defaults to
    ``usniff.cli.loop.run_capture(options, output)``, which must write
    batches to ``output`` until stopped and then close it."""
    args = _parser().parse_args(argv)
    if args.install:
        print(f"installed {install(args.install_dir)}")
        return 0
    if args.extcap_interfaces:
        sys.stdout.write(interfaces_text())
        return 0
    if args.extcap_interface and args.extcap_interface != INTERFACE:
        print(f"unknown interface {args.extcap_interface!r}", file=sys.stderr)
        return 1
    if args.extcap_dlts:
        sys.stdout.write(dlts_text())
        return 0
    if args.extcap_config:
        sys.stdout.write(config_text())
        return 0
    if args.capture:
        if not args.fifo:
            print("--capture needs --fifo", file=sys.stderr)
            return 1
        options = CaptureOptions(
            path=args.path or None,
            pid=args.pid or None,
            protocol=args.protocol,
            capture_filter=args.extcap_capture_filter or None,
        )
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            (capture or _default_capture())(options, PcapngOutput(args.fifo))
        except OutputError as e:
            if isinstance(e.__cause__, BrokenPipeError):
                return 0  # Wireshark closed the fifo (its stop, e.g. tshark -a): done
            print(f"usniff: {e}", file=sys.stderr)  # Wireshark shows our stderr
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    _parser().print_usage(sys.stderr)
    return 1


def extcap_dir() -> str:
    """Wireshark's personal extcap directory if it has one, else the global one
    (as ``tshark -G folders`` reports them)."""
    tshark = shutil.which("tshark")
    if tshark:
        out = subprocess.run(
            [tshark, "-G", "folders"], capture_output=True, text=True, check=False
        ).stdout
        found = dict(re.findall(r"^(Personal Extcap path|Extcap path):\s*(\S.*)$", out, re.M))
        for key in ("Personal Extcap path", "Extcap path"):
            if key in found:
                return str(found[key]).strip()
    return os.path.expanduser("~/.local/lib/wireshark/extcap")


def install(directory: str | None = None) -> str:
    """Write the launcher script into ``directory`` (default :func:`extcap_dir`)."""
    directory = directory or extcap_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LAUNCHER)
    script = f'#!/bin/sh\nexec {sys.executable} -m usniff.cli.extcap "$@"\n'
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(script)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    sys.exit(main())
