"""The Mirror-CFE job's summary pieces: the fields both job shapes share (curves, faithfulness,
the located first counterfactual's k distribution), the decoder's record (preset, every setting
that shapes its path and losses, a digest of its weights), the first-counterfactual rule, and the
per-pair references (FID against real target images, the real images' ceilings)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax.eval import metrics
from cfjax.jobs.mirror.config import MirrorJobConfig
from cfjax.jobs.mirror.models import MirrorModels, _inception, real_target_ceilings
from cfjax.methods import mirror as mr
from cfjax.methods.locate import bisection_steps


def common_fields(res: dict, cfg: MirrorJobConfig, models: MirrorModels) -> tuple[dict, object, object]:
    """``(fields, cf FID moments, Inception FID moments or None)`` from the pass's finalized
    evaluators: the k grid beside the curves, ``l1_pm1``, the oracle's accuracy, and the first
    counterfactual's k distribution (``first_cf_k_q25/q50/q75`` from a 0.001-wide histogram)."""
    ks = np.asarray(mr.default_k_grid(cfg.k_step), np.float32)
    res["curves"] = {"k": [float(k) for k in ks], **res["curves"]}
    cf_m = res.pop("fid")
    inc_m = res.pop("fid_inception", None)
    res["l1_pm1"] = 2.0 * res["l1"]  # L1 of images on [-1, 1] (the paper's tanh decoder, C3LT's proximity scale)
    hist = res.pop("first_cf_k")
    for q in ("q25", "q50", "q75"):
        res[f"first_cf_k_{q}"] = hist[q]
    if models.oracle is not None:
        res["oracle_accuracy"] = models.oracle.metrics.get("accuracy")
    return res, cf_m, inc_m


def first_cf_rule(cfg: MirrorJobConfig) -> dict:
    """How the first counterfactual was chosen: the grid, the threshold rule and the bisection."""
    steps = 0 if cfg.locate_tol is None else bisection_steps(cfg.k_step, cfg.locate_tol)
    return {"grid_step": cfg.k_step, "search": "k > 0.5", "cf_threshold": cfg.cf_threshold,
            "located": cfg.locate_tol is not None, "locate_tol": cfg.locate_tol, "extra_decodes": steps}


def decoder_record(cfg: MirrorJobConfig, models: MirrorModels) -> dict:
    """Everything that shapes the decoder and the path it walks: the preset, its full config
    (``as_dict``: path, T, EMA, seed, steps, batch, pairs, loss weights), the classifier's blur
    augmentation, a sha256 of the kept weights, and its training metrics."""
    d, dec = cfg.decoder, models.decoder
    return {
        "preset": cfg.preset,
        "reflect_others": d.reflect_others, "cls_temperature": d.cls_temperature, "ema_decay": d.ema_decay, "seed": d.seed,
        "steps": d.steps, "batch_size": d.batch_size, "fea_normalized": d.fea_normalized, "w_cls_blur": d.w_cls_blur,
        "k_cf_fraction": d.k_cf_fraction,
        "pairs": "all ordered pairs (one decoder per dataset)" if d.pairs is None else [list(p) for p in d.pairs],
        "train_solver": d.train_solver, "loss_weights": {k: getattr(d, f"w_{k}") for k in ("cls", "adv", "rec", "fea", "tri")},
        "classifier_augment_blur": cfg.classifier_augment_blur,
        "weights_sha256": ckpt.tree_digest(dec.params),
        "config": d.as_dict(),
        "train_s": dec.metrics.get("train_s"), "load_or_train_s": models.decoder_wall_s,
        **{k: v for k, v in dec.metrics.items() if k != "train_s"},
    }


