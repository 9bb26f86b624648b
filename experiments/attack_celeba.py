"""Counterfactual Attacks on CelebA 64x64: explain four binary attribute classifiers.

    python experiments/attack_celeba.py --out runs/attack_celeba [--data-dir ~/tensorflow_datasets]
        [--classifiers Young Attractive Male Smiling] [--n-explain 100] [--steps 500] [--smoke]

Needs CelebA prepared for TFDS (``tfds.builder("celeb_a").download_and_prepare()`` with the
files downloaded by the user; nothing is downloaded here). The tests run it under
``tfds.testing.mock_data`` with ``--smoke``.

What it does (the paper's CelebA experiment, with our own generator: their StyleGAN3 W space
is replaced by a convolutional VAE trained here on CelebA 64x64):

1. a VAE on the training images (``--latent-dim``, default 128);
2. one 2-class GAP-CNN per explained attribute (labels = that attribute);
3. the attribute predictors: one logistic regression per explanation attribute (CelebA's 40
   with the paper's merges, :func:`cfjax.methods.attribution.celeba_attributes`; class-balanced) fitted
   on the VAE means of the training images;
4. for each classifier, ``--n-explain`` test images attacked in latent space towards the other
   class (Adam lr 0.01, at most 500 steps, success once the target class probability is
   >= 0.75, i.e. p(attribute) >= 0.75 when increasing and <= 0.25 when decreasing);
5. local scores ``P_a(z_cf) - P_a(z_orig)`` and the global score per classifier
   ``G_a = mean_i s_i * local_a(i)`` (s = +1 increasing, -1 decreasing), overall and per
   direction, successful counterfactuals only; figures and OUT/report.html.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cfjax.methods import attribution as attr  # noqa: E402
from cfjax.training.attributes import encode_all, fit_predictor_on_attributes  # noqa: E402
from cfjax import data as cdata  # noqa: E402
from cfjax.jobs import report  # noqa: E402
from cfjax.training import loop as ct  # noqa: E402
from cfjax.io import atomic_write_json, check_writable_dir  # noqa: E402
from cfjax.models import bind_classifier, bind_vae  # noqa: E402

from cfjax.methods import attack as atk  # noqa: E402

CLASSIFIERS = ("Young", "Attractive", "Male", "Smiling")
# the authors' figure (their data, their StyleGAN3), for comparison in the report
PAPER_TOP = {"Male": {"Wearing_Lipstick": -0.30, "Heavy_Makeup": -0.27, "Facial_hair": 0.15, "Arched_Eyebrows": -0.13, "Wavy_Hair": -0.10},
             "Young": {"Heavy_Makeup": 0.05, "Wearing_Lipstick": 0.04}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/attack_celeba")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--limit-train", type=int, default=None, help="first N training images (default: all 162,770)")
    p.add_argument("--limit-test", type=int, default=2000, help="test images read (classifier/VAE evaluation and the pool to explain)")
    p.add_argument("--classifiers", nargs="+", default=list(CLASSIFIERS))
    p.add_argument("--n-explain", type=int, default=100, help="test images attacked per classifier (the paper: 100)")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threshold", type=float, default=0.75, help="target class probability to reach")
    p.add_argument("--latent-dim", type=int, default=128)
    p.add_argument("--vae-epochs", type=int, default=10)
    p.add_argument("--clf-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets (tests, under tfds mock data)")
    return p


def _attribute_dataset(ds: cdata.Dataset, name: str) -> cdata.Dataset:
    j = list(ds.attribute_names).index(name)
    return ds._replace(labels=(ds.attributes[:, j] > 0.5).astype(np.int32), class_names=(f"not {name}", name))


def explain_classifier(name, clf, vae, pred, test: cdata.Dataset, a, figdir: Path) -> dict:
    """Attack ``a.n_explain`` test images towards the other class; local + global scores."""
    blog = jax.jit(jax.vmap(clf.logits))
    n = min(a.n_explain, len(test))
    x = jnp.asarray(test.images[:n])
    source = np.argmax(np.asarray(blog(x)), -1).astype(np.int32)
    target = (1 - source).astype(np.int32)
    z0 = jax.jit(jax.vmap(vae.encode))(x)
    t0 = time.perf_counter()
    r = atk.attack_batch(vae.decode, clf.logits, z0, jnp.asarray(target), source=source, steps=a.steps, learning_rate=a.lr, threshold=a.threshold)
    jax.block_until_ready(r)
    wall = time.perf_counter() - t0
    ok = np.asarray(r.success)
    sign = np.where(target == 1, 1.0, -1.0).astype(np.float32)  # +1: the attribute's probability is raised
    scores = attr.local_scores(pred, z0, r.z)
    acc = attr.global_update(attr.global_init(2, len(pred.names)), scores, jnp.asarray(source), jnp.asarray(target), jnp.asarray(sign), jnp.asarray(ok))
    glob = attr.global_finalize(acc, pred.names, (f"not {name}", name))
    st = np.asarray(r.steps_taken)
    out = {
        "n_explained": int(n),
        "n_increase": int(np.sum(target == 1)),
        "n_decrease": int(np.sum(target == 0)),
        "validity": float(ok.mean()),
        "mean_steps": float(st[ok].mean()) if ok.any() else None,
        "l1": float(np.mean(np.abs(np.asarray(r.x) - np.asarray(x)), axis=(1, 2, 3))[ok].mean()) if ok.any() else None,
        "status_counts": {atk.STATUS_NAMES[i]: int(c) for i, c in enumerate(np.bincount(np.asarray(r.status), minlength=4))},
        "wall_s": wall,
        "global_attribution": glob["overall"],
        "global_attribution_directions": glob["pairs"],
        "top5": attr.top_attributes(glob["overall"], 5),
        "paper_top": PAPER_TOP.get(name),
    }
    m = min(6, n)
    rec = jax.jit(jax.vmap(vae.decode))(z0[:m])
    titles = [f"{'+' if target[i] else '-'}{name} {'ok' if ok[i] else 'fail'}" for i in range(m)]
    report.grid_figure(x[:m], rec, r.x[:m], figdir / f"grid_{name}.png", titles)
    report.attribution_bars(glob, figdir / f"attribution_{name}.png", f"{name}: global attribution", top_k=8)
    return out


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    if a.smoke:
        a.image_size, a.n_explain, a.steps, a.latent_dim = 32, 6, 10, 8
        a.vae_epochs, a.clf_epochs, a.batch_size = 1, 1, 8
        a.limit_train = a.limit_train or 64
        a.limit_test = min(a.limit_test, 16)
    out = check_writable_dir(a.out, "out")
    figdir = out / "figures"
    t_start = time.perf_counter()
    train = cdata.load("celeb_a", "train", data_dir=a.data_dir, image_size=a.image_size, limit=a.limit_train)
    test = cdata.load("celeb_a", "test", data_dir=a.data_dir, image_size=a.image_size, limit=a.limit_test)
    missing = [c for c in a.classifiers if c not in train.attribute_names]
    if missing:
        from cfjax.errors import bad_arg

        raise bad_arg("--classifiers", missing, f"CelebA attribute names ({', '.join(train.attribute_names)})")
    widths = (8, 16) if a.smoke else (32, 64, 128)
    vae_cfg = ct.VAEConfig(latent_dim=a.latent_dim, widths=widths)
    tcfg = ct.TrainConfig(epochs=a.vae_epochs, batch_size=a.batch_size)
    root = out / "models" / "celeb_a"
    vae_t = ct.load_or_train_vae(train, test, vae_cfg, tcfg, root / "vae")
    vae = bind_vae(vae_t.module, vae_t.params)
    pred, _ = fit_predictor_on_attributes(train, vae.encode, steps=200 if a.smoke else 2000)
    names = pred.names
    pred_acc = attr.attribute_accuracy(pred, encode_all(vae.encode, test.images), attr.celeba_attributes(test.attributes, test.attribute_names)[0])
    summary = {"method": "attack", "dataset": "celeb_a", "image_size": a.image_size, "n_train": len(train), "n_test": len(test),
               "vae_mse": vae_t.metrics.get("mse"), "attributes": list(names), "attribute_predictor_accuracy": pred_acc,
               "steps_budget": a.steps, "learning_rate": a.lr, "threshold": a.threshold, "classifiers": {}}
    figs = []
    clf_widths = (8, 16) if a.smoke else (32, 64, 128, 128)
    for name in a.classifiers:
        tr, te = _attribute_dataset(train, name), _attribute_dataset(test, name)
        ccfg = ct.ClassifierConfig(num_classes=2, widths=clf_widths)
        clf_t = ct.load_or_train_classifier(tr, te, ccfg, dataclasses.replace(tcfg, epochs=a.clf_epochs), root / f"classifier_{name}")
        clf = bind_classifier(clf_t.module, clf_t.params)
        res = explain_classifier(name, clf, vae, pred, te, a, figdir)
        res["classifier_accuracy"] = clf_t.metrics.get("accuracy")
        summary["classifiers"][name] = res
        figs += [(f"{name}: counterfactuals", f"figures/grid_{name}.png", "original | reconstruction | counterfactual | difference; + raises the attribute, - lowers it"),
                 (f"{name}: global attribution", f"figures/attribution_{name}.png", "G_a = mean s * (P_a(z_cf) - P_a(z_orig)), overall and per direction")]
        top = ", ".join(f"{k} {v:+.3f}" for k, v in res["top5"])
        print(f"{name}: accuracy {res['classifier_accuracy']:.3f}, validity {res['validity']:.2f}, top: {top}")
    summary["total_wall_s"] = time.perf_counter() - t_start
    atomic_write_json(out / "summary.json", summary)
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    for name, r in summary["classifiers"].items():
        flat[f"{name} validity"] = r["validity"]
        flat[f"{name} top5"] = ", ".join(f"{k} {v:+.3f}" for k, v in r["top5"])
    report.write_report(out, flat, figs, title="Counterfactual Attacks on CelebA")
    return summary


if __name__ == "__main__":
    main()
