"""Latency counts in log-linear buckets, for the ``--stats`` percentiles.

A sorted list of every latency costs an O(n) insertion per transaction; here
``add`` is O(1) and memory is bounded by the number of distinct buckets (a
few hundred per command in practice), as in HdrHistogram: times are counted
in nanoseconds, exactly below 2**SUB_BITS ns, then in 2**(SUB_BITS - 1)
buckets per power of two, so a bucket is at most 1/1024 of its value wide.
The buckets are defined once, in C (``_fast.c``), whose native ``--stats`` path
counts in them too (:meth:`Histogram.merge`).
A percentile is the middle of its bucket: within 0.05 % of the nearest-rank
value of the exact latencies (at 1 ms, within 0.5 us); the maximum is exact.
"""

from __future__ import annotations

from ._fast import SUB_BITS, bucket, bucket_middle

__all__ = ["SUB_BITS", "Histogram", "bucket", "bucket_middle"]


class Histogram:
    """Counts of latencies (seconds) per bucket, the exact maximum, percentiles."""

    __slots__ = ("counts", "total", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max: float | None = None

    def add(self, seconds: float) -> None:
        key = bucket(round(seconds * 1e9))
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1
        if self.max is None or seconds > self.max:
            self.max = seconds

    def merge(self, counts: dict[int, int], largest: float) -> None:
        """Add the counts per bucket of other latencies, whose largest is ``largest``."""
        for key, n in counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
            self.total += n
        if self.max is None or largest > self.max:
            self.max = largest

    def percentile(self, p: float) -> float:
        """Nearest-rank ``p``-th percentile in seconds (the maximum for 100); the
        histogram must not be empty."""
        if self.max is None:
            raise ValueError("no latency counted")
        rank = max(1, -(-self.total * p // 100))
        if rank >= self.total:  # the largest latency, known exactly
            return self.max
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return min(bucket_middle(key) / 1e9, self.max)
        return self.max
