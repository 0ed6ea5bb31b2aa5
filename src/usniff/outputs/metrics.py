"""Prometheus metrics (``--metrics ADDR``): what was captured and decoded, served
in the exposition format while capturing.

:class:`Metrics` aggregates in O(1) per transaction and per record (counters and
classic histogram buckets in plain dicts; the records' counters summed per socket
in C first, ``_fast.sockets``); prometheus_client only turns them
into metric families when scraped (a custom collector), so nothing of
prometheus_client runs on the capture's hot path.  Label cardinality is
bounded: at most ``MAX_PATHS`` socket paths and ``MAX_OPERATIONS`` operations
per path and protocol, ``MAX_CONTAINERS`` containers; beyond, the label is
``other`` (docs/metrics.md).

:class:`MetricsOutput` is the Output (a :class:`~usniff.outputs.sink.TransactionSink`).
Alone (no decoded output beside it, no other sink to hand transactions to, no
``-c``), it counts plain RESP, MySQL and PostgreSQL connections in C
(:class:`~usniff.outputs.fast.NativeMetrics`).
"""

from __future__ import annotations

import bisect
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import CollectorRegistry, MetricsHandler, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .._events import Packed
from ..containers import Containers
from ..decoders.base import Transaction
from ..decoders.engine import DecoderOptions, Undecoded
from ..decoders.registry import PROTOCOLS
from ..events import CaptureStats, Record
from ._fast import sockets
from .base import OutputError, unpacked
from .fast import NativeMetrics
from .sink import TransactionSink
from .stats import Tally

if TYPE_CHECKING:
    from ._fast import Row  # a type of _fast.pyi only

# seconds; sub-millisecond resolution, as Unix-socket servers answer in tens of microseconds
BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
           0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # fmt: skip
MAX_PATHS = 100
MAX_OPERATIONS = 200  # per (path, protocol)
MAX_CONTAINERS = 50  # the socket counters' container label ("" outside containers)
OTHER = "other"
# per operation: requests, errors, unanswered, 2 byte counters, the histogram's buckets
# (+Inf too), sum and count; per path: 3 socket counters for each of 2 senders, and the
# records not decoded per reason (Decoding._reason: not recognised with both sides seen
# or one of them, a datagram, or a protocol detected that has no decoder)
NOT_DECODED_REASONS = 4 + sum(p.decoder is None for p in PROTOCOLS)
SERIES_PER_OPERATION = 5 + len(BUCKETS) + 1 + 2
SERIES_PER_PATH = (MAX_OPERATIONS + 1) * SERIES_PER_OPERATION + 6 + NOT_DECODED_REASONS


@dataclass(slots=True)
class _Op(Tally):
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    # sum of the answered requests' latencies, each in whole nanoseconds (as the
    # histogram of --stats rounds them): an integer sum is the same in whatever order
    # and grouping it is added (the native path adds per batch)
    nanoseconds: int = 0


@dataclass(slots=True)
class _Side:
    messages: int = 0  # send() calls / datagrams
    bytes: int = 0
    lost: int = 0


