"""The Mirror-CFE job: classifier (+ domain backbone) -> decoder -> reflect/transition/decode
every correctly classified source image -> first counterfactuals, metrics, figures, report.

CLI::

    cfjax mirror --data mnist5k --source 3 --target 8 --out runs/mirror_3_8 [--smoke]
    cfjax train-mirror-decoder --data mnist5k --out runs/mirror [--pair 3,8] [--steps N]
    (``cfjax explain --method mirror ...`` calls :func:`run_mirror_cli` with the same options)
    cfjax global --method mirror --data mnist5k --out runs/mirror_global [--pairs all]
    (every listed pair in ONE streamed, sharded, resumable pass: :func:`run_mirror_global`)

Models are cached under ``<models_dir>/<dataset>/`` (default ``models_dir = out/models``):
``classifier`` (shared with the attack job), ``domain_backbone`` (the same architecture trained
with seed 1: LPIPS/FID features, *not* ImageNet) and ``mirror_decoder``.

The per-example work is one pure batched function, :func:`mirror_chunk`; :func:`make_mirror_step`
wraps it into the ``(acc, batch, mask) -> (acc, outputs)`` step streamed and sharded by
:func:`cfjax.parallel.explain_dataset`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import metrics, parallel, zoo
from cfjax import mirror as mr
from cfjax import train as ct
from cfjax.cli import subcommand
from cfjax.errors import bad_arg
from cfjax.io import atomic_savefig, atomic_write_json, check_writable_dir
from cfjax.models import Classifier, bind_classifier

MIRROR_PAIRS = {
    "mnist5k": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "mnist": ((3, 8), (8, 3), (4, 9), (9, 4), (5, 6), (6, 5)),
    "fashion_mnist": ((0, 2), (2, 0), (4, 6), (6, 4), (7, 9), (9, 7)),
}
"""The paper's (C3LT's) class pairs, both directions."""

BACKBONE_LABEL = "domain backbone, not ImageNet (in-project GAP-CNN, seed 1)"


@dataclasses.dataclass(frozen=True)
class MirrorJobConfig:
    """Options of the Mirror-CFE job (``smoke_config()`` runs in seconds)."""

    solver: str = "jaxopt"
    maxiter: int = 100
    tol: float = 1e-5
    k_step: float = 0.05
    """Transition grid ``0, k_step, ..., 1``; the first counterfactual is searched at k > 0.5."""
    chunk_size: int = 32
    """Images per sharded step (each decodes ``1/k_step + 1`` transitions)."""
    limit: int | None = None
    """Cap the number of explained images (None: every correctly classified source image)."""
    decoder: mr.MirrorDecoderConfig = mr.MirrorDecoderConfig()
    backbone_seed: int = 1
    backbone_epochs: int | None = None
    """Epochs of the domain backbone (None: the classifier's schedule)."""
    blur_sigma: float = 1.0
    classifier_augment_blur: float = 0.0
    """Train the classifier (and backbone) with this fraction of blurred images
    (:attr:`cfjax.train.TrainConfig.augment_blur`); 0: the zoo's default classifier."""
    n_figure_examples: int = 6
    figure_pairs: tuple | None = None
    """Pairs shown in the grid figure (default: the dataset's paper pairs, else the job's pair)."""
    checkpoint_every: int = 5
    figures: bool = True
    data_limit: int | None = None
    """Cap train/test examples when loading the dataset (smoke runs)."""
    smoke: bool = False

    @classmethod
    def smoke_config(cls) -> "MirrorJobConfig":
        return cls(maxiter=30, chunk_size=8, limit=16, decoder=mr.MirrorDecoderConfig.smoke(), n_figure_examples=3, data_limit=500, smoke=True)


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


# ------------------------------------------------------------------------------ the chunk


def mirror_chunk(
    clf,
    decode_batch: Callable,
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
    return_images: bool = False,
):
    """Mirror-CFE on a batch (pure; jit/shard it).

    Args:
      clf: :class:`cfjax.models.ClassifierFns` (single-example callables; vmapped here).
      decode_batch: ``(F_k [n,h,w,C], skips, source [n], target [n], k [n]) -> x [n,H,W,c]``
        (CSP masks inside; see :func:`cfjax.mirror.batched_decoder`).
      backbone: LPIPS/FID feature functions.
      x: [n, H, W, c] source images; source, target: [n] int; mask: [n] bool (padding off).
      ks: the transition grid [m] (static shape).

    Returns:
      ``(outputs, sums)``: per-example arrays (``k_cf, index, found, iterations, converged,
      residual, p_lin [n, m], p_dec [n, m]``, plus ``x_k`` [n, m, H, W, c] and ``x_cf`` with
      ``return_images``) and masked metric sums (``n, found, ...``, ``fid`` moments of the
      counterfactuals' backbone features).
    """
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    ks = jnp.asarray(ks, jnp.float32)
    n, m = x.shape[0], ks.shape[0]
    maps = jax.vmap(clf.feature_maps)(x)
    skips, F_s = list(maps[:-1]), maps[-1]
    res = jax.vmap(lambda F, s, t: mr.reflect(F, W, b, s, t, solver=solver, maxiter=maxiter, tol=tol))(F_s, source, target)
    F_k = jax.vmap(mr.transitions, in_axes=(0, 0, None))(F_s, res.F_r, ks)  # [n, m, h, w, C]
    flat = lambda a: a.reshape(n * m, *a.shape[2:])  # noqa: E731
    rep = lambda a: jnp.repeat(a, m, axis=0)  # noqa: E731
    x_k = decode_batch(flat(F_k), [rep(s) for s in skips], rep(source), rep(target), jnp.tile(ks, n))
    z_dec = jax.vmap(clf.features)(x_k)
    logits_dec = (z_dec @ W.T + b).reshape(n, m, -1)
    z_k = mr.gap(F_k)  # [n, m, C]
    logits_lin = z_k @ W.T + b
    k_cf, idx, found = jax.vmap(mr.first_counterfactual, in_axes=(0, None, 0))(logits_dec, ks, target)
    x_k = x_k.reshape(n, m, *x.shape[1:])
    take = lambda a: jnp.take_along_axis(a, idx.reshape(n, *([1] * (a.ndim - 1))), axis=1)[:, 0]  # noqa: E731
    x_cf, z_cf = take(x_k), take(z_k)
    onehot_t = jax.nn.one_hot(target, W.shape[0])
    p_lin = jnp.sum(jax.nn.softmax(logits_lin) * onehot_t[:, None], -1)  # [n, m]
    p_dec = jnp.sum(jax.nn.softmax(logits_dec) * onehot_t[:, None], -1)
    dec_is_t = (jnp.argmax(logits_dec, -1) == target[:, None]).astype(jnp.float32)
    faith = jnp.sum(jnp.abs(z_k - z_dec.reshape(n, m, -1)), -1)  # [n, m]
    gap_p = jnp.abs(p_lin - p_dec)
    p_cf = take(p_dec[..., None])[:, 0]
    bclf = jax.vmap(clf.logits)
    dval = metrics.denoised_validity(bclf, x_cf, target, blur_sigma)
    l1, l2 = metrics.l1(x, x_cf), metrics.l2(x, x_cf)
    lat = jnp.linalg.norm(z_cf - mr.gap(F_s), axis=-1)
    lp = metrics.perceptual_distance(backbone.feature_maps, x, x_cf)
    w = mask.astype(jnp.float32)
    ok = (found & mask).astype(jnp.float32)
    feats = backbone.features(x_cf)
    sums = {
        "n": w.sum(),
        "found": ok.sum(),
        "converged": jnp.sum(w * res.converged),
        "iterations": jnp.sum(w * res.iterations),
        "residual": jnp.sum(w * res.residual),
        "residual_max": jnp.max(jnp.where(mask, res.residual, 0.0)),
        "k_cf": jnp.sum(ok * jnp.where(found, k_cf, 0.0)),
        "l1": jnp.sum(ok * l1),
        "l2": jnp.sum(ok * l2),
        "latent_l2": jnp.sum(ok * lat),
        "prob": jnp.sum(w * p_cf),
        "dval": jnp.sum(ok * dval),
        "lpips": jnp.sum(ok * lp),
        "faith_all": jnp.sum(w[:, None] * faith),
        "faith_cf": jnp.sum(ok * take(faith[..., None])[:, 0]),
        "pgap_all": jnp.sum(w[:, None] * gap_p),
        "pgap_cf": jnp.sum(ok * take(gap_p[..., None])[:, 0]),
        "rec_l1": jnp.sum(w * metrics.l1(x, x_k[:, 0])),
        "l1_vs_rec": jnp.sum(ok * metrics.l1(x_k[:, 0], x_cf)),
        "valid_k1": jnp.sum(w * dec_is_t[:, -1]),
        "curve_p_lin": jnp.sum(w[:, None] * p_lin, 0),
        "curve_p_dec": jnp.sum(w[:, None] * p_dec, 0),
        "curve_valid": jnp.sum(w[:, None] * dec_is_t, 0),
        "fid": metrics.fid_moments_update(metrics.fid_moments_init(feats.shape[-1]), feats, found & mask)._asdict(),
    }
    # per (source, target) pair [K*K], for the multi-pair global pass
    K = W.shape[0]
    oh = jax.nn.one_hot(source * K + target, K * K, dtype=jnp.float32)
    per_pair = lambda v: jnp.einsum("np,n->p", oh, v, precision=lax.Precision.HIGHEST)  # noqa: E731
    sums.update(pair_n=per_pair(w), pair_found=per_pair(ok), pair_l1=per_pair(ok * l1), pair_l2=per_pair(ok * l2),
                pair_dval=per_pair(ok * dval), pair_k=per_pair(ok * jnp.where(found, k_cf, 0.0)), pair_converged=per_pair(w * res.converged))
    outputs = {
        "source": source, "target": target, "k_cf": k_cf, "index": idx, "found": found, "iterations": res.iterations, "converged": res.converged,
        "residual": res.residual, "p_lin": p_lin, "p_dec": p_dec, "target_prob": p_cf,
    }
    if return_images:
        outputs["x_k"] = x_k
        outputs["x_cf"] = x_cf
    return outputs, sums


PAIR_SUMS = ("pair_n", "pair_found", "pair_l1", "pair_l2", "pair_dval", "pair_k", "pair_converged")


def _sums_init(m: int, d: int, num_classes: int) -> dict:
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    keys = ("n", "found", "converged", "iterations", "residual", "residual_max", "k_cf", "l1", "l2", "latent_l2", "prob", "dval",
            "lpips", "faith_all", "faith_cf", "pgap_all", "pgap_cf", "rec_l1", "l1_vs_rec", "valid_k1")
    out = {k: z() for k in keys}
    out.update({k: z(num_classes * num_classes) for k in PAIR_SUMS})
    out.update(curve_p_lin=z(m), curve_p_dec=z(m), curve_valid=z(m), fid=metrics.fid_moments_init(d)._asdict())
    return out


def _sums_add(acc: dict, new: dict) -> dict:
    out = {}
    for k, v in acc.items():
        if k == "residual_max":
            out[k] = jnp.maximum(v, new[k])
        elif k == "fid":
            out[k] = metrics.fid_moments_merge(metrics.FidMoments(**v), metrics.FidMoments(**new[k]))._asdict()
        else:
            out[k] = v + new[k]
    return out


def make_mirror_step(clf, decode_batch, backbone: Backbone, ks, cfg: MirrorJobConfig) -> Callable:
    """``(acc, batch, mask) -> (acc, outputs)`` for :func:`cfjax.parallel.explain_dataset`;
    ``batch = {"x", "source", "target"}``."""

    def step(acc, batch, mask):
        outs, sums = mirror_chunk(clf, decode_batch, backbone, batch["x"], batch["source"], batch["target"], mask,
                                  ks=ks, solver=cfg.solver, maxiter=cfg.maxiter, tol=cfg.tol, blur_sigma=cfg.blur_sigma)
        return _sums_add(acc, sums), outs

    return step


def summarize(acc: dict, ks) -> dict:
    """Turn accumulated sums into the summary's metric fields."""
    a = jax.tree_util.tree_map(np.asarray, acc)
    n, f = float(a["n"]), float(a["found"])
    m = len(np.asarray(ks))
    per_n = lambda v: float(v) / n if n else float("nan")  # noqa: E731
    per_f = lambda v: float(v) / f if f else float("nan")  # noqa: E731
    return {
        "n_counterfactuals": int(n),
        "n_found": int(f),
        "validity": per_n(f),
        "fail_rate": 1.0 - per_n(f) if n else float("nan"),
        "validity_k1": per_n(a["valid_k1"]),
        "denoised_validity": per_f(a["dval"]),
        "converged_rate": per_n(a["converged"]),
        "mean_steps": per_n(a["iterations"]),
        "residual_mean": per_n(a["residual"]),
        "residual_max": float(a["residual_max"]),
        "first_cf_k_mean": per_f(a["k_cf"]),
        "l1": per_f(a["l1"]),
        "l2": per_f(a["l2"]),
        "l1_vs_reconstruction": per_f(a["l1_vs_rec"]),
        "reconstruction_l1": per_n(a["rec_l1"]),
        "latent_l2": per_f(a["latent_l2"]),
        "target_prob_mean": per_n(a["prob"]),
        "lpips_domain": per_f(a["lpips"]),
        "faithfulness": {
            "feature_l1_mean": float(a["faith_all"]) / (n * m) if n else float("nan"),
            "feature_l1_at_cf": per_f(a["faith_cf"]),
            "target_prob_gap_mean": float(a["pgap_all"]) / (n * m) if n else float("nan"),
            "target_prob_gap_at_cf": per_f(a["pgap_cf"]),
        },
        "curves": {
            "k": [float(k) for k in np.asarray(ks)],
            "p_target_logits": (a["curve_p_lin"] / max(n, 1)).tolist(),
            "p_target_decoded": (a["curve_p_dec"] / max(n, 1)).tolist(),
            "decoded_is_target": (a["curve_valid"] / max(n, 1)).tolist(),
        },
    }


def pair_table(acc: dict, class_names) -> dict:
    """Per (source, target) pair from the accumulated sums: ``"s->t" -> {n, validity,
    denoised_validity, l1, l2, first_cf_k_mean, converged_rate}`` (pairs without examples
    are left out; distances, D.Val and k over found counterfactuals)."""
    K = len(class_names)
    g = {k: np.asarray(acc[k], np.float64).reshape(K, K) for k in PAIR_SUMS}
    out = {}
    for s_, t in zip(*np.nonzero(g["pair_n"] > 0)):
        n, f = g["pair_n"][s_, t], g["pair_found"][s_, t]
        per_f = lambda k: float(g[k][s_, t] / f) if f else None  # noqa: E731,B023
        out[f"{class_names[s_]}->{class_names[t]}"] = {
            "n": int(round(n)), "validity": float(f / n), "denoised_validity": per_f("pair_dval"), "l1": per_f("pair_l1"),
            "l2": per_f("pair_l2"), "first_cf_k_mean": per_f("pair_k"), "converged_rate": float(g["pair_converged"][s_, t] / n),
        }
    return out


# ------------------------------------------------------------------------------ models


def _zoo_config(dataset: str, smoke: bool) -> zoo.ZooConfig:
    if smoke:
        return zoo.SMOKE
    return zoo.DEFAULTS.get(dataset, zoo.DEFAULTS["fashion_mnist"])


def load_models(dataset: str, models_dir, cfg: MirrorJobConfig, *, data_dir=None, progress: bool = True, backbone: bool = True):
    """Data, the classifier (same cache as :func:`cfjax.zoo.get_models`, no VAE) and the domain
    backbone (same architecture and schedule, ``seed = cfg.backbone_seed``; ``None`` with
    ``backbone=False``)."""
    from cfjax import data as cdata

    zc = _zoo_config(dataset, cfg.smoke)
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


def decoder_dir(root: Path, dcfg: mr.MirrorDecoderConfig) -> Path:
    """``root/mirror_decoder`` (all pairs) or ``root/mirror_decoder_<s>_<t>[...]`` (restricted)."""
    if dcfg.pairs is None:
        return root / "mirror_decoder"
    return root / ("mirror_decoder_" + "_".join(f"{s}-{t}" for s, t in dcfg.pairs))


def get_decoder(clf_trained, train, test, root: Path, dcfg: mr.MirrorDecoderConfig, progress: bool = True):
    clf = bind_classifier(clf_trained.module, clf_trained.params)
    digest = ckpt.tree_digest(clf_trained.params)
    t0 = time.perf_counter()
    dec = mr.load_or_train_mirror_decoder(clf, train, dcfg, test=test, workdir=decoder_dir(root, dcfg), classifier_digest=digest, progress=progress)
    return dec, time.perf_counter() - t0


def _decoder_parts(clf_t, bb_t, train, test, root: Path, cfg: MirrorJobConfig, progress: bool):
    """The bound classifier, the decoder (trained or reused) and its load/train seconds, the
    batched CSP decoder, the backbone and the k grid: what every Mirror pass needs."""
    clf = bind_classifier(clf_t.module, clf_t.params)
    dec, dec_s = get_decoder(clf_t, train, test, root, cfg.decoder, progress)
    decode_batch = mr.batched_decoder(dec.module, dec.params, clf.W, cfg.decoder)
    backbone = classifier_backbone(bb_t.module, bb_t.params)
    ks = np.asarray(mr.default_k_grid(cfg.k_step), np.float32)
    return clf, dec, dec_s, decode_batch, backbone, ks


def _batched_predict(fn, images, bs: int = 500) -> np.ndarray:
    return np.concatenate([np.asarray(fn(jnp.asarray(images[s : s + bs]))) for s in range(0, len(images), bs)])


# ------------------------------------------------------------------------------ the job


def run_mirror_explanation(
    dataset: str,
    out_dir,
    *,
    source: int,
    target: int,
    config: MirrorJobConfig | None = None,
    models_dir=None,
    data_dir=None,
    progress: bool = True,
) -> dict:
    """Mirror-CFE for every test image of class ``source`` that the classifier predicts as
    ``source``, towards ``target``; writes ``summary.json``, figures and ``report.html`` to
    ``out_dir`` and returns the summary."""
    cfg = config or MirrorJobConfig()
    if cfg.solver not in mr.SOLVERS:
        raise bad_arg("solver", repr(cfg.solver), f"one of {mr.SOLVERS}")
    out = check_writable_dir(out_dir, "out")
    models_dir = Path(models_dir) if models_dir is not None else out / "models"
    t_start = time.perf_counter()
    train, test, clf_t, bb_t, root = load_models(dataset, models_dir, cfg, data_dir=data_dir, progress=progress)
    K = train.num_classes
    for name, v in (("source", source), ("target", target)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < K:
            raise bad_arg(name, repr(v), f"a class index in [0, {K - 1}] of {dataset}")
    if source == target:
        raise bad_arg("target", f"{target} (== source)", "a class different from the source")
    clf, dec, dec_s, decode_batch, backbone, ks = _decoder_parts(clf_t, bb_t, train, test, root, cfg, progress)

    preds = _batched_predict(jax.jit(lambda x: jnp.argmax(clf_t.module.apply(clf_t.params, x), -1)), test.images)
    sel = np.flatnonzero((test.labels == source) & (preds == source))
    selection = "label == source and prediction == source"
    if len(sel) == 0:
        sel = np.flatnonzero(test.labels == source)
        selection = "label == source (the classifier predicts no test image of the source class correctly)"
    if len(sel) == 0:
        raise bad_arg("source", source, f"a class with test images in {dataset} (limit={cfg.data_limit})")
    if cfg.limit is not None:
        sel = sel[: cfg.limit]
    data = {"x": test.images[sel], "source": np.full(len(sel), source, np.int32), "target": np.full(len(sel), target, np.int32)}

    n_dev = jax.device_count()
    chunk = math.ceil(min(cfg.chunk_size, max(len(sel), 1)) / n_dev) * n_dev
    d = int(np.asarray(backbone.features(jnp.asarray(test.images[:1]))).shape[-1])
    init = _sums_init(len(ks), d, K)
    step = make_mirror_step(clf, decode_batch, backbone, ks, cfg)
    job = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("figures", "n_figure_examples", "figure_pairs", "checkpoint_every")}
    run_cfg = {"method": "mirror", "dataset": dataset, "source": source, "target": target, "job": job,
               "clf": ckpt.tree_digest(clf_t.params), "decoder": ckpt.tree_digest(dec.params), "n": len(sel)}
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(step, init, data, chunk_size=chunk, checkpoint_dir=out / f"state_mirror_{source}_{target}",
                                   checkpoint_every=cfg.checkpoint_every, run_config=run_cfg,
                                   outputs_dir=out / f"outputs_mirror_{source}_{target}", progress=progress, desc=f"mirror {source}->{target}")
    wall = time.perf_counter() - t0
    res = summarize(acc, ks)

    # FID: counterfactuals vs real target-class test images (backbone features)
    real = test.images[test.labels == target]
    real_m = metrics.fid_moments_init(d)
    fb = jax.jit(backbone.features)
    for s in range(0, len(real), 500):
        real_m = metrics.fid_moments_update(real_m, fb(jnp.asarray(real[s : s + 500])))
    cf_m = metrics.FidMoments(**acc["fid"])
    fid = metrics.fid_from_moments(cf_m, real_m) if float(cf_m.n) >= 2 and float(real_m.n) >= 2 else float("nan")

    # the ceiling of denoised validity: how often the classifier still calls REAL target-class
    # images the target after the same blur (a classifier that is not blur-robust caps D.Val)
    fblur = jax.jit(lambda x: jnp.argmax(clf_t.module.apply(clf_t.params, metrics.gaussian_blur(x, cfg.blur_sigma)), -1))
    real_dval = float(np.mean(_batched_predict(fblur, real) == target)) if len(real) else float("nan")
    names = test.class_names
    summary = {
        "method": "mirror",
        "dataset": dataset,
        "source": int(source),
        "target": int(target),
        "pair": f"{names[source]}->{names[target]}",
        "n_examples": int(len(sel)),
        "selection": selection,
        "n_counterfactuals": res["n_counterfactuals"],
        "n_found": res["n_found"],
        "n_devices": n_dev,
        "validity": res["validity"],
        "mean_steps": res["mean_steps"],
        "l1": res["l1"],
        "l2": res["l2"],
        "latent_l2": res["latent_l2"],
        "target_prob_mean": res["target_prob_mean"],
        "wall_s": wall,
        "cf_per_s": res["n_counterfactuals"] / wall if wall > 0 else float("nan"),
        "denoised_validity": res["denoised_validity"],
        "denoised_validity_real_target": real_dval,
        "fail_rate": res["fail_rate"],
        "converged_rate": res["converged_rate"],
        "first_cf_k_mean": res["first_cf_k_mean"],
        "faithfulness": res["faithfulness"],
        "lpips_domain": res["lpips_domain"],
        "fid_domain": fid,
        "fid_n": [int(float(cf_m.n)), int(float(real_m.n))],
        "perceptual_backbone": BACKBONE_LABEL,
        "validity_k1": res["validity_k1"],
        "l1_vs_reconstruction": res["l1_vs_reconstruction"],
        "reconstruction_l1": res["reconstruction_l1"],
        "residual_mean": res["residual_mean"],
        "residual_max": res["residual_max"],
        "solver": cfg.solver,
        "maxiter": cfg.maxiter,
        "tol": cfg.tol,
        "k_grid": {"step": cfg.k_step, "first_cf_search": "k > 0.5"},
        "csp_rho": {"rho_l": cfg.decoder.rho_l, "rho_u": cfg.decoder.rho_u},
        "decoder": {
            "pairs": "all ordered pairs (one decoder per dataset)" if cfg.decoder.pairs is None else [list(p) for p in cfg.decoder.pairs],
            "steps": cfg.decoder.steps,
            "batch_size": cfg.decoder.batch_size,
            "train_solver": cfg.decoder.train_solver,
            "loss_weights": {k: getattr(cfg.decoder, f"w_{k}") for k in ("cls", "adv", "rec", "fea", "tri")},
            "train_s": dec.metrics.get("train_s"),
            "load_or_train_s": dec_s,
            **{k: v for k, v in dec.metrics.items() if k != "train_s"},
        },
        "classifier_accuracy": clf_t.metrics.get("accuracy"),
        "backbone_accuracy": bb_t.metrics.get("accuracy"),
        "backbone_epochs": bb_t.config.get("train", {}).get("epochs"),
        "curves": res["curves"],
        "total_wall_s": None,
    }
    figs = _figures(out, test, preds, clf, decode_batch, backbone, ks, cfg, data, summary, dec.history, dataset) if cfg.figures else []
    summary["total_wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "summary.json", summary)
    try:
        from cfjax import report

        report.write_report(out, summary, figs, title=f"Mirror-CFE on {dataset}: {summary['pair']}")
    except ImportError:  # pragma: no cover - report module is optional here
        pass
    if progress:
        print(f"mirror {summary['pair']}: validity {summary['validity']:.3f}, denoised {summary['denoised_validity']:.3f}, "
              f"L1 {summary['l1']:.3f}, first k {summary['first_cf_k_mean']:.3f}, converged {summary['converged_rate']:.3f}, "
              f"{summary['cf_per_s']:.1f} cf/s; report: {out / 'report.html'}")
    return summary


def parse_pairs(spec: str | None):
    """``None`` (the dataset's paper pairs), ``"all"`` (every ordered pair) or ``"S,T;S,T"``."""
    if spec is None or spec == "all":
        return spec
    try:
        out = tuple(tuple(int(v) for v in part.split(",")) for part in spec.split(";") if part.strip())
    except ValueError:
        raise bad_arg("--pairs", repr(spec), "'all' or 'S,T;S,T;...' with class indices") from None
    if not out or any(len(p) != 2 for p in out):
        raise bad_arg("--pairs", repr(spec), "'all' or 'S,T;S,T;...' with class indices")
    return out


def run_mirror_global(
    dataset: str,
    out_dir,
    *,
    config: MirrorJobConfig | None = None,
    pairs=None,
    models_dir=None,
    data_dir=None,
    progress: bool = True,
) -> dict:
    """Mirror-CFE over many class pairs in one pass: every test image the classifier gets right,
    towards every target of its class's listed pairs, streamed through ONE compiled, sharded,
    resumable step (:func:`cfjax.parallel.explain_dataset`); multi-host after
    :func:`cfjax.parallel.initialize_distributed` (each process takes its slice of the rows,
    process 0 writes). Uses the dataset's single decoder (all pairs).

    Args:
      dataset: ``"mnist5k"``, ``"mnist"``, ``"fashion_mnist"``.
      out_dir: writes ``summary.json`` (overall metrics + ``pairs``: per-pair validity,
        denoised validity, L1/L2, first-k, converged rate) and ``report.html``.
      config: :class:`MirrorJobConfig` (``limit`` caps the test images, ``chunk_size`` the
        rows per step).
      pairs: ``None`` (the paper's pairs for the dataset, else all), ``"all"`` or a sequence of
        ``(source, target)``.

    FID is per target class and is left to the per-pair job (``cfjax mirror``).
    """
    cfg = config or MirrorJobConfig()
    if not isinstance(cfg, MirrorJobConfig):
        raise bad_arg("config", type(cfg).__name__, "a MirrorJobConfig")
    if cfg.solver not in mr.SOLVERS:
        raise bad_arg("solver", repr(cfg.solver), f"one of {mr.SOLVERS}")
    if cfg.decoder.pairs is not None:
        raise bad_arg("config.decoder.pairs", cfg.decoder.pairs, "None (the global pass uses the dataset's all-pairs decoder)")
    out = check_writable_dir(out_dir, "out")
    models_dir = Path(models_dir) if models_dir is not None else out / "models"
    lead = jax.process_index() == 0
    t_start = time.perf_counter()

    def load():  # process 0 trains/loads first, the others then load what it wrote
        train, test, clf_t, bb_t, root = load_models(dataset, models_dir, cfg, data_dir=data_dir, progress=progress and lead)
        return train, test, clf_t, _decoder_parts(clf_t, bb_t, train, test, root, cfg, progress and lead)

    train, test, clf_t, (clf, dec, dec_s, decode_batch, backbone, ks) = parallel.process0_first(load)
    K = train.num_classes
    if pairs is None:
        pairs = MIRROR_PAIRS.get(dataset, "all")
    if pairs == "all":
        pairs = tuple((s_, t) for s_ in range(K) for t in range(K) if s_ != t)
    pairs = tuple(tuple(p) for p in pairs)
    for s_, t in pairs:
        for name, v in (("pairs (source)", s_), ("pairs (target)", t)):
            if not 0 <= v < K:
                raise bad_arg(name, v, f"a class index in [0, {K - 1}] of {dataset}")
        if s_ == t:
            raise bad_arg("pairs", f"({s_}, {t})", "source != target")
    n_img = len(test) if cfg.limit is None else min(cfg.limit, len(test))
    preds = _batched_predict(jax.jit(lambda x: jnp.argmax(clf_t.module.apply(clf_t.params, x), -1)), test.images[:n_img])
    labels = np.asarray(test.labels[:n_img])
    # per source class, as the per-pair job selects: the images the classifier gets right, or
    # (an untrained/smoke classifier that gets none of that class right) all its images
    fallback = sorted({s_ for s_, _ in pairs if not np.any((labels == s_) & (preds == s_))})
    keep = (labels == preds) | np.isin(labels, fallback)
    selection = "label == source and prediction == source" + (f"; label == source only for classes {fallback}" if fallback else "")
    rows = [(i, s_, t) for i in np.flatnonzero(keep) for s_, t in pairs if labels[i] == s_]  # image-major
    if not rows:
        raise bad_arg("pairs", pairs, f"pairs whose source class has test images in {dataset} (limit={cfg.limit})")
    idx, src, tgt = (np.asarray(c) for c in zip(*rows))
    mine = parallel.process_slice(len(idx))
    data = {"x": parallel.Rows(test.images, idx[mine]), "source": src[mine].astype(np.int32), "target": tgt[mine].astype(np.int32)}
    n_dev = jax.device_count()
    chunk = math.ceil(min(cfg.chunk_size, len(idx)) / n_dev) * n_dev
    d = int(np.asarray(backbone.features(jnp.asarray(test.images[:1]))).shape[-1])
    step = make_mirror_step(clf, decode_batch, backbone, ks, cfg)
    job = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("figures", "n_figure_examples", "figure_pairs", "checkpoint_every")}
    run_cfg = {"method": "mirror-global", "dataset": dataset, "pairs": [list(p) for p in pairs], "job": job,
               "clf": ckpt.tree_digest(clf_t.params), "decoder": ckpt.tree_digest(dec.params), "n": len(idx)}
    resumed = (out / "state_mirror_global" / "accumulators").is_dir()
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(step, _sums_init(len(ks), d, K), data, chunk_size=chunk, checkpoint_dir=out / "state_mirror_global",
                                   checkpoint_every=cfg.checkpoint_every, run_config=run_cfg, outputs_dir=out / "outputs_mirror_global",
                                   progress=progress, desc="mirror (all pairs)")
    wall = time.perf_counter() - t0
    res = summarize(acc, ks)
    res.pop("curves")
    summary = {
        "method": "mirror", "dataset": dataset, "pairs_requested": [list(p) for p in pairs], "n_examples": int(len(np.unique(idx))),
        "selection": selection, "n_devices": n_dev, "n_processes": jax.process_count(),
        **res, "wall_s": wall, "cf_per_s": None if resumed else res["n_counterfactuals"] / wall, "resumed": resumed,
        "pairs": pair_table(acc, test.class_names), "solver": cfg.solver, "maxiter": cfg.maxiter, "chunk_size": chunk,
        "classifier_accuracy": clf_t.metrics.get("accuracy"), "decoder_load_or_train_s": dec_s, "backend": jax.default_backend(),
    }
    summary["total_wall_s"] = time.perf_counter() - t_start
    if not lead:
        return summary
    atomic_write_json(out / "summary.json", summary)
    from cfjax import report

    report.write_report(out, summary, [], title=f"Mirror-CFE on {dataset}: {len(pairs)} pairs in one pass")
    if progress:
        rate = "resumed" if resumed else f"{summary['cf_per_s']:.1f} cf/s"
        print(f"mirror global ({len(pairs)} pairs, {summary['n_counterfactuals']} rows): validity {summary['validity']:.3f}, "
              f"denoised {summary['denoised_validity']:.3f}, L1 {summary['l1']:.3f}, {rate}; report: {out / 'report.html'}")
    return summary


# ------------------------------------------------------------------------------ figures


def _show(ax, img, title=None, cmap="gray", vmin=0.0, vmax=1.0):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=6)


