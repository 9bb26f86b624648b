r"""Aggregated saliency: gradient x input or Integrated Gradients, summed per region, and linear
probes on a classifier's GAP features.

The decision explained is the margin :math:`m(x) = \mathrm{logit}_t(x) - \mathrm{logit}_s(x)` of a
(source, target) pair. Per image:

* **gradient x input**: :math:`a = x \odot \nabla_x m(x)`;
* **Integrated Gradients** from a baseline :math:`x_0` (black by default) with ``steps`` Riemann
  midpoints: :math:`a = (x - x_0) \odot \frac1S \sum_k \nabla_x m(x_0 + \frac{k + 1/2}{S}(x - x_0))`
  (completeness: :math:`\sum a \approx m(x) - m(x_0)`).

Both are single-example functions ``vmap``-ped over a batch (:func:`attributions`).
:func:`region_sums` sums an attribution map inside each region mask (the evidence a spatial cue's
pixels carry for the decision). For cues without a region (global intensity, shape, texture),
:func:`probe_correlation` fits a ridge probe of the cue on the classifier's GAP features and
correlates the probe's reading with the margin over images.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax.errors import bad_arg


def margin_fn(logits: Callable, source, target) -> Callable:
    """``x -> logit_t(x) - logit_s(x)`` for a single-example ``logits``."""
    return lambda x: (lambda l: l[target] - l[source])(logits(x))


def grad_x_input(logits: Callable, x: Float[Array, "h w c"], source, target) -> Float[Array, "h w c"]:
    """Gradient x input of the pair margin for ONE image (``vmap`` it)."""
    return x * jax.grad(margin_fn(logits, source, target))(x)


def integrated_gradients(logits: Callable, x: Float[Array, "h w c"], source, target, *, steps: int = 16,
                         baseline: Float[Array, "h w c"] | None = None) -> Float[Array, "h w c"]:
    """Integrated Gradients of the pair margin for ONE image, midpoint rule with ``steps`` points."""
    x0 = jnp.zeros_like(x) if baseline is None else baseline
    g = jax.grad(margin_fn(logits, source, target))
    alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
    avg = jnp.mean(jax.vmap(lambda a: g(x0 + a * (x - x0)))(alphas), axis=0)
    return (x - x0) * avg


def attributions(logits: Callable, images: Float[Array, "n h w c"], source: int, target: int, *, method: str = "grad_x_input",
                 steps: int = 16, batch: int = 128) -> np.ndarray:
    """Attribution maps of a batch (host array ``[n, h, w, c]``), jitted ``vmap`` in chunks.

    Args:
      logits: single-example ``x -> [K]``.
      images: ``[n, h, w, c]`` in [0, 1].
      source, target: the pair whose margin is explained.
      method: ``"grad_x_input"`` or ``"integrated_gradients"``.
      steps: Integrated Gradients' points.
      batch: chunk size.
    """
    if method == "grad_x_input":
        one = lambda x: grad_x_input(logits, x, source, target)  # noqa: E731
    elif method == "integrated_gradients":
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise bad_arg("steps", repr(steps), "a positive integer")
        one = lambda x: integrated_gradients(logits, x, source, target, steps=steps)  # noqa: E731
    else:
        raise bad_arg("method", repr(method), "'grad_x_input' or 'integrated_gradients'")
    f = jax.jit(jax.vmap(one))
    images = np.asarray(images, np.float32)
    return np.concatenate([np.asarray(f(jnp.asarray(images[s : s + batch]))) for s in range(0, len(images), batch)])


def region_sums(attr: Float[Array, "n h w c"], regions: dict) -> dict:
    """``{name: [n]}`` the attribution summed inside each ``[h, w]`` bool region (all channels)."""
    a = np.asarray(attr).sum(-1)
    out = {}
    for name, m in regions.items():
        m = np.asarray(m, bool)
        if m.shape != a.shape[1:]:
            raise bad_arg(f"regions[{name!r}]", f"shape {m.shape}", f"an [h, w] mask of shape {a.shape[1:]}")
        out[name] = a[:, m].sum(1)
    return out


def fit_probe(features: Float[Array, "n C"], values: Float[Array, "n"], l2: float = 1e-2) -> tuple[np.ndarray, float]:
    """Ridge probe ``values ~ features @ beta + c`` on standardised features (host, float64).

    Returns ``(beta [C], c)`` for RAW features."""
    f = np.asarray(features, np.float64)
    v = np.asarray(values, np.float64)
    if f.ndim != 2 or v.shape != (len(f),) or len(f) < 3:
        raise bad_arg("features, values", f"shapes {f.shape}, {v.shape}", "[n, C] and [n] with n >= 3")
    mu, sd = f.mean(0), f.std(0) + 1e-8
    fs = (f - mu) / sd
    beta = np.linalg.solve(fs.T @ fs + l2 * len(f) * np.eye(f.shape[1]), fs.T @ (v - v.mean()))
    return beta / sd, float(v.mean() - (mu / sd) @ beta)


def probe_correlation(train_features, train_values, features, margins) -> tuple[float, float]:
    """Fit a probe of a cue on training GAP features, then correlate its reading with the decision
    margin over (held-out) images: ``(r, z)`` with ``z = |atanh r| sqrt(n - 3)``."""
    beta, c = fit_probe(train_features, train_values)
    reading = np.asarray(features, np.float64) @ beta + c
    m = np.asarray(margins, np.float64)
    if reading.std() < 1e-12 or m.std() < 1e-12 or len(m) < 4:
        return 0.0, 0.0
    r = float(np.corrcoef(reading, m)[0, 1])
    return r, float(abs(np.arctanh(np.clip(r, -0.999999, 0.999999))) * np.sqrt(len(m) - 3))


__all__ = ["attributions", "fit_probe", "grad_x_input", "integrated_gradients", "margin_fn", "probe_correlation", "region_sums"]
