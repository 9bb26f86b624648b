"""What every cell of a base shares: the pair's images, the VAE on cue-randomised images, the
attribute predictors of every cue, and the check of how well the VAE reconstructs each cue."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import cfjax as cf
import cfjax.data as cd
from cfjax.data import planted as pl
from cfjax.eval.intervals import wilson
from cfjax.jobs.planted.config import PlantedConfig
from cfjax.training.attributes import encode_all, fit_attribute_predictor
from cfjax.training.loop import TrainConfig, VAEConfig, load_or_train_vae


class Base(NamedTuple):
    """Shared pieces of one benchmark run.

    Attributes:
      train_x, train_y: base training images of the pair, labels 0 (source) / 1 (target).
      eval_x: held-out base images of the source class (test split), at most ``n_eval``.
      vae: bound VAE callables (``encode``, ``decode``); vae_metrics: its validation metrics.
      predictor: one logistic predictor per cue on latents; logit_sd: each predictor's logit SD
        over the VAE's training latents; desc_sd: each cue measurement's SD over the VAE's
        (cue-randomised) training images.
      reconstruction: per cue, the share of held-out images whose reconstructed cue reads the
        level that was set, with a Wilson interval.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    eval_x: np.ndarray
    vae: object
    vae_metrics: dict
    predictor: object
    logit_sd: np.ndarray
    desc_sd: np.ndarray
    reconstruction: dict


def pair_images(ds, pair, limit=None) -> tuple[np.ndarray, np.ndarray]:
    """The images of the two classes of ``pair`` and 0/1 labels (1: the target), at most ``limit``."""
    m = np.isin(ds.labels, list(pair))
    x, y = ds.images[m], (ds.labels[m] == pair[1]).astype(np.int32)
    return (x, y) if limit is None else (x[:limit], y[:limit])


def predictor_logits(pred, z) -> np.ndarray:
    """The attribute predictors' logits ``z W + b`` (host)."""
    return np.asarray(jnp.asarray(z) @ pred.W + pred.b)


def build_base(cfg: PlantedConfig, out: Path, progress: bool = False) -> Base:
    """Load the data, train (or reuse) the VAE on cue-randomised images, fit the cue predictors."""
    train = cd.load(cfg.data, "train")
    test = cd.load(cfg.data, "test")
    tx, ty = pair_images(train, cfg.pair, cfg.n_train)
    ex, ey = pair_images(test, cfg.pair)
    eval_x = ex[ey == 0][: cfg.n_eval]
    key = jax.random.key(12345)
    vtr, vva = cd.validation_split(cd.subset(train, np.arange(min(cfg.vae_images, len(train)))), 0.1, seed=0)
    rv = pl.randomize(vtr.images, vtr.labels, jax.random.fold_in(key, 0))
    rva = pl.randomize(vva.images, vva.labels, jax.random.fold_in(key, 1))
    vae_t = load_or_train_vae(vtr._replace(images=rv.images, name=f"{cfg.data}-planted-random"),
                              vva._replace(images=rva.images, name=f"{cfg.data}-planted-random"),
                              VAEConfig(latent_dim=cfg.latent_dim), TrainConfig(epochs=cfg.vae_epochs, batch_size=64),
                              workdir=out / "models" / "vae", progress=progress)
    vae = cf.bind_vae(vae_t.module, vae_t.params)
    lat = encode_all(vae.encode, rv.images)
    raw = pl.measure_all_np(rv.images)
    cues = pl.make_cues(*rv.images.shape[1:3])
    mid = np.array([(cues[c].on + cues[c].off) / 2 for c in pl.CUE_ORDER], np.float32)
    y = (raw > mid).astype(np.float32)
    pred = fit_attribute_predictor(lat, y, pl.CUE_ORDER, steps=cfg.predictor_steps)
    logit_sd = predictor_logits(pred, lat).std(0) + 1e-6
    desc_sd = raw.std(0) + 1e-6
    rec = np.asarray(jax.jit(jax.vmap(lambda x: vae.decode(vae.encode(x))))(jnp.asarray(rva.images[:256])))
    mrec = pl.measure_all_np(rec)
    recon = {}
    for i, c in enumerate(pl.CUE_ORDER):
        ok = (mrec[:, i] > mid[i]) == rva.on[c][:256]
        recon[c] = {"level_accuracy": float(ok.mean()), "ci": list(wilson(int(ok.sum()), len(ok))),
                    "predictor_accuracy": float(((predictor_logits(pred, lat)[:, i] > 0) == (y[:, i] > 0.5)).mean())}
    return Base(tx, ty, eval_x, vae, dict(vae_t.metrics), pred, logit_sd, desc_sd, recon)
