"""The first counterfactual located by bisection (cfjax.methods.locate) and the k-quantile
evaluator, against slow, obviously correct references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.eval import evaluators as E
from cfjax.methods.locate import bisection_steps, locate_crossing


def test_bisection_steps_counts_halvings():
    assert bisection_steps(0.05, 1e-3) == 6  # 0.05 / 2**6 = 0.00078 <= 1e-3 < 0.05 / 2**5
    assert bisection_steps(0.05, 0.05) == 0
    assert bisection_steps(0.1, 1e-3) == 7
    for w, tol in ((0.05, 1e-3), (0.2, 1e-4), (0.01, 3e-3)):
        n = bisection_steps(w, tol)
        assert w / 2**n <= tol < w / 2 ** max(n - 1, 0) or n == 0
    with pytest.raises(ValueError, match="width and tol"):
        bisection_steps(0.05, 0.0)


def _scan_reference(decode_at, is_cf, k_lo, k_hi, step=1e-5):
    """The first k on a dense grid in (k_lo, k_hi] that is a counterfactual (the slow reference)."""
    for k in np.arange(k_lo + step, k_hi + step / 2, step):
        if bool(is_cf(decode_at(jnp.float32(k)))):
            return float(k)
    return float(k_hi)


@pytest.mark.parametrize("crossing", [0.5004, 0.5137, 0.5371, 0.5499])
def test_locate_matches_a_dense_scan_on_a_monotone_path(crossing):
    """A 'decoder' whose image brightens with k and a 'classifier' that says target above a
    brightness: the located k is within tol of the dense scan's first counterfactual, and it IS a
    counterfactual."""
    W = jnp.linspace(0.5, 1.5, 12).reshape(2, 2, 3)
    decode_at = lambda k: W * k  # noqa: E731
    is_cf = lambda x: jnp.mean(x) / jnp.mean(W) >= crossing  # noqa: E731
    ref = _scan_reference(decode_at, is_cf, 0.5, 0.55)
    n = bisection_steps(0.05, 1e-3)
    r = locate_crossing(decode_at, is_cf, jnp.float32(0.5), jnp.float32(0.55), decode_at(0.55), steps=n)
    assert bool(is_cf(r.x)) and int(r.decodes) == n and float(r.width) <= 1e-3 + 1e-7
    assert ref - 1e-5 <= float(r.k) <= ref + 1e-3 + 1e-6
    np.testing.assert_allclose(np.asarray(r.x), np.asarray(decode_at(r.k)), rtol=1e-6)


def test_locate_vmapped_under_jit_and_inactive_lanes_pass_through():
    crossings = jnp.asarray([0.61, 0.64, 0.9], jnp.float32)
    k_lo = jnp.asarray([0.60, 0.60, 0.85], jnp.float32)
    k_hi = jnp.asarray([0.65, 0.65, 0.90], jnp.float32)
    active = jnp.asarray([True, True, False])

    @jax.jit
    def run(c, lo, hi, a):
        dec = lambda k: jnp.full((1, 1, 1), k)  # noqa: E731
        return locate_crossing(dec, lambda x: x[0, 0, 0] >= c, lo, hi, dec(hi), steps=6, active=a)

    r = jax.vmap(run)(crossings, k_lo, k_hi, active)
    assert np.all(np.asarray(r.k[:2]) >= np.asarray(crossings[:2])) and np.all(np.asarray(r.k[:2]) <= np.asarray(crossings[:2]) + 1e-3)
    assert float(r.k[2]) == pytest.approx(0.9) and int(r.decodes[2]) == 0 and list(np.asarray(r.decodes[:2])) == [6, 6]


def test_linear_histogram_quantiles_match_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.5, 1.0, 997) ** 3 * 0.5 + 0.5
    v[:5] = np.nan  # not counted
    w = np.ones_like(v)
    w[5:50] = 0.0  # padding: not counted
    ev = E.linear_histogram("h", "k", "w", lo=0.5, hi=1.0, bins=500, out="k_hist")
    s = ev.init()
    for i in range(0, len(v), 128):  # chunked, as the streamed pass adds them
        s = ev.update(s, {"k": jnp.asarray(v[i : i + 128]), "w": jnp.asarray(w[i : i + 128])})
    out = ev.finalize(s)["k_hist"]
    kept = v[50:]
    assert sum(out["counts"]) == len(kept)
    for q in (0.25, 0.5, 0.75):
        assert out[f"q{int(q * 100)}"] == pytest.approx(np.quantile(kept, q), abs=0.001 + 1e-6)
    empty = ev.finalize(ev.init())["k_hist"]
    assert np.isnan(empty["q50"]) and sum(empty["counts"]) == 0
