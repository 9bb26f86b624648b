"""Attribute predictors, local scores and global aggregation against numpy hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.methods import attribution as attr
from cfjax.training.attributes import fit_attribute_predictor  # noqa: E402
from cfjax.errors import InputError


def _pred(d=4, a=3, seed=0):
    rng = np.random.default_rng(seed)
    return attr.AttributePredictor(jnp.asarray(rng.normal(size=(d, a)), jnp.float32), jnp.asarray(rng.normal(size=a), jnp.float32), ("a", "b", "c")[:a])


def test_local_scores_by_hand():
    p = _pred()
    rng = np.random.default_rng(1)
    z0, z1 = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    W, b = np.asarray(p.W), np.asarray(p.b)
    want = sig(z1 @ W + b) - sig(z0 @ W + b)
    np.testing.assert_allclose(attr.local_scores(p, z0, z1), want, rtol=1e-5, atol=1e-6)


def test_global_aggregation_by_hand_with_signs_masks_and_pairs():
    rng = np.random.default_rng(2)
    n, k = 40, 3
    scores = rng.normal(size=(n, 2)).astype(np.float32)
    src = rng.integers(0, k, n)
    tgt = (src + rng.integers(1, k, n)) % k
    sign = rng.choice([-1.0, 1.0], n).astype(np.float32)
    mask = rng.random(n) > 0.3
    scores_garbage = scores.copy()
    scores_garbage[~mask] = 1e6  # masked rows must not leak
    acc = attr.global_init(k, 2)
    for s in range(0, n, 16):  # in chunks: sums merge
        sl = slice(s, s + 16)
        acc = attr.global_update(acc, jnp.asarray(scores_garbage[sl]), jnp.asarray(src[sl]), jnp.asarray(tgt[sl]), jnp.asarray(sign[sl]), jnp.asarray(mask[sl]))
    out = attr.global_finalize(acc, ["u", "v"])
    sel = mask
    signed = scores[sel] * sign[sel][:, None]
    np.testing.assert_allclose(out["overall"]["u"]["mean"], signed[:, 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(out["overall"]["v"]["mean_abs"], np.abs(scores[sel, 1]).mean(), rtol=1e-5)
    np.testing.assert_allclose(out["overall"]["u"]["std"], signed[:, 0].std(), rtol=1e-4)
    assert out["overall"]["u"]["count"] == sel.sum()
    for s in range(k):
        for t in range(k):
            m = sel & (src == s) & (tgt == t)
            key = f"{s}->{t}"
            if m.sum():
                np.testing.assert_allclose(out["pairs"][key]["v"]["mean"], (scores[m, 1] * sign[m]).mean(), rtol=1e-5)
                assert out["pairs"][key]["v"]["count"] == m.sum()
            else:
                assert key not in out["pairs"]
    top = attr.top_attributes(out["overall"], k=1)
    assert top[0][0] == max(["u", "v"], key=lambda a: abs(out["overall"][a]["mean"]))


def test_fit_recovers_a_linear_rule():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2000, 5)).astype(np.float32) * 3 + 1
    y = np.stack([(z[:, 0] > 1), (z[:, 1] - z[:, 2] > 0)], 1).astype(np.float32)
    p = fit_attribute_predictor(z, y, ["first", "diff"], steps=500)
    acc = attr.attribute_accuracy(p, z, y)
    assert acc["first"] > 0.97 and acc["diff"] > 0.97
    # raw-latent weights: scoring needs no standardisation
    assert attr.predict_attributes(p, jnp.asarray(z[:3])).shape == (3, 2)


def test_fit_rejects_bad_input():
    with pytest.raises(InputError, match="binary"):
        fit_attribute_predictor(np.zeros((4, 2)), np.full((4, 1), 0.5), ["x"])
    with pytest.raises(InputError, match="names"):
        fit_attribute_predictor(np.zeros((4, 2)), np.zeros((4, 1)), ["x", "y"])


def test_celeba_merges():
    names = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Black_Hair", "Blurry", "Brown_Hair", "Chubby", "Double_Chin", "Goatee",
             "Male", "Mustache", "No_Beard", "Sideburns", "Smiling", "Wearing_Lipstick", "Young"]
    a = np.zeros((2, len(names)), np.float32)
    a[:, names.index("No_Beard")] = 1
    a[0, names.index("Goatee")] = 1
    a[1, names.index("Brown_Hair")] = 1
    a[1, names.index("Chubby")] = 1
    out, new = attr.celeba_attributes(a, names)
    assert {"Facial_hair", "Dark_hair", "Overweight"} <= set(new)
    assert "Male" not in new and "Attractive" not in new and "Goatee" not in new
    col = {n: out[:, i] for i, n in enumerate(new)}
    assert list(col["Facial_hair"]) == [1, 0] and list(col["Dark_hair"]) == [0, 1] and list(col["Overweight"]) == [0, 1]


def test_celeba_attributes_exclude_drops_the_task():
    from cfjax.data import CELEBA_ATTRIBUTES as names

    names = list(names)
    a = np.random.default_rng(0).integers(0, 2, (5, 40))
    full, n_full = attr.celeba_attributes(a, names)
    out, n = attr.celeba_attributes(a, names, exclude=("Mouth_Slightly_Open", "Dark_hair"))
    assert len(n) == len(n_full) - 2 and "Mouth_Slightly_Open" not in n and "Dark_hair" not in n
    keep = [n_full.index(x) for x in n]
    np.testing.assert_array_equal(out, full[:, keep])
    with pytest.raises(InputError, match="exclude"):
        attr.celeba_attributes(a, names, exclude=("Smilin",))
