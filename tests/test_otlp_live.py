"""--otlp against a real Redis: the spans received equal Redis's own command counters.

No OpenTelemetry collector is packaged for Debian 12, so the receiving end here is
a small HTTP server that parses each request with opentelemetry-proto's own
ExportTraceServiceRequest (the OTLP/HTTP wire format a collector accepts)."""

from __future__ import annotations

import re
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.live_helpers import Usniff, free_port, wait_until
from tests.support.servers import start_redis

pytestmark = pytest.mark.root


class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.paths: set[str] = set()
        spans, paths = self.spans, self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                paths.add(self.path)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(b"")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-otlp-") as d:
        yield d


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def calls(sock: str) -> Counter[str]:
    stats = redis.Redis(unix_socket_path=sock).info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_").upper().replace("|", " "): v["calls"] for k, v in stats.items()}
    )


def test_spans_equal_redis_counters(tmp: str) -> None:
    receiver = Receiver()
    with start_redis(tmp) as sock:
        before = calls(sock)
        with Usniff("--path", sock, "--otlp", receiver.url) as u:
            client = redis.Redis(unix_socket_path=sock)
            for i in range(300):
                client.set(f"k{i}", i)
            for i in range(200):
                client.get(f"k{i}")
            with pytest.raises(redis.ResponseError):
                client.lpush("k1", "x")
            want = calls(sock) - before
            wait_until(lambda: len(receiver.spans) >= sum(want.values()), 20, "the spans")
            result = u.stop()
    assert result.returncode == 0, result.stderr
    assert receiver.paths == {"/v1/traces"}
    got = Counter(str(attrs(s).get("db.operation.name", "")) for s in receiver.spans)
    assert {op: got[op] for op in ("SET", "GET", "LPUSH")} == {
        op: want[op] for op in ("SET", "GET", "LPUSH")
    }
    # redis-py's CLIENT SETINFO is unknown to Redis 7.0: answered with an error and not
    # in commandstats; every other span is one of Redis's own counted calls
    setinfo = got.pop("CLIENT SETINFO", 0)
    assert sum(got.values()) == sum(want.values())
    get = next(s for s in receiver.spans if attrs(s)["db.operation.name"] == "GET")
    a = attrs(get)
    assert a["db.system.name"] == "redis" and a["server.address"] == sock
    assert a["network.transport"] == "unix" and a["usniff.server.comm"] == "redis-server"
    assert str(a["db.query.text"]).startswith("GET k")
    assert get.kind == Span.SPAN_KIND_CLIENT
    assert 0 < get.end_time_unix_nano - get.start_time_unix_nano < 1_000_000_000
    assert len({s.trace_id for s in receiver.spans}) == len(receiver.spans)
    errors = [s for s in receiver.spans if s.status.code == s.status.STATUS_CODE_ERROR]
    failed = Counter(str(attrs(s)["db.operation.name"]) for s in errors)
    assert failed == Counter({"LPUSH": 1, "CLIENT SETINFO": setinfo})
    m = re.search(r"OTLP: (\d+) spans exported", result.stderr)
    assert m and int(m[1]) == len(receiver.spans), result.stderr


def test_unreachable_collector_is_counted_beside_metrics(tmp: str) -> None:
    """--otlp and --metrics alone: one decodes for both; spans that could not be sent
    are counted in the summary, never silently lost."""
    closed = f"http://127.0.0.1:{free_port()}"
    endpoint = f"{tmp}/metrics.sock"
    with (
        start_redis(tmp) as sock,
        Usniff("--path", sock, "--metrics", endpoint, "--otlp", closed) as u,
    ):
        client = redis.Redis(unix_socket_path=sock)
        for i in range(40):
            client.set(f"k{i}", i)
        result = u.stop()
    assert result.returncode == 0, result.stderr
    m = re.search(r"usniff: (\d+) transactions counted", result.stderr)
    assert m, result.stderr
    n = int(m[1])
    assert n >= 40
    assert f"OTLP: 0 spans exported to {closed}/v1/traces, {n} not exported" in result.stderr
