"""The latency sketch: log-spaced buckets with a bounded relative error, mergeable by adding counts.

Bucket ``k`` holds durations in ``(GAMMA**(k-1), GAMMA**k]`` seconds and is read back as
``2 * GAMMA**k / (GAMMA + 1)``, so any quantile read from merged buckets is within ``RELATIVE_ERROR``
(0.99 %) of the exact sample quantile (nearest rank), for durations of at least ``MIN_SECONDS``.
Shared by the worker (which counts into buckets) and the aggregator (which reads quantiles).

A worker stores a sketch's buckets in blocks of ``BUCKETS_PER_BLOCK`` consecutive indices, one series
each, labelled with the block's first index (``block_first``): a request's bucket is then an offset into a
block its worker already has, and a new series is needed only when a latency leaves every block seen.
"""
from __future__ import annotations

import math

GAMMA = 1.02
RELATIVE_ERROR = (GAMMA - 1) / (GAMMA + 1)
MIN_SECONDS = 1e-6  # shorter durations count as 1 us
BUCKET_SCALE = 1 / math.log(GAMMA)
BUCKETS_PER_BLOCK = 16  # a block spans a factor GAMMA ** 16 = 1.37 of latency (128 bytes of counts)


def bucket_index(seconds: float, _log=math.log, _ceil=math.ceil) -> int:
    # the worker's recorder inlines this expression (rockstar_mp.worker.workload): keep them alike
    return _ceil(_log(seconds if seconds > MIN_SECONDS else MIN_SECONDS) * BUCKET_SCALE - 1e-9)


def block_first(index: int) -> int:
    """The first bucket index of the block holding bucket ``index``."""
    return index - index % BUCKETS_PER_BLOCK


def bucket_value(index: int) -> float:
    return 2 * GAMMA ** index / (GAMMA + 1)


def quantile(buckets: dict[int, float], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1, nearest rank) of a sketch given as ``{bucket index: count}``."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0.0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(buckets))
