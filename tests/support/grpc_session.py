"""A real gRPC server and client (grpcio) on a ``unix:`` address, for the HTTP/2 tests.

No generated stubs: the methods take and return raw bytes (protobuf-encoded by
hand, so usniff's schema-less field tree has something real to show).  The
server and the client each run as their own process (``python grpc_session.py
serve SOCK`` / ``client SOCK``): the client prints what it did and saw as JSON,
the ground truth the tests compare usniff's output with.

Calls: unary ``Echo`` (twice), server streaming ``Count`` (n replies), client
streaming ``Sum`` (n requests, one reply), and ``Fail`` which ends with
NOT_FOUND and a message, and ``Watch``, a stream the client cancels after
WATCH_READ replies (RST_STREAM CANCEL); every call carries an ``authorization`` metadata
header (masked by ``--redact``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc

SERVICE = "usniff.test.Demo"
TOKEN = "Bearer grpc-s3cr3t-token"
COUNT = 4  # replies of the server streaming call
SUM = 3  # requests of the client streaming call
FAIL_MESSAGE = "no such thing: widget 42"
WATCH_READ = 2  # replies of the Watch stream the client reads before it cancels
WATCH_MAX = 500


def pb_string(number: int, text: str) -> bytes:
    """A protobuf length-delimited field (for short strings)."""
    data = text.encode()
    return bytes([number << 3 | 2, len(data)]) + data


def pb_varint(number: int, value: int) -> bytes:
    out = bytearray([number << 3])
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# --------------------------------------------------------------------------- server


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def _count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(COUNT):
        yield pb_varint(1, i + 1) + pb_string(2, f"item-{i + 1}")


def _sum(requests: Iterable[bytes], context: grpc.ServicerContext) -> bytes:
    return pb_varint(1, sum(len(r) for r in requests))


def _watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    """Streams until the client cancels (at most WATCH_MAX items)."""
    for i in range(WATCH_MAX):
        if not context.is_active():
            return
        yield pb_varint(1, i + 1)
        time.sleep(0.02)


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.NOT_FOUND, FAIL_MESSAGE)
    raise AssertionError("abort returns by raising")


def serve(sock: str) -> None:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
        "Sum": grpc.stream_unary_rpc_method_handler(_sum),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Watch": grpc.unary_stream_rpc_method_handler(_watch),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    server.wait_for_termination()


@contextlib.contextmanager
def start_grpc_server(tmpdir: str | os.PathLike[str]) -> Iterator[str]:
    sock = Path(tmpdir, "grpc.sock")
    proc = subprocess.Popen([sys.executable, __file__, "serve", str(sock)])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gRPC server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# --------------------------------------------------------------------------- client


def client(sock: str) -> list[dict[str, Any]]:
    """Make the calls; return one record per call: method, messages sent and received
    (with their sizes) and the final status."""
    calls: list[dict[str, Any]] = []
    meta = (("authorization", TOKEN), ("x-request-id", "req-1"))
    with grpc.insecure_channel(f"unix:{sock}") as channel:

        def method(name: str, kind: str) -> Any:
            return getattr(channel, kind)(f"/{SERVICE}/{name}")

        def record(name: str, sent: list[bytes], got: list[bytes], code: str) -> None:
            calls.append({"method": f"/{SERVICE}/{name}", "sent": [len(m) for m in sent],
                          "received": [len(m) for m in got], "code": code})  # fmt: skip

        for text in ("hello", "hello again, a longer one"):
            req = pb_string(1, text) + pb_varint(2, 7)
            reply = method("Echo", "unary_unary")(req, metadata=meta)
            record("Echo", [req], [reply], "OK")
        req = pb_varint(1, COUNT)
        got = list(method("Count", "unary_stream")(req, metadata=meta))
        record("Count", [req], got, "OK")
        sent = [pb_string(1, "x" * (i + 1)) for i in range(SUM)]
        reply = method("Sum", "stream_unary")(iter(sent), metadata=meta)
        record("Sum", sent, [reply], "OK")
        req = pb_string(1, "widget")
        try:
            method("Fail", "unary_unary")(req, metadata=meta)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            assert exc.details() == FAIL_MESSAGE
        record("Fail", [req], [], code)
        req = pb_varint(1, 1)
        call = method("Watch", "unary_stream")(req, metadata=meta)
        got = [next(call) for _ in range(WATCH_READ)]
        call.cancel()
        record("Watch", [req], got, call.code().name)
    return calls


def run_client(sock: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, __file__, "client", sock], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        print(json.dumps(client(sys.argv[2])))
