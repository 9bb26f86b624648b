"""Spreads that shard: (count, sum, M2) per pair slot and Chan's merge, pinned against a float64
two-pass reference on several splits of the rows, and the std of equal scores at float32 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.methods import attribution as attr
from cfjax.reduce import chan_merge, pair_moments

K, A = 3, 4


def _reference(values, src, tgt):
    """float64 two-pass mean and population variance per (s, t) slot."""
    out = {}
    for s in range(K):
        for t in range(K):
            v = values[(src == s) & (tgt == t)].astype(np.float64)
            if len(v):
                out[f"{s}->{t}"] = (v.mean(0), ((v - v.mean(0)) ** 2).mean(0))
    return out


def _rows(seed, n=60, offset=50.0):
    rng = np.random.default_rng(seed)
    # a large common offset with a tiny spread: the sum-of-squares formula loses every digit here
    scores = (offset + 1e-3 * rng.standard_normal((n, A))).astype(np.float32)
    return scores, rng.integers(0, K, n), rng.integers(0, K, n)


def _accumulate(scores, src, tgt, cuts):
    acc = attr.global_init(K, A)
    update = jax.jit(attr.global_update)
    for lo, hi in zip([0, *cuts], [*cuts, len(scores)]):
        n = hi - lo
        acc = update(acc, jnp.asarray(scores[lo:hi]), jnp.asarray(src[lo:hi]), jnp.asarray(tgt[lo:hi]), jnp.ones(n), jnp.ones(n, bool))
    return jax.tree_util.tree_map(np.asarray, acc)


@pytest.mark.parametrize("seed", range(5))
def test_chunked_and_merged_moments_match_the_float64_two_pass_reference(seed):
    scores, src, tgt = _rows(seed)
    ref = _reference(scores, src, tgt)
    whole = attr.global_finalize(_accumulate(scores, src, tgt, []), list("abcd"))
    a = _accumulate(scores[:17], src[:17], tgt[:17], [5, 11])
    b = _accumulate(scores[17:], src[17:], tgt[17:], [30])
    merged = attr.global_finalize(attr.global_merge(attr.GlobalSums(*a), attr.GlobalSums(*b)), list("abcd"))
    for res in (whole, merged):
        for key, (mean, var) in ref.items():
            got = res["pairs"][key]
            for i, n in enumerate("abcd"):
                # the variance is well conditioned: float32 rounding of the deviations (~eps * |x|
                # on values near 50, spread 1e-3) bounds its error by ~2 * eps * 50 * 1e-3 * n.
                assert got[n]["std"] ** 2 == pytest.approx(var[i], abs=2 * 6e-8 * 50 * 1e-3 * 4 + 1e-12)
                assert got[n]["mean"] == pytest.approx(mean[i], rel=1e-6)
    # the pooled overall spread: law of total variance, against the reference over all rows. Its
    # between-slot term uses slot means read from float32 sums: each is off by ~sqrt(n) * eps * 50,
    # and the term by ~2 * (largest slot-mean deviation) * that.
    allv = scores.astype(np.float64)
    n_slot = max(int(((src == s) & (tgt == t)).sum()) for s in range(K) for t in range(K))
    mean_err = np.sqrt(n_slot) * 6e-8 * 50
    for i, n in enumerate("abcd"):
        dev = max(abs(m[i] - allv[:, i].mean()) for m, _ in ref.values())
        assert merged["overall"][n]["std"] ** 2 == pytest.approx(allv[:, i].var(), abs=2 * dev * mean_err + mean_err**2)


def test_equal_scores_have_a_std_at_float32_rounding_in_any_split():
    scores = np.full((12, A), 0.3217, np.float32)
    src, tgt = np.repeat([1, 2], 6), np.repeat([2, 0], 6)
    for cuts in ([], [1], [3, 7], list(range(1, 12))):
        res = attr.global_finalize(_accumulate(scores, src, tgt, cuts), list("abcd"))
        # deviations from a float32 mean: each is at most ~n * eps * |x| (the sum's rounding), so
        # the std is too; sums of squares gave ~sqrt(eps) * |x| (~8e-5 here), 1,000x more
        stds = [res["pairs"][p][n]["std"] for p in ("1->2", "2->0") for n in "abcd"]
        assert max(stds) <= 12 * 6e-8 * 0.3217, stds


def test_chan_merge_with_empty_parts_and_on_numpy():
    c, s, m2 = chan_merge(np.array([0.0, 2.0]), np.zeros((2, 1)), np.zeros((2, 1)), np.array([3.0, 0.0]), np.array([[6.0], [0.0]]), np.array([[2.0], [0.0]]))
    np.testing.assert_array_equal(c, [3.0, 2.0])
    np.testing.assert_array_equal(m2, [[2.0], [0.0]])
    cnt, tot, m2 = pair_moments(jnp.array([1.0, 3.0, 5.0]), jnp.array([0, 0, 1]), jnp.array([1, 1, 0]), jnp.array([1.0, 1.0, 0.0]), 2)
    np.testing.assert_array_equal(np.asarray(cnt), [0, 2, 0, 0])
    np.testing.assert_array_equal(np.asarray(m2), [0, 2.0, 0, 0])  # the masked row (5.0) never counts
