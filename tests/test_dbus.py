"""D-Bus decoder: the real capture (captures/dbus.pcapng, recorded by
`python -m captures.record_live dbus` from busctl, dbus-send and dbus-fast against a real
dbus-daemon) and wire cases built by jeepney (a second D-Bus implementation, both
endiannesses): pairing by reply_serial in either direction, NO_REPLY_EXPECTED, errors,
unix fds, SASL and --redact, gaps, cuts, resync, bounds, detection."""

from __future__ import annotations

from collections import Counter

import pytest
from jeepney import (
    DBusAddress,
    Endianness,
    Header,
    HeaderFields,
    MessageType,
    new_error,
    new_method_call,
    new_method_return,
    new_signal,
)
from jeepney import Message as JMessage
from jeepney.low_level import MessageFlag

from tests.support.captures import CAPTURES
from tests.support.replay import Step, drive
from usniff.cli.read import read_records
from usniff.decoders import dbus
from usniff.decoders.base import Notice, Transaction
from usniff.decoders.dbus import DbusDecoder
from usniff.decoders.engine import decode_records
from usniff.decoders.registry import detect
from usniff.streams import Direction

C, S = Direction.CLIENT, Direction.SERVER
DEMO = DBusAddress("/org/usniff/Demo", bus_name="org.usniff.Demo", interface="org.usniff.Demo")
HANDSHAKE = b"\0AUTH EXTERNAL 31303030\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n"
ANSWER = b"OK 0123456789abcdef0123456789abcdef\r\nAGREE_UNIX_FD\r\n"


def call(member: str, sig: str = "", body: tuple[object, ...] = (), serial: int = 1,
         endian: Endianness = Endianness.little, flags: int = 0) -> bytes:  # fmt: skip
    msg = new_method_call(DEMO, member, sig, body)
    msg.header.endianness = endian
    msg.header.flags = MessageFlag(flags)
    return msg.serialise(serial=serial)


def reply_to(
    request: bytes, sig: str = "", body: tuple[object, ...] = (), serial: int = 100
) -> bytes:
    parent = JMessage.from_buffer(request)
    return new_method_return(parent, sig, body).serialise(serial=serial)


def run(steps: list[Step], redact: bool = False) -> list[object]:
    return list(drive(DbusDecoder(redact=redact), steps))


def txs(events: list[object]) -> list[Transaction]:
    return [e for e in events if isinstance(e, Transaction)]


def demo(events: list[object]) -> list[Transaction]:
    return [t for t in txs(events) if t.command.startswith("org.usniff.Demo.")]


# --------------------------------------------------------------------------- the capture


@pytest.fixture(scope="module")
def captured() -> list[object]:
    return list(decode_records(read_records(str(CAPTURES / "dbus.pcapng"))))


def test_capture_every_call_paired(captured: list[object]) -> None:
    calls = demo(captured)
    made = Counter({"Echo": 3, "Sleep": 3, "Fail": 1, "Login": 1, "Emit": 1})  # dbus_session
    for caller in ("client", "server"):
        mine = [t for t in calls if t.details["caller"] == caller]
        assert Counter(str(t.details["member"]) for t in mine) == made
        for t in mine:
            if t.details.get("reply_suppressed"):  # busctl --expect-reply=no
                assert t.latency is None and not t.unanswered  # the flag is forwarded
            else:
                assert t.latency is not None and t.latency > 0, t
    assert not [e for e in captured if isinstance(e, Notice) and e.kind != "signal"]
    assert sum(t.error for t in calls) == 2  # Fail, on both connections


def test_capture_out_of_order_replies(captured: list[object]) -> None:
    sleeps = [t for t in demo(captured) if t.details["member"] == "Sleep"]
    client = [t for t in sleeps if t.details["caller"] == "client"]
    assert [t.reply for t in client] == ["(10)", "(150)", "(300)"]  # as the replies came
    assert sorted(t.details["serial"] for t in client) != [t.details["serial"] for t in client]
    for t in client:
        assert t.latency is not None and t.latency >= int(t.reply.strip("()")) / 1000


def test_capture_signals(captured: list[object]) -> None:
    ticks = [e.summary for e in captured if isinstance(e, Notice) and e.kind == "signal"
             and e.details.get("member") == "Tick"]  # fmt: skip
    assert ticks == [f"/org/usniff/Demo org.usniff.Demo.Tick({i})" for i in range(3)]


