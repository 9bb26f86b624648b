"""Confidence intervals for reported numbers: Wilson for rates, a percentile bootstrap for means
and other statistics of per-image values, the spread over seeds.

Every rate or mean cfjax reports carries one of these: ``<metric>_ci: [lo, hi]`` in summaries.
Host-side numpy (these run once per table, on at most a few thousand values).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from cfjax.errors import bad_arg

Z95 = 1.959963984540054
"""The two-sided 95% standard-normal quantile."""


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and keeps its coverage near 0 and 1,
    where validity rates live. ``n = 0`` gives ``(nan, nan)``.

    Example:
      >>> lo, hi = wilson(95, 100)
      >>> round(lo, 3), round(hi, 3)
      (0.888, 0.978)
    """
    if isinstance(successes, bool) or int(successes) != successes or isinstance(n, bool) or int(n) != n:
        raise bad_arg("successes, n", f"{successes!r}, {n!r}", "integers")
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise bad_arg("successes, n", f"{successes}, {n}", "0 <= successes <= n")
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def wilson_of(hits) -> tuple[float, float]:
    """:func:`wilson` of a 0/1 (or boolean) array: its sum out of its size (NaNs dropped)."""
    h = np.asarray(hits, np.float64).ravel()
    h = h[np.isfinite(h)]
    return wilson(int(round(h.sum())), int(h.size))


def bootstrap(
    values,
    stat: Callable[[np.ndarray], float] = np.mean,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the rows of ``values``.

    Args:
      values: ``[n, ...]``; rows are resampled with replacement (NaN rows of a 1-d array dropped).
      stat: a function of a resampled ``[n, ...]`` array to a float.
      n_boot: resamples.
      seed: the resampling seed (the interval is a pure function of its inputs).
      level: coverage, in (0, 1).

    Returns:
      ``(lo, hi)``; ``(nan, nan)`` for fewer than 2 rows.

    Example:
      >>> lo, hi = bootstrap(np.arange(100.0))
      >>> lo < 49.5 < hi
      True
    """
    if not 0.0 < level < 1.0:
        raise bad_arg("level", repr(level), "a coverage strictly between 0 and 1")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise bad_arg("n_boot", repr(n_boot), "an int >= 10")
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    stats = np.array([stat(v[i]) for i in idx], np.float64)
    a = (1 - level) / 2
    return (float(np.nanquantile(stats, a)), float(np.nanquantile(stats, 1 - a)))


def seed_spread(values: Sequence[float]) -> dict:
    """Mean, min, max and sample std of one number over seeds: ``{"mean", "min", "max", "std", "n"}``."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return {"mean": None, "min": None, "max": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
