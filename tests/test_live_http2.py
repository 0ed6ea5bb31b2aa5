"""HTTP/2 and gRPC live, end to end: the real `usniff` CLI on the real kernel, a real
grpcio server and client on a ``unix:`` socket (tests/support/grpc_session.py).

Three usniff runs watch the same session at once: JSON with --stats and --redact,
text, and -w (pcapng).  The ground truth is what the gRPC client sent and received
(message sizes, status codes) and Wireshark's own http2/grpc dissectors on the pcapng.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.decoded import (
    Run,
    assert_clean_exit,
    stats_table,
    three_runs,
    tx_rows,
    usniff_read,
)
from tests.support.grpc_session import (
    COUNT,
    FAIL_MESSAGE,
    SERVICE,
    SUM,
    TOKEN,
    WATCH_READ,
    run_client,
)
from tests.support.grpc_session import start_grpc_server as start_server
from tests.support.tshark import TSHARK, tshark

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed"),
]


@dataclass
class Runs:
    calls: list[dict[str, Any]]  # what the client did, in order
    json: Run  # --format json --stats --redact
    text: Run
    pcap: Run  # -w pcap_file
    pcap_file: str

    @property
    def txs(self) -> list[dict[str, Any]]:
        return sorted(self.json.txs, key=lambda t: t["details"]["stream_id"])


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    with tempfile.TemporaryDirectory(prefix="usniff-h2-") as tmp, start_server(tmp) as sock:
        pcap = os.path.join(tmp, "grpc.pcapng")
        calls, decoded, text, written = three_runs(sock, pcap, run_client, "--protocol", "auto")
        yield Runs(calls, decoded, text, written, pcap)


def test_runs_stop_cleanly(runs: Runs) -> None:
    for run in (runs.json, runs.text, runs.pcap):
        assert_clean_exit(run)


def test_every_call_paired_with_what_the_client_saw(runs: Runs) -> None:
    txs = runs.txs
    assert [t["command"] for t in txs] == [c["method"] for c in runs.calls]
    for call, tx in zip(runs.calls, txs, strict=True):
        d = tx["details"]
        client, server = d["messages"]["client"], d["messages"]["server"]
        assert (client["count"], client["bytes"]) == (len(call["sent"]), sum(call["sent"])), tx
        assert tx["latency"] is not None and 0 < tx["latency"] < 5, tx
        assert tx["path"] == runs.json.sock and tx["client_pid"] and tx["server_pid"], tx
        assert d["grpc"] == {"service": SERVICE, "method": call["method"].rsplit("/", 1)[1]}
        assert (d["method"], d["path"], d["status"]) == ("POST", call["method"], 200)
        if call["code"] == "CANCELLED":  # the client reset the stream: no trailers
            assert server["count"] >= len(call["received"]), tx
            assert d["reset"] == "CANCEL by client" and tx["error"], tx
            assert tx["reply"].endswith("RST_STREAM CANCEL by client"), tx
            continue
        assert (server["count"], server["bytes"]) == (
            len(call["received"]), sum(call["received"])
        ), tx  # fmt: skip
        assert d["grpc_status"] == (0 if call["code"] == "OK" else 5), tx
        assert tx["error"] == (call["code"] != "OK"), tx
        assert client["complete"] and server["complete"], tx
    fail = txs[[c["method"] for c in runs.calls].index(f"/{SERVICE}/Fail")]
    assert fail["reply"] == f'NOT_FOUND "{FAIL_MESSAGE}", 0 msgs 0 bytes', fail
    assert fail["details"]["grpc_message"] == FAIL_MESSAGE
    echo = txs[0]
    assert echo["request"] == f"#1 /{SERVICE}/Echo 1 msg 9 bytes", echo
    assert echo["details"]["client_first_message"] == [[1, 2, "hello"], [2, 0, 7]], echo


def test_streaming_calls_shown_as_they_progress(runs: Runs) -> None:
    streamed = runs.json.notices("stream")
    shown = Counter(n["summary"].rsplit(" ", 3)[0] for n in streamed)
    assert shown[f"#5 /{SERVICE}/Count server message"] == COUNT, shown
    assert shown[f"#7 /{SERVICE}/Sum client message"] == SUM, shown
    assert shown[f"#11 /{SERVICE}/Watch server message"] >= WATCH_READ, shown
    assert len(shown) == 3, shown  # unary calls give no stream notices
    calls = {c["method"]: c for c in runs.calls}
    count = [n for n in streamed if "/Count " in n["summary"]]
    assert [(n["details"]["message"], n["details"]["bytes"]) for n in count] == list(
        enumerate(calls[f"/{SERVICE}/Count"]["received"], 1)
    )  # fmt: skip
    assert count[-1]["summary"] == f"#5 /{SERVICE}/Count server message {COUNT}: 10 bytes"
    sums = [n["details"]["bytes"] for n in streamed if "/Sum " in n["summary"]]
    assert sums == calls[f"/{SERVICE}/Sum"]["sent"]
    [reset] = runs.json.notices("reset")
    assert reset["summary"] == f"#11 RST_STREAM CANCEL by client /{SERVICE}/Watch", reset
    kinds = {e["kind"] for e in runs.json.events if e["type"] == "notice"}
    assert kinds == {"stream", "reset"}, kinds


def test_stats_count_the_calls_made(runs: Runs) -> None:
    assert stats_table(runs.json.stderr) == dict(
        Counter(("http2", c["method"]) for c in runs.calls)
    )


def test_redact_masks_the_authorization_metadata(runs: Runs) -> None:
    assert TOKEN not in runs.json.stdout + runs.json.stderr
    for tx in runs.txs:
        assert tx["details"]["request_headers"]["authorization"] == "***", tx
        assert tx["details"]["request_headers"]["x-request-id"] == "req-1", tx
    # without --redact it is there (usniff read of the pcapng): the mask is no accident
    assert json.dumps(usniff_read(runs.pcap_file)).count(TOKEN) == len(runs.calls)


def test_text_lines(runs: Runs) -> None:
    lines = runs.text.stdout.splitlines()
    assert len(lines) == len(runs.json.events), lines
    sum_line = next(x for x in lines if f"/{SERVICE}/Sum " in x and "message" not in x)
    assert re.match(
        rf"\d\d:\d\d:\d\d\.\d{{6}} \S+\[\d+\] -> python\[\d+\]  #7 /{SERVICE}/Sum "
        rf"{SUM} msgs 12 bytes  OK, 1 msg 2 bytes  \d+\.\d{{3}} ms$",
        sum_line,
    ), sum_line


def test_pcapng_dissected_by_wireshark(runs: Runs) -> None:
    path = runs.pcap_file
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    # stock Wireshark, no option: the connection is http2 and its messages grpc
    paths = tshark("-r", path, "-Y", "http2.headers.path", "-T", "fields", "-E", "occurrence=a",
                   "-e", "http2.headers.path")  # fmt: skip
    seen = sorted(p for line in paths.splitlines() for p in line.split(","))
    assert seen == sorted(t["details"]["path"] for t in runs.txs), seen
    fields = tshark("-r", path, "-Y", "grpc", "-T", "fields", "-E", "occurrence=a",
                    "-e", "grpc.message_length")  # fmt: skip
    sizes = [int(n) for line in fields.splitlines() for n in line.split(",")]
    messages = [t["details"]["messages"][who] for t in runs.txs for who in ("client", "server")]
    assert len(sizes) == sum(m["count"] for m in messages)
    assert sum(sizes) == sum(m["bytes"] for m in messages)


def test_usniff_read_decodes_the_pcapng_as_live(runs: Runs) -> None:
    offline = usniff_read(runs.pcap_file, "--redact")
    assert tx_rows(offline) == tx_rows(runs.json.events)
    assert len(tx_rows(offline)) == len(runs.calls)
    assert all(e["latency"] is not None for e in offline if e["type"] == "transaction")
