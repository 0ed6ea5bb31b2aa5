"""Live decoded runs: the real `usniff` CLI decoding a scripted session as JSON
lines, with ``--stats`` and ``--redact``, and what the tests read from them."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from usniff.decoders.registry import DECODABLE

from .usniff import USNIFF, Usniff


@dataclass
class Run:
    sock: str
    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]

    @property
    def txs(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "transaction"]

    def by_request(self, request: str) -> list[dict[str, Any]]:
        return [t for t in self.txs if t["request"] == request]

    def one(self, request: str) -> dict[str, Any]:
        found = self.by_request(request)
        assert len(found) == 1, (request, found, sorted({t["request"] for t in self.txs}))
        return found[0]

    def notices(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "notice" and e["kind"] == kind]


def capture_decoded(sock: str, protocol: str, session: Any) -> Run:
    """usniff --format json --stats --redact on ``sock`` while ``session(sock)`` runs."""
    args = ["--path", sock, "--format", "json", "--protocol", protocol, "--stats", "--redact"]
    with Usniff(*args) as usniff:
        session(sock)
        result = usniff.stop()
    events = [json.loads(line) for line in result.text.splitlines()]
    return Run(sock, result.returncode, result.text, result.stderr, events)


def stats_table(stderr: str) -> dict[tuple[str, str], int]:
    """(protocol, command) -> count from the rich table ``--stats`` prints at exit."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 11 and cells[0] in DECODABLE:
            rows[(cells[0], cells[1])] = int(cells[2])
    return rows


def assert_clean_exit(run: Run) -> None:
    assert run.returncode == 0, run.stderr
    summary = re.search(
        r"usniff: (\d+) records, (\d+) bytes captured .* (\d+) bytes lost", run.stderr
    )
    assert summary, run.stderr
    assert int(summary[1]) > 0 and int(summary[2]) > 0 and int(summary[3]) == 0, summary[0]
    assert "Traceback" not in run.stderr


T = TypeVar("T")


def three_runs(
    sock: str, pcap: str, session: Callable[[str], T], *text_args: str
) -> tuple[T, Run, Run, Run]:
    """``session(sock)`` watched by three usniff at once: JSON with --stats and --redact
    (events parsed), text (``text_args`` added) and ``-w pcap``; the session's result
    and the three runs."""
    json_args = ("--path", sock, "--format", "json", "--stats", "--redact")
    with (
        Usniff(*json_args) as json_run,
        Usniff("--path", sock, *text_args) as text_run,
        Usniff("--path", sock, "-w", pcap) as pcap_run,
    ):
        result = session(sock)
        results = [run.stop() for run in (json_run, text_run, pcap_run)]
    decoded, text, written = (Run(sock, r.returncode, r.text, r.stderr, []) for r in results)
    decoded.events = [json.loads(line) for line in decoded.stdout.splitlines()]
    return result, decoded, text, written


def usniff_read(path: str, *args: str) -> list[dict[str, Any]]:
    """The events of ``usniff read PATH --format json --protocol auto ARGS``."""
    out = subprocess.run([USNIFF, "read", path, "--format", "json", "--protocol", "auto", *args],
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def tx_rows(events: list[dict[str, Any]], *details: str) -> list[tuple[Any, ...]]:
    """The transactions of ``events`` as sorted rows of what must not differ between live
    and offline decoding (and the ``details`` named)."""
    keys = ("command", "request", "reply", "bytes_in", "bytes_out", "error", "client_comm")
    return sorted(tuple(e.get(k) for k in keys) + tuple(e["details"].get(d) for d in details)
                  for e in events if e["type"] == "transaction")  # fmt: skip
