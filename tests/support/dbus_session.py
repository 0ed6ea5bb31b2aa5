"""A real dbus-daemon on a private socket, a Python service on it, and the scripted
session the D-Bus tests watch (and what its clients saw: the ground truth).

    with start_dbus(tmp) as sock: ...          # dbus-daemon --config-file (tmp/bus.conf)
    with demo_service(sock): ...               # org.usniff.Demo, at /org/usniff/Demo
    session = dbus_session(sock)               # busctl, dbus-send, a dbus-fast client

The service (``python -m tests.support.dbus_session serve ADDRESS``, dbus-fast) exposes
``Echo(s) -> s``, ``Sleep(u ms) -> u`` (answers after ``ms`` milliseconds: calls
made at once are answered out of order), ``Fail()`` (an error) and
``Emit(u n)`` (sends the signal ``Tick(u)`` ``n`` times, then returns ``n``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dbus_fast import DBusError, Message
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDict, DBusStr, DBusUInt32
from dbus_fast.service import ServiceInterface, method, signal
from jeepney import HeaderFields as JHeaderFields
from jeepney import MessageType as JMessageType
from jeepney import Parser as JParser
from jeepney import new_method_return

from .servers import _running

NAME = "org.usniff.Demo"
PATH = "/org/usniff/Demo"
IFACE = "org.usniff.Demo"
ERROR_NAME = "org.usniff.Demo.Error.Failed"
ERROR_TEXT = "it failed on purpose"
SECRET = "pw-dbus-secret-1"  # sent under the key "password": --redact masks it
TICKS = 3
SLEEPS = (300, 10, 150)  # ms: Sleep calls made at once on one connection, answered 10, 150, 300
READY = "demo service ready"
ROOT = Path(__file__).resolve().parents[2]  # where ``python -m tests.support...`` runs

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={sock}</listen>
  <auth>{auth}</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@contextlib.contextmanager
def start_dbus(tmpdir: str | os.PathLike[str], auth: str = "EXTERNAL") -> Iterator[str]:
    """Run dbus-daemon with a private config on ``tmpdir/bus-AUTH``, accepting only the
    SASL mechanism ``auth``; yield the socket path.  Its HOME is ``tmpdir`` (where
    DBUS_COOKIE_SHA1 keeps its keyring: clients must run with the same HOME)."""
    d = Path(tmpdir)
    sock = d / f"bus-{auth.lower()}"
    conf = d / f"bus-{auth.lower()}.conf"
    conf.write_text(BUS_CONF.format(sock=sock, auth=auth))
    args = ["env", f"HOME={d}", "dbus-daemon", "--nofork", "--nopidfile", f"--config-file={conf}"]
    with _running(args, sock, 10, d / f"dbus-daemon-{auth.lower()}.log") as path:
        yield path


def address(sock: str) -> str:
    return f"unix:path={sock}"


@contextlib.contextmanager
def demo_service(sock: str) -> Iterator[subprocess.Popen[str]]:
    args = [sys.executable, "-m", "tests.support.dbus_session", "serve", address(sock)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == READY, line
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Session:
    """The calls of the demo interface each client made, and what they got."""

    calls: Counter[str] = field(default_factory=Counter)  # member -> calls made (all clients)
    no_reply: int = 0  # of them, sent with NO_REPLY_EXPECTED
    errors: int = 0  # answered with ERROR_NAME
    replies: dict[str, str] = field(default_factory=dict)  # what a client printed, by label
    sleep_order: list[int] = field(default_factory=list)  # Sleep replies as they came


def _run(*args: str) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    return out.stdout + out.stderr


def dbus_session(sock: str) -> Session:
    """busctl and dbus-send calls (a reply, an error, a call without reply, a signal
    sent by a client), then a dbus-fast client: Sleep calls at once (replies out of
    order), Emit (signals from the service)."""
    s = Session()
    bus = address(sock)
    s.replies["busctl Echo"] = _run("busctl", f"--address={bus}", "call", NAME, PATH, IFACE,
                                    "Echo", "s", "hello busctl")  # fmt: skip
    s.calls["Echo"] += 1
    s.replies["dbus-send Echo"] = _run("dbus-send", f"--bus={bus}", "--print-reply",
                                       f"--dest={NAME}", PATH, f"{IFACE}.Echo",
                                       "string:hello dbus-send")  # fmt: skip
    s.calls["Echo"] += 1
    s.replies["dbus-send Fail"] = _run("dbus-send", f"--bus={bus}", "--print-reply",
                                       f"--dest={NAME}", PATH, f"{IFACE}.Fail")  # fmt: skip
    s.calls["Fail"] += 1
    s.errors += 1
    _run("busctl", f"--address={bus}", "--expect-reply=no", "call", NAME, PATH, IFACE, "Echo",
         "s", "no reply")  # NO_REPLY_EXPECTED  # fmt: skip
    s.calls["Echo"] += 1
    s.no_reply += 1
    s.replies["busctl Login"] = _run("busctl", f"--address={bus}", "call", NAME, PATH, IFACE,
                                     "Login", "a{sv}", "2", "user", "s", "ann", "password", "s",
                                     SECRET)  # fmt: skip
    s.calls["Login"] += 1
    asyncio.run(_client(bus, s))
    return s


def served_session(sock: str) -> Session:
    """dbus_session with the demo service running (captures/record_live.py)."""
    with demo_service(sock):
        return dbus_session(sock)


def cookie_session(sock: str) -> str:
    """One call authenticated by DBUS_COOKIE_SHA1 (dbus-send, HOME as the daemon's);
    returns what dbus-send printed."""
    env = {**os.environ, "HOME": str(Path(sock).parent)}
    out = subprocess.run(["dbus-send", f"--bus={address(sock)}", "--print-reply",
                          "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus.GetId"],
                         capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _client(bus: str, s: Session) -> None:
    conn = await MessageBus(bus_address=bus).connect()
    try:

        async def sleep(ms: int) -> None:
            reply = await conn.call(Message(destination=NAME, path=PATH, interface=IFACE,
                                            member="Sleep", signature="u", body=[ms]))  # fmt: skip
            assert reply is not None
            s.sleep_order.append(reply.body[0])

        await asyncio.gather(*(sleep(ms) for ms in SLEEPS))
        s.calls["Sleep"] += len(SLEEPS)
        reply = await conn.call(Message(destination=NAME, path=PATH, interface=IFACE,
                                        member="Emit", signature="u", body=[TICKS]))  # fmt: skip
        assert reply is not None and reply.body == [TICKS], reply
        s.calls["Emit"] += 1
    finally:
        conn.disconnect()


# --------------------------------------------------------------------------- peer to peer


@contextlib.contextmanager
def p2p_server(sock: str) -> Iterator[str]:
    """A peer-to-peer D-Bus server (no bus daemon, as systemd's private socket) on
    ``sock``: the SASL handshake by hand (EXTERNAL accepted), then every method call
    answered with the string ``"p2p <member>"`` (jeepney)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock)
    listener.listen()

    def serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"BEGIN\r\n" not in buf:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf and not buf.lstrip(b"\0").startswith(b"BEGIN\r\n"):
                    line, buf = buf.split(b"\r\n", 1)
                    word = line.lstrip(b"\0").split(b" ")[0]
                    answer = {
                        b"AUTH": b"OK 0123456789abcdef0123456789abcdef",
                        b"NEGOTIATE_UNIX_FD": b"AGREE_UNIX_FD",
                    }.get(word, b"ERROR")
                    conn.sendall(answer + b"\r\n")  # fmt: skip
            parser = JParser()
            messages = parser.feed(buf.split(b"BEGIN\r\n", 1)[1])
            while True:
                for msg in messages:
                    if msg.header.message_type is JMessageType.method_call:
                        member = msg.header.fields[JHeaderFields.member]
                        reply = new_method_return(msg, "s", (f"p2p {member}",))
                        conn.sendall(reply.serialise(serial=msg.header.serial + 1000))
                data = conn.recv(65536)
                if not data:
                    return
                messages = parser.feed(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield sock
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def p2p_call(sock: str, member: str) -> str:
    """dbus-send on a peer-to-peer connection (--address: no Hello); what it printed."""
    out = subprocess.run(["dbus-send", f"--address={address(sock)}", "--print-reply",
                          f"--dest={NAME}", PATH, f"{IFACE}.{member}", "string:peer"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


# --------------------------------------------------------------------------- the service


class Demo(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(IFACE)

    @method()
    def Echo(self, text: DBusStr) -> DBusStr:
        return text

    @method()
    async def Sleep(self, ms: DBusUInt32) -> DBusUInt32:
        await asyncio.sleep(ms / 1000)
        return ms

    @method()
    def Login(self, settings: DBusDict) -> DBusBool:
        return bool(settings["password"].value == SECRET)

    @method()
    def Fail(self):  # type: ignore[no-untyped-def]  # dbus-fast refuses "-> None"
        raise DBusError(ERROR_NAME, ERROR_TEXT)

    @method()
    def Emit(self, n: DBusUInt32) -> DBusUInt32:
        for i in range(n):
            self.Tick(i)
        return n

    @signal()
    def Tick(self, i: int) -> DBusUInt32:
        return i


async def _serve(bus: str) -> None:
    conn = await MessageBus(bus_address=bus).connect()
    conn.export(PATH, Demo())
    await conn.request_name(NAME)
    print(READY, flush=True)
    await conn.wait_for_disconnect()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    asyncio.run(_serve(sys.argv[2]))
