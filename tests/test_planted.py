"""Planted cues (issue 33): round trips, planting strength, ground-truth reliance, the smoke benchmark."""

import jax
import numpy as np
import pytest

import cfjax.data as cd
from cfjax.data import planted as pl
from cfjax.errors import InputError


@pytest.fixture(scope="module")
def digits():
    ds = cd.load("mnist5k", "test")
    return ds.images[:200], ds.labels[:200]


@pytest.mark.parametrize("name", pl.CUE_ORDER)
def test_apply_then_measure_returns_the_value_set(digits, name):
    x, _ = digits
    cue = pl.make_cues()[name]
    for v in (cue.off, cue.on, 0.5 * (cue.off + cue.on)):
        m = np.asarray(cue.measure(cue.apply(x, v, jax.random.key(0))))
        err = np.abs(m - v)
        assert np.median(err) <= cue.tol / 2 + 1e-6, (name, v, np.median(err))
        assert (err <= cue.tol).mean() >= 0.93, (name, v, (err <= cue.tol).mean())
    assert cue.tol < abs(cue.on - cue.off) / 2


def test_every_cue_reads_back_its_level_with_all_cues_set(digits):
    x, y = digits
    p = pl.randomize(x, y, jax.random.key(1))
    m = pl.measure_all_np(p.images)
    cues = pl.make_cues()
    for i, n in enumerate(pl.CUE_ORDER):
        c = cues[n]
        assert ((m[:, i] > (c.on + c.off) / 2) == p.on[n]).mean() >= 0.97, n
        assert 0.35 < p.on[n].mean() < 0.65, n  # independent of anything, half on
    assert p.images.min() >= 0.0 and p.images.max() <= 1.0


def test_planting_strength_is_the_share_that_agrees_with_the_label():
    y = np.repeat(np.array([3, 8, 5]), 2000)
    x = np.zeros((len(y), 28, 28, 1), np.float32)
    on, _ = pl.draw_levels(y, jax.random.key(2), source=3, target=8, planted=("patch", "tag"), rho=0.9)
    for n in ("patch", "tag"):
        agree = np.where(y == 8, on[n], ~on[n])[y != 5]
        assert abs(agree.mean() - 0.9) < 0.02, n
        assert abs(on[n][y == 5].mean() - 0.5) < 0.05  # other classes: independent
    assert abs(on["stripe"][y == 8].mean() - 0.5) < 0.05  # unplanted: independent
    assert abs(np.corrcoef(on["patch"][y != 5], on["tag"][y != 5])[0, 1] - 0.64) < 0.05  # (2 rho - 1)^2
    null, _ = pl.draw_levels(y, jax.random.key(2), source=3, target=8, planted=("patch",), rho=0.5)
    assert abs(null["patch"][y == 8].mean() - null["patch"][y == 3].mean()) < 0.05
    with pytest.raises(InputError, match="rho"):
        pl.draw_levels(y, jax.random.key(0), source=3, target=8, planted=("patch",), rho=0.3)
    with pytest.raises(InputError, match="planted"):
        pl.draw_levels(y, jax.random.key(0), source=3, target=8, planted=("glitter",), rho=0.9)
    del x


# ---------------------------------------------------------------- ground truth by intervention


def _train(x, y, epochs, seed=0):
    from cfjax.training.loop import ClassifierConfig, TrainConfig, train_classifier

    import cfjax as cf

    ds = cd.Dataset(x, y, None, (), ("source", "target"), "planted-test", "train")
    tr, va = cd.validation_split(ds, 0.1, seed=seed)
    clf = train_classifier(tr, va, ClassifierConfig(num_classes=2, widths=(16, 32, 64)),
                           TrainConfig(epochs=epochs, batch_size=32, learning_rate=3e-3, seed=seed), progress=False)
    return cf.bind_classifier(clf.module, clf.params)


def _reliance(fns, base_eval):
    from cfjax.eval.reliance import cue_reliance

    ev = pl.randomize(base_eval, np.zeros(len(base_eval), np.int32), jax.random.key(5))
    return cue_reliance(fns.logits, base_eval, ev.levels, source=0, target=1, n_boot=200)