# --------------------------------------------------------------------------- wire cases


@pytest.mark.parametrize("endian", [Endianness.little, Endianness.big])
def test_call_and_return_both_endiannesses(endian: Endianness) -> None:
    req = call("Echo", "sa{sv}ay", ("hi", {"n": ("u", 7)}, b"\x00\x01"), 5, endian)
    rep = reply_to(req, "s", ("hi",))
    [tx] = demo(run([(C, HANDSHAKE), (S, ANSWER), (C, req), (S, rep)]))
    assert tx.command == "org.usniff.Demo.Echo"
    assert tx.request == (
        '-> org.usniff.Demo /org/usniff/Demo org.usniff.Demo.Echo("hi", {"n": 7}, b"\\x00\\x01")'
    )
    assert (tx.reply, tx.bytes_in, tx.bytes_out) == ('("hi")', len(req), len(rep))
    assert tx.details["signature"] == "sa{sv}ay" and tx.details["reply_serial"] == 5
    assert tx.details.get("endian") == ("big" if endian is Endianness.big else None)
    assert tx.latency == pytest.approx(0.001)


def test_handshake_transactions() -> None:
    events = run([(C, HANDSHAKE), (S, ANSWER)])
    assert [(t.command, t.request, t.reply) for t in txs(events)] == [
        ("BEGIN", "BEGIN", ""),
        ("AUTH EXTERNAL", "AUTH EXTERNAL 31303030 (1000)", "OK 0123456789abcdef0123456789abcdef"),
        ("NEGOTIATE_UNIX_FD", "NEGOTIATE_UNIX_FD", "AGREE_UNIX_FD"),
    ]
    assert txs(events)[1].bytes_in == len(b"\0AUTH EXTERNAL 31303030\r\n")  # the NUL counted


def test_cookie_sha1_response_masked() -> None:
    challenge = b"org_freedesktop_general 1 abcdef".hex().encode()
    response = b"0123abcd deadbeefcafe".hex().encode()
    steps: list[tuple[Direction, bytes | int]] = [
        (C, b"\0AUTH DBUS_COOKIE_SHA1 726f6f74\r\n"), (S, b"DATA " + challenge + b"\r\n"),
        (C, b"DATA " + response + b"\r\n"), (S, b"OK 0123\r\n"), (C, b"BEGIN\r\n"),
    ]  # fmt: skip
    shown = [(t.request, t.reply) for t in txs(run(steps, redact=True))]
    assert shown[0] == ("AUTH DBUS_COOKIE_SHA1 ***", f"DATA {challenge.decode()} "
                        '("org_freedesktop_general 1 abcdef")')  # fmt: skip
    assert shown[1] == ("DATA ***", "OK 0123")
    plain = [t.request for t in txs(run(steps))]
    assert plain[1] == f'DATA {response.decode()} ("0123abcd deadbeefcafe")'


def test_redact_secret_keys_and_secret_service() -> None:
    req = call("Login", "a{sv}", ({"user": ("s", "ann"), "Password": ("s", "hunter2")},), 2)
    [tx] = demo(run([(C, req), (S, reply_to(req, "b", (True,)))], redact=True))
    assert tx.request.endswith('Login({"user": "ann", "Password": "***"})')
    secret = DBusAddress("/org/freedesktop/secrets/collection/login/1", "org.freedesktop.secrets",
                         "org.freedesktop.Secret.Item")  # fmt: skip
    msg = new_method_call(secret, "GetSecret", "o", ("/org/freedesktop/secrets/session/1",))
    req = msg.serialise(serial=3)
    out = txs(run([(C, req), (S, reply_to(req, "(oayays)", (("/s", b"", b"hunter2", "t"),)))],
                  redact=True))  # fmt: skip
    assert out[0].request.endswith("GetSecret(***)") and out[0].reply == "(***)"


def test_replies_out_of_order_and_calls_from_the_server_side() -> None:
    a, b = call("Sleep", "u", (300,), 1), call("Sleep", "u", (10,), 2)
    forwarded = call("Echo", "s", ("x",), 9)  # the bus calling the service (this client)
    steps: list[tuple[Direction, bytes | int]] = [
        (C, a + b), (S, reply_to(b, "u", (10,))), (S, forwarded),
        (C, reply_to(forwarded, "s", ("x",), 3)), (S, reply_to(a, "u", (300,), 101)),
    ]  # fmt: skip
    out = demo(run(steps))
    assert [(t.reply, t.details["caller"]) for t in out] == [
        ("(10)", "client"), ('("x")', "server"), ("(300)", "client")
    ]  # fmt: skip
    assert out[1].request.startswith("[call from the server side] ")


