"""--metrics against real servers: a real Prometheus scrapes usniff, and the counts
it stores equal Redis's own command counters; the Unix-socket endpoint beside the
text output agrees with the lines printed."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import free_port, start_redis
from tests.support.usniff import Usniff, run, wait_until
from tests.test_native_stats import command
from usniff.decoders.base import Transaction
from usniff.decoders.registry import PROTOCOLS
from usniff.outputs.metrics import (
    MAX_OPERATIONS,
    NOT_DECODED_REASONS,
    OTHER,
    SERIES_PER_PATH,
    Metrics,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "usniff-dashboard.json"


@pytest.fixture
def tmp() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="usniff-metrics-") as d:
        yield d


def redis_calls(sock: str) -> dict[str, int]:
    stats = redis.Redis(unix_socket_path=sock).info("commandstats")
    return {k.removeprefix("cmdstat_").upper(): v["calls"] for k, v in stats.items()}


def scrape_unix(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = run(["curl", "-sf", "--unix-socket", path, "http://localhost/metrics"]).stdout
    samples = {}
    for family in text_string_to_metric_families(out):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.mark.root
def test_prometheus_scrapes_request_counts_equal_to_redis_counters(tmp: str) -> None:
    port, prom_port = free_port(), free_port()
    config = Path(tmp, "prometheus.yml")
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: usniff\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    with start_redis(tmp) as sock:
        before = redis_calls(sock)
        with Usniff("--path", sock, "--metrics", f"127.0.0.1:{port}") as u:
            prom = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp}/tsdb",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                subprocess.run(
                    ["redis-benchmark", "-s", sock, "-n", "3000", "-c", "4", "-t", "set,get",
                     "-q"], check=True, capture_output=True, timeout=120,
                )  # fmt: skip
                after = redis_calls(sock)
                want = {c: after[c] - before.get(c, 0) for c in ("SET", "GET")}

                def stored() -> dict[str, float] | None:
                    query = urllib.parse.urlencode(
                        {"query": f'usniff_requests_total{{path="{sock}",protocol="resp"}}'}
                    )
                    url = f"http://127.0.0.1:{prom_port}/api/v1/query?{query}"
                    try:
                        with urllib.request.urlopen(url, timeout=5) as r:
                            data = json.load(r)["data"]["result"]
                    except OSError:
                        return None
                    got = {row["metric"]["operation"]: float(row["value"][1]) for row in data}
                    ok = all(got.get(c) == n for c, n in want.items())
                    return got if ok else None

                got = wait_until(stored, 60, "Prometheus to store usniff's counts", step=0.5)
                queries = dashboard_queries()

                def answered() -> dict[str, list[object] | None] | None:
                    answers = {e: prom_query(prom_port, e) for e in queries}  # rate(): 2 scrapes
                    return answers if answers[queries[0]] else None

                answers = wait_until(answered, 30, "the dashboard's queries", step=0.5)
            finally:
                prom.terminate()
                prom.wait(30)
            result = u.stop()
    assert result.returncode == 0, result.stderr
    assert {c: got[c] for c in want} == want
    assert "transactions counted" in result.stderr
    # every query of the Grafana dashboard in docs/ runs; those of the requests'
    # and bytes' panels find the load's series
    assert all(a is not None for a in answers.values()), answers
    for expr, rows in answers.items():
        if "usniff_requests_total" in expr or "usniff_socket_bytes_total" in expr:
            assert rows, expr


def dashboard_queries() -> list[str]:
    """The PromQL of docs/grafana/usniff-dashboard.json, its variables filled in."""
    dash = json.loads(DASHBOARD.read_text())
    fill = {"$instance": ".*", "$path": ".*", "$job": ".*", "$__rate_interval": "30s"}
    out = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            out.append(expr)
    return out


def prom_query(port: int, expr: str) -> list[object] | None:
    """The result rows of an instant query; None when Prometheus refused it."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except OSError:
        return None
    return body["data"]["result"] if body.get("status") == "success" else None