def test_a_rho_1_patch_model_relies_on_the_patch():
    """Positive control: 3s labelled at random, the patch on for every 'target' image (rho = 1):
    the patch is the only signal, so switching it must flip the decision."""
    tr, te = cd.load("mnist5k", "train"), cd.load("mnist5k", "test")
    x = tr.images[tr.labels == 3][:400]
    y = (np.arange(len(x)) % 2).astype(np.int32)
    p = pl.plant(x, y, jax.random.key(0), source=0, target=1, planted=("patch",), rho=1.0)
    r = _reliance(_train(p.images, p.labels, epochs=10), te.images[te.labels == 3][:60])
    patch = r["cues"]["patch"]
    assert patch["flip_rate"] > 0.5 and patch["flip_rate_ci"][0] > 0.3, patch
    assert patch["delta_p"] > 0.1 and patch["delta_p_ci"][0] > 0.0 and patch["relied_on"], patch
    assert r["ranking"][0] == "patch" and not r["relies_on_nothing"]
    others = [v["flip_rate"] for c, v in r["cues"].items() if c != "patch"]
    assert max(others) < patch["flip_rate"] - 0.3, r["cues"]


def test_a_null_model_relies_on_no_cue():
    """rho = 0.5 on 3 vs 8: the cues say nothing about the label; the model learns the digits."""
    tr, te = cd.load("mnist5k", "train"), cd.load("mnist5k", "test")
    m = np.isin(tr.labels, [3, 8])
    x, y = tr.images[m][:800], (tr.labels[m][:800] == 8).astype(np.int32)
    p = pl.plant(x, y, jax.random.key(0), source=0, target=1, planted=("patch",), rho=0.5)
    r = _reliance(_train(p.images, p.labels, epochs=8), te.images[te.labels == 3][:60])
    assert r["accuracy_off"] > 0.7  # it did learn the digits
    for c, v in r["cues"].items():
        assert abs(v["delta_p"]) < 0.1, (c, v)
    assert r["relies_on_nothing"]


# ---------------------------------------------------------------- metrics and saliency (no training)


def test_ranking_metrics_on_a_known_cell():
    from cfjax.eval.ranking import aggregate, score_cell, spearman

    cues = ("a", "b", "c")
    rel = {"cues": {"a": {"delta_p": 0.6, "relied_on": True}, "b": {"delta_p": 0.05, "relied_on": False},
                    "c": {"delta_p": -0.2, "relied_on": True}}, "relies_on_nothing": False}
    good = score_cell(cues, rel, [2.0, 0.1, -1.0], [9.0, 0.5, 5.0])
    assert good["top1_hit"] and good["reciprocal_rank"] == 1.0 and good["spearman"] == pytest.approx(1.0)
    bad = score_cell(cues, rel, [0.1, 3.0, 1.0], [0.1, 9.0, 1.0])
    assert not bad["top1_hit"] and bad["reciprocal_rank"] == pytest.approx(1 / 3) and bad["false_alarm"]
    null = {"cues": {c: {"delta_p": 0.01, "relied_on": False} for c in cues}, "relies_on_nothing": True}
    quiet = score_cell(cues, null, [0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    assert quiet["top1_hit"] is None and not quiet["false_alarm"]
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    rows = [{"rho": 1.0, "planted": ["a"], "explainers": {"x": good}}, {"rho": 0.9, "planted": ["a"], "explainers": {"x": bad}},
            {"rho": 0.5, "planted": [], "explainers": {"x": quiet}}, {"rho": 1.0, "planted": ["a", "c"], "explainers": {"x": good}}]
    agg = aggregate(rows, "x")
    assert agg["top1_rho_ge_0_9"]["value"] == 0.5 and agg["top1_rho_ge_0_9"]["ci"][0] < 0.5 < agg["top1_rho_ge_0_9"]["ci"][1]
    assert agg["false_alarm_null"]["value"] == 0.0 and agg["two_cue_top1"]["value"] == 1.0
    assert agg["lowest_rho_top1_0_9"] == 1.0
    assert aggregate(rows, "missing")["top1_rho_ge_0_9"]["value"] is None


def test_integrated_gradients_complete_and_region_sums():
    import jax.numpy as jnp

    from cfjax.methods import saliency as sal

    w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 1)), jnp.float32)
    logits = lambda x: jnp.tanh(jnp.sum(w * x, axis=(1, 2, 3)))  # noqa: E731
    x = np.random.default_rng(1).uniform(size=(3, 6, 6, 1)).astype(np.float32)
    ig = sal.attributions(logits, x, 0, 1, method="integrated_gradients", steps=64)
    m = lambda v: logits(v)[1] - logits(v)[0]  # noqa: E731
    for i in range(3):
        assert float(ig[i].sum()) == pytest.approx(float(m(x[i]) - m(np.zeros_like(x[i]))), abs=1e-3)
    region = np.zeros((6, 6), bool)
    region[:2, :2] = True
    s = sal.region_sums(ig, {"corner": region})["corner"]
    assert np.allclose(s, ig[:, :2, :2].sum((1, 2, 3)), atol=1e-6)
    with pytest.raises(InputError, match="method"):
        sal.attributions(logits, x, 0, 1, method="smoothgrad")