def test_no_reply_expected_error_fds_and_unpaired() -> None:
    quiet = call("Echo", "s", ("q",), 1, flags=1)
    failing = call("Fail", serial=2)
    parent = JMessage.from_buffer(failing)
    err = new_error(parent, "org.usniff.Error.Failed", "s", ("nope",)).serialise(serial=50)
    fds = JMessage.from_buffer(reply_to(failing))
    fds.header.fields[HeaderFields.unix_fds] = 2
    fds.header.fields[HeaderFields.reply_serial] = 77  # no such call
    stray = fds.serialise(serial=51)
    events = run([(C, quiet + failing), (S, err + stray)])
    t1, t2 = demo(events)
    assert t1.details["reply_suppressed"] and not t1.unanswered and t1.latency is None
    assert t2.error and t2.reply == 'ERROR org.usniff.Error.Failed: "nope"'
    [unpaired] = [e for e in events if isinstance(e, Notice)]
    assert unpaired.kind == "unpaired"
    assert unpaired.summary == "reply to #77, no call seen: ([2 fds])"
    assert unpaired.details["unix_fds"] == 2


def test_long_values_clipped() -> None:
    req = call("Echo", "sai", ("x" * 100, list(range(40))), 1)
    [tx] = demo(run([(C, req)]))
    body = f'"{"x" * 80}"...(100 bytes), [{", ".join(map(str, range(16)))}, ...(96 bytes more)]'
    assert tx.details["body"] == body and len(tx.request) == 200
    assert tx.request.endswith("...") and "Echo(" + body[:130] in tx.request


def test_signal_is_a_notice() -> None:
    sig = new_signal(DEMO, "Tick", "u", (4,)).serialise(serial=7)
    [notice] = run([(S, sig)])
    assert isinstance(notice, Notice) and notice.kind == "signal"
    assert notice.summary == "/org/usniff/Demo org.usniff.Demo.Tick(4)"


def test_unanswered_at_close_and_lost_sync() -> None:
    a = call("Echo", "s", ("a",), 1)
    [tx] = demo(run([(C, a)]))
    assert tx.unanswered and tx.reply == ""
    events = run([(C, a), (S, 10)])
    [tx] = demo(events)
    assert not tx.unanswered and tx.reply == "(lost sync)"
    assert [e.summary for e in events if isinstance(e, Notice)] == ["10 bytes missing"]


def test_resync_mid_connection_at_a_message() -> None:
    a, b = call("Echo", "s", ("a",), 1), call("Echo", "s", ("b",), 2)
    steps: list[tuple[Direction, bytes | int]] = [
        (C, a[20:]), (S, reply_to(a)), (C, b), (S, reply_to(b, "s", ("b",), 101)),
    ]  # fmt: skip
    events = run(steps)
    assert [t.request.rsplit(".", 1)[1] for t in demo(events)] == ['Echo("b")']
    assert [e.kind for e in events if isinstance(e, Notice)] == ["unpaired"]


def test_snap_length_cut_inside_a_body() -> None:
    req = call("Echo", "s", ("x" * 500,), 1)
    decoder = DbusDecoder()
    assert decoder.feed(C, req[:200], 1.0) == []
    assert decoder.gap(C, len(req) - 200, 1.1, True) == []
    [tx] = decoder.feed(S, reply_to(req, "u", (1,)), 1.5)
    assert isinstance(tx, Transaction)
    assert tx.cut == len(req) - 200 and tx.bytes_in == len(req) and tx.reply == "(1)"
    assert tx.request.endswith(f" bytes, {len(req) - 200} not captured>)"), tx.request


def test_big_body_framed_not_decoded() -> None:
    req = call("Echo", "ay", (b"\x07" * (dbus.KEEP_BODY + 10),), 1)
    nxt = call("Echo", "s", ("after",), 2)
    events = run([(C, req[:1000]), (C, req[1000:] + nxt)])
    big, after = demo(events)
    assert "<body not decoded:" in big.request and big.bytes_in == len(req)
    assert after.request.endswith('Echo("after")')


