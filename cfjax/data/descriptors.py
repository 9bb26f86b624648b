r"""Morphometric image descriptors (Morpho-MNIST-like), in JAX so they jit/vmap on device.

They turn an image into a few interpretable numbers ("how thick", "how slanted"), so the
counterfactual-attack attribution works on MNIST / Fashion-MNIST without any labels beyond the
images: the descriptors are binarised (:func:`binarize`) and used as binary attributes for the
latent logistic predictors, and they can be recomputed on decoded counterfactuals on device.

Conventions. Images are ``[n, h, w, c]`` floats in [0, 1]. The grey image :math:`I` is the
single channel when ``c == 1``, the ITU-R 601 luminance :math:`0.299R + 0.587G + 0.114B` when
``c == 3`` and the channel mean otherwise. Row :math:`r` runs downwards, column :math:`c`
rightwards, both in pixels. The foreground mask is :math:`m = [I > \tau]` with :math:`\tau = 0.5`
for digits (Morpho-MNIST's threshold) and :math:`\tau = 0.1` for clothing (Fashion-MNIST
garments are often dark grey; at 0.5 a dark coat loses a third of its silhouette).

Digits (``kind="digits"``), in this order:

* ``area``: :math:`A = \sum m`, foreground pixel count.
* ``thickness``: with :math:`P` the 4-neighbour perimeter (number of foreground/background
  transitions between horizontally or vertically adjacent pixels, the image border counting as
  background), the stroke is modelled as an :math:`L \times k` ribbon, :math:`A = Lk`,
  :math:`P = 2(L + k)`, and the smaller root is reported:
  :math:`k = P/4 - \sqrt{P^2/16 - A}` (never negative under the root for pixel sets). Exact for a
  filled k-pixel-wide bar; for long strokes it tends to :math:`2A/P`; a closed ring of width k
  gives ~k. Diagonal strokes read somewhat thinner (the 4-neighbour perimeter over-counts
  staircases).
* ``slant``: Morpho-MNIST's shear angle from the central moments of the **intensity** (not the
  mask): :math:`\bar r, \bar c` the intensity centroid,
  :math:`\mu_{11} = \sum I (r-\bar r)(c-\bar c)`,
  :math:`\mu_{02} = \sum I (r-\bar r)^2 + \sum I / 12`, shear
  :math:`s = \mu_{11}/\mu_{02}` (columns moved per row downwards) and
  ``slant`` :math:`= \arctan(-s)` in radians, **positive when the top leans right** (italic).
  The :math:`\sum I/12` term is each pixel's own second moment (the exact moments of the
  piecewise-constant image); it keeps one-row shapes well defined (slant 0) and changes
  ordinary digits' slant by < 1%.
* ``width`` / ``height``: number of columns / rows of the bounding box of the mask
  (``last - first + 1``; 0 for an empty mask).

Clothing (``kind="clothing"``), in this order:

* ``area``, ``width``, ``height``: as above (with :math:`\tau = 0.1`).
* ``brightness``: mean intensity over the mask, :math:`\sum I m / \max(A, 1)`.
* ``symmetry``: :math:`1 - \mathrm{mean}\,|I - \mathrm{fliplr}(I)|` (1 for a left-right
  symmetric image).
* ``edges``: edge density, the mean over pixels of the forward-difference gradient magnitude
  :math:`\sqrt{(I_{r+1,c}-I_{r,c})^2 + (I_{r,c+1}-I_{r,c})^2}` (the last row/column dropped).
* ``top_heaviness``: share of the intensity mass in the top :math:`\lfloor h/2 \rfloor` rows.

For attribute predictors the descriptors are binarised at a **balanced median split** fitted on
the training set (:func:`fit_standardizer`, :func:`binarize`): "thicker than the typical digit".
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax._checks import check_images
from cfjax.errors import bad_arg

DIGITS: tuple[str, ...] = ("area", "thickness", "slant", "width", "height")
CLOTHING: tuple[str, ...] = ("area", "brightness", "symmetry", "width", "height", "edges", "top_heaviness")
DEFAULT_THRESHOLD = {"digits": 0.5, "clothing": 0.1}
_LUMA = (0.299, 0.587, 0.114)


def descriptor_names(kind: str = "digits") -> tuple[str, ...]:
    """Names of the descriptors of ``kind``, in the column order of :func:`compute_descriptors`.

    Args:
      kind: ``"digits"`` (MNIST) or ``"clothing"`` (Fashion-MNIST).

    Returns:
      A tuple of names.

    Example:
      >>> descriptor_names("digits")
      ('area', 'thickness', 'slant', 'width', 'height')
    """
    if kind not in DEFAULT_THRESHOLD:
        raise bad_arg("kind", repr(kind), "'digits' or 'clothing'")
    return DIGITS if kind == "digits" else CLOTHING


def _grey(img: Float[Array, "h w c"]) -> Float[Array, "h w"]:
    c = img.shape[-1]
    if c == 1:
        return img[..., 0]
    if c == 3:
        return jnp.tensordot(img, jnp.asarray(_LUMA, img.dtype), axes=([-1], [0]))
    return jnp.mean(img, axis=-1)


def _extent(on: Array) -> Array:
    """Bounding extent (``last - first + 1``, 0 if none) of a boolean vector."""
    n = on.shape[0]
    idx = jnp.arange(n)
    first = jnp.min(jnp.where(on, idx, n))
    last = jnp.max(jnp.where(on, idx, -1))
    return jnp.maximum(last - first + 1, 0).astype(jnp.float32)


def _one(img: Float[Array, "h w c"], kind: str, threshold) -> Float[Array, "a"]:
    g = _grey(img)
    h, w = g.shape
    m = (g > threshold).astype(jnp.float32)
    area = jnp.sum(m)
    width = _extent(jnp.any(m > 0, axis=0))
    height = _extent(jnp.any(m > 0, axis=1))
    mass = jnp.sum(g)
    safe_mass = jnp.maximum(mass, 1e-6)
    if kind == "digits":
        mp = jnp.pad(m, 1)
        perim = jnp.sum(jnp.abs(jnp.diff(mp, axis=0))) + jnp.sum(jnp.abs(jnp.diff(mp, axis=1)))
        # sqrt floored away from 0 so that a (meaningless) gradient through it is not NaN
        thickness = jnp.maximum(perim / 4.0 - jnp.sqrt(jnp.maximum(perim**2 / 16.0 - area, 1e-12)), 0.0)
        r = jnp.arange(h, dtype=jnp.float32)[:, None]
        c = jnp.arange(w, dtype=jnp.float32)[None, :]
        rb, cb = jnp.sum(g * r) / safe_mass, jnp.sum(g * c) / safe_mass
        mu11 = jnp.sum(g * (r - rb) * (c - cb))
        mu02 = jnp.sum(g * (r - rb) ** 2) + safe_mass / 12.0
        slant = jnp.arctan((0.0 - mu11) / mu02)  # 0.0 - x: no "-0.0" for upright shapes
        return jnp.stack([area, thickness, slant, width, height])
    brightness = jnp.sum(g * m) / jnp.maximum(area, 1.0)
    symmetry = 1.0 - jnp.mean(jnp.abs(g - g[:, ::-1]))
    gy, gx = jnp.diff(g, axis=0)[:, :-1], jnp.diff(g, axis=1)[:-1, :]
    edges = jnp.mean(jnp.sqrt(gx**2 + gy**2 + 1e-12)) - 1e-6  # eps: finite gradient at 0
    top = jnp.sum(g[: h // 2]) / safe_mass
    return jnp.stack([area, brightness, symmetry, width, height, edges, top])


def compute_descriptors(
    images: Float[Array, "n h w c"], kind: str = "digits", *, threshold: float | None = None
) -> Float[Array, "n a"]:
    """Raw (unstandardised) descriptors of a batch; formulas in the module docstring.

    Pure JAX: jit it (``kind`` static) or call it inside a jitted/vmapped/sharded step, e.g. on
    the decoded counterfactuals. Rows are independent, so a batch equals the per-image results.

    Args:
      images: ``[n, h, w, c]`` float images in [0, 1] (values are range-checked only when a
        host numpy array is passed).
      kind: ``"digits"`` or ``"clothing"``; see :func:`descriptor_names` for the columns.
      threshold: foreground threshold :math:`\\tau` on the grey image (a static Python float);
        ``None`` means 0.5 for digits and 0.1 for clothing.

    Returns:
      ``[n, a]`` float32, columns in the order of ``descriptor_names(kind)``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.zeros((1, 28, 28, 1)).at[0, 4:24, 12:15].set(1.0)   # a 3-px-wide bar
      >>> d = compute_descriptors(x)
      >>> [round(float(v), 2) for v in d[0]]  # area, thickness, slant, width, height
      [60.0, 3.0, 0.0, 3.0, 20.0]
    """
    descriptor_names(kind)
    check_images(images, "images", check_range=isinstance(images, np.ndarray))
    tau = float(DEFAULT_THRESHOLD[kind] if threshold is None else threshold)
    return _compute_jit(jnp.asarray(images, jnp.float32), kind, tau)


@functools.partial(jax.jit, static_argnames=("kind", "threshold"))
def _compute_jit(images, kind, threshold):
    return jax.vmap(lambda im: _one(im, kind, threshold))(images)


def compute_descriptors_np(
    images: np.ndarray, kind: str = "digits", batch: int = 2048, *, threshold: float | None = None
) -> np.ndarray:
    """:func:`compute_descriptors` over a large host array, in jitted chunks of ``batch``.

    The last chunk is padded to ``batch`` so one compilation serves the whole array.

    Args:
      images: ``[n, h, w, c]`` host float array in [0, 1].
      kind: ``"digits"`` or ``"clothing"``.
      batch: chunk size.
      threshold: as in :func:`compute_descriptors`.

    Returns:
      ``[n, a]`` float32 numpy array.

    Example:
      >>> x = np.zeros((5, 28, 28, 1), np.float32); x[:, 5:9, 5:15] = 1
      >>> compute_descriptors_np(x, batch=2)[:, 3].tolist()   # width
      [10.0, 10.0, 10.0, 10.0, 10.0]
    """
    descriptor_names(kind)
    images = np.asarray(images)
    check_images(images, "images")
    n = images.shape[0]
    batch = min(int(batch), n)
    out = []
    for s in range(0, n, batch):
        chunk = images[s : s + batch]
        k = chunk.shape[0]
        if k < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - k, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(compute_descriptors(chunk, kind, threshold=threshold))[:k])
    return np.concatenate(out)


class Standardizer(NamedTuple):
    """Statistics of (training) descriptor values, one entry per descriptor.

    Attributes:
      mean: ``[a]`` float32 mean.
      std: ``[a]`` float32 standard deviation (ddof 0, floored at 1e-6).
      threshold: ``[a]`` float32 binarisation threshold: the balanced median split (see
        :func:`fit_standardizer`).
    """

    mean: np.ndarray
    std: np.ndarray
    threshold: np.ndarray


def _balanced_split(v: np.ndarray) -> float:
    """Threshold t (a midpoint between distinct values) making ``mean(v > t)`` closest to 1/2.

    For continuous values this is the median; for tied values (integer widths, say) it is the
    cut through the ties that best balances the two classes, where ``v > median`` might put
    almost everything in one class.
    """
    u = np.unique(v)
    if u.size == 1:
        return float(u[0])
    cands = (u[:-1] + u[1:]) / 2.0
    above = 1.0 - np.searchsorted(np.sort(v), cands, side="right") / v.size
    return float(cands[np.argmin(np.abs(above - 0.5))])


def fit_standardizer(values: Float[Array, "n a"]) -> Standardizer:
    """Fit mean, std and the binarisation threshold on (training) descriptor values (host, float64).

    The threshold of each descriptor is the **balanced median split**: among the midpoints
    between consecutive distinct values, the one whose "above" share is closest to 1/2 (exactly
    the median for continuous values; for heavily tied values such as integer ``height`` it
    still splits the data as evenly as the ties allow).

    Args:
      values: ``[n, a]`` raw descriptors of the training images, ``n >= 2``.

    Returns:
      A :class:`Standardizer`.

    Example:
      >>> st = fit_standardizer(np.array([[1.0], [2.0], [3.0], [4.0]]))
      >>> float(st.mean[0]), float(st.threshold[0])
      (2.5, 2.5)
    """
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise bad_arg("values", f"shape {v.shape}", "a [n, a] array with n >= 2")
    if not np.all(np.isfinite(v)):
        raise bad_arg("values", f"{int(np.size(v) - np.isfinite(v).sum())} non-finite values", "finite values")
    thr = np.array([_balanced_split(v[:, j]) for j in range(v.shape[1])])
    return Standardizer(
        v.mean(0).astype(np.float32), np.maximum(v.std(0), 1e-6).astype(np.float32), thr.astype(np.float32)
    )


def standardize(values: Float[Array, "n a"], st: Standardizer) -> Float[Array, "n a"]:
    """``(values - mean) / std`` (jit-friendly).

    Example:
      >>> st = Standardizer(np.array([1.0]), np.array([2.0]), np.array([1.0]))
      >>> float(standardize(jnp.array([[5.0]]), st)[0, 0])
      2.0
    """
    return (jnp.asarray(values) - st.mean) / st.std


def binarize(values: Float[Array, "n a"], st: Standardizer) -> Float[Array, "n a"]:
    """``values > threshold`` as float32 {0, 1}: binary attributes for logistic predictors.

    Example:
      >>> st = fit_standardizer(np.array([[1.0], [2.0], [3.0], [4.0]]))
      >>> binarize(np.array([[1.5], [3.5]]), st).ravel().tolist()
      [0.0, 1.0]
    """
    return (jnp.asarray(values) > st.threshold).astype(jnp.float32)
