"""One cell of the benchmark: plant, train a classifier, measure its reliance, run every explainer
and score it against the reliance."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import cfjax as cf
import cfjax.data as cd
from cfjax.data import planted as pl
from cfjax.eval.ranking import score_cell
from cfjax.eval.reliance import cue_reliance
from cfjax.jobs.planted.base import Base, predictor_logits
from cfjax.jobs.planted.config import PlantedConfig
from cfjax.methods import saliency as sal
from cfjax.training.loop import ClassifierConfig, TrainConfig, train_classifier

CUES = pl.CUE_ORDER


def _stat(values: np.ndarray) -> tuple[list, list]:
    """Per-cue mean of per-example ``[n, C]`` values and ``|mean| / SE``."""
    v = np.asarray(values, np.float64)
    v = v[np.all(np.isfinite(v), axis=1)] if v.ndim == 2 else v
    if len(v) < 2:
        return [float("nan")] * v.shape[1], [0.0] * v.shape[1]
    mean = v.mean(0)
    se = v.std(0, ddof=1) / np.sqrt(len(v)) + 1e-12
    return mean.tolist(), (np.abs(mean) / se).tolist()


def _corr_z(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0, 0.0
    r = float(np.corrcoef(a, b)[0, 1])
    return r, float(abs(np.arctanh(np.clip(r, -0.999999, 0.999999))) * np.sqrt(len(a) - 3))


def cell_prng(planted, rho, seed) -> jax.Array:
    """The cell's one PRNG key: the seed's key with rho and the planted cues folded in."""
    key = jax.random.fold_in(jax.random.key(seed), int(round(rho * 1000)))
    return jax.random.fold_in(key, sum((i + 1) * 7 ** CUES.index(c) for i, c in enumerate(planted)))


def train_cell_classifier(cfg: PlantedConfig, base: Base, planted, rho, seed):
    """Plant the training images and train the cell's GAP-CNN (checkpoint chosen on a validation
    split of the planted training images). Returns ``(trained, planted training set)``."""
    key = cell_prng(planted, rho, seed)
    p = pl.plant(base.train_x, base.train_y, key, source=0, target=1, planted=planted, rho=rho)
    ds = cd.Dataset(p.images, p.labels, None, (), ("source", "target"), f"planted-{'+'.join(planted) or 'null'}", "train")
    tr, va = cd.validation_split(ds, 0.1, seed=seed)
    clf = train_classifier(tr, va, ClassifierConfig(num_classes=2, widths=tuple(cfg.widths)),
                           TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=seed),
                           progress=False)
    return clf, p


def attack_explainers(cfg: PlantedConfig, base: Base, fns, x_eval) -> tuple[dict, dict]:
    """Latent attack (three read-outs) and pixel attack, each scored per cue. Returns
    ``(explainers, pictures)``."""
    n = len(x_eval)
    vae = base.vae
    z0 = jnp.asarray(np.asarray(jax.jit(jax.vmap(vae.encode))(jnp.asarray(x_eval))))
    tgt = jnp.ones((n,), jnp.int32)
    res = cf.make_attack(vae.decode, fns.logits, steps=cfg.attack_steps, learning_rate=cfg.attack_learning_rate,
                         threshold=cfg.threshold, schedule="vmap")(z0, tgt)
    ok = np.asarray(res.success)
    dec = jax.jit(jax.vmap(vae.decode))
    x_rec, x_cf = np.asarray(dec(z0)), np.asarray(res.x)
    zc = np.asarray(res.z)
    out = {}
    pr0 = 1 / (1 + np.exp(-predictor_logits(base.predictor, z0)))
    pr1 = 1 / (1 + np.exp(-predictor_logits(base.predictor, zc)))
    lg = (predictor_logits(base.predictor, zc) - predictor_logits(base.predictor, z0)) / base.logit_sd
    meas = (pl.measure_all_np(x_cf) - pl.measure_all_np(x_rec)) / base.desc_sd
    for name, per in (("prob", pr1 - pr0), ("logit", lg), ("measured", meas)):
        s, z = _stat(per[ok])
        out[f"attack_{name}"] = {"scores": s, "z": z, "n": int(ok.sum()), "validity": float(ok.mean())}
    pres = cf.make_pixel_attack(fns.logits, learning_rate=cfg.pixel_learning_rate, steps=cfg.pixel_steps,
                                threshold=cfg.threshold, schedule="vmap")(jnp.asarray(x_eval), tgt)
    pok = np.asarray(pres.success)
    x_px = np.asarray(pres.x)
    pm = (pl.measure_all_np(x_px) - pl.measure_all_np(x_eval)) / base.desc_sd
    s, z = _stat(pm[pok])
    out["pixel_attack"] = {"scores": s, "z": z, "n": int(pok.sum()), "validity": float(pok.mean())}
    return out, {"x_rec": x_rec, "x_cf": x_cf, "x_px": x_px, "ok": ok}


def other_explainers(cfg: PlantedConfig, fns, p_train, x_eval, train_y, key) -> dict:
    """Saliency (gradient x input summed per region; GAP probes for the global cues), the
    data-correlation baseline and random."""
    h, w = x_eval.shape[1:3]
    cues = pl.make_cues(h, w)
    attr = sal.attributions(fns.logits, x_eval, 0, 1, method="grad_x_input")
    spatial = {c: cues[c].region for c in CUES if cues[c].region is not None}
    sums = sal.region_sums(attr, spatial)
    feats = jax.jit(jax.vmap(fns.features))
    f_tr = np.asarray(feats(jnp.asarray(p_train.images)))
    f_ev = np.asarray(feats(jnp.asarray(x_eval)))
    margin = np.asarray(jax.jit(jax.vmap(lambda x: fns.logits(x)[1] - fns.logits(x)[0]))(jnp.asarray(x_eval)))
    m_tr = pl.measure_all_np(p_train.images)
    s_sal, z_sal = [], []
    for i, c in enumerate(CUES):
        if c in sums:
            v = sums[c]
            sd = v.std(ddof=1) + 1e-12
            s_sal.append(float(v.mean() / sd))
            z_sal.append(float(abs(v.mean()) / (sd / np.sqrt(len(v)))))
        else:
            r, z = sal.probe_correlation(f_tr, m_tr[:, i], f_ev, margin)
            s_sal.append(r)
            z_sal.append(z)
    dc = [_corr_z(m_tr[:, i], p_train.labels) for i in range(len(CUES))]
    rnd = np.asarray(jax.random.uniform(key, (len(CUES),))).tolist()
    return {"saliency": {"scores": s_sal, "z": z_sal}, "data_correlation": {"scores": [r for r, _ in dc], "z": [z for _, z in dc]},
            "random": {"scores": rnd, "z": None}}


def run_cell(cfg: PlantedConfig, base: Base, planted, rho, seed) -> tuple[dict, dict]:
    """Everything for one cell: ``(row, pictures)`` (``pictures``: a few source images with their
    intervention, reconstruction and counterfactuals, for the strips)."""
    t0 = time.perf_counter()
    clf, p_train = train_cell_classifier(cfg, base, planted, rho, seed)
    fns = cf.bind_classifier(clf.module, clf.params)
    ev = pl.randomize(base.eval_x, np.zeros(len(base.eval_x), np.int32), jax.random.fold_in(jax.random.key(seed), 999))
    rel = cue_reliance(fns.logits, base.eval_x, ev.levels, source=0, target=1, n_boot=cfg.n_boot, seed=seed)
    t1 = time.perf_counter()
    expl, pics = attack_explainers(cfg, base, fns, ev.images)
    expl.update(other_explainers(cfg, fns, p_train, ev.images, p_train.labels, jax.random.fold_in(cell_prng(planted, rho, seed), 7)))
    expl["attack"] = dict(expl[f"attack_{cfg.readout}"], readout=cfg.readout)
    expl["mirror"] = None
    for name, e in expl.items():
        if e is not None:
            e.update(score_cell(CUES, rel, e["scores"], e["z"], z_alarm=cfg.z_alarm))
            e["scores"] = dict(zip(CUES, e["scores"]))
            e["z"] = None if e["z"] is None else dict(zip(CUES, e["z"]))
    row = {"planted": list(planted), "rho": float(rho), "seed": int(seed), "reliance": rel,
           "classifier": {"val_accuracy": float(clf.metrics.get("accuracy", float("nan"))),
                          "eval_accuracy": rel["accuracy_off"]},
           "explainers": expl, "seconds": {"train_and_reliance": t1 - t0, "explainers": time.perf_counter() - t1}}
    pics.update({"x": ev.images, "on": np.stack([ev.on[c] for c in CUES], 1),
                 "switched": np.stack([pl.switch(base.eval_x[:32], {k: v[:32] for k, v in ev.levels.items()}, c, True) for c in CUES], 1)})
    return row, pics
