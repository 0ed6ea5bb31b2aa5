"""D-Bus live, end to end: the real `usniff` CLI on the real kernel, watching a real
dbus-daemon (private config, tests/support/dbus_session.py) used by busctl, dbus-send, a
dbus-fast client and a dbus-fast service; a second daemon accepts only
DBUS_COOKIE_SHA1 (its client's SASL response is a credential).

Three usniff runs watch both daemons at once: JSON with --stats and --redact, text,
and -w (pcapng).  The ground truth is what the clients made and got (the replies
busctl and dbus-send printed, the order the dbus-fast client got its replies in).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.dbus_session import (
    ERROR_NAME,
    ERROR_TEXT,
    IFACE,
    SECRET,
    SLEEPS,
    TICKS,
    Session,
    cookie_session,
    dbus_session,
    demo_service,
    p2p_call,
    p2p_server,
    start_dbus,
)
from tests.support.decoded import Run, assert_clean_exit, stats_table
from tests.support.tshark import TSHARK, tshark
from tests.support.usniff import USNIFF, Usniff
from usniff.decoders.registry import BY_NAME

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed"),
]
PORT = BY_NAME["dbus"].port


@dataclass
class Runs:
    session: Session
    cookie_reply: str  # what dbus-send printed on the DBUS_COOKIE_SHA1 bus
    json: Run  # --format json --stats --redact
    text: Run
    pcap: Run  # -w pcap_file
    pcap_file: str
    cookie_sock: str

    @property
    def txs(self) -> list[dict[str, Any]]:
        return self.json.txs


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    with (
        tempfile.TemporaryDirectory(prefix="usniff-dbus-") as tmp,
        start_dbus(tmp) as sock,
        start_dbus(tmp, "DBUS_COOKIE_SHA1") as cookie_sock,
    ):
        pcap = os.path.join(tmp, "dbus.pcapng")
        paths = ("--path", sock, "--path", cookie_sock)
        with (
            Usniff(*paths, "--format", "json", "--stats", "--redact") as json_run,
            Usniff(*paths) as text_run,
            Usniff(*paths, "-w", pcap) as pcap_run,
        ):
            with demo_service(sock):
                session = dbus_session(sock)
            cookie_reply = cookie_session(cookie_sock)
            results = [run.stop() for run in (json_run, text_run, pcap_run)]
        decoded, text, written = (Run(sock, r.returncode, r.text, r.stderr, []) for r in results)
        decoded.events = [json.loads(line) for line in decoded.stdout.splitlines()]
        yield Runs(session, cookie_reply, decoded, text, written, pcap, cookie_sock)


def _demo(runs: Runs, caller: str) -> list[dict[str, Any]]:
    return [t for t in runs.txs if t["details"].get("interface") == IFACE
            and t["details"]["caller"] == caller]  # fmt: skip


def test_runs_stop_cleanly(runs: Runs) -> None:
    for run in (runs.json, runs.text, runs.pcap):
        assert_clean_exit(run)


def test_every_call_paired_with_its_reply(runs: Runs) -> None:
    """Each call a client made is on its connection (client -> bus) and again on the
    service's (bus -> service, a call from the server side), paired, with a latency."""
    for caller in ("client", "server"):
        calls = _demo(runs, caller)
        assert Counter(t["details"]["member"] for t in calls) == runs.session.calls, calls
        for tx in calls:
            assert (
                tx["protocol"] == "dbus" and tx["command"] == f"{IFACE}.{tx['details']['member']}"
            )
            assert tx["client_pid"] and tx["server_comm"] == "dbus-daemon", tx
            if "no_reply_expected" in tx["details"].get("flags", ()):
                assert (tx["reply"], tx["latency"], tx["unanswered"]) == ("", None, False), tx
                continue
            assert not tx["unanswered"] and tx["latency"] is not None, tx
            assert 0 < tx["latency"] < 5, tx
            assert tx["details"]["reply_serial"] == tx["details"]["serial"], tx
    no_reply = [t for t in _demo(runs, "client") if t["latency"] is None]
    assert len(no_reply) == runs.session.no_reply


def test_replies_are_what_the_clients_got(runs: Runs) -> None:
    replies = {t["request"].split("(", 1)[1]: t for t in _demo(runs, "client")}
    assert runs.session.replies["busctl Echo"].strip() == 's "hello busctl"'
    assert replies['"hello busctl")']["reply"] == '("hello busctl")'
    assert replies['"hello dbus-send")']["reply"] == '("hello dbus-send")'
    assert runs.session.replies["busctl Login"].strip() == "b true"
    [login] = [t for t in _demo(runs, "client") if t["details"]["member"] == "Login"]
    assert login["reply"] == "(true)" and login["details"]["signature"] == "a{sv}"
    [fail] = [t for t in _demo(runs, "client") if t["details"]["member"] == "Fail"]
    assert runs.session.replies["dbus-send Fail"].strip() == f"Error {ERROR_NAME}: {ERROR_TEXT}"
    assert fail["error"] and fail["reply"] == f'ERROR {ERROR_NAME}: "{ERROR_TEXT}"', fail
    assert fail["details"]["error_name"] == ERROR_NAME