def pair_references(test, t: int, cf_m, inc_m, backbone, models: MirrorModels, cfg: MirrorJobConfig) -> dict:
    """What the per-pair job compares its counterfactuals with: FID of the counterfactuals against
    the real test images of class ``t`` (domain backbone; Inception-v3 when its weights are given)
    and what those real images score (the D.Val / oracle ceilings)."""
    real = test.images[test.labels == t]
    real_m = metrics.fid_moments_init(int(cf_m.sum.shape[0]), jnp.float32)
    fb = jax.jit(backbone.features)
    for i in range(0, len(real), 500):
        real_m = metrics.fid_moments_update(real_m, fb(jnp.asarray(real[i : i + 500])))
    out = {"fid_domain": metrics.fid_from_moments(cf_m, real_m) if float(cf_m.n) >= 2 and float(real_m.n) >= 2 else float("nan"),
           "fid_n": [int(float(cf_m.n)), int(float(real_m.n))]}
    ceil = real_target_ceilings(test, models.classifier, models.oracle, (t,), cfg.blur_sigma)[test.class_names[t]]
    out["denoised_validity_real_target"] = ceil["denoised_validity"]
    out["denoised_validity_real_target_given_valid"] = ceil["denoised_validity_given_valid"]
    if "oracle_validity" in ceil:
        out["oracle_validity_real_target"] = ceil["oracle_validity"]
    if inc_m is not None:
        from cfjax.eval.inception import inception_features

        real_inc = metrics.fid_moments_update(metrics.fid_moments_init(2048, jnp.float32), jnp.asarray(inception_features(_inception(cfg), real)))
        ok = float(inc_m.n) >= 2 and float(real_inc.n) >= 2
        out["fid_inception"] = metrics.fid_from_moments(inc_m, real_inc) if ok else float("nan")
        out["fid_inception_weights"] = cfg.inception_weights
    return out


def trust_fields(res: dict, models: MirrorModels, targets, ceilings: dict) -> dict:
    """What a reader needs to trust the headline numbers: the split the rows come from, the
    reference models' digests (None for the zoo's), the real-image ceilings beside the numbers
    they cap, and oracle validity at three points.

    Args:
      res: the finalized summary fields (``validity``, ``denoised_validity``, ``oracle_validity*``
        and their ``_ci`` intervals).
      targets: [n] the target class of every row (weights of the pooled ceilings).
      ceilings: :func:`~cfjax.jobs.mirror.models.real_target_ceilings` of those targets.

    Returns:
      ``split``, ``reference_models``, ``denoised_validity_ceiling`` (the same denoiser's score on
      real target images, pooled over the rows' targets), ``denoised_validity_over_ceiling``,
      ``oracle_ceiling`` (the oracle's agreement on real target images) and
      ``oracle_validity_at: {"first_cf", "confident_cf", "k1"}`` with ``oracle_validity_at_ci``.
    """
    t, counts = np.unique(np.asarray(targets), return_counts=True)
    names = models.test.class_names

    def pooled(key):
        vals = [ceilings[names[int(c)]].get(key) for c in t]
        if any(v is None or not np.isfinite(v) for v in vals):
            return None
        return float(np.dot(vals, counts) / counts.sum())

    orc = models.oracle
    dval_ceiling = pooled("denoised_validity")
    out = {"split": models.test.split, "reference_models": _reference_digests(models),
           "denoised_validity_ceiling": dval_ceiling,
           "denoised_validity_over_ceiling": (res["denoised_validity"] / dval_ceiling) if dval_ceiling else None,
           "oracle_ceiling": pooled("oracle_validity") if orc is not None else None}
    if orc is not None:
        at = {"first_cf": "oracle_validity", "confident_cf": "oracle_validity_confident", "k1": "oracle_validity_k1"}
        out["oracle_validity_at"] = {k: res.get(v) for k, v in at.items()}
        out["oracle_validity_at_ci"] = {k: res.get(f"{v}_ci") for k, v in at.items()}
    return out


def _reference_digests(models: MirrorModels) -> dict | None:
    """``{"classifier": sha256, "oracle": sha256}`` of the shipped reference models, or None."""
    if models.classifier.source != "reference":
        return None
    return {"classifier": models.classifier.metrics.get("sha256"),
            "oracle": None if models.oracle is None else models.oracle.metrics.get("sha256")}


__all__ = ["common_fields", "decoder_record", "first_cf_rule", "pair_references", "trust_fields"]
