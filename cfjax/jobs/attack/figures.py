"""The Counterfactual Attacks job's report figures: one example per paper pair (grid,
progression, latent vs pixel), validity per pair, global attribution and the measured descriptor
change."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.jobs import report
from cfjax.jobs.attack.config import AttackJobConfig
from cfjax.methods.attack import attack_batch, attack_pixels_batch


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


def attack_figures(out: Path, models, clf, vae, pred, glob, dglob, cfg: AttackJobConfig, pair_val, pix_val, n_img: int) -> list:
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


__all__ = ["attack_figures", "pair_matrix"]
