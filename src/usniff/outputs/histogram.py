"""Latency counts in log-linear buckets, for the ``--stats`` percentiles.

A sorted list of every latency costs an O(n) insertion per transaction; here
``add`` is O(1) and memory is bounded by the number of distinct buckets (a
few hundred per command in practice), as in HdrHistogram: times are counted
in nanoseconds, exactly below 2**SUB_BITS ns, then in 2**(SUB_BITS - 1)
buckets per power of two, so a bucket is at most 1/1024 of its value wide.
A percentile is the middle of its bucket: within 0.05 % of the nearest-rank
value of the exact latencies (at 1 ms, within 0.5 us); the maximum is exact.
"""

from __future__ import annotations

SUB_BITS = 11
_MASK = (1 << SUB_BITS) - 1


def bucket(ns: int) -> int:
    """The bucket of a latency of ``ns`` nanoseconds (monotonic in ``ns``)."""
    if ns < 0:  # clocks of two CPUs a few ns apart: keep the order, mirrored
        return -bucket(-ns) - 1
    shift = ns.bit_length() - SUB_BITS
    if shift <= 0:
        return ns
    return (shift << SUB_BITS) | (ns >> shift)


def bucket_middle(key: int) -> float:
    """The middle of bucket ``key``, in nanoseconds."""
    if key < 0:
        return -bucket_middle(-key - 1)
    shift = key >> SUB_BITS
    if shift == 0:
        return float(key)
    low = (key & _MASK) << shift
    return low + ((1 << shift) - 1) / 2


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
