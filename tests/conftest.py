from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recorder import load_records  # noqa: E402

from usniff.events import Record  # noqa: E402

CAPTURES = Path(__file__).resolve().parent.parent / "captures"

# ci: every decoder sees >= 100k fuzz inputs (inputs are batched per example, see
# test_fuzz_decoders.py); nightly: 20x more.  Select with HYPOTHESIS_PROFILE=nightly.
_common = {"deadline": 10_000, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=250, **_common)
settings.register_profile("nightly", max_examples=5000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@functools.cache
def capture(name: str) -> tuple[Record, ...]:
    """Records of captures/<name>.jsonl.gz (recorded from real servers by captures/record.py)."""
    return tuple(load_records(CAPTURES / f"{name}.jsonl.gz"))
