"""The Mirror-CFE job's per-chunk step: :func:`mirror_rows` (``jax.vmap`` of :func:`cfjax.mirror_cfe`
plus per-example metric rows), how a chunk is sliced to bound memory, and the evaluator set whose
sums the streamed pass accumulates (:func:`mirror_evaluators`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cfjax.eval import evaluators as E
from cfjax.eval import metrics
from cfjax.methods import mirror as mr
from cfjax.methods.locate import bisection_steps, locate_crossing

if TYPE_CHECKING:
    from cfjax.jobs.mirror.config import MirrorJobConfig

BACKBONE_LABEL = "domain backbone, not ImageNet (in-project GAP-CNN, seed 1)"


class Backbone(NamedTuple):
    """Batched feature functions of the LPIPS/FID backbone: ``feature_maps(x) -> [maps]``,
    ``features(x) -> [n, D]``; ``label`` names it in the outputs."""

    feature_maps: Callable
    features: Callable
    label: str


def classifier_backbone(module, params, label: str = BACKBONE_LABEL) -> Backbone:
    """A :class:`Backbone` from a GAP-CNN (every block's map for LPIPS, the GAP vector for FID)."""
    return Backbone(
        lambda x: module.apply(params, x, method=type(module).feature_maps),  # Classifier or ResNet
        lambda x: module.apply(params, x, method=type(module).features),
        label,
    )



def mirror_rows(
    clf,
    decode: Callable,
    backbone: Backbone,
    x,
    source,
    target,
    mask,
    *,
    ks,
    solver: str = "jaxopt",
    maxiter: int = 100,
    tol: float = 1e-5,
    blur_sigma: float = 1.0,
    oracle_logits: Callable | None = None,
    lpips_fn: Callable | None = None,
    fid_features: Callable | None = None,
    max_decode: int | None = None,
    return_images: bool = False,
    compose: str = "decoded",
    threshold: float | None = None,
    others: str | None = None,
    locate_steps: int = 0,
    confident: float = 0.9,
    row_id=None,
) -> dict:
    """:func:`cfjax.mirror_cfe` on a batch (vmapped) and its per-example metric rows (pure).

    Args:
      clf: :class:`cfjax.models.ClassifierFns` (single-example ``feature_maps``/``features``/
        ``logits`` and the head ``W``, ``b``).
      decode: single-example ``(F_k, skips, source, target, k) -> x`` (see
        :func:`cfjax.bind_mirror_decoder`).
      backbone: LPIPS/FID feature functions (batched).
      x: [n, H, W, c] source images; source, target: [n] int; mask: [n] bool (padding off).
      ks: the transition grid [m] (static shape; ``ks[0] = 0``).
      oracle_logits: optional batched ``x [n, H, W, c] -> [n, K]`` of an independent classifier
        (rows ``oracle_ok``, ``oracle_k1``).
      lpips_fn: optional batched ``(x, y) -> [n]`` paper-standard LPIPS(AlexNet)
        (:func:`cfjax.eval.lpips.lpips_distance`): row ``lpips_alex`` (source vs counterfactual).
      fid_features: optional batched ``x -> [n, 2048]`` (Inception-v3 pool3): row ``fid_feats``.
      max_decode: bound on the images decoded at once: the batch runs as ``S`` sequential
        slices of ``n / S`` examples (``lax.map``; ``S`` the smallest divisor of ``n`` with
        ``(n / S) * m <= max_decode``), so peak memory follows this value, not ``n * m``.
        ``None``: the whole batch at once.
      compose: how each path image is formed (:func:`cfjax.mirror_cfe`): ``"decoded"`` (the
        paper) or ``"residual"`` (the source plus the decoder's change since ``k = 0``).
      threshold: the first counterfactual's rule (:func:`cfjax.methods.mirror.first_counterfactual`;
        None: the paper's argmax rule).
      others: the reflection's treatment of third classes (:func:`cfjax.methods.mirror.reflection_target`;
        None: the decoder's own path).
      locate_steps: bisection steps that locate the first counterfactual between the last grid
        point that is not one and the first that is (:func:`cfjax.methods.locate.locate_crossing`;
        0: the grid point, as the paper). Every metric at the first counterfactual is then taken
        at the located ``k`` (``k_cf``); the grid's is kept as ``k_cf_grid``.
      confident: the **confident counterfactual**: the first grid point past ``k = 0.5`` whose
        decoded image the classifier gives ``p_t >= confident`` (rows ``conf_found``, and with an
        oracle ``oracle_conf``). The first counterfactual sits on the boundary (``p_t ~ 0.5``), where
        a faithful decoder draws an ambiguous image; realism is judged here and at ``k = 1``.
      row_id: [n] int, each row's global index (row ``row_id``, which seeds its Poisson bootstrap
        weights, :func:`cfjax.eval.evaluators.bootstrap_means`); None: ``0..n-1``.

    Returns:
      rows ``[n, ...]``: ``source, target, w, ok, k_cf, k_cf_grid, index, found, status,
      iterations, converged, residual, p_lin [n, m], p_dec [n, m], target_prob, valid_path [n, m],
      l1, l2, latent_l2, dval, lpips, rec_l1, l1_vs_rec, valid_k1, dval_k1, conf_found, row_id, feats`` and the
      faithfulness rows (the paper's Suppl. Tab. 4): ``pgap_cf``/``pgap_mean`` the absolute and
      ``pgap_signed_cf``/``pgap_signed_mean`` the signed target-probability gap
      ``p_t(F(G(F_k))) - p_t(z_k)`` (decoded minus path; > 0: the decoded image overshoots the
      path) at the first counterfactual / averaged over the grid; ``faith_cf``/``faith_mean`` the
      feature L1 ``||z_k - GAP(F(G(F_k)))||_1`` summed over the C channels (feature units) and
      ``faith_rel_cf``/``faith_rel_mean`` the same divided by ``||z_k||_1`` (a relative error)
      (+ ``oracle_ok``, ``oracle_conf``, ``oracle_k1``; + ``x_k`` [n, m, H, W, c] and ``x_cf`` with
      ``return_images``).
    """
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    ks = jnp.asarray(ks, jnp.float32)
    n = x.shape[0]
    r = _run_batch(clf, decode, x, source, target, ks, max_decode, solver=solver, maxiter=maxiter, tol=tol, compose=compose,
                   threshold=threshold, others=others)
    take_at = lambda a, i: jnp.take_along_axis(a, i.reshape(n, *([1] * (a.ndim - 1))), axis=1)[:, 0]  # noqa: E731
    take = lambda a: take_at(a, r.index)  # noqa: E731
    p_lin = jax.vmap(lambda l, t: jax.nn.softmax(l)[:, t])(r.logits_features, target)  # [n, m]
    p_dec = jax.vmap(lambda l, t: jax.nn.softmax(l)[:, t])(r.logits_path, target)
    valid_path = (jnp.argmax(r.logits_path, -1) == target[:, None]).astype(jnp.float32)
    # the first counterfactual: the grid's, or located between the grid points around it
    x_cf, k_cf, z_cf, z_dec_cf = r.x_cf, r.k_cf, take(r.z_path), take(r.z_decoded)
    if locate_steps:
        x_cf, k_cf = _locate(clf, decode, x, source, target, r, ks, locate_steps, compose=compose, threshold=threshold)
        z_cf = jnp.where(r.found[:, None], jax.vmap(lambda F0, F1, k: mr.gap(F0 + k * (F1 - F0)))(
            jax.vmap(lambda xi: list(clf.feature_maps(xi))[-1])(x), r.F_r, jnp.nan_to_num(k_cf)), z_cf)
        z_dec_cf = jax.vmap(clf.features)(x_cf)
    faith_rows = _faithfulness_rows(r, p_lin, p_dec, z_cf, z_dec_cf, target, W, b)
    z_s = jax.vmap(clf.features)(x)
    w = mask.astype(jnp.float32)
    conf = (ks[None, :] > 0.5) & (p_dec >= confident)  # [n, m]
    conf_idx = jnp.argmax(conf, axis=1)
    rows = {
        "source": source, "target": target, "w": w, "ok": (r.found & mask).astype(jnp.float32),
        "k_cf": k_cf, "k_cf_found": jnp.where(r.found, k_cf, 0.0), "k_cf_grid": r.k_cf, "k_cf_grid_found": jnp.where(r.found, r.k_cf, 0.0),
        "index": r.index, "found": r.found, "status": r.status,
        "iterations": r.iterations, "converged": r.converged, "converged_f": r.converged.astype(jnp.float32), "residual": r.residual,
        "p_lin": p_lin, "p_dec": p_dec, "valid_path": valid_path, "valid_k1": valid_path[:, -1],
        "l1": metrics.l1(x, x_cf), "l2": metrics.l2(x, x_cf), "latent_l2": jnp.linalg.norm(z_cf - z_s, axis=-1),
        "dval": metrics.denoised_validity(jax.vmap(clf.logits), x_cf, target, blur_sigma),
        "lpips": metrics.perceptual_distance(backbone.feature_maps, x, x_cf),
        **faith_rows,
        "rec_l1": metrics.l1(x, r.x_path[:, 0]), "l1_vs_rec": metrics.l1(r.x_path[:, 0], x_cf), "feats": backbone.features(x_cf),
        "dval_k1": metrics.denoised_validity(jax.vmap(clf.logits), r.x_path[:, -1], target, blur_sigma),
        "conf_found": (jnp.any(conf, axis=1) & mask).astype(jnp.float32),
        "row_id": jnp.arange(n, dtype=jnp.int32) if row_id is None else jnp.asarray(row_id, jnp.int32),
    }
    if lpips_fn is not None:
        rows["lpips_alex"] = lpips_fn(x, x_cf)
    if fid_features is not None:
        rows["fid_feats"] = fid_features(x_cf)
    if oracle_logits is not None:
        rows["oracle_ok"] = rows["ok"] * (jnp.argmax(oracle_logits(x_cf), -1) == target)
        rows["oracle_k1"] = (jnp.argmax(oracle_logits(r.x_path[:, -1]), -1) == target).astype(jnp.float32)
        rows["oracle_conf"] = rows["conf_found"] * (jnp.argmax(oracle_logits(take_at(r.x_path, conf_idx)), -1) == target)
    if return_images:
        rows["x_k"] = r.x_path
        rows["x_cf"] = x_cf
    return rows


def _run_batch(clf, decode, x, source, target, ks, max_decode: int | None, **opts):
    """:func:`cfjax.mirror_cfe` vmapped over the batch, in ``S`` sequential slices when
    ``max_decode`` bounds the images decoded at once (:func:`decode_slices`)."""
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    run = jax.vmap(lambda xi, s, t: mr.mirror_cfe(clf.feature_maps, W, b, decode, xi, s, t, ks=ks, **opts))
    n = x.shape[0]
    S = decode_slices(n, int(ks.shape[0]), max_decode)
    if S == 1:
        return run(x, source, target)
    # [n, ...] -> [S, n/S, ...]: the scanned axis is unsharded, each slice spans every device
    split = lambda a: jnp.moveaxis(a.reshape(n // S, S, *a.shape[1:]), 1, 0)  # noqa: E731
    r = jax.lax.map(lambda args: run(*args), (split(x), split(source), split(target)))
    return jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1).reshape(n, *a.shape[2:]), r)


def _faithfulness_rows(r, p_lin, p_dec, z_cf, z_dec_cf, target, W, b) -> dict:
    """The faithfulness rows (see :data:`FAITHFULNESS`) and ``target_prob``, the decoded first
    counterfactual's ``p_t``: the gap ``p_t(F(G(F_k))) - p_t(z_k)`` (decoded minus path) and the
    feature L1 ``||z_k - GAP(F(G(F_k)))||_1``, along the grid [n, m] and at the first CF."""
    faith = jnp.sum(jnp.abs(r.z_path - r.z_decoded), -1)  # [n, m]
    faith_rel = faith / (jnp.sum(jnp.abs(r.z_path), -1) + 1e-6)
    pgap = p_dec - p_lin  # signed: decoded minus path
    p_lin_cf = jax.vmap(lambda z, t: jax.nn.softmax(z @ W.T + b)[t])(z_cf, target)
    p_dec_cf = jax.vmap(lambda z, t: jax.nn.softmax(z @ W.T + b)[t])(z_dec_cf, target)
    faith_cf = jnp.sum(jnp.abs(z_cf - z_dec_cf), -1)
    return {
        "target_prob": p_dec_cf,
        "faith_mean": faith.mean(-1), "faith_cf": faith_cf, "faith_rel_mean": faith_rel.mean(-1),
        "faith_rel_cf": faith_cf / (jnp.sum(jnp.abs(z_cf), -1) + 1e-6),
        "pgap_mean": jnp.abs(pgap).mean(-1), "pgap_cf": jnp.abs(p_dec_cf - p_lin_cf),
        "pgap_signed_mean": pgap.mean(-1), "pgap_signed_cf": p_dec_cf - p_lin_cf,
    }


def _locate(clf, decode, x, source, target, r, ks, steps: int, *, compose: str, threshold: float | None):
    """``(x_cf [n, H, W, c], k_cf [n])``: each found counterfactual located by bisection between
    its grid point and the one before it (not below the boundary 0.5); NaN ``k`` stays NaN."""
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)

    def one(xi, s, t, F_r, idx, found, x_hi):
        maps = list(clf.feature_maps(xi))
        skips, F_s = maps[:-1], maps[-1]
        x0 = decode(F_s, skips, s, t, jnp.float32(0.0)) if compose == "residual" else None

        def decode_at(k):
            xk = decode(F_s + k * (F_r - F_s), skips, s, t, k)
            return jnp.clip(xi + xk - x0, 0.0, 1.0) if compose == "residual" else xk

        def is_cf(xk):
            lg = clf.features(xk) @ W.T + b
            ok = jnp.argmax(lg) == t
            return ok if threshold is None else ok & (jax.nn.softmax(lg)[t] >= threshold)

        k_hi = ks[idx]
        k_lo = jnp.maximum(ks[jnp.maximum(idx - 1, 0)], 0.5)
        loc = locate_crossing(decode_at, is_cf, k_lo, k_hi, x_hi, steps=steps, active=found & (k_hi > k_lo))
        return loc.x, jnp.where(found, loc.k, jnp.nan)

    return jax.vmap(one)(x, source, target, r.F_r, r.index, r.found, r.x_cf)