def test_malformed_body_shown_as_such_and_framing_holds() -> None:
    bad = bytearray(call("Echo", "s", ("hello",), 1))
    bad[-10] = 0x7F  # the string's length: past the body's end
    odd = bytearray(call("Echo", "s", ("hello",), 2))
    odd[-3] = 0xFF  # not UTF-8: shown escaped, not refused
    broken_header = bytearray(call("Echo", "s", ("x",), 3))
    broken_header[20:24] = b"\xff\xff\x00\x00"  # the path's length
    good = call("Echo", "s", ("ok",), 4)
    events = run([(C, bytes(bad) + bytes(odd) + bytes(broken_header) + good)])
    assert [t.request.rsplit(".", 1)[1] for t in demo(events)] == [
        "Echo(<body not decoded: malformed: value runs past the end>)",
        'Echo("hel\\xffo")',
        'Echo("ok")',
    ]
    [notice] = [e for e in events if isinstance(e, Notice)]
    assert notice.kind == "undecodable" and notice.summary == "value runs past the end"


def test_hostile_values_that_crash_or_hang_the_libraries() -> None:
    """An ``aay`` whose array claims 4 GiB (SIGSEGV in dbus-fast 5.2.0) and a variant
    ``a()`` (an endless loop in jeepney 0.9)."""
    fields = b"\x08\x01g\x00\x03aay\x00" + bytes(7) + b"\x05\x01u\x00\x00\x00\x00\x01"
    crash = b"B\x01\x01\x01" + bytes.fromhex("00000008 00000002 00000018") + fields + b"\xff" * 8
    assert len(crash) == 48
    [tx] = txs(run([(C, crash)]))
    assert tx.request == "?(<body not decoded: malformed: array of 4294967295 bytes>)"
    assert tx.details["reply_suppressed"]  # its flags: NO_REPLY_EXPECTED
    body = bytes([3]) + b"a()\0" + bytes(4) + (8).to_bytes(4, "little") + bytes(8)
    with pytest.raises(dbus.ProtocolError, match="empty struct"):
        dbus.Unmarshal(body, len(body), "little").value("v", 0)


def test_messages_before_a_framing_error_count() -> None:
    req = call("Echo", "s", ("a",), 1)
    events = run([(C, req + b"l\x09\x00\x01" + bytes(16)), (S, reply_to(req))])
    notices = [e for e in events if isinstance(e, Notice)]
    assert [n.summary for n in notices] == [
        'protocol error: not a message header: "l\\t\\x00\\x01"'
    ]
    [tx] = demo(events)
    assert tx.reply == "()" and tx.latency is not None


def test_pending_calls_and_sasl_lines_bounded() -> None:
    decoder = DbusDecoder()
    out = []
    for i in range(dbus.MAX_PENDING + 5):
        out += decoder.feed(C, call("Echo", serial=i + 1), float(i))
    assert len(out) == 5 and all("later calls" in t.reply for t in txs(out))
    decoder = DbusDecoder()
    out = decoder.feed(C, b"\0" + b"AUTH\r\n" * (dbus.MAX_PENDING + 3), 1.0)
    assert len(out) == 3 and all("later lines" in t.reply for t in txs(out))


def test_detection() -> None:
    assert dbus.auth(b"\0AUTH EXTERNAL 30\r\n") and dbus.auth(b"\0")
    assert not dbus.auth(b"\0\0\0\x10") and not dbus.auth(b"AUTH ")
    assert detect(b"\0AUTH EXTERNAL 30\r\n", b"") == "dbus"
    req = call("Echo", "s", ("a",), 1)
    assert detect(req, reply_to(req)) == "dbus"
    assert detect(req[:10], b"") is None
    assert dbus.messages(b"GET / HTTP/1.1\r\n\r\n", reply_to(req)) is False
    big = call("Echo", "s", ("a",), 1, Endianness.big)
    assert dbus.plausible_header(big) and dbus.plausible_header(big[:8]) is None


def test_header_fields_walk_gives_unix_fds() -> None:
    fields = {HeaderFields.reply_serial: 1, HeaderFields.unix_fds: 3}
    msg = JMessage(Header(Endianness.big, MessageType.method_return, 0, 1, 0, 4, fields), ())
    data = msg.serialise()
    parsed = dbus.parse(dbus.Msg(data, len(data), len(data), 0.0, 0.0))
    assert (parsed.unix_fds, parsed.reply_serial, parsed.endian) == (3, 1, "big")