# ---------------------------------------------------------------- the benchmark, end to end


def _cli(argv):
    import argparse

    from cfjax.jobs.planted import cli

    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers())
    args = ap.parse_args(["planted", *argv])
    return args.func(args)


@pytest.mark.parametrize("flag", [["--rho", "0.3"], ["--cues", "patch,glitter"], ["--data", "cifar10"], ["--seeds", "0"],
                                  ["--two-cue", "patch+patch"], ["--pair", "3,3"]])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, flag):
    out = tmp_path / "run"
    assert _cli(["--smoke", "--out", str(out), *flag]) == 2
    assert not out.exists()
    assert "expected" in capsys.readouterr().err


def test_smoke_benchmark_end_to_end(tmp_path):
    import json

    from cfjax.jobs.planted import EXPLAINERS, PlantedConfig
    from cfjax.jobs.planted.job import _read_cell

    out = tmp_path / "planted"
    assert _cli(["--smoke", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    cfg = PlantedConfig.smoke()
    assert len(s["cells"]) == len(cfg.cells()) == 3
    assert set(s["explainers"]) == set(EXPLAINERS)
    for name, e in s["explainers"].items():
        for k in ("top1_rho_ge_0_9", "spearman_reliance", "false_alarm_null", "two_cue_top1"):
            assert set(e[k]) >= {"value", "ci"} and len(e[k]["ci"]) == 2
    assert all(e["value"] is None for k, e in s["explainers"]["mirror"].items() if k in ("top1_rho_ge_0_9", "false_alarm_null"))
    assert s["explainers"]["random"]["false_alarm_null"]["value"] == 0.0  # random never flags
    for row in s["cells"]:
        assert set(row["reliance"]["cues"]) == set(pl.CUE_ORDER)
        assert set(row["explainers"]["saliency"]["ranking"]) == set(pl.CUE_ORDER)
        assert row["explainers"]["mirror"] is None
        assert _read_cell(out / "cells" / f"{row['key']}.json", s["fingerprint"]) is not None
        assert _read_cell(out / "cells" / f"{row['key']}.json", "another") is None  # another config: redone
    assert [r["planted"] for r in s["cells"]] == [[], ["patch"], ["patch", "stripe"]]
    assert set(s["vae"]["cue_reconstruction"]) == set(pl.CUE_ORDER)
    for f in ("hit_rate_vs_rho.png", "counterfactual_strips.png"):
        assert (out / "figures" / f).read_bytes()[:4] == b"\x89PNG"


def test_tied_scores_do_not_win_by_name():
    from cfjax.eval.ranking import rank_order

    names = ("patch", "tag", "stripe")
    firsts = {rank_order([1.0, 1.0, 0.2], names, tie_seed=s)[0] for s in range(20)}
    assert firsts == {"patch", "tag"}
    assert rank_order([1.0, 1.0, 0.2], names)[:2] == ["patch", "tag"]


def test_benchmark_subcommand_refuses_bad_arguments_through_main(tmp_path):
    import argparse

    from cfjax.jobs.planted.cli import benchmark_subcommand

    p = argparse.ArgumentParser()
    handler = benchmark_subcommand(p)
    args = p.parse_args(["planted", "--rho", "0.2", "--out", str(tmp_path / "x")])
    with pytest.raises(InputError, match="rho"):
        handler(args)
    assert not (tmp_path / "x").exists()


def test_cfjax_benchmark_planted_is_wired_into_the_cli_and_checks_before_work(tmp_path, capsys):
    from cfjax.cli import main

    out = tmp_path / "never"
    assert main(["benchmark", "planted", "--data", "nope", "--out", str(out)]) == 2
    assert "data" in capsys.readouterr().err
    assert not out.exists()
