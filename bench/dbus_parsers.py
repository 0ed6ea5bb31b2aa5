"""D-Bus message parsing per second of CPU, in-process, on this machine.

    .venv/bin/python -m bench.dbus_parsers

The binary messages of captures/dbus.pcapng (a real dbus-daemon session) parsed by
usniff's ``dbus.parse`` (header fields and body values), by dbus-fast's compiled
``Unmarshaller`` and by jeepney's ``Message.from_buffer`` (both kept out of the
decoder: they do not survive hostile bytes, docs/decoders.md); then the whole
``DbusDecoder`` on the capture's sessions and on a stream of calls and replies.
CPU time (``time.process_time``), so a machine shared with other work still gives
comparable figures.  Not a test.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

from dbus_fast._private.unmarshaller import Unmarshaller
from jeepney import DBusAddress, new_method_call, new_method_return
from jeepney.low_level import Message as JeepneyMessage

from tests.support.captures import capture
from usniff.decoders.base import Transaction
from usniff.decoders.dbus import DbusDecoder, Msg, Reader, parse
from usniff.streams import Direction, conn_key

ROUNDS = 200


def sessions() -> list[list[tuple[Direction, bytes]]]:
    conns: dict[object, list[tuple[Direction, bytes]]] = {}
    for rec in capture("dbus"):
        if rec.kind == "data":
            direction = Direction.SERVER if rec.path_is_own else Direction.CLIENT
            conns.setdefault(conn_key(rec), []).append((direction, rec.data))
    return list(conns.values())


def messages(conns: list[list[tuple[Direction, bytes]]]) -> list[Msg]:
    found: list[Msg] = []
    for steps in conns:
        readers = (Reader(True), Reader(False))
        for direction, data in steps:
            found += [m for m in readers[direction].feed(data, 0.0) if isinstance(m, Msg)]
    return found


def dbus_fast(m: Msg) -> object:
    return Unmarshaller(io.BytesIO(m.data)).unmarshall()  # type: ignore[arg-type]


def rate(msgs: list[Msg], parser: Callable[[Msg], object]) -> float:
    start = time.process_time()
    for _ in range(ROUNDS):
        for m in msgs:
            parser(m)
    return ROUNDS * len(msgs) / (time.process_time() - start)


def decoder_rate(conns: list[list[tuple[Direction, bytes]]]) -> float:
    start, n = time.process_time(), 0
    for _ in range(ROUNDS):
        for steps in conns:
            decoder = DbusDecoder()
            for direction, data in steps:
                n += sum(isinstance(e, Transaction) for e in decoder.feed(direction, data, 1.0))
            n += len(decoder.close())
    return n / (time.process_time() - start)


def steady_rate(n: int = 2000) -> float:
    """Calls (``Echo(sa{sv})``, built by jeepney) and their replies, one pair at a time."""
    target = DBusAddress("/org/usniff/Demo", "org.usniff.Demo", "org.usniff.Demo")
    pairs = []
    for i in range(1, n + 1):
        call = new_method_call(target, "Echo", "sa{sv}", ("hello", {"k": ("u", i)}))
        data = call.serialise(serial=i)
        reply = new_method_return(JeepneyMessage.from_buffer(data), "s", ("hello",))
        pairs.append((data, reply.serialise(serial=n + i)))
    start, done = time.process_time(), 0
    for _ in range(ROUNDS // 40):
        decoder = DbusDecoder()
        for call_bytes, reply_bytes in pairs:
            decoder.feed(Direction.CLIENT, call_bytes, 1.0)
            done += len(decoder.feed(Direction.SERVER, reply_bytes, 1.1))
    return done / (time.process_time() - start)


def main() -> None:
    conns = sessions()
    msgs = messages(conns)
    print(f"{len(msgs)} messages, {sum(m.size for m in msgs)} bytes, {ROUNDS} rounds")
    parsers: dict[str, Callable[[Msg], object]] = {
        "usniff dbus.parse": parse,
        "dbus-fast Unmarshaller (compiled)": dbus_fast,
        "jeepney Message.from_buffer": lambda m: JeepneyMessage.from_buffer(m.data, fds=[0] * 8),
    }
    for name, parser in parsers.items():
        print(f"{name:36s} {rate(msgs, parser):>10,.0f} messages/s")
    print(f"{'DbusDecoder, whole sessions':36s} {decoder_rate(conns):>10,.0f} transactions/s")
    print(f"{'DbusDecoder, call/reply stream':36s} {steady_rate():>10,.0f} calls/s")


if __name__ == "__main__":
    main()