def test_replies_out_of_order_pair_by_serial(runs: Runs) -> None:
    """The dbus-fast client sent its Sleep calls at once; the replies came back in the
    order of their delays, not of the calls."""
    assert runs.session.sleep_order == sorted(SLEEPS)
    sleeps = [t for t in _demo(runs, "client") if t["details"]["member"] == "Sleep"]
    by_ms = {int(t["request"].rsplit("(", 1)[1].rstrip(")")): t for t in sleeps}
    assert sorted(by_ms) == sorted(SLEEPS)
    for ms, tx in by_ms.items():
        assert tx["reply"] == f"({ms})" and tx["latency"] >= ms / 1000, tx
    # emitted in reply order: the 10 ms one first, though it was the second call sent
    assert [int(t["reply"].strip("()")) for t in sleeps] == sorted(SLEEPS)


def test_signals_are_notices(runs: Runs) -> None:
    signals = runs.json.notices("signal")
    ticks = [n for n in signals if n["details"].get("member") == "Tick"]
    assert [n["summary"].rsplit(" ", 1)[1] for n in ticks] == [
        f"{IFACE}.Tick({i})" for i in range(TICKS)
    ], ticks
    assert all(n["direction"] == "client" and n["details"]["path"] for n in ticks)
    acquired = [n for n in signals if n["details"].get("member") == "NameAcquired"]
    assert len(acquired) >= 6  # one per connection to the EXTERNAL bus, one for the name
    unexpected = [e for e in runs.json.events
                  if e["type"] == "notice" and e["kind"] != "signal"]  # fmt: skip
    assert not unexpected, unexpected


def test_sasl_handshake(runs: Runs) -> None:
    auths = [t for t in runs.txs if t["command"].startswith("AUTH ")]
    assert {t["command"] for t in auths} == {"AUTH EXTERNAL", "AUTH DBUS_COOKIE_SHA1"}
    external = [t for t in auths if t["command"] == "AUTH EXTERNAL"
                and t["path"] != runs.cookie_sock]  # fmt: skip
    # the uid (hex of "0") is shown even with --redact: it is no secret
    assert all(t["request"] in ("AUTH EXTERNAL 30 (0)", "AUTH EXTERNAL") for t in external)
    assert all(t["reply"].startswith(("OK ", "DATA")) for t in external), external
    begins = [t for t in runs.txs if t["command"] == "BEGIN"]
    assert len(begins) == len({t["conn"] for t in auths}) == 8  # 7 on the EXTERNAL bus
    [rejected] = [t for t in auths if t["reply"].startswith("REJECTED")]
    assert rejected["path"] == runs.cookie_sock and rejected["error"], rejected
    assert rejected["reply"] == "REJECTED DBUS_COOKIE_SHA1"
    unix_fd = [t for t in runs.txs if t["command"] == "NEGOTIATE_UNIX_FD"]
    assert unix_fd and all(t["reply"] == "AGREE_UNIX_FD" for t in unix_fd)


def test_redact_masks_the_cookie_response(runs: Runs) -> None:
    """DBUS_COOKIE_SHA1: the server's challenge is shown, the client's response (a hash
    of the secret cookie) is masked; the Login password under a{sv} key "password" too."""
    conn = [t for t in runs.txs if t["path"] == runs.cookie_sock]
    data = [t for t in conn if t["command"] == "DATA"]
    assert data and all(t["request"] == "DATA ***" for t in data), data
    text_lines = [x for x in runs.text.stdout.splitlines() if "  DATA " in x]
    responses = [re.search(r"\]  DATA ([0-9a-f]{40,}) ", x) for x in text_lines]
    assert any(responses), text_lines  # without --redact the response is there
    for m in filter(None, responses):
        assert m[1] not in runs.json.stdout + runs.json.stderr
    assert runs.cookie_reply.startswith("method return")
    assert SECRET not in runs.json.stdout + runs.json.stderr
    for tx in [t for t in runs.txs if t["details"].get("member") == "Login"]:
        assert tx["request"].endswith('Login({"user": "ann", "password": "***"})'), tx
    assert SECRET in runs.text.stdout


