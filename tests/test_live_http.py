"""HTTP/1.1 live end to end: the real `usniff` CLI, real kernel, podman's Docker API, curl.

podman ``system service`` serves the Docker-compatible API on a private socket
(tests/support/servers.py); curl drives it (tests/support/http_session.py: keep-alive, a 404,
POSTs with JSON bodies, ``Expect: 100-continue``, credentials in headers, an
event stream, a pipelined pair on a raw socket).  Ground truth is curl's own
``%{http_code} %{size_download}`` for each exchange and the bytes the event
stream delivered.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.http_session import MISSING_ID, SECRETS, VOLUME_BODY, Sent, http_session
from tests.support.live_helpers import USNIFF, Usniff
from tests.support.pcap_helpers import TSHARK, tshark
from tests.support.servers import PODMAN, start_podman
from tests.test_live_decode import Run, assert_clean_exit

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not Path(PODMAN).exists(), reason="podman is not installed (setup.sh)"),
]


@dataclass
class HttpRun(Run):
    sent: list[Sent] = field(default_factory=list)
    events_body: bytes = b""  # what the event stream delivered to curl
    pcapng: Path | None = None

    @property
    def txs(self) -> list[dict[str, Any]]:
        return _in_order(self.events)


def _in_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Transactions in the order their requests were sent (a stream's is reported last,
    when its connection closes)."""
    return sorted((e for e in events if e["type"] == "transaction"), key=lambda t: t["ts_request"])


def _capture(tmp: str, *args: str) -> HttpRun:
    with start_podman(tmp) as sock, Usniff("--path", sock, *args) as usniff:
        sent, events_body = http_session(sock)
        result = usniff.stop()
    events = [json.loads(line) for line in result.text.splitlines()] if "-w" not in args else []
    return HttpRun(sock, result.returncode, result.text, result.stderr, events, sent, events_body)


@pytest.fixture(scope="module")
def json_run() -> Iterator[HttpRun]:
    with tempfile.TemporaryDirectory(prefix="usniff-http-") as tmp:
        yield _capture(tmp, "--format", "json", "--protocol", "auto", "--stats", "--redact")


@pytest.fixture(scope="module")
def pcapng_run() -> Iterator[HttpRun]:
    with tempfile.TemporaryDirectory(prefix="usniff-http-") as tmp:
        out = Path(tmp) / "http.pcapng"
        run = _capture(tmp, "-w", str(out))
        run.pcapng = out
        yield run


def _shape(tx: dict[str, Any]) -> tuple[str, str, int]:
    d = tx["details"]
    return d["method"], d["target"], d.get("status", 0)


def _matches(txs: list[dict[str, Any]], sent: list[Sent]) -> None:
    """Every request curl sent, in order per target, with curl's status and body size."""
    assert [_shape(t) for t in txs] == [(s.method, s.target, s.status) for s in sent], txs
    for tx, s in zip(txs, sent, strict=True):
        if s.size >= 0:
            assert tx["details"]["response_body"] == s.size, (tx, s)


def test_capture_stops_cleanly(json_run: HttpRun) -> None:
    assert_clean_exit(json_run)


def test_every_request_paired_with_curls_status_and_size(json_run: HttpRun) -> None:
    txs = json_run.txs
    _matches(txs, json_run.sent)
    for tx in txs:
        assert tx["protocol"] == "http" and tx["path"] == json_run.sock, tx
        assert tx["server_comm"] == "podman", tx
        assert tx["client_comm"] in ("curl", "python", "pytest", Path("/proc/self/comm")
                                     .read_text().strip()), tx  # fmt: skip
        assert tx["latency"] is not None and 0 <= tx["latency"] < 5, tx
        assert tx["bytes_in"] > 0 and tx["bytes_out"] > 0, tx
    kinds = Counter(e.get("kind") for e in json_run.events if e["type"] == "notice")
    assert not kinds["undecodable"] and not kinds["unpaired"], kinds


def test_request_and_reply_lines(json_run: HttpRun) -> None:
    by = {(t["details"]["method"], t["details"]["target"]): t for t in json_run.txs}
    missing = by[("GET", f"/v1.41/containers/{MISSING_ID}/json")]
    assert missing["error"] and missing["reply"].startswith("404 Not Found application/json")
    assert missing["command"] == "GET /v1.41/containers/{id}/json"
    version = by[("GET", "/v1.41/version")]
    [size] = {s.size for s in json_run.sent if s.target == "/v1.41/version" and s.size >= 0}
    assert version["reply"] == f"200 OK application/json {size} bytes"  # curl's size
    creates = [t for t in json_run.txs if t["command"] == "POST /v1.41/volumes/create"]
    assert len(creates) == 2
    plain, expect = creates
    assert (
        plain["request"]
        == f"POST /v1.41/volumes/create (application/json {len(VOLUME_BODY)} bytes)"
    )
    assert plain["reply"].startswith("201 Created application/json")
    assert plain["details"]["request_body_preview"] == "***"  # --redact hides bodies
    # Expect: 100-continue: the 100 is shown, latency runs from the body's last byte
    assert expect["reply"].startswith("100 Continue; 201 Created"), expect
    assert expect["ts_request"] < expect["ts_reply"]
    assert expect["details"]["informational"] == ["100 Continue"]


