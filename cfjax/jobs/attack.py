"""The Counterfactual Attacks job: models -> attribute predictors -> attack every test image
towards every other class (streamed in fixed jitted batches) -> global explanation, pixel
baseline, figures, ``summary.json``, ``report.html``.

CLI: ``cfjax explain --method attack --data NAME --out DIR [...]`` (``--method mirror`` is
routed to :mod:`cfjax.jobs.mirror`). ``cfjax demo`` runs :func:`run_attack_explanation` with
:class:`AttackJobConfig` defaults on ``mnist5k``.

The computation is two pure per-batch functions, :func:`attack_chunk` (latent attack,
metrics, attribute scores and their global sums) and :func:`pixel_chunk` (the baseline),
streamed over (image, target) pairs by :func:`cfjax.parallel.explain_dataset`: one compiled
step whatever the dataset size, padding masked, every reduction a masked sum (so it shards
and merges across chunks, devices and hosts by addition), resumable accumulators.

Output folder layout::

    out/models/<dataset>/{classifier,vae}   cached checkpoints (zoo.get_models)
    out/state/{latent,pixel}                accumulator checkpoints (resume)
    out/per_example/latent/chunk_*.npz      per-counterfactual outputs (source, target, success, ...)
    out/figures/*.png
    out/summary.json, out/report.html
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import attribution as attr
from cfjax.attack import STATUS_NAMES, AttackResult, attack_batch, attack_pixels_batch
from cfjax import metrics, parallel, report, zoo
from cfjax.cli import subcommand
from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.io import atomic_write_json, check_writable_dir
from cfjax.models import bind_classifier, bind_vae

PAPER_PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))
_HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class AttackJobConfig:
    """Options of the attack job (:meth:`smoke_config` runs in seconds).

    Defaults: the paper's Adam with lr 0.1 and threshold 0.5, but a budget of 200 steps
    instead of 1000 (the median MNIST counterfactual needs ~10 steps and 99% of the successful
    ones < ~120; a budget only costs its full length on the examples that fail; ``--steps
    1000`` is the paper's). Pixel baseline: same loop on the image, Adam lr 0.01, 200 steps.
    """

    steps: int = 200
    learning_rate: float = 0.1
    threshold: float = 0.5
    optimizer: str = "adam"
    pixel_steps: int = 200
    pixel_learning_rate: float = 0.01
    batch_size: int = 1024
    """Counterfactuals ((image, target) pairs) per jitted step."""
    limit: int | None = None
    """Attack only the first N test images (None: the whole test split)."""
    targets: str = "all"
    """``"all"``: every class but the image's own; or one class index as a string."""
    pixel_baseline: bool = True
    pixel_limit: int | None = None
    """Run the pixel baseline on the pairs of the first N images only (None: all pairs)."""
    record_every: int = 5
    """Trajectory spacing of the progression figure (a divisor of ``steps``)."""
    block: int = 5
    """Steps per compaction round of :func:`cfjax.attack.attack_batch`."""
    checkpoint_every: int = 5
    figure_pairs: tuple = PAPER_PAIRS
    smoke: bool = False

    @classmethod
    def demo_config(cls) -> "AttackJobConfig":
        """The README's main job: the whole mnist5k test split (1,000 images x 9 targets =
        9,000 latent counterfactuals, 100-step budgets; ~4 min on 2 CPU cores) and the pixel
        baseline on the first 200 images (1,800 counterfactuals)."""
        return cls(steps=100, pixel_steps=100, limit=None, pixel_limit=200, batch_size=1024, record_every=20)

    @classmethod
    def smoke_config(cls) -> "AttackJobConfig":
        """Plumbing check in seconds: the zoo's SMOKE models (a few training steps: the
        classifier is near chance, p ~ 0.1 for every class), 8 test images (72
        counterfactuals, one batch), 20 steps, and a threshold of 0.11 so that some
        counterfactuals succeed and every code path (attribution, figures) runs."""
        return cls(steps=20, pixel_steps=20, threshold=0.11, batch_size=72, limit=8, record_every=5, smoke=True)


class AttackFns(NamedTuple):
    """The callables :func:`attack_chunk` needs (single-example, any JAX functions)."""

    encode: Callable  # x [H, W, C] -> z [D]
    decode: Callable  # z [D] -> x [H, W, C]
    logits: Callable  # x [H, W, C] -> [K]
    predictor: attr.AttributePredictor


def _metric_init(k: int) -> dict:
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    return {
        "n": z(), "success": z(), "steps": z(), "steps_all": z(), "start_past": z(), "l1": z(), "l2": z(), "l1_recon": z(),
        "latent_l2": z(), "prob": z(), "dval": z(), "status": z(4), "pair_n": z(k * k), "pair_success": z(k * k),
        "pair_steps": z(k * k), "pair_l1": z(k * k), "pair_l2": z(k * k), "pair_dval": z(k * k),
    }


def _metric_sums(res: AttackResult, x, x_rec, z0, source, target, mask, k: int, dval) -> dict:
    """Masked sums of one batch; distances over successful counterfactuals only."""
    w = mask.astype(jnp.float32)
    ok = (res.success & mask).astype(jnp.float32)
    slot = source * k + target
    oh = jax.nn.one_hot(slot, k * k, dtype=jnp.float32)
    dz = (res.z - z0).reshape(res.z.shape[0], -1)
    zero_nan = lambda v, m: jnp.sum(jnp.where(m > 0, v, 0.0))  # noqa: E731  (masked rows never leak)
    return {
        "n": jnp.sum(w),
        "success": jnp.sum(ok),
        "steps": zero_nan(ok * res.steps_taken, ok),
        "steps_all": zero_nan(w * res.steps_taken, w),
        "start_past": jnp.sum(ok * (res.steps_taken == 0)),
        "l1": zero_nan(ok * metrics.l1(res.x, x), ok),
        "l2": zero_nan(ok * metrics.l2(res.x, x), ok),
        "l1_recon": zero_nan(ok * metrics.l1(res.x, x_rec), ok),
        "latent_l2": zero_nan(ok * jnp.sqrt(jnp.sum(dz**2, -1)), ok),
        "prob": zero_nan(w * res.target_prob, w),
        "dval": zero_nan(ok * dval, ok),
        "status": jnp.einsum("nc,n->c", jax.nn.one_hot(res.status, 4, dtype=jnp.float32), w, precision=_HI),
        "pair_n": jnp.einsum("np,n->p", oh, w, precision=_HI),
        "pair_success": jnp.einsum("np,n->p", oh, ok, precision=_HI),
        # per (source, target) pair, over successful counterfactuals (like the scalars above)
        "pair_steps": jnp.einsum("np,n->p", oh, jnp.where(ok > 0, res.steps_taken.astype(jnp.float32), 0.0), precision=_HI),
        "pair_l1": jnp.einsum("np,n->p", oh, jnp.where(ok > 0, metrics.l1(res.x, x), 0.0), precision=_HI),
        "pair_l2": jnp.einsum("np,n->p", oh, jnp.where(ok > 0, metrics.l2(res.x, x), 0.0), precision=_HI),
        "pair_dval": jnp.einsum("np,n->p", oh, jnp.where(ok > 0, dval.astype(jnp.float32), 0.0), precision=_HI),
    }


def attack_chunk(
    fns: AttackFns,
    x: jax.Array,
    source: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    steps: int,
    learning_rate: float,
    threshold: float,
    optimizer: str = "adam",
    block: int = 5,
    descriptors: tuple[str, desc.Standardizer] | None = None,
) -> tuple[dict, dict]:
    """Latent attacks of one batch of (image, target) pairs, their metrics and attributions.

    Pure and jit-able (bind the keyword options with ``functools.partial``). Every reduction
    is a masked sum over the batch axis, so results merge across batches/devices/hosts by
    addition and padding rows (``mask`` False) never count.

    Args:
      fns: encoder, decoder, classifier logits (single-example callables) and the attribute
        predictor.
      x: ``[n, H, W, C]`` images in [0, 1].
      source: ``[n]`` the images' classes; target: ``[n]`` the classes to reach.
      mask: ``[n]`` bool, real rows.
      num_classes: K.
      steps, learning_rate, threshold, optimizer, block: attack options
        (:func:`cfjax.attack.attack_batch`).
      descriptors: optional ``(kind, standardizer)``: also accumulate the standardised
        image-descriptor change ``d(cf) - d(reconstruction)`` per pair (a direct check of what
        the attribute predictors estimate from latents).

    Returns:
      ``(outputs, sums)``: ``outputs`` per pair (source, target, success, status, steps,
      target_prob, l1, scores ``[n, A]``); ``sums = {"metrics": {...}, "attr": GlobalSums,
      ["desc": GlobalSums]}`` where only successful, real pairs enter the attribution.
    """
    k = num_classes
    z0 = jax.vmap(fns.encode)(x)
    x_rec = jax.vmap(fns.decode)(z0)
    res = attack_batch(
        fns.decode, fns.logits, z0, target, steps=steps, learning_rate=learning_rate, threshold=threshold, optimizer=optimizer, block=block
    )
    ok = res.success & mask
    scores = attr.local_scores(fns.predictor, z0, res.z)
    ones = jnp.ones(target.shape, jnp.float32)
    dval = metrics.denoised_validity(jax.vmap(fns.logits), res.x, target)
    sums = {
        "metrics": _metric_sums(res, x, x_rec, z0, source, target, mask, k, dval),
        "attr": attr.global_update(attr.global_init(k, len(fns.predictor.names)), scores, source, target, ones, ok),
    }
    if descriptors is not None:
        kind, st = descriptors
        d = desc.standardize(desc.compute_descriptors(res.x, kind), st) - desc.standardize(desc.compute_descriptors(x_rec, kind), st)
        sums["desc"] = attr.global_update(attr.global_init(k, d.shape[1]), d, source, target, ones, ok)
    outputs = {
        "source": source, "target": target, "success": res.success, "status": res.status, "steps": res.steps_taken,
        "target_prob": res.target_prob, "l1": metrics.l1(res.x, x), "scores": scores,
    }
    return outputs, sums


def pixel_chunk(
    logits: Callable,
    x: jax.Array,
    source: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    num_classes: int,
    steps: int,
    learning_rate: float,
    threshold: float,
    optimizer: str = "adam",
    block: int = 5,
) -> tuple[dict, dict]:
    """The pixel-space baseline on the same pairs: ``(outputs, {"metrics": sums})`` with the
    same metric sums as :func:`attack_chunk` (``latent_l2``/``l1_recon`` mean nothing here)."""
    res = attack_pixels_batch(logits, x, target, steps=steps, learning_rate=learning_rate, threshold=threshold, optimizer=optimizer, block=block)
    dval = metrics.denoised_validity(jax.vmap(logits), res.x, target)
    sums = {"metrics": _metric_sums(res, x, x, x, source, target, mask, num_classes, dval)}
    outputs = {"source": source, "target": target, "success": res.success, "status": res.status, "steps": res.steps_taken, "target_prob": res.target_prob}
    return outputs, sums


def as_explain_step(chunk_fn: Callable) -> Callable:
    """Adapt ``chunk_fn(x, source, target, mask) -> (outputs, sums)`` (e.g. a
    ``functools.partial`` of :func:`attack_chunk`) to :func:`cfjax.parallel.explain_dataset`'s
    ``(acc, batch, mask) -> (acc, outputs)`` with ``batch = {"x", "source", "target"}``."""

    def step(acc, batch, mask):
        outs, sums = chunk_fn(batch["x"], batch["source"], batch["target"], mask)
        return jax.tree_util.tree_map(jnp.add, acc, sums), outs

    return step


def make_pairs(labels: np.ndarray, num_classes: int, targets: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index, source, target) for every image and every other class (``"all"``), or
    towards one class (``"3"``; images of that class are skipped). Image-major order."""
    labels = np.asarray(labels)
    k = num_classes
    if targets == "all":
        img = np.repeat(np.arange(len(labels)), k - 1)
        tgt = ((labels[:, None] + np.arange(1, k)[None, :]) % k).reshape(-1)
    else:
        try:
            t = int(targets)
        except ValueError:
            raise bad_arg("targets", repr(targets), f"'all' or a class index in [0, {k - 1}]") from None
        if not 0 <= t < k:
            raise bad_arg("targets", repr(targets), f"'all' or a class index in [0, {k - 1}]")
        img = np.flatnonzero(labels != t)
        tgt = np.full(len(img), t)
    return img.astype(np.int64), labels[img].astype(np.int32), tgt.astype(np.int32)


def _summ(m: dict) -> dict:
    """Core metrics from the sums (host)."""
    n, s = float(m["n"]), float(m["success"])
    per_ok = lambda a: float(a) / s if s else float("nan")  # noqa: E731
    return {
        "n_counterfactuals": int(round(n)),
        "validity": s / n if n else float("nan"),
        "fail_rate": 1 - s / n if n else float("nan"),
        "mean_steps": per_ok(m["steps"]),
        "mean_steps_all": float(m["steps_all"]) / n if n else float("nan"),
        "l1": per_ok(m["l1"]),
        "l2": per_ok(m["l2"]),
        "latent_l2": per_ok(m["latent_l2"]),
        "l1_vs_reconstruction": per_ok(m["l1_recon"]),
        "target_prob_mean": float(m["prob"]) / n if n else float("nan"),
        "denoised_validity": per_ok(m["dval"]),
        "n_start_past_threshold": int(round(float(m["start_past"]))),
        "status_counts": {STATUS_NAMES[i]: int(round(float(c))) for i, c in enumerate(np.asarray(m["status"]))},
    }


def _digest(params) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        a = np.asarray(leaf)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def fit_predictor_for(train_images: np.ndarray, encode: Callable, kind: str, *, steps: int = 2000):
    """Encode the training images (VAE means), compute their descriptors, binarise them at the
    balanced median split and fit the attribute predictors.

    Returns:
      ``(predictor, standardizer, per-attribute training accuracy)``.
    """
    f_enc = jax.jit(jax.vmap(encode))
    lat = np.concatenate([np.asarray(f_enc(train_images[s : s + 1000])) for s in range(0, len(train_images), 1000)])
    raw = desc.compute_descriptors_np(train_images, kind)
    st = desc.fit_standardizer(raw)
    y = np.asarray(desc.binarize(raw, st))
    pred = attr.fit_attribute_predictor(lat, y, desc.descriptor_names(kind), steps=steps)
    return pred, st, attr.attribute_accuracy(pred, lat, y)


def run_attack_explanation(
    dataset: str,
    out_dir,
    config: AttackJobConfig | None = None,
    *,
    progress: bool = True,
    data_dir=None,
    models: zoo.Models | None = None,
) -> dict:
    """Run the whole attack job; returns the summary (also written to ``out_dir/summary.json``).

    Args:
      dataset: ``"mnist5k"``, ``"mnist"`` or ``"fashion_mnist"`` (descriptors: digits for the
        MNISTs, clothing for Fashion-MNIST).
      out_dir: output folder (layout in the module docstring); models are cached in
        ``out_dir/models`` (the ``cfjax demo`` layout) and reused on a second run.
      config: :class:`AttackJobConfig` (default: the defaults; ``smoke_config()`` for tests).
      progress: progress bars.
      data_dir: passed to :func:`cfjax.data.load`.
      models: pre-trained :class:`cfjax.zoo.Models` (skips ``zoo.get_models``).

    Returns:
      The summary dict (keys documented in BUILD_NOTES / issue 3).
    """
    cfg = config or AttackJobConfig()
    if not isinstance(cfg, AttackJobConfig):
        raise bad_arg("config", type(cfg).__name__, "an AttackJobConfig")
    if cfg.steps % cfg.record_every:
        raise bad_arg("record_every", cfg.record_every, f"a divisor of steps={cfg.steps}")
    if cfg.targets != "all" and not str(cfg.targets).isdigit():
        raise bad_arg("targets", repr(cfg.targets), "'all' or a class index")
    for name in ("steps", "pixel_steps", "batch_size", "record_every", "block"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise bad_arg(name, repr(v), "a positive integer")
    if cfg.limit is not None and (not isinstance(cfg.limit, int) or cfg.limit <= 0):
        raise bad_arg("limit", repr(cfg.limit), "a positive integer or None")
    out = check_writable_dir(out_dir, "out")
    t_start = time.perf_counter()
    # multi-host (after cfjax.parallel.initialize_distributed): process 0 trains/loads the models
    # first, the others then load them; every process attacks only its slice of the pairs;
    # the accumulators are global, and only process 0 writes the summary, figures and report.
    lead = jax.process_index() == 0
    if models is None:
        models = parallel.process0_first(lambda: zoo.get_models(
            dataset, out / "models", config=zoo.SMOKE if cfg.smoke else None, limit=500 if cfg.smoke else None, data_dir=data_dir,
            progress=progress and lead,
        ))
    t_models = time.perf_counter() - t_start
    clf = bind_classifier(models.classifier.module, models.classifier.params)
    vae = bind_vae(models.vae.module, models.vae.params)
    k = models.test.num_classes
    kind = "clothing" if "fashion" in dataset else "digits"
    t_pred = time.perf_counter()
    pred, st, pred_acc = fit_predictor_for(models.train.images, vae.encode, kind, steps=300 if cfg.smoke else 2000)
    t_pred = time.perf_counter() - t_pred
    test = models.test
    n_img = len(test) if cfg.limit is None else min(cfg.limit, len(test))
    images = np.asarray(test.images[:n_img])
    labels = np.asarray(test.labels[:n_img])
    img_idx, src, tgt = make_pairs(labels, k, cfg.targets)
    n_dev = jax.device_count()
    batch = -(-cfg.batch_size // n_dev) * n_dev
    fns = AttackFns(vae.encode, vae.decode, clf.logits, pred)
    digest = {"clf": _digest(models.classifier.params), "vae": _digest(models.vae.params)}
    mine = parallel.process_slice(len(img_idx))  # this process's pairs (all of them with one process)
    data = {"x": parallel.Rows(images, img_idx[mine]), "source": src[mine], "target": tgt[mine]}

    lat_chunk = functools.partial(
        attack_chunk, fns, num_classes=k, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold,
        optimizer=cfg.optimizer, block=cfg.block, descriptors=(kind, st),
    )
    init = {"metrics": _metric_init(k), "attr": attr.global_init(k, len(pred.names)), "desc": attr.global_init(k, len(pred.names))}
    run_cfg = {"method": "attack", "dataset": dataset, "n": n_img, "cfg": dataclasses.asdict(cfg), "models": digest}
    resumed = (out / "state" / "latent" / "accumulators").is_dir()
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(
        as_explain_step(lat_chunk), init, data, chunk_size=batch, checkpoint_dir=out / "state" / "latent",
        checkpoint_every=cfg.checkpoint_every, run_config=run_cfg, outputs_dir=out / "per_example" / "latent",
        progress=progress, desc="latent attack",
    )
    wall = time.perf_counter() - t0
    lat = _summ(acc["metrics"])
    glob = attr.global_finalize(attr.GlobalSums(*acc["attr"]), pred.names, test.class_names)
    dglob = attr.global_finalize(attr.GlobalSums(*acc["desc"]), pred.names, test.class_names)

    pix, pix_pair_val, pwall = None, None, 0.0
    if cfg.pixel_baseline:
        n_pix_img = n_img if cfg.pixel_limit is None else min(cfg.pixel_limit, n_img)
        sel = np.flatnonzero(img_idx < n_pix_img)
        sel = sel[parallel.process_slice(len(sel))]
        pdata = {"x": parallel.Rows(images, img_idx[sel]), "source": src[sel], "target": tgt[sel]}
        pchunk = functools.partial(
            pixel_chunk, clf.logits, num_classes=k, steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate,
            threshold=cfg.threshold, optimizer=cfg.optimizer, block=cfg.block,
        )
        pinit = {"metrics": _metric_init(k)}
        t1 = time.perf_counter()
        pacc = parallel.explain_dataset(
            as_explain_step(pchunk), pinit, pdata, chunk_size=batch, checkpoint_dir=out / "state" / "pixel",
            checkpoint_every=cfg.checkpoint_every, run_config={**run_cfg, "pixel": True, "pixel_n": n_pix_img},
            progress=progress, desc="pixel attack",
        )
        pwall = time.perf_counter() - t1
        p = _summ(pacc["metrics"])
        for key in ("latent_l2", "l1_vs_reconstruction"):
            p.pop(key)
        pix = {**p, "n_examples": n_pix_img, "wall_s": pwall, "cf_per_s": None if resumed else p["n_counterfactuals"] / pwall,
               "steps_budget": cfg.pixel_steps, "learning_rate": cfg.pixel_learning_rate}
        pix_pair_val = _pair_rates(pacc["metrics"], k)
        pix["pairs"] = pair_metrics(pacc["metrics"], test.class_names)

    summary = {
        "method": "attack",
        "dataset": dataset,
        "n_examples": n_img,
        "n_counterfactuals": lat["n_counterfactuals"],
        "n_devices": n_dev,
        "n_processes": jax.process_count(),
        "validity": lat["validity"],
        "mean_steps": lat["mean_steps"],
        "l1": lat["l1"],
        "l2": lat["l2"],
        "latent_l2": lat["latent_l2"],
        "target_prob_mean": lat["target_prob_mean"],
        "wall_s": wall,
        "cf_per_s": None if resumed else lat["n_counterfactuals"] / wall,  # a resumed run timed only what was left
        "global_attribution": glob["overall"],
        "baseline_pixel": pix,
        "global_attribution_pairs": glob["pairs"],
        "pairs": pair_metrics(acc["metrics"], test.class_names),
        "fail_rate": lat["fail_rate"],
        "status_counts": lat["status_counts"],
        "classifier_accuracy": models.classifier.metrics.get("accuracy"),
        "vae_mse": models.vae.metrics.get("mse"),
        "mean_steps_all": lat["mean_steps_all"],
        "n_start_past_threshold": lat["n_start_past_threshold"],
        "l1_vs_reconstruction": lat["l1_vs_reconstruction"],
        "denoised_validity": lat["denoised_validity"],
        "descriptor_change": dglob["overall"],
        "descriptor_change_pairs": dglob["pairs"],
        "attribute_predictor_accuracy": pred_acc,
        "attributes": list(pred.names),
        "steps_budget": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "threshold": cfg.threshold,
        "optimizer": cfg.optimizer,
        "batch_size": batch,
        "targets": cfg.targets,
        "resumed": resumed,
        "models_wall_s": t_models,
        "backend": jax.default_backend(),
        "total_wall_s": None,
    }
    if not lead:
        return summary
    t_fig = time.perf_counter()
    figs = _figures(out, models, clf, vae, pred, glob, dglob, cfg, _pair_rates(acc["metrics"], k), pix_pair_val, n_img)
    summary["phase_wall_s"] = {"models": t_models, "attribute_predictor": t_pred, "latent_attack": wall, "pixel_attack": pwall,
                               "figures": time.perf_counter() - t_fig}
    summary["total_wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "summary.json", summary)
    report.write_report(out, summary, figs, title=f"Counterfactual Attacks on {dataset}")
    if progress:
        pv = f" (pixel {pix['validity']:.3f})" if pix else ""
        pl = f" (pixel {pix['l1']:.3f})" if pix else ""
        rate = "resumed" if resumed else f"{summary['cf_per_s']:.1f} cf/s"
        print(f"validity {summary['validity']:.3f}{pv}, mean steps {summary['mean_steps']:.1f}, L1 {summary['l1']:.3f}{pl}, "
              f"{rate}; report: {out / 'report.html'}")
    return summary


def pair_metrics(m: dict, class_names) -> dict:
    """Per (source, target) pair: ``"s->t" -> {n, validity, mean_steps, l1, l2,
    denoised_validity}`` from the metric sums (distances/steps/D.Val over successful
    counterfactuals, like the overall scalars). Pairs with no example are left out."""
    k = len(class_names)
    g = lambda key: np.asarray(m[key], np.float64).reshape(k, k)  # noqa: E731
    n, s = g("pair_n"), g("pair_success")
    out = {}
    for a in range(k):
        for b in range(k):
            if n[a, b] <= 0:
                continue
            per_ok = lambda key: float(g(key)[a, b] / s[a, b]) if s[a, b] else None  # noqa: E731,B023
            out[f"{class_names[a]}->{class_names[b]}"] = {
                "n": int(round(n[a, b])), "validity": float(s[a, b] / n[a, b]), "mean_steps": per_ok("pair_steps"),
                "l1": per_ok("pair_l1"), "l2": per_ok("pair_l2"), "denoised_validity": per_ok("pair_dval"),
            }
    return out


def _pair_rates(m: dict, k: int) -> np.ndarray:
    n = np.asarray(m["pair_n"], np.float64).reshape(k, k)
    s = np.asarray(m["pair_success"], np.float64).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _figures(out: Path, models, clf, vae, pred, glob, dglob, cfg: AttackJobConfig, pair_val, pix_val, n_img: int) -> list:
    """The report's figures: one example per paper pair (an image the classifier gets right)."""
    figdir = out / "figures"
    figs = []
    test = models.test
    names = test.class_names
    k = test.num_classes
    f_logits = jax.jit(jax.vmap(clf.logits))
    f_rec = jax.jit(lambda x: jax.vmap(vae.decode)(jax.vmap(vae.encode)(x)))
    imgs, labels = test.images[:n_img], test.labels[:n_img]
    preds = np.concatenate([np.argmax(np.asarray(f_logits(imgs[s : s + 500])), -1) for s in range(0, n_img, 500)])
    rpreds = np.concatenate([np.argmax(np.asarray(f_logits(f_rec(imgs[s : s + 500]))), -1) for s in range(0, n_img, 500)])
    pairs = [(s, t) for s, t in cfg.figure_pairs if s < k and t < k and s != t and np.any(labels == s)]
    if not pairs:
        s0 = int(labels[0])
        pairs = [(s0, (s0 + 1) % k)]
    idx = []
    for s, _ in pairs:  # an image whose original AND reconstruction the classifier puts in class s
        good = np.flatnonzero((labels == s) & (preds == s) & (rpreds == s))
        idx.append(int(good[0]) if len(good) else int(np.flatnonzero(labels == s)[0]))
    x = jnp.asarray(imgs[idx])
    tg = jnp.asarray([t for _, t in pairs], jnp.int32)
    z0 = jax.vmap(vae.encode)(x)
    lat = attack_batch(vae.decode, clf.logits, z0, tg, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold,
                           optimizer=cfg.optimizer, record_every=cfg.record_every)
    pix = attack_pixels_batch(clf.logits, x, tg, steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate, threshold=cfg.threshold,
                                  optimizer=cfg.optimizer)
    titles = [f"{names[s]}->{names[t]}" for s, t in pairs]
    recon = jax.vmap(vae.decode)(z0)
    report.grid_figure(x, recon, lat.x, figdir / "grid.png", titles)
    figs.append(("Counterfactuals", "figures/grid.png", "original | VAE reconstruction | latent counterfactual | difference (counterfactual - reconstruction; red = ink added)"))
    report.progression_strip(lat.trajectory, lat.trajectory_probs, figdir / "progression.png", titles, every=cfg.record_every, steps_taken=lat.steps_taken)
    figs.append(("Progression", "figures/progression.png", f"decoded latent every {cfg.record_every} steps with the target probability; frozen once past {cfg.threshold}"))
    report.side_by_side(x, lat, pix, figdir / "latent_vs_pixel.png", titles)
    figs.append(("Latent vs pixel attack", "figures/latent_vs_pixel.png", "same images and targets: the pixel attack flips the class with scattered adversarial noise; the latent attack redraws the digit"))
    report.pair_heatmap(pair_val, names, figdir / "validity_pairs.png", "latent attack validity per pair")
    figs.append(("Validity per pair", "figures/validity_pairs.png", f"fraction of counterfactuals reaching p_target >= {cfg.threshold} within {cfg.steps} steps"))
    if pix_val is not None:
        report.pair_heatmap(pix_val, names, figdir / "validity_pairs_pixel.png", "pixel attack validity per pair")
        figs.append(("Validity per pair (pixel baseline)", "figures/validity_pairs_pixel.png", f"within {cfg.pixel_steps} steps"))
    report.attribution_bars(glob["overall"], figdir / "attribution_overall.png", "global attribution, all pairs")
    figs.append(("Global attribution", "figures/attribution_overall.png", "mean change of each attribute's predicted probability (from the latent predictors) over all successful counterfactuals, +- std"))
    keys = [f"{names[s]}->{names[t]}" for s, t in pairs]
    report.attribution_bars(glob, figdir / "attribution_pairs.png", "global attribution per pair", pairs=keys)
    figs.append(("Global attribution per pair", "figures/attribution_pairs.png", "the paper's pairs; blue: the attribute rises towards the target class"))
    report.attribution_bars(dglob, figdir / "descriptor_change_pairs.png", "measured descriptor change per pair", pairs=keys)
    figs.append(("Measured descriptor change per pair", "figures/descriptor_change_pairs.png", "standardised descriptor of the counterfactual minus that of the reconstruction, measured on the images (a check of the latent predictors)"))
    return figs


@subcommand("explain", "explain a classifier: --method attack (latent attacks + global attribution) or mirror")
def _explain_parser(p):
    d = AttackJobConfig()
    p.add_argument("--method", choices=["attack", "mirror"], default="attack")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=None, help=f"attack step budget (default {d.steps}; the paper: 1000)")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {d.learning_rate})")
    p.add_argument("--threshold", type=float, default=None, help=f"target probability to reach (default {d.threshold})")
    p.add_argument("--optimizer", choices=["adam", "sgd-normalized"], default=None)
    p.add_argument("--pixel-steps", type=int, default=None, help=f"pixel baseline budget (default {d.pixel_steps})")
    p.add_argument("--pixel-lr", type=float, default=None, help=f"pixel baseline learning rate (default {d.pixel_learning_rate})")
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel baseline")
    p.add_argument("--pixel-limit", type=int, default=None, help="pixel baseline on the first N images only")
    p.add_argument("--limit", type=int, default=None, help="attack only the first N test images")
    p.add_argument("--batch-size", type=int, default=None, help=f"counterfactuals per jitted step (default {d.batch_size})")
    p.add_argument("--targets", default=None, help="'all' (every other class, default) or one class index")
    p.add_argument("--record-every", type=int, default=None, help=f"progression figure spacing (default {d.record_every})")
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets: runs in seconds")
    try:
        from cfjax.jobs import mirror as _mirror

        add_args = getattr(_mirror, "add_mirror_args", None)
        if add_args is not None:
            add_args(p)
    except ImportError:
        _mirror = None

    def run(a):
        if a.method == "mirror":
            if _mirror is None or not hasattr(_mirror, "run_mirror_cli"):
                raise bad_arg("--method", "'mirror'", "an installed cfjax.jobs.mirror")
            return _mirror.run_mirror_cli(a)
        cfg = AttackJobConfig.smoke_config() if a.smoke else AttackJobConfig()
        over = dict(
            steps=a.steps, learning_rate=a.lr, threshold=a.threshold, optimizer=a.optimizer, pixel_steps=a.pixel_steps,
            pixel_learning_rate=a.pixel_lr, limit=a.limit, batch_size=a.batch_size, targets=a.targets,
            record_every=a.record_every, pixel_limit=a.pixel_limit,
        )
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        if a.no_pixel:
            cfg = dataclasses.replace(cfg, pixel_baseline=False)
        for name in ("steps", "pixel_steps", "batch_size", "record_every"):
            v = getattr(cfg, name)
            if v <= 0:
                raise bad_arg(f"--{name.replace('_', '-')}", v, "a positive integer")
        if a.limit is not None and a.limit <= 0:
            raise bad_arg("--limit", a.limit, "a positive integer")
        if cfg.steps % cfg.record_every:
            import math

            cfg = dataclasses.replace(cfg, record_every=math.gcd(cfg.steps, cfg.record_every))
        run_attack_explanation(a.data, a.out, cfg, data_dir=a.data_dir)

    return run
