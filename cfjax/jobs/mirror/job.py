"""Mirror-CFE as a :class:`~cfjax.jobs.skeleton.Method` (:class:`MirrorJob`): one class pair
(``cfjax explain mirror``) or many pairs in ONE streamed, sharded, resumable pass
(``cfjax global mirror``), and the entry points that run it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax._checks import parse_pairs
from cfjax.errors import bad_arg
from cfjax.eval.lpips import lpips_alex_fn
from cfjax.jobs import report
from cfjax.jobs.mirror.config import MIRROR_PAIRS, MirrorJobConfig, resolve_decoder_pairs
from cfjax.jobs.mirror.figures import global_figures, pair_figures
from cfjax.jobs.mirror.models import (MirrorModels, _inception, decoder_dir, get_decoder, load_models, load_oracle,
                                      real_target_ceilings)
from cfjax.jobs.mirror.summary import common_fields, decoder_record, first_cf_rule, pair_references, trust_fields
from cfjax.jobs.mirror.rows import BACKBONE_LABEL, PER_EXAMPLE, classifier_backbone, mirror_evaluators, mirror_rows, rows_options
from cfjax.jobs.skeleton import Context, Pass, PassResult, batched_predict, models_dir_for, run_job
from cfjax.methods import mirror as mr


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
        prog = ctx.progress and ctx.lead
        train, test, clf_t, bb_t, root = load_models(ctx.dataset, models_dir_for(ctx.out, self.models_dir), cfg, data_dir=ctx.data_dir, progress=prog)
        # the oracle before the decoder: an oracle cache written for another config is refused in
        # seconds, not after an hour of decoder training
        oracle = load_oracle(train, test, root, cfg, prog) if cfg.oracle else None
        dec, dec_s = get_decoder(clf_t, train, test, root, cfg.decoder, prog, cfg.decoder_warm_start)
        preds = batched_predict(jax.jit(lambda x: jnp.argmax(clf_t.logits_batch(x), -1)), test.images)
        return MirrorModels(train, test, clf_t, bb_t, dec, dec_s, preds, oracle)

    def parts(self, ctx: Context, models: MirrorModels):
        """The bound classifier, single-example decoder, backbone and k grid."""
        clf = models.classifier.fns
        decode = mr.bind_mirror_decoder(models.decoder, clf.W)  # carries the path and CSP bounds it was trained with
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
        # all rows: the skeleton takes this shard's/process's part; "row" seeds each row's bootstrap weights
        data = {"x": parallel.Rows(test.images, idx), "source": src, "target": tgt, "row": np.arange(len(idx), dtype=np.int32)}
        d = int(np.asarray(backbone.features(jnp.asarray(test.images[:1]))).shape[-1])
        job = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("figures", "n_figure_examples", "figure_pairs", "checkpoint_every")}
        run_cfg = {"method": "mirror", "dataset": ctx.dataset, "pairs": [list(p) for p in self.pairs(ctx.dataset, test.num_classes)], "job": job,
                   "clf": models.classifier.digest, "decoder": ckpt.tree_digest(models.decoder.params), "n": len(idx)}

        orc = models.oracle
        oracle_logits = None if orc is None else (lambda x: orc.module.apply(orc.params, x))
        lpips_fn = lpips_alex_fn(cfg.lpips_weights, enabled=cfg.lpips_alex)
        inc = _inception(cfg)
        fid_features = None if inc is None else inc.features

        def rows_fn(batch, mask):
            return mirror_rows(clf, decode, backbone, batch["x"], batch["source"], batch["target"], mask, ks=ks, oracle_logits=oracle_logits, lpips_fn=lpips_fn,
                               fid_features=fid_features, max_decode=cfg.max_decode, row_id=batch["row"], **rows_options(cfg))

        desc = f"mirror {src[0]}->{tgt[0]}" if self.per_pair else "mirror (all pairs)"
        return [Pass("mirror", rows_fn, mirror_evaluators(test.num_classes, test.class_names, len(ks), d, oracle=orc is not None, lpips_alex=lpips_fn is not None,
                                       inception=inc is not None), data,
                     cfg.chunk_size, run_cfg, outputs=PER_EXAMPLE, desc=desc)]

    def summarize(self, ctx: Context, models: MirrorModels, results: dict[str, PassResult]) -> dict:
        cfg, test = ctx.config, models.test
        r = results["mirror"]
        idx, src, tgt, selection = self.rows(ctx, models)
        res, cf_m, inc_m = common_fields(dict(r.fields), cfg, models)
        head = {"method": "mirror", "preset": cfg.preset, "dataset": ctx.dataset}
        ceil = real_target_ceilings(test, models.classifier, models.oracle, sorted({int(v) for v in tgt}), cfg.blur_sigma)
        if not self.per_pair:
            res.pop("curves")
            res.pop("residual_histogram")
            return {
                **head, "pairs_requested": [list(p) for p in self.pairs(ctx.dataset, test.num_classes)],
                "n_examples": int(len(np.unique(idx))), "selection": selection, "n_devices": jax.device_count(),
                "n_processes": jax.process_count(), **res, "wall_s": r.wall_s,
                "cf_per_s": None if r.resumed else res["n_counterfactuals"] / r.wall_s, "resumed": r.resumed,
                "solver": cfg.solver, "maxiter": cfg.maxiter, "chunk_size": r.chunk_size,
                "classifier_accuracy": models.classifier.metrics.get("accuracy"), "classifier": models.classifier.source,
                "decoder_load_or_train_s": models.decoder_wall_s,
                "decoder": decoder_record(cfg, models), "first_cf_rule": first_cf_rule(cfg),
                "real_target_ceiling": ceil, **trust_fields(res, models, tgt, ceil),
                "backend": jax.default_backend(), "total_wall_s": None,
            }
        s, t = int(src[0]), int(tgt[0])
        _, _, backbone, _ = self.parts(ctx, models)
        names = test.class_names
        for key in ("pairs", "residual_histogram", "pair_curves"):
            res.pop(key)
        return {
            **head, "source": s, "target": t, "pair": f"{names[s]}->{names[t]}",
            "n_examples": int(len(idx)), "selection": selection, "n_devices": jax.device_count(), **res, "wall_s": r.wall_s,
            "cf_per_s": res["n_counterfactuals"] / r.wall_s if r.wall_s > 0 else float("nan"),
            **pair_references(test, t, cf_m, inc_m, backbone, models, cfg),
            "perceptual_backbone": BACKBONE_LABEL, "solver": cfg.solver, "maxiter": cfg.maxiter, "tol": cfg.tol,
            "k_grid": {"step": cfg.k_step, "first_cf_search": "k > 0.5", "cf_threshold": cfg.cf_threshold}, "first_cf_rule": first_cf_rule(cfg),
            "compose": cfg.compose, "csp_rho": {"rho_l": cfg.decoder.rho_l, "rho_u": cfg.decoder.rho_u}, "decoder": decoder_record(cfg, models),
            "classifier_accuracy": models.classifier.metrics.get("accuracy"), "classifier": models.classifier.source, "backbone_accuracy": models.backbone.metrics.get("accuracy"),
            "backbone_epochs": models.backbone.config.get("train", {}).get("epochs"), "total_wall_s": None,
            **trust_fields(res, models, tgt, ceil),
        }

    def figures(self, ctx: Context, models: MirrorModels, summary: dict) -> list:
        if not ctx.config.figures:
            return []
        if not self.per_pair:
            clf, decode, backbone, ks = self.parts(ctx, models)
            idx, src, tgt, _ = self.rows(ctx, models)
            return global_figures(ctx.out, models.test, clf, decode, backbone, ks, ctx.config, (idx, src, tgt), summary)
        clf, decode, backbone, ks = self.parts(ctx, models)
        idx, src, tgt, _ = self.rows(ctx, models)
        n = min(ctx.config.n_figure_examples, len(idx))
        data = {"x": models.test.images[idx[:n]], "source": src[:n], "target": tgt[:n]}
        return pair_figures(ctx.out, models.test, models.preds, clf, decode, backbone, ks, ctx.config, data, summary, models.decoder.history, ctx.dataset)

    def headline(self, ctx: Context, summary: dict) -> list:
        rate = summary.get("cf_per_s")
        pair = [("pair", summary["pair"])] if self.per_pair else [("pairs", len(summary.get("pairs_requested") or ()))]
        extra = [("D.Val of real targets", summary.get("denoised_validity_real_target")),
                 ("D.Val of real targets the classifier recognises", summary.get("denoised_validity_real_target_given_valid")),
                 ("FID (domain backbone)", summary.get("fid_domain")), ("FID (Inception-v3)", summary.get("fid_inception"))] if self.per_pair else []
        fa = summary.get("faithfulness", {})
        quart = [summary.get(f"first_cf_k_{q}") for q in ("q25", "q50", "q75")]
        return [
            ("method", "Mirror-CFE"), ("preset", summary.get("preset")), ("data", summary["dataset"]), *pair,
            ("classifier accuracy", summary.get("classifier_accuracy")),
            ("counterfactuals", summary["n_counterfactuals"]), ("validity", summary["validity"]),
            ("denoised validity", summary.get("denoised_validity")), ("oracle validity", summary.get("oracle_validity")),
            ("p gap at CF, |decoded - path|", fa.get("target_prob_gap_at_cf")),
            ("p gap at CF, decoded - path (signed)", fa.get("target_prob_gap_signed_at_cf")),
            ("p gap along the path (mean |.|)", fa.get("target_prob_gap_mean")),
            ("feature L1 at CF (relative to ||z_k||_1)", fa.get("feature_l1_rel_at_cf")),
            ("L1 [0,1]", summary.get("l1")), ("LPIPS (AlexNet)", summary.get("lpips_alex")), ("first CF k (mean)", summary.get("first_cf_k_mean")),
            ("first CF k (quartiles)", None if None in quart else " / ".join(f"{v:.3f}" for v in quart)),
            ("converged", summary.get("converged_rate")), *extra, ("throughput", f"{report.fmt_number(rate)} cf/s" if rate else None),
        ]

    def title(self, ctx: Context, summary: dict) -> str:
        preset = f" (preset {summary.get('preset')})"
        if self.per_pair:
            return f"Mirror-CFE on {ctx.dataset}: {summary['pair']}{preset}"
        return f"Mirror-CFE on {ctx.dataset}: {len(summary['pairs_requested'])} pairs in one pass{preset}"



def run_mirror_explanation(dataset: str, out_dir, *, source: int, target: int, config: MirrorJobConfig | None = None, models_dir=None,
                           data_dir=None, progress: bool = True, overwrite: bool = False) -> dict:
    """Mirror-CFE for every test image of class ``source`` that the classifier predicts as
    ``source``, towards ``target``; writes ``summary.json``, figures and ``report.html`` to
    ``out_dir`` and returns the summary (``overwrite``: replace another run's outputs there)."""
    cfg = resolve_decoder_pairs(config or MirrorJobConfig(), dataset, ((source, target),))
    s = run_job(MirrorJob(((source, target),), per_pair=True, models_dir=models_dir), dataset, out_dir, cfg, data_dir=data_dir, progress=progress,
                overwrite=overwrite)
    if progress and jax.process_index() == 0:
        print(f"mirror {s['pair']}: validity {s['validity']:.3f}, denoised {s['denoised_validity']:.3f}, L1 {s['l1']:.3f}, "
              f"first k {s['first_cf_k_mean']:.3f}, converged {s['converged_rate']:.3f}, {s['cf_per_s']:.1f} cf/s; "
              f"report: {Path(out_dir) / 'report.html'}")
    return s


def run_mirror_global(dataset: str, out_dir, *, config: MirrorJobConfig | None = None, pairs=None, models_dir=None, data_dir=None,
                      progress: bool = True, pairs_arg: str = "pairs", shard: tuple[int, int] | None = None, merge=None,
                      shard_meta: dict | None = None, overwrite: bool = False) -> dict:
    """Mirror-CFE over many class pairs in one pass: every test image the classifier gets right,
    towards every target of its class's listed pairs, streamed through ONE compiled, sharded,
    resumable step; multi-host after :func:`cfjax.parallel.initialize_distributed` (each
    process takes its slice of the rows, process 0 writes). Uses the dataset's single decoder.

    Args:
      pairs: ``None`` (the paper's pairs for the dataset, else all), ``"all"``, ``"S,T;S,T"`` or
        a sequence of ``(source, target)``.
      shard, merge, shard_meta: compute one shard ``(i, n)`` of the rows (returns the shard
        record), or merge the shards' folders into the summary (:func:`cfjax.jobs.skeleton.run_job`).
      overwrite: replace another run's outputs in ``out_dir`` instead of refusing.

    FID is per target class and is left to the per-pair job.
    """
    cfg = config or MirrorJobConfig()
    if cfg.decoder.pairs is None and cfg.decoder_pairs == "auto":
        from cfjax.data import class_names

        explained = MirrorJob(pairs, per_pair=False, pairs_arg=pairs_arg).pairs(dataset, len(class_names(dataset)))
        cfg = resolve_decoder_pairs(cfg, dataset, explained)
    s = run_job(MirrorJob(pairs, per_pair=False, models_dir=models_dir, pairs_arg=pairs_arg), dataset, out_dir, cfg, data_dir=data_dir,
                progress=progress, shard=shard, merge=merge, shard_meta=shard_meta, overwrite=overwrite)
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
    train, test, clf_t, _, root = load_models(dataset, models_dir_for(out, models_dir or None), config, data_dir=data_dir, progress=progress, backbone=False)
    d, s_ = get_decoder(clf_t, train, test, root, config.decoder, progress, config.decoder_warm_start)
    return {"data": dataset, "decoder_dir": str(decoder_dir(root, config.decoder)), "wall_s": round(s_, 1), **d.metrics}
