"""Counterfactual Attacks on the bundled MNIST sample (mnist5k): the paper's MNIST experiments.

    python experiments/attack_mnist.py --out runs/attack_mnist [--steps 1000] [--limit N] [--smoke]

1. Global explanation over the whole test split: every image towards every other class
   (:func:`cfjax.jobs.attack.run_attack_explanation`, with the pixel baseline), written to
   OUT/ (summary.json, report.html, figures/); OUT/pairs.md ranks the attributes per pair.
2. Misclassification fixes: test images the classifier gets wrong, attacked towards their
   true label. The latent attack starts from the reconstruction, so only images whose
   reconstruction repeats the classifier's mistake are a real test (the others are counted:
   their reconstruction is already classified correctly). OUT/fixes/.
3. Digit-pair edits 4->9, 8->9, 1->7, 9->7, 5->6, 0->8, 3->2 with progression strips (the
   decoded latent every ``--record-every`` steps, run until p_target >= ``--strip-threshold``
   so the morph is visible) and the pixel attack beside. OUT/pairs/. The paper shows every 50
   steps; our classifier/VAE flip in 10-30 Adam steps, so the default is every 10 steps up to
   0.9 (``--record-every 50 --strip-steps 1000 --strip-threshold 0.99`` for the paper's view).

Models are trained once and cached in OUT/models (the ``cfjax demo`` layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cfjax.methods import attribution as attr  # noqa: E402
from cfjax.jobs import report  # noqa: E402
from cfjax.training import zoo  # noqa: E402
from cfjax.io import atomic_write_json, atomic_write_text  # noqa: E402
from cfjax.jobs.attack import PAPER_PAIRS, AttackJobConfig, run_attack_explanation  # noqa: E402
from cfjax.models import bind_classifier, bind_vae  # noqa: E402

from cfjax.methods import attack as atk  # noqa: E402


def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out)
    p.add_argument("--steps", type=int, default=None, help="step budget (default: the job's 200; the paper: 1000)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--no-pixel", action="store_true")
    p.add_argument("--pixel-limit", type=int, default=None, help="pixel baseline on the first N test images only")
    p.add_argument("--record-every", type=int, default=10, help="strip spacing (the paper: 50, for a model that flips more slowly)")
    p.add_argument("--strip-threshold", type=float, default=0.9, help="strips run until p_target >= this")
    p.add_argument("--strip-steps", type=int, default=200)
    p.add_argument("--examples", type=int, default=3, help="images per pair in the strips")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--smoke", action="store_true")
    return p


def job_config(a) -> AttackJobConfig:
    base = AttackJobConfig.smoke() if a.smoke else AttackJobConfig()
    over = {k: v for k, v in dict(steps=a.steps, learning_rate=a.lr, threshold=a.threshold, limit=a.limit, batch_size=a.batch_size,
                                  pixel_limit=a.pixel_limit).items() if v is not None}
    if a.no_pixel:
        over["pixel_baseline"] = False
    steps = over.get("steps", base.steps)
    if steps % base.record_every:
        over["record_every"] = int(np.gcd(steps, base.record_every))
    return dataclasses.replace(base, **over)


def pairs_markdown(summary: dict, k: int = 3) -> str:
    """Top-k attributes per pair (signed global score) beside the measured descriptor change."""
    lines = ["| pair | n | top attributes (global score) | measured descriptor change (std units) |", "|---|---|---|---|"]
    meas = summary.get("descriptor_change_pairs", {})
    for pair, st in summary["global_attribution_pairs"].items():
        top = attr.top_attributes(st, k)
        n = next(iter(st.values()))["count"]
        m = meas.get(pair, {})
        mtop = ", ".join(f"{a} {m[a]['mean']:+.2f}" for a, _ in top if a in m)
        lines.append(f"| {pair} | {n} | " + ", ".join(f"{a} {v:+.3f}" for a, v in top) + f" | {mtop} |")
    return "\n".join(lines) + "\n"


def misclassification_fixes(models: zoo.Models, out: Path, cfg: AttackJobConfig, max_images: int = 64) -> dict:
    """Attack misclassified test images towards their true label (see the module docstring)."""
    clf = bind_classifier(models.classifier.module, models.classifier.params)
    vae = bind_vae(models.vae.module, models.vae.params)
    test = models.test
    n = len(test) if cfg.limit is None else min(cfg.limit, len(test))
    x_all, y_all = test.images[:n], test.labels[:n]
    blog = jax.jit(jax.vmap(clf.logits))
    enc, dec = jax.jit(jax.vmap(vae.encode)), jax.jit(jax.vmap(vae.decode))
    pred = np.concatenate([np.argmax(np.asarray(blog(x_all[s : s + 500])), -1) for s in range(0, n, 500)])
    wrong = np.flatnonzero(pred != y_all)
    out_d = {"n_test": int(n), "n_misclassified": int(len(wrong))}
    if len(wrong) == 0:
        return {**out_d, "n_attacked": 0}
    x = jnp.asarray(x_all[wrong])
    z0 = enc(x)
    rec_pred = np.argmax(np.asarray(blog(dec(z0))), -1)
    repeats = rec_pred == pred[wrong]
    out_d["n_reconstruction_already_correct"] = int(np.sum(rec_pred == y_all[wrong]))
    out_d["n_reconstruction_repeats_mistake"] = int(np.sum(repeats))
    sel = np.flatnonzero(repeats)[:max_images]
    if len(sel) == 0:
        return {**out_d, "n_attacked": 0}
    tg = jnp.asarray(y_all[wrong][sel])
    r = atk.attack_batch(vae.decode, clf.logits, z0[sel], tg, steps=cfg.steps, learning_rate=cfg.learning_rate, threshold=cfg.threshold)
    ok = np.asarray(r.success)
    out_d.update({
        "n_attacked": int(len(sel)), "validity": float(ok.mean()), "mean_steps": float(np.asarray(r.steps_taken)[ok].mean()) if ok.any() else None,
        "l1_vs_original": float(np.mean(np.abs(np.asarray(r.x) - np.asarray(x[sel])), axis=(1, 2, 3))[ok].mean()) if ok.any() else None,
    })
    titles = [f"pred {int(pred[wrong][i])} -> true {int(y_all[wrong][i])}" for i in sel[:12]]
    report.grid_figure(x[sel][:12], dec(z0[sel][:12]), r.x[:12], out / "fixes" / "fixes.png", titles)
    atomic_write_json(out / "fixes" / "summary.json", out_d)
    return out_d


def pair_strips(models: zoo.Models, out: Path, pairs, a, cfg: AttackJobConfig) -> dict:
    """Progression strips for each (source, target) pair: the first ``a.examples`` test images
    of the source class the classifier gets right."""
    clf = bind_classifier(models.classifier.module, models.classifier.params)
    vae = bind_vae(models.vae.module, models.vae.params)
    test = models.test
    names = test.class_names
    blog = jax.jit(jax.vmap(clf.logits))
    pred = np.concatenate([np.argmax(np.asarray(blog(test.images[s : s + 500])), -1) for s in range(0, len(test), 500)])
    steps = a.strip_steps if not a.smoke else 20
    every = a.record_every if steps % a.record_every == 0 else int(np.gcd(steps, a.record_every))
    res = {}
    for s, t in pairs:
        idx = np.flatnonzero((test.labels == s) & (pred == s))[: a.examples]
        if len(idx) == 0:
            continue
        x = jnp.asarray(test.images[idx])
        z0 = jax.vmap(vae.encode)(x)
        tg = jnp.full(len(idx), t, jnp.int32)
        r = atk.attack_batch(vae.decode, clf.logits, z0, tg, steps=steps, learning_rate=cfg.learning_rate, threshold=a.strip_threshold, record_every=every)
        key = f"{names[s]}->{names[t]}"
        fn = f"strip_{s}_{t}.png"
        report.progression_strip(r.trajectory, r.trajectory_probs, out / "pairs" / fn, [f"{key} #{i}" for i in range(len(idx))], every=every,
                                 steps_taken=r.steps_taken, max_cols=14)
        p = atk.attack_pixels_batch(clf.logits, x, tg, steps=steps, threshold=a.strip_threshold)
        report.side_by_side(x, r, p, out / "pairs" / f"latent_vs_pixel_{s}_{t}.png", [key] * len(idx))
        res[key] = {"steps": np.asarray(r.steps_taken).tolist(), "success": np.asarray(r.success).tolist(), "figure": f"pairs/{fn}",
                    "pixel_success": np.asarray(p.success).tolist(), "pixel_steps": np.asarray(p.steps_taken).tolist()}
    atomic_write_json(out / "pairs" / "summary.json", res)
    return res


def run(dataset: str, pairs, a) -> dict:
    out = Path(a.out)
    cfg = job_config(a)
    models = zoo.get_models(dataset, out / "models", config=cfg.models, limit=cfg.data_limit, data_dir=a.data_dir)
    summary = run_attack_explanation(dataset, out, cfg, data_dir=a.data_dir, models=models)
    fixes = misclassification_fixes(models, out, cfg)
    strips = pair_strips(models, out, pairs, a, cfg)
    atomic_write_text(out / "pairs.md", pairs_markdown(summary))
    extra = {"misclassification_fixes": fixes, "pair_strips": {k: {kk: v[kk] for kk in ("success", "steps")} for k, v in strips.items()}}
    atomic_write_json(out / "experiment.json", extra)
    print(f"{dataset}: validity {summary['validity']:.3f}, mean steps {summary['mean_steps']:.1f}, fixes {fixes}")
    return {"summary": summary, **extra}


def main(argv=None) -> dict:
    a = parser(__doc__, "runs/attack_mnist").parse_args(argv)
    return run("mnist5k", PAPER_PAIRS, a)


if __name__ == "__main__":
    main()
