"""Intervals on reported numbers: Wilson against its closed form and scipy's binomial coverage,
the streaming Poisson bootstrap against the ordinary bootstrap, and its exact shard merge."""

import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.errors import InputError
from cfjax.eval import evaluators as E
from cfjax.eval.intervals import bootstrap, seed_spread, wilson


def test_wilson_matches_the_closed_form_and_covers():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 10), (50, 100), (99, 100), (100, 100)):
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
        # scipy's Wilson interval (without continuity correction) is the same formula
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert all(np.isnan(wilson(0, 0)))
    with pytest.raises(InputError, match="successes"):
        wilson(5, 3)


def test_poisson_bootstrap_streams_merges_and_agrees_with_the_ordinary_bootstrap():
    rng = np.random.default_rng(1)
    v = rng.exponential(0.2, 400).astype(np.float32)
    ok = (rng.random(400) < 0.9).astype(np.float32)
    rows = {"l1": jnp.asarray(v), "ok": jnp.asarray(ok), "row_id": jnp.arange(400)}
    ev = E.bootstrap_means("b", {"l1": ("l1", "ok")}, n_boot=400)
    whole = ev.finalize(ev.update(ev.init(), rows))["l1_ci"]
    parts = [ev.update(ev.init(), {k: a[i:j] for k, a in rows.items()}) for i, j in ((0, 37), (37, 250), (250, 400))]
    merged = ev.finalize(E.merge_states(*[{"b": p} for p in parts])["b"])["l1_ci"]
    assert merged == pytest.approx(whole, rel=1e-5)  # the same weights per row, whatever the split
    ref = bootstrap(v[ok > 0], n_boot=4000)
    # two Monte-Carlo estimates of the same percentiles: their spread is ~ the interval's width / sqrt(B)
    width = ref[1] - ref[0]
    assert whole == pytest.approx(ref, abs=0.15 * width)
    m = float(v[ok > 0].mean())
    assert whole[0] < m < whole[1]


def test_wilson_rates_evaluator_and_seed_spread():
    ev = E.wilson_rates("r", {"validity": ("ok", "w")})
    s = ev.update(ev.init(), {"ok": jnp.array([1.0, 1.0, 0.0, 1.0]), "w": jnp.array([1.0, 1.0, 1.0, 0.0])})
    assert ev.finalize(s)["validity_ci"] == pytest.approx(list(wilson(2, 3)))
    sp = seed_spread([0.868, 0.569])
    assert sp["n"] == 2 and sp["min"] == 0.569 and sp["std"] == pytest.approx(np.std([0.868, 0.569], ddof=1))
