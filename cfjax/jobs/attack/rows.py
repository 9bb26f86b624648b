"""The Counterfactual Attacks job's per-chunk steps: the latent attack (:func:`attack_rows`), the
pixel baseline (:func:`pixel_rows`) and the rows of work (:func:`make_pairs`: every image towards
every other class)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.eval import metrics
from cfjax.methods import attribution as attr
from cfjax.methods.attack import AttackResult, attack_batch, attack_pixels_batch


class AttackFns(NamedTuple):
    """The callables :func:`attack_rows` needs (single-example, any JAX functions)."""

    encode: Callable  # x [H, W, C] -> z [D]
    decode: Callable  # z [D] -> x [H, W, C]
    logits: Callable  # x [H, W, C] -> [K]
    predictor: attr.AttributePredictor


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


__all__ = ["AttackFns", "attack_rows", "make_pairs", "pixel_rows"]
