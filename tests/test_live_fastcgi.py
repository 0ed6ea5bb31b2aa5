"""FastCGI live, end to end: the real `usniff` CLI on the real kernel, nginx and cgi-fcgi
talking to a real php-fpm (tests/support/servers.py, tests/support/php_session.py).

Three usniff runs watch the same session at once: JSON with --stats and --redact,
text, and -w (pcapng).  The ground truth is what the clients saw (curl's status,
body size and content type; cgi-fcgi's CGI response; the GET_VALUES answer the
raw client parsed) and Wireshark's own FastCGI dissector on the pcapng.
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

from tests.support.live_helpers import USNIFF, Usniff, follow_all, tcp_bytes_by_port
from tests.support.pcap_helpers import TSHARK, tshark
from tests.support.php_session import (
    CONCURRENT,
    COOKIE,
    PASSWORD,
    POST_BODY,
    TOKEN,
    Session,
    php_session,
)
from tests.support.servers import start_php_app
from tests.test_live_decode import Run, assert_clean_exit, stats_table
from usniff.decoders.registry import BY_NAME

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed"),
]
PORT = BY_NAME["fastcgi"].port
DECODE_AS = f"tcp.port=={PORT},fcgi"  # stock Wireshark gives FastCGI no port of its own
SECRETS = (PASSWORD, COOKIE, TOKEN)


@dataclass
class Runs:
    session: Session
    json: Run  # --format json --stats --redact
    text: Run
    pcap: Run  # -w pcap_file
    pcap_file: str

    @property
    def sock(self) -> str:
        return self.json.sock

    @property
    def txs(self) -> list[dict[str, Any]]:
        return self.json.txs


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    with tempfile.TemporaryDirectory(prefix="usniff-fcgi-") as tmp, start_php_app(tmp) as sock:
        pcap = os.path.join(tmp, "fcgi.pcapng")
        json_args = ("--path", sock, "--format", "json", "--stats", "--redact")
        with (
            Usniff(*json_args) as json_run,
            Usniff("--path", sock) as text_run,
            Usniff("--path", sock, "-w", pcap) as pcap_run,
        ):
            session = php_session(sock)
            results = [run.stop() for run in (json_run, text_run, pcap_run)]
        decoded, text, written = (Run(sock, r.returncode, r.text, r.stderr, []) for r in results)
        decoded.events = [json.loads(line) for line in decoded.stdout.splitlines()]
        yield Runs(session, decoded, text, written, pcap)


def test_runs_stop_cleanly(runs: Runs) -> None:
    for run in (runs.json, runs.text, runs.pcap):
        assert_clean_exit(run)


def _match(runs: Runs, uri: str, client: str) -> dict[str, Any]:
    found = [t for t in runs.txs if t["details"].get("params", {}).get("REQUEST_URI") == uri
             and t["client_comm"] == client]  # fmt: skip
    assert len(found) == 1, (uri, [t["request"] for t in runs.txs])
    return found[0]


def _shown_uri(uri: str) -> str:
    return uri.replace(TOKEN, "***")  # --redact masks the token= query value


def test_every_request_paired_with_what_the_client_saw(runs: Runs) -> None:
    assert len(runs.session.requests) == 12
    for sent in runs.session.requests:
        client = "nginx" if sent.client == "curl" else "cgi-fcgi"
        tx = _match(runs, _shown_uri(sent.uri), client)
        d = tx["details"]
        assert (tx["protocol"], tx["command"], tx["path"]) == ("fastcgi", sent.script, runs.sock)
        assert tx["request"].startswith(f"#1 {sent.method} {_shown_uri(sent.uri)} file=/"), tx
        assert (d["status"], d["body_bytes"], d["content_type"]) == (
            sent.status, sent.body_bytes, sent.content_type
        ), (sent, tx)  # fmt: skip
        assert d["stdin_bytes"] == sent.stdin_bytes and d["role"] == "RESPONDER", tx
        assert d["app_status"] == 0 and d["protocol_status"] == "REQUEST_COMPLETE", tx
        assert tx["error"] == (sent.status >= 400), tx
        assert tx["server_comm"] == "php-fpm8.2" and tx["client_pid"] and tx["server_pid"], tx
        assert tx["latency"] is not None and 0 < tx["latency"] < 5, tx
        if sent.script == "/slow.php":
            assert tx["latency"] >= 0.2, tx  # usleep(200000) before the first byte
    assert not [e for e in runs.json.events if e["type"] != "transaction"], runs.json.events


def test_stderr_and_errors(runs: Runs) -> None:
    warn = _match(runs, "/warn.php", "nginx")
    assert "usniff-warning: disk almost full" in warn["details"]["stderr"]
    assert "PHP Warning:  usniff-notice in " in warn["details"]["stderr"]
    assert warn["reply"].startswith('200 text/html; charset=UTF-8, 7 bytes, stderr "PHP message: ')
    missing = _match(runs, "/nope.php", "nginx")
    assert missing["details"]["stderr"] == "Primary script unknown" and missing["error"]
    fatal = _match(runs, "/fail.php", "nginx")
    assert "Call to undefined function no_such_function()" in fatal["details"]["stderr"]


def test_keep_alive_and_concurrent_connections(runs: Runs) -> None:
    by_conn = Counter(t["conn"] for t in runs.txs if t["client_comm"] == "nginx")
    assert max(by_conn.values()) >= 8, by_conn  # one kept-alive connection served most
    slow = [t for t in runs.txs if t["request"].startswith("#1 GET /slow.php?n=")]
    assert len(slow) == CONCURRENT and len({t["conn"] for t in slow}) > 1, slow
    assert all(t["details"]["keep_conn"] for t in runs.txs if t["client_comm"] == "nginx")
    libfcgi = _match(runs, "/post.php?via=libfcgi", "cgi-fcgi")
    assert libfcgi["details"]["keep_conn"] is False


def test_get_values(runs: Runs) -> None:
    [tx] = [t for t in runs.txs if t["command"] == "GET_VALUES"]
    assert tx["request"] == "#0 GET_VALUES FCGI_MAX_CONNS FCGI_MAX_REQS FCGI_MPXS_CONNS"
    assert tx["reply"] == " ".join(f"{k}={v}" for k, v in runs.session.get_values.items())
    assert tx["latency"] is not None


def test_stats_count_what_was_sent(runs: Runs) -> None:
    sent = Counter(("fastcgi", s.script) for s in runs.session.requests)
    sent[("fastcgi", "GET_VALUES")] += 1
    assert stats_table(runs.json.stderr) == dict(sent)


def test_redact_leaves_no_secret(runs: Runs) -> None:
    for secret in SECRETS:
        assert secret not in runs.json.stdout + runs.json.stderr
    tx = _match(runs, "/hello.php?name=bob&token=***", "nginx")
    params = tx["details"]["params"]
    assert params["HTTP_AUTHORIZATION"] == params["HTTP_COOKIE"] == "***"
    assert params["QUERY_STRING"] == "name=bob&token=***"
    # without --redact they are there: the masking is not an accident of the session
    assert TOKEN in runs.text.stdout


def test_text_lines(runs: Runs) -> None:
    lines = runs.text.stdout.splitlines()
    assert len(lines) == 13, lines
    post = next(x for x in lines if "POST /post.php?x=1 " in x)
    assert re.match(
        rf"\d\d:\d\d:\d\d\.\d{{6}} nginx\[\d+\] -> php-fpm8\.2\[\d+\]  #1 POST /post\.php\?x=1 "
        rf"file=\S+/app/post\.php stdin={len(POST_BODY)}  200 text/plain;charset=UTF-8, "
        rf"40 bytes  \d+\.\d{{3}} ms$",
        post,
    ), post


def test_pcapng_dissected_by_wireshark(runs: Runs) -> None:
    path = runs.pcap_file
    assert tshark("-r", path, "-Y", "fcgi") == ""  # no port of its own in stock Wireshark
    assert tshark("-r", path, "-d", DECODE_AS, "-Y", "_ws.malformed") == ""
    fields = tshark("-r", path, "-d", DECODE_AS, "-T", "fields", "-E", "occurrence=a",
                    "-e", "fcgi.type", "-e", "fcgi.content.length", "-Y", "fcgi")  # fmt: skip
    records: Counter[int] = Counter()
    content: Counter[int] = Counter()
    for line in fields.splitlines():
        types, lengths = (col.split(",") for col in line.split("\t"))
        for t, n in zip(types, lengths, strict=True):
            records[int(t)] += 1
            content[int(t)] += int(n)
    txs = runs.txs
    requests = [t for t in txs if t["command"] != "GET_VALUES"]
    assert records[1] == records[3] == len(requests)  # BEGIN_REQUEST, END_REQUEST
    assert records[9] == records[10] == 1  # GET_VALUES, GET_VALUES_RESULT
    assert content[5] == sum(t["details"]["stdin_bytes"] for t in requests)  # STDIN
    assert content[6] == sum(t["details"]["stdout_bytes"] for t in requests)  # STDOUT
    assert content[7] == sum(t["details"].get("stderr_bytes", 0) for t in requests)  # STDERR
    # the followed TCP streams carry exactly the bytes the transactions count
    to_server, from_server = tcp_bytes_by_port(follow_all(tshark, path), PORT)
    assert (to_server, from_server) == (
        sum(t["bytes_in"] for t in txs), sum(t["bytes_out"] for t in txs)
    )  # fmt: skip


def test_usniff_read_decodes_the_pcapng_as_live(runs: Runs) -> None:
    out = subprocess.run([USNIFF, "read", runs.pcap_file, "--format", "json", "--protocol", "auto",
                          "--redact"],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    offline = [json.loads(line) for line in out.stdout.splitlines()]
    keys = ("command", "request", "reply", "bytes_in", "bytes_out", "error", "client_comm")

    def rows(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(tuple(e.get(k) for k in keys) + (e["details"].get("status"),)
                      for e in events)  # fmt: skip

    assert rows(offline) == rows(runs.json.events)
    assert all(e["type"] == "transaction" and e["latency"] is not None for e in offline)