def test_stats_count_the_calls(runs: Runs) -> None:
    table = stats_table(runs.json.stderr)
    for member, n in runs.session.calls.items():
        assert table[("dbus", f"{IFACE}.{member}")] == 2 * n  # client's side and service's
    errors = re.search(rf"│ dbus\s+│ {re.escape(IFACE)}\.Fail\s+│\s+(\d+) │\s+(\d+) │",
                       runs.json.stderr)  # fmt: skip
    assert errors and errors.groups() == ("2", "2"), runs.json.stderr


def test_text_lines(runs: Runs) -> None:
    line = next(x for x in runs.text.stdout.splitlines()
                if x[16:].startswith("busctl[") and 'Echo("hello busctl")' in x)  # fmt: skip
    assert re.match(
        rf"\d\d:\d\d:\d\d\.\d{{6}} busctl\[\d+\] -> dbus-daemon\[\d+\]  -> {IFACE} "
        rf"/org/usniff/Demo {IFACE}\.Echo\(\"hello busctl\"\)  \(\"hello busctl\"\)  "
        rf"\d+\.\d{{3}} ms$",
        line,
    ), line


def test_pcapng_stock_tshark(runs: Runs) -> None:
    """Stock tshark opens the file without a malformed packet; the D-Bus flows are on
    their port, as TCP data (it has no D-Bus-over-stream dissector that knows SASL:
    docs/decoders.md)."""
    path = runs.pcap_file
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    syns = tshark("-r", path, "-T", "fields", "-e", "tcp.dstport",
                  "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0")  # fmt: skip
    conns = {t["conn"] for t in runs.txs if t["command"] == "BEGIN"}
    assert syns.split() == [str(PORT)] * len(conns), syns
    lengths = tshark("-r", path, "-T", "fields", "-e", "tcp.len", "-Y", "tcp.len > 0")
    captured = re.search(r"(\d+) bytes captured", runs.pcap.stderr)
    assert captured and sum(map(int, lengths.split())) == int(captured[1]), runs.pcap.stderr
    assert tshark("-r", path, "-Y", "dbus") == ""  # no dissector reads them unasked


def test_usniff_read_decodes_the_pcapng_as_live(runs: Runs) -> None:
    out = subprocess.run([USNIFF, "read", runs.pcap_file, "--format", "json", "--protocol", "auto",
                          "--redact"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    offline = [json.loads(line) for line in out.stdout.splitlines()]
    keys = ("type", "command", "request", "reply", "summary", "bytes_in", "bytes_out", "error")

    def rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(str(e.get(k)) for k in keys) for e in events)

    assert rows(offline) == rows(runs.json.events)


def test_peer_to_peer_connection() -> None:
    """No bus daemon: dbus-send talks to a peer-to-peer server (SASL, then its calls
    answered directly, no Hello), watched with --format json."""
    with (
        tempfile.TemporaryDirectory(prefix="usniff-dbus-p2p-") as tmp,
        p2p_server(os.path.join(tmp, "p2p")) as sock,
        Usniff("--path", sock, "--format", "json", "--protocol", "auto") as run,
    ):
        printed = [p2p_call(sock, member) for member in ("Ping", "Pong")]
        result = run.stop()
    assert [p.splitlines()[1].strip() for p in printed] == ['string "p2p Ping"',
                                                            'string "p2p Pong"']  # fmt: skip
    events = [json.loads(line) for line in result.text.splitlines()]
    calls = [e for e in events if e["type"] == "transaction" and "sasl" not in e["details"]]
    assert [(t["command"], t["reply"]) for t in calls] == [
        (f"{IFACE}.Ping", '("p2p Ping")'), (f"{IFACE}.Pong", '("p2p Pong")')
    ]  # fmt: skip
    for t in calls:
        assert t["latency"] is not None and t["client_comm"] == "dbus-send", t
        assert t["details"]["reply_serial"] == t["details"]["serial"]
    sasl = Counter(e["command"] for e in events if "sasl" in e.get("details", {}))
    assert sasl == {"AUTH EXTERNAL": 2, "NEGOTIATE_UNIX_FD": 2, "BEGIN": 2}, sasl
    assert not [e for e in events if e["type"] != "transaction"], events


def test_redacted_text_read_back(runs: Runs) -> None:
    out = subprocess.run([USNIFF, "read", runs.pcap_file, "--protocol", "auto", "--redact"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert SECRET not in out.stdout and '"password": "***"' in out.stdout
    assert "  DATA ***  OK " in out.stdout  # the DBUS_COOKIE_SHA1 response
    assert "AUTH EXTERNAL 30 (0)" in out.stdout  # the uid stays