def test_event_stream_shown_as_it_arrives(json_run: HttpRun) -> None:
    events = json_run.events
    stream = next(t for t in json_run.txs if t["command"] == "GET /v1.41/events")
    notices = [e for e in events if e["type"] == "notice" and e["kind"] == "stream"]
    assert len(notices) >= 2 and all(n["conn"] == stream["conn"] for n in notices), notices
    # each event was shown when it arrived, before the stream's transaction
    assert events.index(notices[-1]) < events.index(stream)
    assert stream["details"]["response_chunked"] and stream["details"].get("incomplete")
    assert stream["details"]["response_body"] == len(json_run.events_body)
    assert stream["reply"].startswith("200 OK application/json chunked")


def test_pipelined_requests_paired(json_run: HttpRun) -> None:
    last_two = json_run.txs[-2:]
    assert [t["command"] for t in last_two] == ["GET /v1.41/_ping", "GET /v1.41/version"]
    assert last_two[0]["conn"] == last_two[1]["conn"]
    assert last_two[0]["ts_request"] == last_two[1]["ts_request"]  # one send()
    assert last_two[0]["reply"] == "200 OK text/plain; charset=utf-8 2 bytes"


def test_keep_alive_connection_carries_several_requests(json_run: HttpRun) -> None:
    first = json_run.txs[:3]
    assert [t["command"] for t in first] == [
        "GET /v1.41/version", "GET /v1.41/info", "GET /v1.41/images/json",
    ]  # fmt: skip
    assert len({t["conn"] for t in first}) == 1


def test_redact_masks_credentials(json_run: HttpRun) -> None:
    for secret in SECRETS:
        assert secret not in json_run.stdout and secret not in json_run.stderr, secret
    ping = next(
        t for t in json_run.txs if dict(t["details"]["request_headers"]).get("authorization")
    )
    headers = dict(ping["details"]["request_headers"])
    assert headers["authorization"] == headers["x-registry-auth"] == headers["cookie"] == "***"


def _stats_table(stderr: str) -> dict[str, int]:
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 11 and cells[0] == "http":
            rows[cells[1]] = int(cells[2])
    return rows


def test_stats_count_per_method_and_route(json_run: HttpRun) -> None:
    table = _stats_table(json_run.stderr)
    expected = Counter(f"{s.method} {s.target}" for s in json_run.sent)
    expected["GET /v1.41/containers/{id}/json"] = expected.pop(
        f"GET /v1.41/containers/{MISSING_ID}/json"
    )
    assert table == dict(expected), (table, expected)


def _read(path: Path, *args: str) -> str:
    out = subprocess.run([USNIFF, "read", str(path), *args], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


def test_pcapng_read_back_decodes_the_same(pcapng_run: HttpRun) -> None:
    assert pcapng_run.pcapng is not None
    assert_clean_exit(pcapng_run)
    events = [
        json.loads(x)
        for x in _read(pcapng_run.pcapng, "--format", "json", "--protocol", "auto").splitlines()
    ]
    txs = _in_order(events)
    _matches(txs, pcapng_run.sent)
    assert all(t["latency"] is not None and t["server_comm"] == "podman" for t in txs)
    text = _read(pcapng_run.pcapng).splitlines()
    lines = [x for x in text if "GET /v1.41/version" in x and "200 OK" in x]
    assert len(lines) == 2 and all(re.search(r"podman\[\d+\].*ms$", x) for x in lines), text


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_dissects_http_without_options(pcapng_run: HttpRun) -> None:
    path = str(pcapng_run.pcapng)
    assert tshark("-r", path, "-Y", "_ws.malformed") == ""
    requests = tshark("-r", path, "-Y", "http.request", "-T", "fields", "-e",
                      "http.request.method", "-e", "http.request.uri").splitlines()  # fmt: skip
    # requests written in one send() are one packet: tshark joins their fields with ","
    got = Counter(
        pair for r in requests for pair in zip(*(f.split(",") for f in r.split("\t")), strict=True)
    )
    assert got == Counter((s.method, s.target) for s in pcapng_run.sent), requests
    codes = tshark("-r", path, "-Y", "http.response", "-T", "fields", "-e",
                   "http.response.code").replace(",", " ").split()  # fmt: skip
    # the 100 Continue is a response of its own for Wireshark; the event stream's response
    # never ends (curl hung up mid-stream), so Wireshark's chunk reassembly never shows it
    wanted = [s.status for s in pcapng_run.sent if s.target != "/v1.41/events"] + [100]
    assert sorted(map(int, codes)) == sorted(wanted), codes


def test_podman_remote_client() -> None:
    """podman's own Go client (``podman --url``): every request it makes is paired, and
    the ones its commands imply are there with the status their success implies."""
    # podman refuses a run root path longer than 50 characters: not pytest's tmp_path
    with tempfile.TemporaryDirectory(prefix="usniff-http-") as tmp, start_podman(tmp) as sock:
        args = ["--path", sock, "--format", "json", "--protocol", "auto"]
        with Usniff(*args) as usniff:
            for cmd in (["volume", "create", "rv1"], ["volume", "ls"], ["volume", "rm", "rv1"]):
                remote = ["podman", "--url", f"unix://{sock}", *cmd]
                out = subprocess.run(remote, capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out
            result = usniff.stop()
    events = [json.loads(line) for line in result.text.splitlines()]
    assert not [e for e in events if e["type"] != "transaction"], events
    got = {(e["command"], e["details"]["status"]) for e in events}
    assert got == {
        ("GET /v4.3.1/libpod/_ping", 200),
        ("POST /v4.3.1/libpod/volumes/create", 201),
        ("GET /v4.3.1/libpod/volumes/json", 200),
        ("DELETE /v4.3.1/libpod/volumes/rv1", 204),
    }, got
    assert all(e["client_comm"] == e["server_comm"] == "podman" for e in events)
    assert all(e["latency"] is not None for e in events)