@pytest.mark.root
def test_unix_socket_endpoint_beside_text_agrees_with_the_lines(tmp: str) -> None:
    endpoint = f"{tmp}/metrics.sock"
    with (
        start_redis(tmp) as sock,
        Usniff("--path", sock, "--metrics", endpoint, "--format", "text") as u,
    ):
        client = redis.Redis(unix_socket_path=sock)
        for i in range(50):
            client.set(f"k{i}", "v" * i)
        for i in range(30):
            client.get(f"k{i}")
        with pytest.raises(redis.ResponseError):
            client.lpush("k1", "x")  # WRONGTYPE: an error reply
        want_lines = 50 + 30 + 1

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            s = scrape_unix(endpoint)
            key = (("operation", "LPUSH"), ("path", sock), ("protocol", "resp"))
            return s if s.get(("usniff_request_errors_total", key)) == 1 else None

        samples = wait_until(counted, 20, "the last request on the metrics socket", step=0.2)
        result = u.stop()
    assert result.returncode == 0, result.stderr
    printed = Counter(
        m[1] for line in result.text.splitlines() if (m := re.search(r"\]  (\S+)", line))
    )
    assert sum(printed.values()) >= want_lines  # the client's handshake commands come too

    def value(name: str, op: str, **extra: str) -> float:
        labels = {"operation": op, "path": sock, "protocol": "resp", **extra}
        return float(samples[(name, tuple(sorted(labels.items())))])

    total = sum(v for (name, _), v in samples.items() if name == "usniff_requests_total")
    assert total == sum(printed.values())  # every line printed is counted
    for op in ("SET", "GET", "LPUSH"):
        assert value("usniff_requests_total", op) == printed[op], op
    assert value("usniff_requests_total", "GET") == 30
    assert value("usniff_request_errors_total", "LPUSH") == 1
    assert value("usniff_request_duration_seconds_count", "SET") == 50
    assert value("usniff_request_duration_seconds_bucket", "SET", le="+Inf") == 50
    client = (("container", ""), ("path", sock), ("sender", "client"))  # not in a container
    sent_by_client = samples[("usniff_socket_bytes_total", client)]
    assert sent_by_client >= sum(
        value("usniff_request_bytes_total", op, direction="request") for op in ("SET", "GET")
    )
    assert not Path(endpoint).exists()  # removed at exit


def test_operation_labels_are_capped_per_path() -> None:
    metrics = Metrics()
    for i in range(MAX_OPERATIONS + 50):
        metrics.add(Transaction("resp", f"CMD{i}", "", "", False, 0.0, 1e-4, 10, 5, path="/s"))
    ops = {
        s.labels["operation"]
        for family in metrics.collect()
        if family.name == "usniff_requests"
        for s in family.samples
    }
    assert len(ops) == MAX_OPERATIONS + 1 and OTHER in ops
    total = sum(
        s.value
        for family in metrics.collect()
        if family.name == "usniff_requests"
        for s in family.samples
        if s.name == "usniff_requests_total"
    )
    assert total == MAX_OPERATIONS + 50  # every request counted, the rest as "other"


def test_series_of_a_busy_capture_stay_under_the_documented_bound() -> None:
    """50 clients, 10k distinct Redis keys and 1k distinct SQL statement shapes on two
    sockets: the scrape holds at most SERIES_PER_PATH series per path (docs/metrics.md)."""
    from prometheus_client import CollectorRegistry, generate_latest

    metrics = Metrics()
    for i in range(10_000):
        cmd = ("GET", "SET", "HGETALL", "EXPIRE")[i % 4]  # the key is no label
        metrics.add(Transaction("resp", cmd, f"{cmd} key:{i}", "+OK", False, 0.0, 1e-4, 30, 5,
                                path="/run/redis.sock", client_pid=1000 + i % 50))  # fmt: skip
    for i in range(1_000):
        shape = f"SELECT c{i} FROM t WHERE id = ?"
        metrics.add(Transaction("postgres", shape, shape, "1 row", False, 0.0, 2e-3, 60, 90,
                                path="/run/postgresql/.s.PGSQL.5432"))  # fmt: skip
    # and records not decoded, for every reason the engine gives (Decoding._reason)
    unknown = "protocol not recognised"
    reasons = [unknown, f"{unknown}; only the client's side seen",
               f"{unknown}; only the server's side seen", "datagram",
               *(f"{p.name}, no decoder" for p in PROTOCOLS if p.decoder is None)]  # fmt: skip
    assert len(reasons) == NOT_DECODED_REASONS
    for reason in reasons:
        metrics.add_undecoded("/run/postgresql/.s.PGSQL.5432", reason, 3)
    registry = CollectorRegistry()
    registry.register(metrics)
    lines = [x for x in generate_latest(registry).decode().splitlines() if not x.startswith("#")]
    per_path = Counter(re.search(r'path="([^"]*)"', x)[1] for x in lines if 'path="' in x)  # type: ignore[index]
    assert per_path["/run/postgresql/.s.PGSQL.5432"] <= SERIES_PER_PATH
    assert per_path["/run/redis.sock"] <= SERIES_PER_PATH
    assert per_path["/run/postgresql/.s.PGSQL.5432"] > 0.9 * SERIES_PER_PATH  # the cap is hit