def rows_options(cfg: MirrorJobConfig) -> dict:
    """The :func:`mirror_rows` options a job config sets (one place for the pass and the figures)."""
    locate = 0 if cfg.locate_tol is None else bisection_steps(cfg.k_step, cfg.locate_tol)
    return dict(solver=cfg.solver, maxiter=cfg.maxiter, tol=cfg.tol, blur_sigma=cfg.blur_sigma, compose=cfg.compose, threshold=cfg.cf_threshold,
                others=cfg.decoder.reflect_others, locate_steps=locate, confident=cfg.confident_threshold)


def decode_slices(n: int, m: int, max_decode: int | None) -> int:
    """The number of sequential slices ``S`` (a divisor of ``n``) so that ``(n / S) * m <= max_decode``
    (``S = n`` when even one example's ``m`` decodes exceed it)."""
    if max_decode is None or n * m <= max_decode:
        return 1
    for S in range(2, n + 1):
        if n % S == 0 and (n // S) * m <= max_decode:
            return S
    return n


PER_EXAMPLE = ("source", "target", "k_cf", "k_cf_grid", "index", "found", "status", "iterations", "converged", "residual", "p_lin", "p_dec", "target_prob")
"""Row keys written per example (``out/per_example/mirror/chunk_*.npz``)."""


FAITHFULNESS = {
    "target_prob_gap_at_cf": ("pgap_cf", "ok"), "target_prob_gap_signed_at_cf": ("pgap_signed_cf", "ok"),
    "target_prob_gap_mean": ("pgap_mean", "w"), "target_prob_gap_signed_mean": ("pgap_signed_mean", "w"),
    "feature_l1_at_cf": ("faith_cf", "ok"), "feature_l1_mean": ("faith_mean", "w"),
    "feature_l1_rel_at_cf": ("faith_rel_cf", "ok"), "feature_l1_rel_mean": ("faith_rel_mean", "w"),
}
"""The faithfulness metrics (the paper's Suppl. Tab. 4; summary key -> (row, weight)): the
target-probability gap ``p_t(F(G(F_k))) - p_t(z_k)`` absolute and signed (decoded minus path) at
the first counterfactual and averaged over the grid, and the feature L1 ``||z_k - GAP(F(G(F_k)))||_1``
summed over channels (feature units) and relative to ``||z_k||_1``."""


RATE_CI = {"validity": ("ok", "w"), "denoised_validity": ("dval", "ok"), "validity_k1": ("valid_k1", "w"),
           "oracle_validity": ("oracle_ok", "w"), "oracle_validity_confident": ("oracle_conf", "w"), "oracle_validity_k1": ("oracle_k1", "w")}
"""Rates reported with a Wilson 95% interval (``<key>_ci``): summary key -> (0/1 row, weight row)."""

MEAN_CI = {"l1": ("l1", "ok"), "lpips_domain": ("lpips", "ok"), "lpips_alex": ("lpips_alex", "ok"), "target_prob_gap_at_cf": ("pgap_cf", "ok"),
           "first_cf_k_mean": ("k_cf_found", "ok")}
"""Means reported with a Poisson-bootstrap 95% interval over images (``<key>_ci``)."""


def mirror_evaluators(num_classes: int, class_names, m: int, feature_dim: int, *, oracle: bool = False, lpips_alex: bool = False,
                      inception: bool = False) -> list:
    """The Mirror-CFE job's metrics (sums only; ``m`` grid points, backbone features of size
    ``feature_dim`` for FID; ``oracle``: the rows carry ``oracle_ok``/``oracle_k1``)."""
    extra = {"oracle_validity": ("oracle_ok", "w"), "oracle_validity_k1": ("oracle_k1", "w"),
             "oracle_validity_confident": ("oracle_conf", "w")} if oracle else {}
    pair_rates = {"validity": "ok", "converged_rate": "converged_f", "validity_k1": "valid_k1", "denoised_validity_k1": "dval_k1"}
    if oracle:
        pair_rates["oracle_validity"] = "oracle_ok"
        pair_rates["oracle_validity_k1"] = "oracle_k1"
    pair_means = {"denoised_validity": ("dval", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "first_cf_k_mean": ("k_cf_found", "ok"),
                  **FAITHFULNESS}
    if lpips_alex:
        extra["lpips_alex"] = pair_means["lpips_alex"] = ("lpips_alex", "ok")
    return [
        E.counts("counts", {"n_counterfactuals": "w", "n_found": "ok"}),
        E.weighted_means("means", {
            "validity": ("ok", "w"), "validity_k1": ("valid_k1", "w"), "denoised_validity": ("dval", "ok"),
            "converged_rate": ("converged_f", "w"), "mean_steps": ("iterations", "w"), "residual_mean": ("residual", "w"),
            "first_cf_k_mean": ("k_cf_found", "ok"), "first_cf_k_grid_mean": ("k_cf_grid_found", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "l1_vs_reconstruction": ("l1_vs_rec", "ok"),
            "reconstruction_l1": ("rec_l1", "w"), "latent_l2": ("latent_l2", "ok"), "target_prob_mean": ("target_prob", "w"),
            "lpips_domain": ("lpips", "ok"), "denoised_validity_k1": ("dval_k1", "w"), "confident_cf_rate": ("conf_found", "w"), **extra,
        }, complements={"fail_rate": "validity"}),
        E.wilson_rates("rate_ci", {k: v for k, v in RATE_CI.items() if oracle or not k.startswith("oracle")}),
        E.bootstrap_means("mean_ci", {k: v for k, v in MEAN_CI.items() if lpips_alex or k != "lpips_alex"}),
        E.grouped("faithfulness", E.weighted_means("faith", FAITHFULNESS)),
        E.linear_histogram("first_cf_k", "k_cf", "ok", lo=0.5, hi=1.0, bins=500, out="first_cf_k"),
        E.grouped("curves", E.weighted_means("curve", {
            "p_target_logits": ("p_lin", "w"), "p_target_decoded": ("p_dec", "w"), "decoded_is_target": ("valid_path", "w")},
            shapes={"p_target_logits": (m,), "p_target_decoded": (m,), "decoded_is_target": (m,)})),
        E.log_histogram("residual", "residual", "w", out_max="residual_max", out="residual_histogram"),
        E.pair_curves("pair_curves", num_classes, class_names, {"p_target_logits": "p_lin", "p_target_decoded": "p_dec"}, "w", m),
        E.pair_table("pairs", num_classes, class_names, count="w", rates=pair_rates, means=pair_means),
        E.fid_moments("fid", "feats", "ok", feature_dim, out="fid"),
    ] + ([E.fid_moments("fid_inception", "fid_feats", "ok", 2048, out="fid_inception")] if inception else [])

