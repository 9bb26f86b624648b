"""Evaluators hold sums only: streaming in chunks and merging parts equals one pass, padding
never leaks, and each evaluator matches a direct numpy computation."""

import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.eval import evaluators as E

K = 4
NAMES = ("a", "b", "c", "d")


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, K, n)
    tgt = (src + rng.integers(1, K, n)) % K
    w = (rng.uniform(size=n) < 0.8).astype(np.float32)
    ok = w * (rng.uniform(size=n) < 0.6)
    v = rng.normal(size=n).astype(np.float32)
    v[w == 0] = np.nan  # padding garbage
    return {"source": src.astype(np.int32), "target": tgt.astype(np.int32), "w": w, "ok": ok.astype(np.float32), "v": v,
            "curve": rng.uniform(size=(n, 5)).astype(np.float32), "code": rng.integers(0, 3, n).astype(np.int32),
            "res": np.exp(rng.uniform(-18, 1, n)).astype(np.float32)}


def _evs():
    return [
        E.counts("counts", {"n": "w", "n_ok": "ok"}),
        E.weighted_means("means", {"validity": ("ok", "w"), "v": ("v", "ok")}, complements={"fail": "validity"}),
        E.weighted_means("curve", {"c": ("curve", "w")}, shapes={"c": (5,)}),
        E.categorical("status", "code", "w", ["x", "y", "z"], "status_counts"),
        E.pair_table("pairs", K, NAMES, count="w", rates={"validity": "ok"}, means={"v": ("v", "ok")}),
        E.log_histogram("hist", "res", "w", out_max="res_max"),
    ]


def _run(rows, chunks):
    evs = _evs()
    n = len(rows["w"])
    parts = []
    for c in np.array_split(np.arange(n), chunks):
        st = E.init_states(evs)
        parts.append(E.update_states(evs, st, {k: jnp.asarray(v[c]) for k, v in rows.items()}))
    return E.finalize_states(evs, E.merge_states(*parts))


def test_streaming_and_merging_equal_one_pass_and_numpy():
    rows = _rows()
    one, many = _run(rows, 1), _run(rows, 7)
    w, ok, v = rows["w"], rows["ok"], rows["v"]
    assert one["n"] == many["n"] == int(w.sum()) and one["n_ok"] == int(ok.sum())
    assert one["validity"] == pytest.approx(ok.sum() / w.sum()) and one["fail"] == pytest.approx(1 - ok.sum() / w.sum())
    sel = ok > 0
    assert one["v"] == pytest.approx(v[sel].mean(), rel=1e-5) and many["v"] == pytest.approx(one["v"], rel=1e-5)
    np.testing.assert_allclose(one["c"], (rows["curve"] * w[:, None]).sum(0) / w.sum(), rtol=1e-5)
    assert one["status_counts"] == {n: int(((rows["code"] == i) & (w > 0)).sum()) for i, n in enumerate("xyz")}
    # the residual bound: within 10x above the true max of the real rows
    true_max = rows["res"][w > 0].max()
    assert true_max <= one["res_max"] <= 10 * true_max
    # the per-pair table recombines exactly into the overall numbers
    t = one["pairs"]
    assert sum(r["n"] for r in t.values()) == one["n"]
    assert sum(round(r["validity"] * r["n"]) for r in t.values()) == one["n_ok"]
    for key, r in t.items():
        s, g = (NAMES.index(x) for x in key.split("->"))
        m = (rows["source"] == s) & (rows["target"] == g)
        assert r["n"] == int(w[m].sum())
        mm = m & sel
        assert (r["v"] is None) == (not mm.any())
        if mm.any():
            assert r["v"] == pytest.approx(v[mm].mean(), rel=1e-5)
    assert many["pairs"].keys() == t.keys()


def test_empty_weights_give_nan_not_errors():
    evs = [E.weighted_means("m", {"x": ("v", "ok")})]
    st = E.update_states(evs, E.init_states(evs), {"v": jnp.ones(3), "ok": jnp.zeros(3)})
    assert np.isnan(E.finalize_states(evs, st)["x"])


def test_duplicate_evaluator_names_are_refused():
    with pytest.raises(ValueError, match="unique"):
        E.init_states([E.counts("a", {"n": "w"}), E.counts("a", {"m": "w"})])
