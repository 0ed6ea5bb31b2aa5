"""OpenTelemetry traces (``--otlp URL``): one span per decoded transaction, sent
as OTLP/HTTP protobuf to ``URL/v1/traces`` (a collector's port 4318).

The capture thread only appends the transaction to a bounded queue; a thread
builds the export requests (opentelemetry-proto's messages) and posts them in
batches.  The OpenTelemetry SDK's span objects cost tens of microseconds each
and its batch processor drops without counting; here a full queue drops the
newest spans and counts them, an export that fails counts its spans, and the
summary at exit says both (docs/traces.md).
"""

from __future__ import annotations

import os
import random
import socket
import threading
import urllib.error
import urllib.request
from collections import deque

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from .. import __version__
from ..containers import Containers, Identity
from ..decoders.base import Transaction
from ..decoders.engine import DecoderOptions
from .base import OutputError
from .sink import TransactionSink

MAX_QUEUE = 65536  # spans waiting for export; beyond, new spans are dropped and counted
BATCH = 2048  # spans per export request
INTERVAL = 1.0  # seconds between exports when fewer than BATCH are waiting
TIMEOUT = 10.0  # seconds per export request
DRAIN = 5.0  # seconds allowed at exit to send what is queued

# the OpenTelemetry semantic conventions' db.system.name of the decoded protocols
DB_SYSTEM = {"resp": "redis", "mysql": "mysql", "postgres": "postgresql",
             "memcached": "memcached"}  # fmt: skip


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _container_attrs(prefix: str, ident: Identity) -> list[KeyValue]:
    """The semantic conventions' container and Kubernetes attributes of a cgroup."""
    attrs = []
    if ident.container_id:
        attrs.append(_kv(f"{prefix}container.id", ident.container_id))
    if ident.name:
        attrs.append(_kv(f"{prefix}container.name", ident.name))
    namespace, _, pod = ident.pod.rpartition("/")
    if namespace:  # a uid alone names no pod
        attrs += [_kv(f"{prefix}k8s.namespace.name", namespace), _kv(f"{prefix}k8s.pod.name", pod)]
    return attrs


def span(tx: Transaction, rng: random.Random, containers: Containers | None = None) -> Span:
    """The span of one transaction: from the request's last byte to the reply's first
    byte (the server time usniff measures); no reply: a zero-length span.  The
    client is the span's process (``process.*``, ``container.*``); ``usniff.server.*``
    says who answered."""
    start = int(tx.ts_request * 1e9)
    end = int(tx.ts_reply * 1e9) if tx.ts_reply is not None else start
    attrs = [
        _kv("server.address", tx.path),
        _kv("network.transport", "unix"),
        _kv("usniff.protocol", tx.protocol),
        _kv("usniff.request", tx.request),
        _kv("process.pid", tx.client_pid),
        _kv("process.executable.name", tx.client_comm),
        _kv("usniff.server.pid", tx.server_pid),
        _kv("usniff.server.comm", tx.server_comm),
        _kv("usniff.request.bytes", tx.bytes_in),
        _kv("usniff.response.bytes", tx.bytes_out),
    ]
    system = DB_SYSTEM.get(tx.protocol)
    if system is not None:
        attrs += [
            _kv("db.system.name", system),
            _kv("db.operation.name", tx.command),
            _kv("db.query.text", tx.request),
        ]
    if containers is not None:
        if tx.client_cgroup:
            attrs += _container_attrs("", containers.identity(tx.client_cgroup))
        if tx.server_cgroup:
            attrs += _container_attrs("usniff.server.", containers.identity(tx.server_cgroup))
    if tx.reply:
        attrs.append(_kv("usniff.reply", tx.reply))
    if tx.unanswered:
        attrs.append(_kv("usniff.unanswered", 1))
    status = Status(code=Status.STATUS_CODE_ERROR if tx.error else Status.STATUS_CODE_UNSET)
    return Span(
        trace_id=rng.getrandbits(128).to_bytes(16, "big"),
        span_id=rng.getrandbits(64).to_bytes(8, "big"),
        name=tx.command or tx.protocol,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=attrs,
        status=status,
    )


class OtlpOutput(TransactionSink):
    """``--otlp URL``: transactions queued, exported as spans by a thread."""

    def __init__(
        self,
        url: str,
        decode: bool,
        protocol: str = "auto",
        redact: bool = False,
        options: DecoderOptions | None = None,
        containers: Containers | None = None,
    ) -> None:
        super().__init__(decode, protocol, redact, options)
        self.containers = containers or Containers()
        if not url.startswith(("http://", "https://")):
            raise OutputError(f"--otlp {url}: give the collector's http:// or https:// URL")
        self.endpoint = url.rstrip("/") + ("" if url.endswith("/v1/traces") else "/v1/traces")
        self.queue: deque[Transaction] = deque()
        self.dropped = 0  # the queue was full
        self.failed = 0  # in export requests that failed
        self.exported = 0
        self.error = ""  # the last export error, for the summary
        self._wake = threading.Event()
        self._done = False
        self._rng = random.Random(int.from_bytes(os.urandom(16), "big"))
        self._resource = Resource(attributes=[
            _kv("service.name", "usniff"), _kv("host.name", socket.gethostname()),
        ])  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="otlp", daemon=True)
        self._thread.start()

    def add(self, tx: Transaction) -> None:
        if len(self.queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        self.queue.append(tx)
        if len(self.queue) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(INTERVAL)
            self._wake.clear()
            while self.queue:
                self._export([self.queue.popleft() for _ in range(min(BATCH, len(self.queue)))])
            if self._done:
                return

    def _export(self, batch: list[Transaction]) -> None:
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=self._resource,
            scope_spans=[ScopeSpans(
                scope=InstrumentationScope(name="usniff", version=__version__),
                spans=[span(tx, self._rng, self.containers) for tx in batch],
            )],
        )])  # fmt: skip
        post = urllib.request.Request(
            self.endpoint,
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(post, timeout=TIMEOUT) as reply:
                reply.read()
            self.exported += len(batch)
        except (OSError, urllib.error.HTTPError) as e:
            self.failed += len(batch)
            self.error = str(getattr(e, "reason", e))

    def stop(self) -> None:
        self._done = True
        self._wake.set()
        self._thread.join(DRAIN)
        self.failed += len(self.queue)  # not sent within DRAIN seconds
        self.queue.clear()

    def report(self) -> str:
        text = f"usniff: OTLP: {self.exported} spans exported to {self.endpoint}"
        if self.dropped:
            text += f", {self.dropped} dropped (queue of {MAX_QUEUE} full)"
        if self.failed:
            text += f", {self.failed} not exported ({self.error or 'exit before export'})"
        return text