@pytest.mark.root
@pytest.mark.parametrize("pipeline", [1, 16])
def test_metrics_alone_under_redis_benchmark_count_what_the_client_sent(
    tmp: str, pipeline: int
) -> None:
    """--metrics alone (its plain RESP connections counted in C, outputs/fast.py): 50
    clients, pipelined or not; every request counted, as Redis counted it and as
    redis-benchmark sent it, each answered (in the histogram), with its bytes."""
    n = 20_000
    endpoint = f"{tmp}/metrics.sock"
    with start_redis(tmp) as sock:
        before = redis_calls(sock)
        with Usniff("--path", sock, "--metrics", endpoint) as u:
            subprocess.run(
                ["redis-benchmark", "-s", sock, "-n", str(n), "-c", "50", "-P", str(pipeline),
                 "-t", "set,get,incr", "-q"], check=True, capture_output=True, timeout=300,
            )  # fmt: skip
            after = redis_calls(sock)
            ops = ("SET", "GET", "INCR")
            by_redis = {c: after[c] - before.get(c, 0) for c in ops}

            def value(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
                      op: str, **extra: str) -> float:  # fmt: skip
                labels = {"operation": op, "path": sock, "protocol": "resp", **extra}
                return s.get((name, tuple(sorted(labels.items()))), 0.0)

            def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                s = scrape_unix(endpoint)
                done = all(value(s, "usniff_requests_total", op) >= n for op in ops)
                return s if done else None

            samples = wait_until(counted, 60, "every request on the metrics socket", step=0.5)
            result = u.stop()
    assert result.returncode == 0, result.stderr
    assert by_redis == dict.fromkeys(ops, n)  # the load is what it claims to be
    for op in ops:
        assert value(samples, "usniff_requests_total", op) == n, op
        assert value(samples, "usniff_request_errors_total", op) == 0, op
        assert value(samples, "usniff_requests_unanswered_total", op) == 0, op
        assert value(samples, "usniff_request_duration_seconds_count", op) == n, op
        assert value(samples, "usniff_request_duration_seconds_bucket", op, le="+Inf") == n, op
        assert value(samples, "usniff_request_duration_seconds_sum", op) > 0, op
    # the bytes redis-benchmark sends (its fixed keys, 3-byte value) and Redis answers
    key, counter = b"key:__rand_int__", b"counter:__rand_int__"
    sent = {"SET": (command([b"SET", key, b"xxx"]), b"+OK\r\n"),
            "GET": (command([b"GET", key]), b"$3\r\nxxx\r\n"),
            "INCR": (command([b"INCR", counter]), None)}  # fmt: skip
    for op, (request, reply) in sent.items():
        size = value(samples, "usniff_request_bytes_total", op, direction="request")
        assert size == n * len(request), op
        if reply is not None:  # INCR's: the counter's value, growing
            size = value(samples, "usniff_request_bytes_total", op, direction="response")
            assert size == n * len(reply), op


def serve_echo(path: str, replies: int) -> threading.Thread:
    """A server of no protocol usniff knows on ``path``: one connection, ``replies``
    answers, one send each."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            for _ in range(replies):
                conn.sendall(b"ZQ-ACK " + conn.recv(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.root
@pytest.mark.parametrize(
    "beside", [(), ("--format", "text"), ("--stats",)], ids=["alone", "beside-text", "beside-table"]
)
def test_records_no_decoder_reads_are_counted_by_reason(tmp: str, beside: tuple[str, ...]) -> None:
    """A connection of an unknown protocol: every record of it (the client's sends and
    the server's, one record each) is in usniff_records_not_decoded_total, whether the
    metrics decode alone (the native core) or the text lines or the table beside them
    hand them their events."""
    n = 40
    endpoint, sock = f"{tmp}/metrics.sock", f"{tmp}/odd.sock"
    server = serve_echo(sock, n)
    key = ("usniff_records_not_decoded_total",
           (("path", sock), ("reason", "protocol not recognised")))  # fmt: skip
    with (
        Usniff("--path", sock, "--metrics", endpoint, *beside) as u,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
    ):
        client.connect(sock)
        for i in range(n):
            client.sendall(b"ZQ %d\n" % i)
            assert client.recv(4096) == b"ZQ-ACK ZQ %d\n" % i

        def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            s = scrape_unix(endpoint)
            return s if s.get(key, 0) >= 2 * n else None

        # the connection still open: no close record yet, the count is the sends'
        samples = wait_until(counted, 20, "the connection's records on the metrics socket")
        client.close()
        server.join(10)
        result = u.stop()
    assert result.returncode == 0, result.stderr
    assert samples[key] == 2 * n
    assert not any(name == "usniff_requests_total" for name, _ in samples)
    sent = sum(v for (name, labels), v in samples.items() if name == "usniff_socket_messages_total")
    assert sent == 2 * n  # the socket counters saw the same sends