def _figures(out: Path, test, preds, clf, decode_batch, backbone, ks, cfg: MirrorJobConfig, data, summary, history, dataset) -> list:
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
    jrun = jax.jit(lambda x, so, ta: mirror_chunk(clf, decode_batch, backbone, x, so, ta, jnp.ones(x.shape[0], bool), ks=ks,
                                                  solver=cfg.solver, maxiter=cfg.maxiter, tol=cfg.tol, return_images=True)[0])

    def run(x, so, ta):
        n = len(x)
        o = jrun(*(jnp.asarray(parallel.pad_to(np.asarray(a), nb)) for a in (x, so, ta)))
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], jax.device_get(o))

    o = run(data["x"][:ne], data["source"][:ne], data["target"][:ne])
    # transition strips
    cols = list(range(0, len(ks), 2)) if len(ks) > 11 else list(range(len(ks)))
    fig, axes = plt.subplots(ne, len(cols) + 3, figsize=((len(cols) + 3) * 0.85, ne * 1.0), squeeze=False)
    for i in range(ne):
        _show(axes[i, 0], data["x"][i], "source" if i == 0 else None)
        for j, c in enumerate(cols):
            _show(axes[i, j + 1], o["x_k"][i, c], f"k={ks[c]:.2f}\np={o['p_dec'][i, c]:.2f}")
        kc = o["k_cf"][i]
        _show(axes[i, -2], o["x_cf"][i], f"first CF\nk={kc:.2f}" if o["found"][i] else "no CF\n(k=1)")
        for sp in axes[i, -2].spines.values():
            sp.set_color("tab:red" if o["found"][i] else "gray")
            sp.set_linewidth(2)
        _show(axes[i, -1], np.mean(o["x_cf"][i] - data["x"][i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
    atomic_savefig(fig, figdir / "transitions.png")
    figs.append(("Transition strips", "figures/transitions.png",
                 f"{names[s]} -> {names[t]}: source, decoded G(F_k) along k with the classifier's target probability, the first counterfactual (smallest k > 0.5 classified as target), difference"))
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
    figs.append(("Confidence vs k", "figures/confidence_vs_k.png", "mean (thick) and per-example (thin) target probability implied by the interpolated features vs the classifier's probability on the decoded image"))
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
            _show(axes[i, 0], xr[i], "source" if i == 0 else None)
            _show(axes[i, 1], og["x_k"][i, 0], "G(F_s), k=0" if i == 0 else None)
            _show(axes[i, 2], og["x_cf"][i], f"k={og['k_cf'][i]:.2f} p={og['target_prob'][i]:.2f}" if og["found"][i] else "no CF")
            _show(axes[i, 3], np.mean(og["x_cf"][i] - xr[i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[i, 0].set_ylabel(f"{names[ps]}->{names[pt]}", fontsize=6)
        atomic_savefig(fig, figdir / "pairs_grid.png")
        figs.append(("Grid over pairs", "figures/pairs_grid.png", "one correctly classified test image per pair: source | reconstruction | first counterfactual | difference (one decoder serves every pair)"))
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
        figs.append(("Decoder training", "figures/decoder_losses.png", "per-term loss history of the decoder (L_cls, L_adv, L_rec, L_fea, L_tri; d = discriminator)"))
    return figs


# ------------------------------------------------------------------------------ CLI


def _add(p, *names, **kw) -> None:
    """Add an option unless the parser already has it (the ``explain`` parser shares some)."""
    if any(n in p._option_string_actions for n in names):
        return
    p.add_argument(*names, **kw)


def add_mirror_args(p) -> None:
    """Mirror-CFE options; those the parser already has (``--data``, ``--out``, ``--smoke``,
    ``--limit``, ``--chunk-size``, ``--data-dir`` in ``explain``) are left as they are."""
    _add(p, "--data", default="mnist5k", help="dataset name (mnist5k, fashion_mnist, mnist)")
    _add(p, "--out", required=True, help="output directory (summary.json, figures, report.html)")
    _add(p, "--source", type=int, default=None, help="[mirror] source class")
    _add(p, "--target", type=int, default=None, help="[mirror] target class")
    _add(p, "--solver", choices=list(mr.SOLVERS), default=None, help="[mirror] refinement solver (default jaxopt)")
    _add(p, "--maxiter", type=int, default=None, help="[mirror] L-BFGS iteration cap")
    _add(p, "--k-step", type=float, default=None, help="[mirror] transition grid step (default 0.05)")
    _add(p, "--decoder-steps", type=int, default=None, help="[mirror] decoder training steps")
    _add(p, "--pair-decoder", action="store_true", help="[mirror] train/use a decoder for this pair (both directions) only")
    _add(p, "--models-dir", default=None, help="[mirror] model cache (default OUT/models)")
    _add(p, "--limit", type=int, default=None, help="explain at most N images")
    _add(p, "--chunk-size", type=int, default=None)
    _add(p, "--data-dir", default=None)
    _add(p, "--smoke", action="store_true", help="tiny models and budgets: runs in seconds")
    _add(p, "--no-figures", action="store_true", help="[mirror] skip the figures (numbers and report only)")


def config_from_args(a) -> MirrorJobConfig:
    smoke = bool(getattr(a, "smoke", False))
    cfg = MirrorJobConfig.smoke_config() if smoke else MirrorJobConfig()
    dec = cfg.decoder
    if getattr(a, "decoder_steps", None) is not None:
        dec = dataclasses.replace(dec, steps=a.decoder_steps, checkpoint_every=min(dec.checkpoint_every, a.decoder_steps))
    if getattr(a, "pair_decoder", False) and getattr(a, "source", None) is not None and getattr(a, "target", None) is not None:
        dec = dataclasses.replace(dec, pairs=((a.source, a.target), (a.target, a.source)))
    if getattr(a, "no_figures", False):
        cfg = dataclasses.replace(cfg, figures=False)
    over = {"solver": getattr(a, "solver", None), "maxiter": getattr(a, "maxiter", None), "k_step": getattr(a, "k_step", None),
            "limit": getattr(a, "limit", None), "chunk_size": getattr(a, "chunk_size", None)}
    return dataclasses.replace(cfg, decoder=dec, **{k: v for k, v in over.items() if v is not None})


def run_mirror_cli(a) -> dict:
    """Run the job from parsed CLI args (``cfjax mirror`` and ``cfjax explain --method mirror``)."""
    if getattr(a, "source", None) is None or getattr(a, "target", None) is None:
        raise bad_arg("--source/--target", "missing", "both a source and a target class (e.g. --source 3 --target 8)")
    return run_mirror_explanation(a.data, a.out, source=a.source, target=a.target, config=config_from_args(a),
                                  models_dir=getattr(a, "models_dir", None), data_dir=getattr(a, "data_dir", None))


@subcommand("mirror", "Mirror-CFE counterfactuals for one class pair (reflect, L-BFGS, decode, metrics, report)")
def _mirror_parser(p):
    add_mirror_args(p)
    return run_mirror_cli


@subcommand("train-mirror-decoder", "train (or reuse) the Mirror-CFE decoder of a dataset")
def _train_decoder_parser(p):
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True, help="run directory; models go to OUT/models/<data>/ (or --models-dir)")
    p.add_argument("--models-dir", default=None)
    p.add_argument("--pair", default=None, help="S,T: train on this pair (both directions) only; default: one decoder for all pairs")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--smoke", action="store_true")

    def run(a):
        import json

        cfg = MirrorJobConfig.smoke_config() if a.smoke else MirrorJobConfig()
        dec = cfg.decoder
        over = {k: v for k, v in dict(steps=a.steps, batch_size=a.batch_size, seed=a.seed).items() if v is not None}
        if a.pair:
            try:
                s, t = (int(v) for v in a.pair.split(","))
            except ValueError:
                raise bad_arg("--pair", repr(a.pair), "two class indices 'S,T'") from None
            over["pairs"] = ((s, t), (t, s))
        if "steps" in over:
            over["checkpoint_every"] = min(dec.checkpoint_every, over["steps"])
        dec = dataclasses.replace(dec, **over)
        cfg = dataclasses.replace(cfg, decoder=dec)
        out = check_writable_dir(a.out, "out")
        models_dir = Path(a.models_dir) if a.models_dir else out / "models"
        train, test, clf_t, _, root = load_models(a.data, models_dir, cfg, data_dir=a.data_dir, backbone=False)
        d, s_ = get_decoder(clf_t, train, test, root, dec)
        print(json.dumps({"data": a.data, "decoder_dir": str(decoder_dir(root, dec)), "wall_s": round(s_, 1), **d.metrics}, indent=1))

    return run


__all__ = [
    "MIRROR_PAIRS",
    "Backbone",
    "MirrorJobConfig",
    "add_mirror_args",
    "classifier_backbone",
    "config_from_args",
    "load_models",
    "make_mirror_step",
    "mirror_chunk",
    "pair_table",
    "parse_pairs",
    "run_mirror_global",
    "run_mirror_cli",
    "run_mirror_explanation",
    "summarize",
]
