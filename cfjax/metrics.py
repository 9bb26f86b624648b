r"""Evaluation metrics shared by both methods.

Per-example functions return ``[n]`` arrays so they can be masked and summed inside a
sharded step. Perceptual distance and FID take a **pluggable feature network**: no ImageNet
weights can be downloaded here, so cfjax's default backbone is a *domain* classifier trained
in-project with another seed (outputs label it ``"domain backbone"``); its numbers are not
comparable with ImageNet-LPIPS/FID in the papers. Pass any JAX feature function to use yours.

FID is computed from accumulated moments (count, sum, sum of outer products), which merge
across chunks, devices and hosts by addition; the matrix square root is taken on the host in
float64.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


def l1(x: Float[Array, "n h w c"], y: Float[Array, "n h w c"]) -> Float[Array, "n"]:
    """Mean absolute pixel difference per example (images in [0, 1])."""
    return jnp.mean(jnp.abs(x - y), axis=tuple(range(1, x.ndim)))


def l2(x: Float[Array, "n h w c"], y: Float[Array, "n h w c"]) -> Float[Array, "n"]:
    """Euclidean norm of the pixel difference per example."""
    return jnp.sqrt(jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim))))


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius ``ceil(3 sigma)`` by default."""
    radius = int(math.ceil(3 * sigma)) if radius is None else radius
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(images: Float[Array, "n h w c"], sigma: float = 1.0, radius: int | None = None) -> Float[Array, "n h w c"]:
    """Separable Gaussian blur with symmetric ('reflect' in scipy's sense) borders, per channel.

    Matches ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=3)`` per image.
    """
    k = jnp.asarray(gaussian_kernel(sigma, radius))
    r = (k.shape[0] - 1) // 2
    x = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
    h, w = images.shape[1:3]
    x = sum(k[i] * x[:, i : i + h, :, :] for i in range(2 * r + 1))
    x = sum(k[i] * x[:, :, i : i + w, :] for i in range(2 * r + 1))
    return x


def denoised_validity(
    classify: Callable[[Float[Array, "n h w c"]], Float[Array, "n k"]],
    images: Float[Array, "n h w c"],
    target: Int[Array, "n"],
    sigma: float = 1.0,
) -> Float[Array, "n"]:
    """1.0 where the classifier still predicts ``target`` after a Gaussian blur (sigma 1):
    adversarial high-frequency noise does not survive it, semantic changes do."""
    pred = jnp.argmax(classify(gaussian_blur(images, sigma)), axis=-1)
    return (pred == target).astype(jnp.float32)


def validity(logits: Float[Array, "n k"], target: Int[Array, "n"]) -> Float[Array, "n"]:
    """1.0 where ``argmax(logits) == target``."""
    return (jnp.argmax(logits, -1) == target).astype(jnp.float32)


def fail_rate(success: Bool[Array, "n"], mask: Bool[Array, "n"] | None = None) -> Float[Array, ""]:
    """Fraction of (masked-in) examples that never reached their target."""
    m = jnp.ones_like(success, jnp.float32) if mask is None else mask.astype(jnp.float32)
    return jnp.sum((~success).astype(jnp.float32) * m) / jnp.maximum(jnp.sum(m), 1.0)


def perceptual_distance(
    feature_fn: Callable[[Float[Array, "n h w c"]], Sequence[Float[Array, "n hh ww cc"]]],
    x: Float[Array, "n h w c"],
    y: Float[Array, "n h w c"],
) -> Float[Array, "n"]:
    r"""LPIPS-style distance with a pluggable backbone (LPIPS without learned channel weights):
    :math:`\sum_l \mathrm{mean}_{hw} \|\hat f_l(x) - \hat f_l(y)\|^2`, :math:`\hat f` unit-normalised
    over channels at each position."""

    def unit(f):
        return f / jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True) + 1e-10)

    fx, fy = feature_fn(x), feature_fn(y)
    return sum(jnp.mean(jnp.sum((unit(a) - unit(b)) ** 2, axis=-1), axis=(1, 2)) for a, b in zip(fx, fy))


class FidMoments(NamedTuple):
    """Mergeable first/second moments of a feature set: count [], sum [d], outer [d, d]."""

    n: Float[Array, ""]
    sum: Float[Array, "d"]
    outer: Float[Array, "d d"]


def fid_moments_init(d: int, dtype=jnp.float32) -> FidMoments:
    return FidMoments(jnp.zeros((), dtype), jnp.zeros((d,), dtype), jnp.zeros((d, d), dtype))


def fid_moments_update(m: FidMoments, feats: Float[Array, "n d"], mask: Bool[Array, "n"] | None = None) -> FidMoments:
    """Add the (masked-in) rows of ``feats``; padding rows never count."""
    w = jnp.ones(feats.shape[0], feats.dtype) if mask is None else mask.astype(feats.dtype)
    f = feats * w[:, None]  # zero the masked rows (garbage there must not leak, even as NaN*0)
    f = jnp.where(w[:, None] > 0, f, 0.0)
    return FidMoments(m.n + jnp.sum(w), m.sum + jnp.sum(f, 0), m.outer + f.T @ f)


def fid_moments_merge(a: FidMoments, b: FidMoments) -> FidMoments:
    return FidMoments(a.n + b.n, a.sum + b.sum, a.outer + b.outer)


def moments_to_gaussian(m: FidMoments) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (ddof=1) covariance, float64 on the host."""
    n = float(m.n)
    s = np.asarray(m.sum, np.float64)
    o = np.asarray(m.outer, np.float64)
    mu = s / n
    cov = (o - n * np.outer(mu, mu)) / max(n - 1.0, 1.0)
    return mu, cov


def frechet_distance(mu1, s1, mu2, s2) -> float:
    r""":math:`\|\mu_1-\mu_2\|^2 + \mathrm{tr}(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})`, float64,
    via symmetric eigendecompositions (robust to tiny negative eigenvalues)."""
    s1 = (np.asarray(s1, np.float64) + np.asarray(s1, np.float64).T) / 2
    s2 = (np.asarray(s2, np.float64) + np.asarray(s2, np.float64).T) / 2
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = np.sum(np.sqrt(np.clip(ev, 0, None)))
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def fid_from_moments(a: FidMoments, b: FidMoments) -> float:
    """FID between two accumulated feature sets."""
    return frechet_distance(*moments_to_gaussian(a), *moments_to_gaussian(b))


def fid(feats1: Float[Array, "n d"], feats2: Float[Array, "m d"]) -> float:
    """FID between two feature arrays (convenience over the moment functions)."""
    d = feats1.shape[1]
    return fid_from_moments(fid_moments_update(fid_moments_init(d), jnp.asarray(feats1)), fid_moments_update(fid_moments_init(d), jnp.asarray(feats2)))
