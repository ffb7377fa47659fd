"""Statistics of timing samples: what every benchmark point reports.

Percentiles use linear interpolation between closest ranks (numpy's default, "type 7" of Hyndman and
Fan): for sorted samples x[0..n-1], the q-th percentile sits at rank r = q/100 * (n - 1) and is
x[floor(r)] + (r - floor(r)) * (x[floor(r)+1] - x[floor(r)]). So for the samples 1, 2, ..., 100,
p50 = 50.5, p90 = 90.1, p99 = 99.01. With n samples a p99 is interpolated between the two largest
samples once n < 100: every point records n, so a reader can tell how far to trust its tail.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

PERCENTILES = (50, 90, 99)
STAT_KEYS = ("min", "mean", "p50", "p90", "p99", "max", "std", "n")


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) by linear interpolation between closest ranks."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    x = np.sort(np.asarray(samples, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("percentile of no samples")
    if np.isnan(x).any():
        raise ValueError("timing samples contain NaN")
    r = q / 100.0 * (x.size - 1)
    lo = int(math.floor(r))
    hi = min(lo + 1, x.size - 1)
    return float(x[lo] + (r - lo) * (x[hi] - x[lo]))


def summarize(samples: Iterable[float]) -> dict:
    """{min, mean, p50, p90, p99, max, std, n} of timing samples (any unit; the caller's).

    std is the sample standard deviation (ddof=1; 0.0 for a single sample). Raises ValueError on an
    empty sample set or NaN (a timer that returned NaN is a bug, not a measurement).
    """
    x = np.asarray(list(samples), dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("no timing samples")
    if not np.isfinite(x).all():
        raise ValueError("timing samples contain NaN or infinity")
    out = {
        "min": float(x.min()),
        "mean": float(x.mean()),
        **{f"p{q}": percentile(x, q) for q in PERCENTILES},
        "max": float(x.max()),
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "n": int(x.size),
    }
    return out


def throughput(batch: int, seq: int, ms_per_batch: float) -> dict:
    """Sequences/s and tokens/s for one batch of `batch` sequences of `seq` tokens taking ms_per_batch."""
    if not ms_per_batch or ms_per_batch <= 0 or not math.isfinite(ms_per_batch):
        return {"seq_per_s": None, "tokens_per_s": None}
    per_s = 1000.0 / ms_per_batch
    return {"seq_per_s": batch * per_s, "tokens_per_s": batch * seq * per_s}


def iterations_for(per_iter_s: float, *, iters: int, min_iters: int, max_time: float | None) -> int:
    """How many timed iterations a point gets: `iters`, fewer when they would take more than max_time
    seconds (measured per-iteration cost), but never fewer than min_iters."""
    if iters < 1 or min_iters < 1:
        raise ValueError(f"iterations must be >= 1, got iters={iters}, min_iters={min_iters}")
    n = iters
    if max_time is not None and per_iter_s > 0:
        n = min(n, int(max_time / per_iter_s))
    return max(min(min_iters, iters), n)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b
