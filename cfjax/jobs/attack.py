"""The Counterfactual Attacks job: models -> attribute predictors -> whole-test-split attack
(streamed, sharded) -> global explanation, pixel baseline, figures, summary.json, report.html.

CLI: ``cfjax explain --method attack --data NAME --out DIR [...]`` (``--method mirror`` is
routed to :mod:`cfjax.jobs.mirror`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import attack as atk
from cfjax import attribution as attr
from cfjax import metrics, parallel, report, zoo
from cfjax.cli import subcommand
from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.io import atomic_write_json, check_writable_dir
from cfjax.models import bind_classifier, bind_vae

PAPER_PAIRS = ((4, 9), (8, 9), (1, 7), (9, 7), (5, 6), (0, 8), (3, 2))


@dataclasses.dataclass(frozen=True)
class AttackJobConfig:
    """Options of the attack job (``smoke()`` runs in seconds)."""

    steps: int = 200
    learning_rate: float = 0.1
    threshold: float = 0.5
    optimizer: str = "adam"
    pixel_steps: int = 200
    pixel_learning_rate: float = 0.01
    chunk_size: int = 64
    """Images per sharded step (each expands to K-1 counterfactuals)."""
    limit: int | None = None
    """Cap the number of test images (None: the whole test split)."""
    record_every: int = 25
    checkpoint_every: int = 5
    figure_pairs: tuple = PAPER_PAIRS
    seed: int = 0
    smoke: bool = False

    @classmethod
    def smoke_config(cls) -> "AttackJobConfig":
        return cls(steps=20, pixel_steps=20, chunk_size=16, limit=32, record_every=5, smoke=True)


def _metric_init(k: int) -> dict:
    z = lambda *s: jnp.zeros(s, jnp.float32)  # noqa: E731
    return {"n": z(), "success": z(), "steps": z(), "l1": z(), "l2": z(), "latent_l2": z(), "prob": z(), "dval": z(),
            "status": z(4), "pair_n": z(k * k), "pair_success": z(k * k)}


def _metric_update(m, res: atk.AttackResult, x_ref, z_ref, source, target, mask, k, dval):
    w = mask.astype(jnp.float32)
    ok = (res.success & mask).astype(jnp.float32)
    slot = source * k + target
    return {
        "n": m["n"] + w.sum(),
        "success": m["success"] + ok.sum(),
        "steps": m["steps"] + jnp.sum(ok * res.steps_taken),
        "l1": m["l1"] + jnp.sum(ok * metrics.l1(res.x, x_ref)),
        "l2": m["l2"] + jnp.sum(ok * metrics.l2(res.x, x_ref)),
        "latent_l2": m["latent_l2"] + jnp.sum(ok * jnp.sqrt(jnp.sum((res.z - z_ref) ** 2, axis=tuple(range(1, res.z.ndim))))),
        "prob": m["prob"] + jnp.sum(w * res.target_prob),
        "dval": m["dval"] + jnp.sum(ok * dval),
        "status": m["status"] + jax.nn.one_hot(res.status, 4).T @ w,
        "pair_n": m["pair_n"] + jax.nn.one_hot(slot, k * k).T @ w,
        "pair_success": m["pair_success"] + jax.nn.one_hot(slot, k * k).T @ ok,
    }


def make_attack_step(clf, vae, pred: attr.AttributePredictor, st: desc.Standardizer, desc_kind: str, k: int, cfg: AttackJobConfig):
    """The pure per-chunk step for :func:`cfjax.parallel.explain_dataset`.

    ``batch = {"x": [n, H, W, C], "y": [n]}``; every image is attacked towards each of the other
    ``k - 1`` classes, in latent space and (baseline) in pixel space.
    """
    latent_kw = dict(steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold, optimizer=cfg.optimizer)
    pixel_kw = dict(steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate, threshold=cfg.threshold, optimizer=cfg.optimizer)
    blogits = jax.vmap(clf.logits)

    def step(acc, batch, mask):
        x, y = batch["x"], batch["y"]
        n = x.shape[0]
        z0 = jax.vmap(vae.encode)(x)
        tgt = (y[:, None] + jnp.arange(1, k)[None, :]) % k  # [n, k-1]
        rep = lambda a: jnp.repeat(a, k - 1, axis=0)  # noqa: E731
        src, tgt, m = rep(y), tgt.reshape(-1), rep(mask)
        xs, zs = rep(x), rep(z0)
        lat = jax.vmap(lambda z, t: atk.attack(vae.decode, clf.logits, z, t, **latent_kw))(zs, tgt)
        pix = jax.vmap(lambda xx, t: atk.attack_pixels(clf.logits, xx, t, **pixel_kw))(xs, tgt)
        recon = rep(jax.vmap(vae.decode)(z0))
        ok = lat.success & m
        scores = attr.local_scores(pred, zs, lat.z)
        ones = jnp.ones(n * (k - 1))
        d_cf = desc.standardize(desc.compute_descriptors(lat.x, desc_kind), st)
        d_rec = desc.standardize(desc.compute_descriptors(recon, desc_kind), st)
        dv_l = metrics.denoised_validity(blogits, lat.x, tgt)
        dv_p = metrics.denoised_validity(blogits, pix.x, tgt)
        acc = {
            "attr": attr.global_update(acc["attr"], scores, src, tgt, ones, ok),
            "desc": attr.global_update(acc["desc"], d_cf - d_rec, src, tgt, ones, ok),
            "latent": _metric_update(acc["latent"], lat, xs, zs, src, tgt, m, k, dv_l),
            "latent_vs_recon": _metric_update(_metric_init(k), lat, recon, zs, src, tgt, m, k, dv_l)["l1"] + acc["latent_vs_recon"],
            "pixel": _metric_update(acc["pixel"], pix, xs, xs, src, tgt, m, k, dv_p),
        }
        outs = {"source": src.reshape(n, k - 1), "target": tgt.reshape(n, k - 1), "success": lat.success.reshape(n, k - 1),
                "steps": lat.steps_taken.reshape(n, k - 1), "pixel_success": pix.success.reshape(n, k - 1)}
        return acc, outs

    return step


def _summ(m: dict, with_latent: bool) -> dict:
    n, s = float(m["n"]), float(m["success"])
    div = lambda a: float(a) / s if s else float("nan")  # noqa: E731
    out = {
        "n_counterfactuals": int(n),
        "validity": s / n if n else float("nan"),
        "fail_rate": 1 - s / n if n else float("nan"),
        "mean_steps": div(m["steps"]),
        "l1": div(m["l1"]),
        "l2": div(m["l2"]),
        "target_prob_mean": float(m["prob"]) / n if n else float("nan"),
        "denoised_validity": div(m["dval"]),
        "status_counts": {atk.STATUS_NAMES[i]: int(c) for i, c in enumerate(np.asarray(m["status"]))},
    }
    if with_latent:
        out["latent_l2"] = div(m["latent_l2"])
    return out


def fit_predictor_for(models: zoo.Models, enc, desc_kind: str, progress: bool = True):
    """Encode the training images, compute/binarise their descriptors, fit the predictors."""
    f_enc = jax.jit(jax.vmap(enc))
    imgs = models.train.images
    lat = np.concatenate([np.asarray(f_enc(imgs[s : s + 1000])) for s in range(0, len(imgs), 1000)])
    raw = desc.compute_descriptors_np(imgs, desc_kind)
    st = desc.fit_standardizer(raw)
    names = desc.descriptor_names(desc_kind)
    pred = attr.fit_attribute_predictor(lat, np.asarray(desc.binarize(raw, st)), names)
    acc = attr.attribute_accuracy(pred, lat, np.asarray(desc.binarize(raw, st)))
    return pred, st, acc


def run_attack_explanation(dataset: str, out_dir, cfg: AttackJobConfig | None = None, *, progress: bool = True, data_dir=None) -> dict:
    """Run the whole attack job; returns the summary (also written to ``out_dir/summary.json``)."""
    cfg = cfg or AttackJobConfig()
    out = check_writable_dir(out_dir, "out")
    t_start = time.perf_counter()
    models = zoo.get_models(dataset, out / "models", config=zoo.SMOKE if cfg.smoke else None, limit=500 if cfg.smoke else None, data_dir=data_dir, progress=progress)
    clf = bind_classifier(models.classifier.module, models.classifier.params)
    vae = bind_vae(models.vae.module, models.vae.params)
    k = models.train.num_classes
    desc_kind = "clothing" if dataset == "fashion_mnist" else "digits"
    pred, st, pred_acc = fit_predictor_for(models, vae.encode, desc_kind, progress)
    test = models.test if cfg.limit is None else models.test._replace(images=models.test.images[: cfg.limit], labels=models.test.labels[: cfg.limit])
    n_dev = jax.device_count()
    chunk = math.ceil(cfg.chunk_size / n_dev) * n_dev
    step = make_attack_step(clf, vae, pred, st, desc_kind, k, cfg)
    init = {
        "attr": attr.global_init(k, len(pred.names)),
        "desc": attr.global_init(k, len(pred.names)),
        "latent": _metric_init(k),
        "latent_vs_recon": jnp.zeros(()),
        "pixel": _metric_init(k),
    }
    run_cfg = {"method": "attack", "dataset": dataset, "limit": cfg.limit, "job": dataclasses.asdict(cfg), "clf": models.classifier.config, "vae": models.vae.config}
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(
        step, init, {"x": test.images, "y": test.labels}, chunk_size=chunk,
        checkpoint_dir=out / "state", checkpoint_every=cfg.checkpoint_every, run_config=run_cfg, progress=progress, desc="attack",
    )
    wall = time.perf_counter() - t0
    lat = _summ(acc["latent"], True)
    pix = _summ(acc["pixel"], False)
    gsums = attr.GlobalSums(*acc["attr"])
    glob = attr.global_finalize(gsums, pred.names, models.test.class_names)
    dglob = attr.global_finalize(attr.GlobalSums(*acc["desc"]), pred.names, models.test.class_names)
    ns = float(acc["latent"]["success"])
    summary = {
        "method": "attack",
        "dataset": dataset,
        "n_examples": len(test),
        "n_counterfactuals": lat["n_counterfactuals"],
        "n_devices": n_dev,
        "validity": lat["validity"],
        "mean_steps": lat["mean_steps"],
        "l1": lat["l1"],
        "l2": lat["l2"],
        "l1_vs_reconstruction": float(acc["latent_vs_recon"]) / ns if ns else float("nan"),
        "latent_l2": lat["latent_l2"],
        "target_prob_mean": lat["target_prob_mean"],
        "denoised_validity": lat["denoised_validity"],
        "fail_rate": lat["fail_rate"],
        "status_counts": lat["status_counts"],
        "wall_s": wall,
        "cf_per_s": lat["n_counterfactuals"] / wall,
        "total_wall_s": None,
        "steps_budget": cfg.steps,
        "threshold": cfg.threshold,
        "learning_rate": cfg.learning_rate,
        "global_attribution": glob["overall"],
        "global_attribution_pairs": glob["pairs"],
        "descriptor_change_pairs": dglob["pairs"],
        "descriptor_change": dglob["overall"],
        "attribute_predictor_accuracy": pred_acc,
        "classifier_accuracy": models.classifier.metrics.get("accuracy"),
        "vae_mse": models.vae.metrics.get("mse"),
        "baseline_pixel": {**pix, "steps_budget": cfg.pixel_steps, "learning_rate": cfg.pixel_learning_rate},
    }
    pair_n = np.asarray(acc["latent"]["pair_n"]).reshape(k, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        pair_val = np.where(pair_n > 0, np.asarray(acc["latent"]["pair_success"]).reshape(k, k) / pair_n, np.nan)
        pix_val = np.where(pair_n > 0, np.asarray(acc["pixel"]["pair_success"]).reshape(k, k) / pair_n, np.nan)
    figs = _figures(out, models, clf, vae, pred, glob, cfg, pair_val, pix_val)
    summary["total_wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "summary.json", summary)
    report.write_report(out, summary, figs, title=f"Counterfactual Attacks on {dataset}")
    if progress:
        print(f"validity {summary['validity']:.3f} (pixel {pix['validity']:.3f}), mean steps {summary['mean_steps']:.1f}, "
              f"L1 {summary['l1']:.3f} (pixel {pix['l1']:.3f}), {summary['cf_per_s']:.1f} cf/s; report: {out / 'report.html'}")
    return summary


def _figures(out: Path, models, clf, vae, pred, glob, cfg: AttackJobConfig, pair_val, pix_val) -> list:
    figdir = out / "figures"
    figs = []
    test = models.test
    names = test.class_names
    k = test.num_classes
    f_logits = jax.jit(jax.vmap(clf.logits))
    preds = np.concatenate([np.argmax(np.asarray(f_logits(test.images[s : s + 500])), -1) for s in range(0, len(test), 500)])
    pairs = [(s, t) for s, t in cfg.figure_pairs if s < k and t < k and np.any((test.labels == s) & (preds == s))]
    if not pairs:
        pairs = [(int(test.labels[0]), (int(test.labels[0]) + 1) % k)]
    idx = [int(np.flatnonzero((test.labels == s) & (preds == s))[0]) if np.any((test.labels == s) & (preds == s)) else int(np.flatnonzero(test.labels == s)[0]) for s, _ in pairs]
    x = jnp.asarray(test.images[idx])
    tg = jnp.asarray([t for _, t in pairs])
    z0 = jax.vmap(vae.encode)(x)
    lat = atk.attack_batch(vae.decode, clf.logits, z0, tg, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold, record_every=cfg.record_every, early_exit_every=0)
    pix = atk.attack_pixels_batch(clf.logits, x, tg, steps=cfg.pixel_steps, learning_rate=cfg.pixel_learning_rate, threshold=cfg.threshold)
    titles = [f"{names[s]}->{names[t]}" for s, t in pairs]
    recon = jax.vmap(vae.decode)(z0)
    report.grid_figure(x, recon, lat.x, figdir / "grid.png", titles)
    figs.append(("Counterfactuals", "figures/grid.png", "original | VAE reconstruction | latent counterfactual | difference (cf - reconstruction), paper pairs"))
    report.progression_strip(lat.trajectory, lat.trajectory_probs, figdir / "progression.png", titles, every=cfg.record_every)
    figs.append(("Progression", "figures/progression.png", f"decoded latent every {cfg.record_every} steps with the target probability; frozen once past {cfg.threshold}"))
    report.side_by_side(x, lat.x, pix.x, figdir / "latent_vs_pixel.png", titles)
    figs.append(("Latent vs pixel attack", "figures/latent_vs_pixel.png", "the pixel attack flips the class with adversarial noise; the latent attack changes the digit"))
    report.pair_heatmap(pair_val, names, figdir / "validity_pairs.png", "latent attack validity per pair")
    report.pair_heatmap(pix_val, names, figdir / "validity_pairs_pixel.png", "pixel attack validity per pair")
    figs.append(("Validity per pair", "figures/validity_pairs.png", "fraction of counterfactuals reaching the threshold"))
    figs.append(("Validity per pair (pixel)", "figures/validity_pairs_pixel.png", "pixel baseline"))
    report.attribution_bars(glob["overall"], figdir / "attribution_overall.png", "global attribution, all pairs")
    figs.append(("Global attribution", "figures/attribution_overall.png", "mean signed change of attribute probability over all successful counterfactuals"))
    for s, t in pairs:
        key = f"{names[s]}->{names[t]}"
        if key in glob["pairs"]:
            fn = f"attribution_{s}_{t}.png"
            report.attribution_bars(glob["pairs"][key], figdir / fn, f"global attribution {key}")
            figs.append((f"Attribution {key}", f"figures/{fn}", "per-pair global attribution (mean +- std)"))
    return figs


@subcommand("explain", "explain a classifier: --method attack (latent attacks + global attribution) or mirror")
def _explain_parser(p):
    p.add_argument("--method", choices=["attack", "mirror"], default="attack")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--pixel-steps", type=int, default=None)
    p.add_argument("--pixel-lr", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="attack only the first N test images")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--record-every", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets: runs in seconds")
    try:
        from cfjax.jobs import mirror as _mirror

        _mirror.add_mirror_args(p)
    except ImportError:
        _mirror = None

    def run(a):
        if a.method == "mirror":
            if _mirror is None:
                raise bad_arg("--method", "'mirror'", "an installed cfjax.jobs.mirror")
            return _mirror.run_mirror_cli(a)
        cfg = AttackJobConfig.smoke_config() if a.smoke else AttackJobConfig()
        over = dict(steps=a.steps, learning_rate=a.lr, threshold=a.threshold, pixel_steps=a.pixel_steps,
                    pixel_learning_rate=a.pixel_lr, limit=a.limit, chunk_size=a.chunk_size, record_every=a.record_every)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        if cfg.steps % cfg.record_every:
            cfg = dataclasses.replace(cfg, record_every=math.gcd(cfg.steps, cfg.record_every))
        run_attack_explanation(a.data, a.out, cfg, data_dir=a.data_dir)

    return run
