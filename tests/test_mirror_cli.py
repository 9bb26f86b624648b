"""Mirror-CFE end to end through the CLI (smoke configuration: tiny models, seconds of work)."""

import json
import shutil
import math

import numpy as np
import pytest

from cfjax import cli

KEYS = {
    # the attack job's schema
    "method", "dataset", "n_examples", "n_counterfactuals", "n_devices", "validity", "mean_steps", "l1", "l2",
    "latent_l2", "target_prob_mean", "wall_s", "cf_per_s",
    # Mirror-CFE's additions
    "denoised_validity", "fail_rate", "converged_rate", "first_cf_k_mean", "faithfulness", "lpips_domain",
    "fid_domain", "perceptual_backbone", "curves", "decoder", "source", "target",
}


def _rate(v):
    return v is None or (isinstance(v, float) and math.isnan(v)) or 0.0 <= v <= 1.0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirror")
    rc = cli.main(["mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--out", str(out), "--smoke"])
    if (out / "report.html").is_file():  # kept: a later test reruns into ``out`` with --no-figures
        shutil.copy(out / "report.html", out.parent / f"{out.name}_first_report.html")
    return rc, out


def test_cli_smoke_writes_summary_figures_report(smoke_run):
    rc, out = smoke_run
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert KEYS <= set(s), KEYS - set(s)
    assert s["method"] == "mirror" and s["dataset"] == "mnist5k" and (s["source"], s["target"]) == (3, 8)
    assert 1 <= s["n_examples"] <= 16 and s["n_counterfactuals"] == s["n_examples"]
    for k in ("validity", "fail_rate", "converged_rate", "denoised_validity", "target_prob_mean", "validity_k1",
              "oracle_validity", "oracle_validity_real_target", "denoised_validity_real_target",
              "denoised_validity_real_target_given_valid"):
        assert _rate(s[k]), (k, s[k])
    assert abs(s["validity"] + s["fail_rate"] - 1.0) < 1e-6
    assert s["converged_rate"] > 0.9  # L-BFGS on a linear least-squares problem converges
    assert s["residual_max"] < 1e-2
    assert 0 < s["mean_steps"] <= 30
    if s["n_found"]:
        assert 0.5 < s["first_cf_k_mean"] <= 1.0
        assert 0.0 <= s["l1"] <= 1.0 and s["l2"] >= 0.0 and s["latent_l2"] > 0.0
        assert s["lpips_domain"] >= 0.0
    assert "not ImageNet" in s["perceptual_backbone"]
    f = s["faithfulness"]
    assert f["feature_l1_mean"] >= 0 and 0 <= f["target_prob_gap_mean"] <= 1
    cv = s["curves"]
    assert len(cv["k"]) == 21 and cv["k"][0] == 0.0 and cv["k"][-1] == 1.0
    p = np.asarray(cv["p_target_logits"])
    assert np.all((p >= 0) & (p <= 1))
    # only logits s and t trade places along k (the others stay): p_t(k) is monotone, and rises
    # whenever the explained images are classified as the source
    d = np.diff(p)
    assert np.all(d >= -1e-6) or np.all(d <= 1e-6)
    if s["selection"].startswith("label == source and prediction"):
        assert p[-1] > p[0]
    assert s["wall_s"] > 0 and s["cf_per_s"] > 0
    for fig in ("transitions.png", "confidence_vs_k.png", "pairs_grid.png", "decoder_losses.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    html = (out / "report.html").read_text()
    assert "transitions.png" in html and "Mirror-CFE" in html
    assert len(list((out / "models" / "mnist5k").glob("mirror_decoder_3-8_8-3_4-9_9-4_5-6_6-5-*/best"))) == 1  # the paper-pairs decoder
    assert (out / "models" / "mnist5k" / "domain_backbone" / "best").is_dir()


def test_cli_rerun_reuses_models_and_state(smoke_run, capsys):
    rc, out = smoke_run
    before = json.loads((out / "summary.json").read_text())
    # same options again (explain --method mirror routes here when the attack job is installed)
    argv = ["mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--out", str(out), "--smoke", "--no-figures"]
    assert cli.main(argv) == 0
    after = json.loads((out / "summary.json").read_text())
    for k in ("validity", "l1", "first_cf_k_mean", "converged_rate", "n_counterfactuals"):
        assert after[k] == before[k] or (after[k] is None and before[k] is None), k
    assert after["decoder"]["train_s"] == before["decoder"]["train_s"]  # decoder loaded, not retrained


def test_cli_errors(tmp_path, capsys):
    rc = cli.main(["mirror", "--data", "mnist5k", "--source", "3", "--out", str(tmp_path), "--smoke"])
    assert rc == 2
    assert "--source/--target" in capsys.readouterr().err


def test_job_rows_are_cfjax_mirror_cfe(smoke_run):
    """The job's per-example outputs are exactly ``jax.vmap(cfjax.mirror_cfe)`` on the same images
    with the same (reloaded) classifier and decoder."""
    import jax
    import jax.numpy as jnp

    import cfjax as cf
    from cfjax.jobs import mirror as mjob
    from cfjax.methods import mirror as mr

    rc, out = smoke_run
    s = json.loads((out / "summary.json").read_text())
    parts = [dict(np.load(f)) for f in sorted((out / "per_example" / "mirror").glob("chunk_*.npz"))]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    cfg = mjob.resolve_decoder_pairs(mjob.MirrorJobConfig.smoke(), "mnist5k", ((3, 8),))
    assert cfg.decoder.pairs == mjob.MIRROR_PAIRS["mnist5k"]  # the default: one decoder for the paper pairs
    train, test, clf_t, _, root = mjob.load_models("mnist5k", out / "models", cfg, progress=False, backbone=False)
    dec, _ = mjob.get_decoder(clf_t, train, test, root, cfg.decoder, progress=False)
    clf = clf_t.fns
    decode = cf.bind_mirror_decoder(dec, clf.W)
    preds = np.argmax(np.asarray(jax.vmap(clf.logits)(jnp.asarray(test.images))), -1)
    sel = np.flatnonzero((test.labels == 3) & (preds == 3))
    if len(sel) == 0:  # the job's documented fallback when the (smoke) classifier gets no 3 right
        assert s["selection"].startswith("label == source (")
        sel = np.flatnonzero(test.labels == 3)
    sel = sel[: cfg.limit]
    assert len(sel) == s["n_counterfactuals"] == len(rows["k_cf"])
    ks = mr.default_k_grid(cfg.k_step)
    r = jax.jit(jax.vmap(lambda x: cf.mirror_cfe(clf.feature_maps, clf.W, clf.b, decode, x, 3, 8, ks=ks, solver=cfg.solver,
                                                 maxiter=cfg.maxiter, tol=cfg.tol)))(jnp.asarray(test.images[sel]))
    np.testing.assert_array_equal(np.asarray(r.found), rows["found"])
    np.testing.assert_array_equal(np.asarray(r.index), rows["index"])
    np.testing.assert_array_equal(np.asarray(r.status), rows["status"])
    p_dec = np.asarray(jax.nn.softmax(r.logits_path)[..., 8])
    np.testing.assert_allclose(p_dec, rows["p_dec"], atol=1e-4)
    assert s["validity"] == pytest.approx(float(np.mean(np.asarray(r.found))))


def test_pair_report_renders_in_chromium(smoke_run, open_in_browser):
    """The report alone (no figures/ beside it) shows the headline, then every figure decoded,
    in a real browser, with no request leaving the page."""
    if open_in_browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/run does)")
    _, out = smoke_run
    seen = open_in_browser(out.parent / f"{out.name}_first_report.html", "report_mirror_pair")
    assert seen["images"] >= 4 and seen["decoded"] == seen["images"] and seen["missing_alt"] == 0
    assert seen["resources"] == []
    assert seen["headline_top"] < seen["first_figure_top"] < seen["viewport_height"]  # both on the first screen
    assert seen["page_width"] <= seen["viewport_width"], "the page scrolls sideways"
    for label in ("validity", "denoised validity", "L1", "Mirror-CFE", "3->8"):
        assert label in seen["headline_text"], label


