r"""Morphometric image descriptors (Morpho-MNIST-like), in JAX so they jit/vmap on device.

All operate on images in [0, 1] (RGB is averaged to grey). With the foreground mask
:math:`m = [I > 0.5]`, row index :math:`r` (downwards) and column :math:`c`:

* ``area``: :math:`\sum m` (pixels).
* ``thickness``: :math:`2\,\mathrm{area} / \mathrm{perimeter}`, perimeter = number of
  4-neighbour foreground/background transitions (a k-pixel-wide long bar gives ~k).
* ``slant``: :math:`\arctan(-\mu_{11}/\mu_{02})` from intensity central moments (radians,
  > 0 when the top leans right), Morpho-MNIST's shear.
* ``width``/``height``: extent of the foreground's bounding box (columns / rows).
* clothing extras: ``brightness`` (mean foreground intensity), ``symmetry``
  (:math:`1 - \mathrm{mean}|I - \mathrm{fliplr}(I)|`), ``edges`` (mean gradient magnitude),
  ``top_heaviness`` (share of the intensity mass in the top half).

For attribute predictors the descriptors are standardised and **binarised at the training
median** (:func:`binarize`): "thicker than the median digit" and so on.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax.errors import bad_arg

DIGITS = ("area", "thickness", "slant", "width", "height")
CLOTHING = ("area", "brightness", "symmetry", "width", "height", "edges", "top_heaviness")


def descriptor_names(kind: str = "digits") -> tuple[str, ...]:
    """Names of the descriptors of ``kind`` (``"digits"`` or ``"clothing"``)."""
    if kind not in ("digits", "clothing"):
        raise bad_arg("kind", repr(kind), "'digits' or 'clothing'")
    return DIGITS if kind == "digits" else CLOTHING


def _extent(any_on: Float[Array, "n"]) -> Float[Array, ""]:
    idx = jnp.arange(any_on.shape[0])
    first = jnp.min(jnp.where(any_on, idx, any_on.shape[0]))
    last = jnp.max(jnp.where(any_on, idx, -1))
    return jnp.maximum(last - first + 1, 0).astype(jnp.float32)


def _one(img: Float[Array, "h w c"], kind: str) -> Float[Array, "a"]:
    g = jnp.mean(img, axis=-1)
    h, w = g.shape
    m = (g > 0.5).astype(jnp.float32)
    area = jnp.sum(m)
    mp = jnp.pad(m, 1)
    perim = jnp.sum(jnp.abs(jnp.diff(mp, axis=0))) + jnp.sum(jnp.abs(jnp.diff(mp, axis=1)))
    thickness = 2.0 * area / jnp.maximum(perim, 1.0)
    r = jnp.arange(h, dtype=jnp.float32)[:, None]
    c = jnp.arange(w, dtype=jnp.float32)[None, :]
    mass = jnp.maximum(jnp.sum(g), 1e-6)
    rb, cb = jnp.sum(g * r) / mass, jnp.sum(g * c) / mass
    mu11 = jnp.sum(g * (r - rb) * (c - cb))
    mu02 = jnp.maximum(jnp.sum(g * (r - rb) ** 2), 1e-6)
    slant = jnp.arctan(-mu11 / mu02)
    width = _extent(jnp.any(m > 0, axis=0))
    height = _extent(jnp.any(m > 0, axis=1))
    if kind == "digits":
        return jnp.stack([area, thickness, slant, width, height])
    brightness = jnp.sum(g * m) / jnp.maximum(area, 1.0)
    symmetry = 1.0 - jnp.mean(jnp.abs(g - g[:, ::-1]))
    gy, gx = jnp.diff(g, axis=0)[:, :-1], jnp.diff(g, axis=1)[:-1, :]
    edges = jnp.mean(jnp.sqrt(gx**2 + gy**2))
    top = jnp.sum(g[: h // 2]) / mass
    return jnp.stack([area, brightness, symmetry, width, height, edges, top])


def compute_descriptors(images: Float[Array, "n h w c"], kind: str = "digits") -> Float[Array, "n a"]:
    """Raw (unstandardised) descriptors of a batch; see the module docstring for formulas.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.zeros((1, 28, 28, 1)).at[0, 4:24, 12:15].set(1.0)   # a 3-px-wide bar
      >>> d = compute_descriptors(x)
      >>> [round(float(v), 2) for v in d[0]]  # area, thickness, slant, width, height
      [60.0, 2.61, 0.0, 3.0, 20.0]
    """
    descriptor_names(kind)
    if images.ndim != 4:
        raise bad_arg("images", f"shape {tuple(images.shape)}", "a rank-4 NHWC batch")
    return jax.vmap(lambda x: _one(x, kind))(jnp.asarray(images, jnp.float32))


def compute_descriptors_np(images: np.ndarray, kind: str = "digits", batch: int = 2048) -> np.ndarray:
    """:func:`compute_descriptors` over a large host array in jitted chunks."""
    f = jax.jit(lambda x: compute_descriptors(x, kind))
    out = [np.asarray(f(images[s : s + batch])) for s in range(0, len(images), batch)]
    return np.concatenate(out)


class Standardizer(NamedTuple):
    """Per-descriptor ``mean``, ``std`` and the binarisation ``threshold`` (the median), [A] each."""

    mean: np.ndarray
    std: np.ndarray
    threshold: np.ndarray


def fit_standardizer(values: Float[Array, "n a"]) -> Standardizer:
    """Fit mean/std/median on (training) descriptor values."""
    v = np.asarray(values, np.float64)
    return Standardizer(v.mean(0).astype(np.float32), np.maximum(v.std(0), 1e-6).astype(np.float32), np.median(v, 0).astype(np.float32))


def standardize(values, st: Standardizer):
    """``(values - mean) / std``."""
    return (values - st.mean) / st.std


def binarize(values, st: Standardizer):
    """``values > median`` as float32 {0, 1}: binary attributes for logistic predictors."""
    return (values > st.threshold).astype(jnp.float32)
