"""The attack job end to end (smoke), its pure per-chunk function, and the CelebA experiment
under TFDS mock data."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.methods import attribution as attr
from cfjax.cli import main
from cfjax.jobs import attack as job

from cfjax.methods import attack as atk  # noqa: E402
EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")

CORE = ("n_counterfactuals", "validity", "mean_steps", "l1", "l2", "target_prob_mean", "fail_rate", "status_counts")
KEYS = ("method", "dataset", "n_examples", "n_counterfactuals", "n_devices", "validity", "mean_steps", "l1", "l2", "latent_l2",
        "target_prob_mean", "wall_s", "cf_per_s", "global_attribution", "baseline_pixel", "global_attribution_pairs", "fail_rate",
        "status_counts", "classifier_accuracy", "vae_mse")


def _in01(v):
    return v is None or 0.0 <= v <= 1.0


def test_explain_cli_smoke(tmp_path):
    out = tmp_path / "run"
    assert main(["explain", "--method", "attack", "--data", "mnist5k", "--out", str(out), "--smoke"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in KEYS:
        assert k in s, k
    assert s["method"] == "attack" and s["dataset"] == "mnist5k" and s["n_devices"] == jax.device_count()
    n_img = job.AttackJobConfig.smoke_config().limit
    assert s["n_examples"] == n_img and s["n_counterfactuals"] == 9 * n_img
    assert _in01(s["validity"]) and _in01(s["fail_rate"]) and _in01(s["target_prob_mean"])
    assert abs(s["validity"] + s["fail_rate"] - 1) < 1e-6
    assert sum(s["status_counts"].values()) == s["n_counterfactuals"]
    assert s["status_counts"]["success"] == round(s["validity"] * s["n_counterfactuals"])
    assert s["wall_s"] > 0 and s["cf_per_s"] > 0
    assert 0 <= s["classifier_accuracy"] <= 1 and s["vae_mse"] >= 0
    names = ("area", "thickness", "slant", "width", "height")
    assert set(s["global_attribution"]) == set(names)
    n_ok = s["status_counts"]["success"]
    for st in s["global_attribution"].values():
        assert set(st) == {"mean", "mean_abs", "std", "count"} and st["count"] == n_ok
        if n_ok:
            assert -1 <= st["mean"] <= 1 and 0 <= st["mean_abs"] <= 1 and st["std"] >= 0 and abs(st["mean"]) <= st["mean_abs"] + 1e-6
    assert sum(next(iter(v.values()))["count"] for v in s["global_attribution_pairs"].values()) == n_ok
    if n_ok:
        assert 0 <= s["mean_steps"] <= 20 and 0 <= s["l1"] <= 1 and s["l2"] >= 0 and s["latent_l2"] >= 0
    # per-pair metrics recombine exactly into the overall ones
    pr = s["pairs"]
    assert sum(v["n"] for v in pr.values()) == s["n_counterfactuals"]
    n_ok_pairs = {p: round(v["validity"] * v["n"]) for p, v in pr.items()}
    assert sum(n_ok_pairs.values()) == n_ok
    if n_ok:
        l1 = sum(n_ok_pairs[p] * v["l1"] for p, v in pr.items() if n_ok_pairs[p]) / n_ok
        assert abs(l1 - s["l1"]) < 1e-4
        dv = sum(n_ok_pairs[p] * v["denoised_validity"] for p, v in pr.items() if n_ok_pairs[p]) / n_ok
        assert abs(dv - s["denoised_validity"]) < 1e-4
    assert all(v["l1"] is None for p, v in pr.items() if not n_ok_pairs[p])
    assert "Per class pair" in (out / "report.html").read_text()
    pix = s["baseline_pixel"]
    assert sum(v["n"] for v in pix["pairs"].values()) == pix["n_counterfactuals"]
    for k in CORE:
        assert k in pix, k
    assert pix["n_counterfactuals"] == s["n_counterfactuals"] and _in01(pix["validity"])
    html = (out / "report.html").read_text()
    figs = sorted((out / "figures").glob("*.png"))
    assert len(figs) >= 7
    for f in figs:
        assert f.stat().st_size > 1000
        assert f"figures/{f.name}" in html
    assert list((out / "per_example" / "latent").glob("chunk_*.npz"))
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_explain_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["explain", "--method", "attack", "--data", "mnist5k", "--out", str(tmp_path), "--smoke", "--targets", "x"]) == 2
    assert "targets" in capsys.readouterr().err
    assert main(["explain", "--method", "attack", "--data", "mnist5k", "--out", str(tmp_path), "--smoke", "--steps", "0"]) == 2


D, K = 6, 4
_W1 = jax.random.normal(jax.random.key(0), (D, 12)) * 0.7
_W2 = jax.random.normal(jax.random.key(1), (12, K))


def _fns():
    decode = lambda z: jax.nn.sigmoid(jnp.tanh(z @ _W1)).reshape(3, 4, 1)  # noqa: E731
    logits = lambda x: x.reshape(-1) @ _W2 * 3.0  # noqa: E731
    encode = lambda x: jnp.arctanh(jnp.clip(x.reshape(-1)[:D] * 2 - 1, -0.9, 0.9))  # noqa: E731
    rng = np.random.default_rng(0)
    pred = attr.AttributePredictor(jnp.asarray(rng.normal(size=(D, 3)), jnp.float32), jnp.zeros(3), ("a", "b", "c"))
    return job.AttackFns(encode, decode, logits, pred)


def test_attack_chunk_masks_padding_and_matches_per_example():
    fns = _fns()
    rng = np.random.default_rng(1)
    n = 10
    x = jnp.asarray(rng.uniform(0.2, 0.8, (n, 3, 4, 1)), jnp.float32)
    src = jnp.asarray(rng.integers(0, K, n), jnp.int32)
    tgt = (src + jnp.asarray(rng.integers(1, K, n), jnp.int32)) % K
    mask = jnp.arange(n) < 7
    kw = dict(num_classes=K, steps=30, learning_rate=0.1, threshold=0.5)
    chunk = jax.jit(lambda *a: job.attack_chunk(fns, *a, **kw))
    outs, sums = chunk(x, src, tgt, mask)
    # garbage in the padding rows changes nothing
    x_bad = x.at[7:].set(jnp.nan)
    _, sums_bad = chunk(x_bad, src, tgt, mask)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sums, sums_bad)
    # against per-example attacks, by hand
    ok, steps, l1, sc = [], [], [], []
    for i in range(7):
        z0 = fns.encode(x[i])
        r = atk.attack(fns.decode, fns.logits, z0, int(tgt[i]), steps=30, threshold=0.5)
        ok.append(bool(r.success))
        steps.append(int(r.steps_taken))
        l1.append(float(jnp.mean(jnp.abs(r.x - x[i]))))
        sc.append(np.asarray(attr.local_scores(fns.predictor, z0, r.z)))
    ok = np.array(ok)
    assert float(sums["counts"]["n_counterfactuals"]) == 7 and float(sums["means"]["num"]["validity"]) == ok.sum()
    assert float(sums["means"]["num"]["mean_steps"]) == np.sum(np.array(steps)[ok])
    np.testing.assert_allclose(float(sums["means"]["num"]["l1"]), np.sum(np.array(l1)[ok]), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(outs["steps"][:7]), steps)
    g = attr.global_finalize(attr.GlobalSums(*sums["attr"]), ("a", "b", "c"))
    if ok.any():
        np.testing.assert_allclose(g["overall"]["b"]["mean"], np.array(sc)[ok][:, 1].mean(), rtol=1e-4, atol=1e-6)
    assert g["overall"]["a"]["count"] == ok.sum()


def test_make_pairs():
    img, src, tgt = job.make_pairs(np.array([3, 0]), 4)
    assert img.tolist() == [0, 0, 0, 1, 1, 1] and src.tolist() == [3, 3, 3, 0, 0, 0] and tgt.tolist() == [0, 1, 2, 1, 2, 3]
    img, src, tgt = job.make_pairs(np.array([3, 0, 2]), 4, "2")
    assert img.tolist() == [0, 1] and tgt.tolist() == [2, 2]


def test_celeba_experiment_under_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    sys.path.insert(0, EXPERIMENTS)
    try:
        import attack_celeba
    finally:
        sys.path.remove(EXPERIMENTS)
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        s = attack_celeba.main(["--out", str(tmp_path), "--smoke", "--classifiers", "Male"])
    assert set(s["classifiers"]) == {"Male"}
    assert "Facial_hair" in s["attributes"] and "Male" not in s["attributes"] and len(s["attributes"]) == 29
    for r in s["classifiers"].values():
        assert 0 <= r["validity"] <= 1 and r["n_explained"] == r["n_increase"] + r["n_decrease"]
        assert set(r["global_attribution"]) == set(s["attributes"])
    assert (tmp_path / "report.html").exists() and (tmp_path / "figures" / "grid_Male.png").exists()
