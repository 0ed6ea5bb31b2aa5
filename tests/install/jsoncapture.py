"""A usniff JSON capture of uxwork's ``writev`` scenario, shared by the install tests."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from tests.support.live import Workload
from tests.support.usniff import Usniff


def capture_sends(work: Workload, command: list[str]) -> tuple[dict[str, Any], bytes, set[int]]:
    """Run ``command --pid <work> --format json`` while ``work`` sends from its socket ``a``.

    Returns the workload's ``done`` message, the bytes captured from that socket
    (their records must tile the stream from offset 0) and the PIDs the records name.
    """
    sender = int(work.ready["a"])
    with Usniff("--pid", str(work.pid), "--format", "json", command=command) as usniff:
        work.go()
        done: dict[str, Any] = work.done()
        result = usniff.stop()
    work.finish()
    assert result.returncode == 0, result.stderr
    assert re.search(r"\b0 bytes lost", result.stderr), result.stderr
    got, pids = bytearray(), set()
    for line in result.stdout.decode().splitlines():
        rec = json.loads(line)
        if rec["inode"] == sender and "data" in rec:
            assert rec["offset"] == len(got), "records out of order or missing"
            got += base64.b64decode(rec["data"])
            pids.add(rec["pid"])
    return done, bytes(got), pids