class Metrics(Collector):
    """Counters of transactions per (path, protocol, operation) and of records per
    (path, sender role); a prometheus_client collector of them."""

    def __init__(self, containers: Containers | None = None) -> None:
        self._lock = threading.Lock()
        self._ops: dict[tuple[str, str, str], _Op] = {}
        self._per_path: dict[str, int] = {}  # operations labelled per path
        self._sides: dict[tuple[str, str, int], _Side] = {}  # path, sender role, cgroup
        self._undecoded: dict[tuple[str, str], int] = {}  # records not decoded: path, reason
        self._paths: set[str] = set()
        self._label = (containers or Containers()).label
        self.records = 0

    def _path(self, path: str) -> str:
        if path in self._paths:
            return path
        if len(self._paths) >= MAX_PATHS:
            return OTHER
        self._paths.add(path)
        return path

    def _op(self, path: str, protocol: str, operation: str) -> _Op:
        """The counters of an operation, labelled on first use (under the lock)."""
        path = self._path(path)
        key = (path, protocol, operation)
        op = self._ops.get(key)
        if op is None:
            seen = self._per_path.get(path + "\0" + protocol, 0)
            if seen >= MAX_OPERATIONS:
                key = (path, protocol, OTHER)
                op = self._ops.get(key)
            else:
                self._per_path[path + "\0" + protocol] = seen + 1
            if op is None:
                op = self._ops[key] = _Op()
        return op

    def add(self, tx: Transaction) -> None:
        with self._lock:
            op = self._op(tx.path, tx.protocol, tx.command)
            op.add(tx)
            latency = tx.latency
            if latency is not None:
                op.buckets[bisect.bisect_left(BUCKETS, latency)] += 1
                op.nanoseconds += round(latency * 1e9)

    def add_undecoded(self, path: str, reason: str, records: int = 1) -> None:
        """Records of a connection no decoder decodes (engine.Undecoded), by reason."""
        with self._lock:
            key = (self._path(path), reason)
            self._undecoded[key] = self._undecoded.get(key, 0) + records

    def merge(self, rows: Sequence[Row], paths: Sequence[str]) -> None:
        """Add the answered transactions counted elsewhere (outputs/fast.py), in the
        order of each row's first transaction (which labels an operation first): per
        (label: index in ``paths``, protocol, command), the counts, the bytes, the
        transactions per bucket of BUCKETS (its index) and the nanoseconds."""
        with self._lock:
            for (
                label,
                protocol,
                command,
                count,
                errors,
                bytes_in,
                bytes_out,
                buckets,
                _,
                ns,
            ) in rows:
                op = self._op(paths[label], protocol, command)
                op.count += count
                op.errors += errors
                op.bytes_in += bytes_in
                op.bytes_out += bytes_out
                for index, n in buckets.items():
                    op.buckets[index] += n
                op.nanoseconds += ns

    def add_records(self, batch: Sequence[Record | Packed]) -> None:
        # counted per socket in C, in the order of each one's first record (which
        # labels its path first)
        counts = sockets(batch if isinstance(batch, list) else list(batch))
        with self._lock:
            self.records += len(batch)
            for path, own, cgroup, messages, nbytes, lost in counts:
                key = (self._path(path), "server" if own else "client", cgroup)
                side = self._sides.get(key)
                if side is None:
                    side = self._sides[key] = _Side()
                side.messages += messages
                side.bytes += nbytes
                side.lost += lost

    def collect(self) -> Iterator[Any]:
        with self._lock:
            ops = [(k, replace(o, buckets=list(o.buckets))) for k, o in self._ops.items()]
            sides = [(k, _Side(s.messages, s.bytes, s.lost)) for k, s in self._sides.items()]
            undecoded = list(self._undecoded.items())
            records = self.records
        labels = ["path", "protocol", "operation"]
        requests = CounterMetricFamily(
            "usniff_requests", "Decoded requests (with or without a reply).", labels=labels
        )
        errors = CounterMetricFamily(
            "usniff_request_errors", "Requests answered with an error.", labels=labels
        )
        unanswered = CounterMetricFamily(
            "usniff_requests_unanswered",
            "Requests whose reply never came before the connection or capture ended.",
            labels=labels,
        )
        size = CounterMetricFamily(
            "usniff_request_bytes",
            "Bytes of requests (direction=request) and of their replies (direction=response).",
            labels=[*labels, "direction"],
        )
        latency = HistogramMetricFamily(
            "usniff_request_duration_seconds",
            "Server time: from the request's last byte to the reply's first byte.",
            labels=labels,
        )
        for (path, protocol, operation), op in ops:
            values = [path, protocol, operation]
            requests.add_metric(values, op.count)
            errors.add_metric(values, op.errors)
            unanswered.add_metric(values, op.unanswered)
            size.add_metric([*values, "request"], op.bytes_in)
            size.add_metric([*values, "response"], op.bytes_out)
            cumulative, running = [], 0
            for bound, n in zip((*map(_le, BUCKETS), "+Inf"), op.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            latency.add_metric(values, cumulative, op.nanoseconds / 1e9)
        side_labels = ["path", "sender", "container"]
        messages = CounterMetricFamily(
            "usniff_socket_messages", "send() calls and datagrams seen.", labels=side_labels
        )
        sent = CounterMetricFamily(
            "usniff_socket_bytes", "Bytes sent (captured or lost).", labels=side_labels
        )
        lost = CounterMetricFamily(
            "usniff_socket_bytes_lost",
            "Bytes sent that usniff could not copy (full ring, not in user memory).",
            labels=side_labels,
        )
        for (path, sender, container), side in self._by_container(sides).items():
            messages.add_metric([path, sender, container], side.messages)
            sent.add_metric([path, sender, container], side.bytes + side.lost)
            lost.add_metric([path, sender, container], side.lost)
        not_decoded = CounterMetricFamily(
            "usniff_records_not_decoded",
            "Records of connections no decoder decodes (text mode shows them raw), by reason.",
            labels=["path", "reason"],
        )
        for (path, reason), n in undecoded:
            not_decoded.add_metric([path, reason], n)
        seen = CounterMetricFamily("usniff_capture_records", "Records read from the ring buffer.")
        seen.add_metric([], records)
        paths = GaugeMetricFamily("usniff_socket_paths", "Socket paths labelled (at most 100).")
        paths.add_metric([], len(self._paths))
        yield from (
            requests, errors, unanswered, size, latency, messages, sent, lost, not_decoded, seen,
            paths,
        )  # fmt: skip

    def _by_container(
        self, sides: list[tuple[tuple[str, str, int], _Side]]
    ) -> dict[tuple[str, str, str], _Side]:
        """The socket counters per (path, sender, container label): the sender's
        container, "" outside one; beyond MAX_CONTAINERS labels, "other"."""
        labels: dict[str, None] = {}
        out: dict[tuple[str, str, str], _Side] = {}
        for (path, sender, cgroup), side in sides:
            label = self._label(cgroup)
            if label and label not in labels:
                if len(labels) >= MAX_CONTAINERS:
                    label = OTHER
                else:
                    labels[label] = None
            total = out.setdefault((path, sender, label), _Side())
            total.messages += side.messages
            total.bytes += side.bytes
            total.lost += side.lost
        return out


def _le(bound: float) -> str:
    return repr(bound)


class _UnixHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "localhost", 0


def serve(metrics: Metrics, addr: str) -> ThreadingHTTPServer:
    """Serve ``metrics`` (and this process's CPU and memory) on ``addr``: ``HOST:PORT``,
    ``:PORT`` (every interface) or a Unix socket path (containing ``/``)."""
    registry = CollectorRegistry()
    registry.register(metrics)
    ProcessCollector(registry=registry)
    handler = MetricsHandler.factory(registry)
    try:
        if "/" in addr:
            if os.path.exists(addr):
                raise OutputError(f"--metrics {addr}: the file exists; remove it or pick a path")
            server: ThreadingHTTPServer = _UnixHTTPServer(addr, handler)  # type: ignore[arg-type]
        else:
            host, sep, port = addr.rpartition(":")
            if not sep or not port.isdigit():
                raise OutputError(f"--metrics {addr}: give HOST:PORT, :PORT or a socket path")
            server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
    except OSError as e:
        raise OutputError(f"--metrics {addr}: {e.strerror or e}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


class MetricsOutput(TransactionSink):
    """The ``--metrics`` output: counts records, and transactions (its own decoding's
    when ``decode``, else those a decoded output hands it)."""

    def __init__(
        self,
        addr: str,
        decode: bool,
        protocol: str = "auto",
        redact: bool = False,
        options: DecoderOptions | None = None,
        containers: Containers | None = None,
    ) -> None:
        super().__init__(decode, protocol, redact, options)
        self.addr = addr
        self.metrics = Metrics(containers)
        self._server = serve(self.metrics, addr)
        # chosen at the first write: the listeners are known then
        self._native: NativeMetrics | None = None
        self._started = False

    def add(self, tx: Transaction) -> None:
        self.metrics.add(tx)

    def undecoded(self, ev: Undecoded) -> None:
        self.metrics.add_undecoded(ev.record.path, ev.reason)

    @property
    def takes_packed(self) -> bool:
        """Whether ``write`` takes the capture's Packed records: when it decodes alone
        (the native path, which reads their C fields, as the socket counters do)."""
        return self.decoding is not None and not self.listeners

    frames_packed = False

    def records(self, batch: Sequence[Record | Packed]) -> None:
        self.metrics.add_records(batch)

    def write(self, batch: Sequence[Record | Packed], limit: int = 0) -> int:
        if not self._started:
            self._started = True
            if self.decoding is not None and self.takes_packed and not limit:
                self._native = NativeMetrics(self.decoding, self.metrics, self._count, BUCKETS)
        if self._native is None:  # Packed records only when takes_packed (cast: no copy)
            records = unpacked(batch) if self.takes_packed else cast("Sequence[Record]", batch)
            return super().write(records, limit)
        if limit:  # -c counts each transaction: in Python from here on
            counted = self._native.release()
            self._native = None
            records = unpacked(batch)
            if counted < limit:
                return counted + super().write(records, limit - counted)
            self.records(records)
            assert self.decoding is not None  # a native path decodes
            self.decoding.feed(records)  # beyond -c: decoded, not counted
            return counted
        self.records(batch)
        return self._native.feed(batch if isinstance(batch, list) else list(batch))

    def close(self, stats: CaptureStats) -> int:
        counted = self._native.release() if self._native is not None else 0
        return counted + super().close(stats)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if "/" in self.addr:
            os.unlink(self.addr)
