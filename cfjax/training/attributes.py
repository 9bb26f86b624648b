"""Training of the attribute predictors (one ``[D, A]`` logistic-regression matrix) on latents.

Scoring and aggregation (:func:`cfjax.methods.attribution.local_scores`, the global sums) are
in :mod:`cfjax.methods.attribution`; this module only fits the predictors.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg
from cfjax.methods.attribution import AttributePredictor, attribute_accuracy


def fit_attribute_predictor(
    latents: Float[Array, "n d"],
    attributes: Float[Array, "n a"],
    names: Sequence[str],
    *,
    steps: int = 2000,
    learning_rate: float = 0.05,
    l2: float = 1e-3,
    seed: int = 0,
    balanced: bool = False,
) -> AttributePredictor:
    r"""Fit all ``A`` attribute logistic regressions at once (full-batch Adam in one jitted scan).

    Minimises :math:`\frac1{nA}\sum_{i,a} w_{ia}\,\mathrm{BCE}(\hat z_i W'_a + b'_a, y_{ia})
    + \lambda \|W'\|^2` on standardised latents :math:`\hat z = (z - \mu)/\sigma` (so one
    learning rate suits every latent scale), then maps the weights back,
    :math:`W = W' / \sigma`, :math:`b = b' - (\mu/\sigma) W'`, so ``W``/``b`` apply to raw
    latents and scoring a counterfactual latent is one matmul.

    Args:
      latents: ``[n, D]`` latents of the auxiliary images (e.g. VAE encoder means).
      attributes: ``[n, A]`` binary labels in {0, 1}.
      names: the ``A`` attribute names.
      steps: full-batch Adam steps.
      learning_rate: Adam's.
      l2: weight decay :math:`\lambda` on ``W'``.
      seed: unused (full-batch training from zeros is deterministic); kept for API stability.
      balanced: weigh positives and negatives of each attribute equally
        (:math:`w = \frac{1}{2 \pi_a}` for positives, :math:`\frac{1}{2(1-\pi_a)}` for
        negatives, :math:`\pi_a` the positive rate), for rare attributes such as CelebA's.

    Returns:
      :class:`AttributePredictor` with ``W`` [D, A] and ``b`` [A].

    Example:
      >>> import numpy as np
      >>> z = np.random.default_rng(0).normal(size=(200, 3)).astype("float32")
      >>> p = fit_attribute_predictor(z, (z[:, :1] > 0).astype("float32"), ["pos"], steps=300)
      >>> attribute_accuracy(p, z, (z[:, :1] > 0))["pos"] > 0.95
      True
    """
    del seed  # full-batch logistic regression from zeros is deterministic
    z = np.asarray(latents, np.float32)
    y = np.asarray(attributes, np.float32)
    if z.ndim != 2 or y.ndim != 2 or len(z) != len(y) or len(z) == 0:
        raise bad_arg("latents/attributes", f"shapes {z.shape} and {y.shape}", "[n, D] and [n, A] with the same n > 0")
    if len(names) != y.shape[1]:
        raise bad_arg("names", f"{len(names)} names", f"one per attribute column ({y.shape[1]})")
    if not np.all(np.isfinite(z)):
        raise bad_arg("latents", f"{int(np.size(z) - np.isfinite(z).sum())} non-finite values", "finite latents")
    if not np.all((y == 0) | (y == 1)):
        raise bad_arg("attributes", "values other than 0/1", "binary attributes in {0, 1}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise bad_arg("steps", repr(steps), "a positive integer")
    mu, sd = z.mean(0), z.std(0) + 1e-6
    zs = jnp.asarray((z - mu) / sd)
    yj = jnp.asarray(y)
    if balanced:
        pos = np.clip(y.mean(0), 1e-6, 1 - 1e-6)
        w = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)
    else:
        w = np.ones_like(y)
    wj = jnp.asarray(w)
    tx = optax.adam(learning_rate)

    def loss(p):
        logit = zs @ p["W"] + p["b"]
        return jnp.mean(wj * optax.sigmoid_binary_cross_entropy(logit, yj)) + l2 * jnp.sum(p["W"] ** 2)

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
        return p

    p = run({"W": jnp.zeros((z.shape[1], y.shape[1])), "b": jnp.zeros(y.shape[1])})
    W = p["W"] / jnp.asarray(sd)[:, None]
    b = p["b"] - jnp.asarray(mu / sd) @ p["W"]
    return AttributePredictor(W, b, tuple(names))


def encode_all(encode: Callable, images: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """``vmap(encode)`` over ``images`` in chunks of ``chunk`` (bounded memory), as one host array."""
    f_enc = jax.jit(jax.vmap(encode))
    return np.concatenate([np.asarray(f_enc(images[s : s + chunk])) for s in range(0, len(images), chunk)])


def fit_predictor_for(train_images: np.ndarray, encode: Callable, kind: str, *, steps: int = 2000):
    """Encode the training images (VAE means), compute their descriptors, binarise them at the
    balanced median split and fit the attribute predictors.

    Returns:
      ``(predictor, standardizer, per-attribute training accuracy)``.
    """
    lat = encode_all(encode, train_images)
    raw = desc.compute_descriptors_np(train_images, kind)
    st = desc.fit_standardizer(raw)
    y = np.asarray(desc.binarize(raw, st))
    pred = fit_attribute_predictor(lat, y, desc.descriptor_names(kind), steps=steps)
    return pred, st, attribute_accuracy(pred, lat, y)


def fit_predictor_on_attributes(train, encode: Callable, *, exclude=(), steps: int = 2000):
    """Fit the attribute predictors on a dataset's own labelled attributes (CelebA's 40, turned
    into the paper's 29 by :func:`cfjax.methods.attribution.celeba_attributes`): the
    Counterfactual Attacks paper's descriptors for faces.

    Args:
      train: a :class:`cfjax.data.Dataset` with ``attributes`` [N, 40] and ``attribute_names``.
      encode: the VAE's single-example encoder (its mean).
      exclude: attributes to drop besides the paper's explained labels (the task being
        explained, e.g. ``("Mouth_Slightly_Open",)``).
      steps: full-batch Adam steps.

    Returns:
      ``(predictor, per-attribute training accuracy)``; rare attributes are class-balanced.
    """
    from cfjax.methods.attribution import celeba_attributes

    if getattr(train, "attributes", None) is None:
        raise bad_arg("train", "a dataset without attributes", "a Dataset with labelled attributes (celeb_a, celeb_a_hq with its annotation file)")
    y, names = celeba_attributes(train.attributes, train.attribute_names, exclude=tuple(exclude))
    lat = encode_all(encode, train.images)
    pred = fit_attribute_predictor(lat, y, names, steps=steps, balanced=True)
    return pred, attribute_accuracy(pred, lat, y)


__all__ = ["fit_attribute_predictor", "fit_predictor_for", "fit_predictor_on_attributes"]