def test_an_oracle_cached_for_another_config_is_refused_before_the_decoder_trains(tmp_path, tmp_path_factory, monkeypatch):
    """The models folder's oracle was trained with other epochs: the job stops on it (naming the
    folder and the field) before it trains or loads a decoder, not after."""
    import dataclasses

    from cfjax.errors import CheckpointError
    from cfjax.jobs import mirror as jm
    from cfjax.jobs.mirror import job as mirror_job
    from smoke_models import shared_models_dir

    models = shared_models_dir(tmp_path_factory, "mirror")
    reached = []
    monkeypatch.setattr(mirror_job, "get_decoder", lambda *a, **k: reached.append(1) or pytest.fail("the decoder was reached"))
    cfg = jm.MirrorJobConfig.from_preset("paper", smoke=True)
    cfg = dataclasses.replace(cfg, oracle_epochs=(cfg.oracle_epochs or 1) + 1)
    with pytest.raises(CheckpointError, match=r"oracle_classifier(.|\n)*epochs"):
        jm.run_mirror_explanation("mnist5k", tmp_path / "out", source=3, target=8, config=cfg, models_dir=models)
    assert not reached


def test_summary_carries_intervals_ceilings_and_the_oracle_at_three_points(smoke_run):
    """Issue 34: every headline rate has a Wilson interval and every headline mean a bootstrap one,
    each containing its value; the ceilings and the oracle at first CF / confident CF / k = 1 sit
    beside the numbers; the split and (zoo models here) no reference digests are recorded."""
    _, out = smoke_run
    s = json.loads((out / "summary.json").read_text())
    assert s["split"] == "test" and s["reference_models"] is None
    for key in ("validity", "denoised_validity", "oracle_validity", "oracle_validity_k1", "oracle_validity_confident", "l1", "lpips_domain",
                "target_prob_gap_at_cf"):
        lo, hi = s[f"{key}_ci"]
        v = s[key] if key in s else s["faithfulness"][key]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        assert lo - 1e-9 <= v <= hi + 1e-9, (key, lo, v, hi)
    assert set(s["oracle_validity_at"]) == {"first_cf", "confident_cf", "k1"}
    assert s["oracle_validity_at"]["first_cf"] == s["oracle_validity"] and s["oracle_validity_at"]["k1"] == s["oracle_validity_k1"]
    assert _rate(s["denoised_validity_ceiling"]) and _rate(s["oracle_ceiling"])
    assert s["denoised_validity_ceiling"] == s["denoised_validity_real_target"]
    # an oracle that agrees at a confident CF must have found one there
    assert s["oracle_validity_confident"] <= s["confident_cf_rate"] + 1e-9
