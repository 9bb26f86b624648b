"""Masked, shardable reductions over the batch axis: the only primitives accumulators use.

Every accumulator in cfjax is a pytree of **sums** over examples. A sum over a batch axis that
is sharded over a ``("data",)`` mesh is an all-reduce inside ``jit``; sums of chunks, devices,
hosts and shards combine by addition, so streaming, resuming and merging are exact.

Spreads are the one exception: a variance from a sum of squares, ``sum(x^2)/n - mean^2``,
cancels catastrophically when the values are nearly equal (float32 keeps 7 digits of ``x^2``,
so a std of equal values comes out ~3e-4 |x| instead of 0). Spreads are therefore carried as
``(count, sum, M2)`` with ``M2`` the sum of squared deviations from the part's own mean
(:func:`pair_moments`), and parts combine with Chan et al.'s parallel formula
(:func:`chan_merge`), which adds only non-negative terms.

Example:
  >>> import jax.numpy as jnp
  >>> v = jnp.array([1.0, 2.0, jnp.nan]); w = jnp.array([1.0, 1.0, 0.0])
  >>> float(masked_sum(v, w))
  3.0
  >>> pair_sums(jnp.array([1.0, 2.0]), jnp.array([0, 1]), jnp.array([1, 0]), jnp.ones(2), 2).tolist()
  [0.0, 1.0, 2.0, 0.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

HIGHEST = jax.lax.Precision.HIGHEST
"""Exact float32 products in reductions (no TF32 on GPUs)."""


def masked_sum(value: Float[Array, "n ..."], weight: Float[Array, "n"]) -> Float[Array, "..."]:
    """``sum_i weight_i * value_i`` over the leading axis; rows with ``weight == 0`` never
    contribute, even when their value is NaN/Inf (padding holds garbage)."""
    value = jnp.asarray(value, jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    w = weight.reshape(weight.shape + (1,) * (value.ndim - 1))
    return jnp.sum(jnp.where(w > 0, value * w, 0.0), axis=0)


def pair_sums(
    value: Float[Array, "n ..."],
    source: Int[Array, "n"],
    target: Int[Array, "n"],
    weight: Float[Array, "n"],
    num_classes: int,
) -> Float[Array, "P ..."]:
    """Per (source, target) slot ``s * K + t`` of ``P = K * K``: ``sum_i [slot_i = p] w_i v_i``.

    One one-hot contraction over the batch axis (NaN-safe like :func:`masked_sum`); ``value``
    may carry trailing axes (e.g. ``[n, A]`` attribute scores give ``[P, A]``).
    """
    value = jnp.asarray(value, jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    w = weight.reshape(weight.shape + (1,) * (value.ndim - 1))
    v = jnp.where(w > 0, value * w, 0.0)
    oh = jax.nn.one_hot(source * num_classes + target, num_classes * num_classes, dtype=jnp.float32)
    return jnp.einsum("np,n...->p...", oh, v, precision=HIGHEST)


def pair_moments(
    value: Float[Array, "n ..."],
    source: Int[Array, "n"],
    target: Int[Array, "n"],
    weight: Float[Array, "n"],
    num_classes: int,
) -> tuple[Float[Array, "P"], Float[Array, "P ..."], Float[Array, "P ..."]]:
    """Per pair slot (as :func:`pair_sums`) the batch's ``(count, sum, M2)``: ``M2`` is the sum
    of squared deviations from the slot's own batch mean, computed in two passes (centred first,
    then squared), so equal values give an M2 at the rounding of their float32 mean (not the
    ~sqrt(eps) |x| std that a sum of squares leaves). Weights must be 0 or 1."""
    value = jnp.asarray(value, jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    count = pair_sums(jnp.ones_like(weight), source, target, weight, num_classes)
    total = pair_sums(value, source, target, weight, num_classes)
    c = count.reshape(count.shape + (1,) * (total.ndim - 1))
    mean = total / jnp.maximum(c, 1.0)
    dev = value - mean[source * num_classes + target]
    return count, total, pair_sums(dev * dev, source, target, weight, num_classes)


def chan_merge(count_a, sum_a, m2_a, count_b, sum_b, m2_b):
    r"""Combine two parts' ``(count, sum, M2)`` (Chan, Golub & LeVeque's parallel formula).

    .. math:: M_2 = M_{2,a} + M_{2,b} + \delta^2 \frac{n_a n_b}{n_a + n_b},\quad
              \delta = \bar x_b - \bar x_a

    Every term is non-negative, so no cancellation; empty parts (``n = 0``) contribute nothing.
    ``count`` has shape ``[P]`` and broadcasts over the trailing axes of ``sum``/``M2``. Works on
    numpy and JAX arrays alike (shard merges run on the host).

    Example:
      >>> import numpy as np
      >>> x = np.array([1.0, 2.0, 4.0, 7.0]); a, b = x[:1], x[1:]
      >>> m = chan_merge(np.array([1.0]), a.sum(keepdims=True), np.zeros(1), np.array([3.0]), b.sum(keepdims=True), ((b - b.mean())**2).sum(keepdims=True))
      >>> float(m[2][0]) == float(((x - x.mean())**2).sum())
      True
    """
    xp = jnp if any(isinstance(v, jax.Array) for v in (count_a, sum_a, m2_a, count_b, sum_b, m2_b)) else np
    count = count_a + count_b
    shape = count.shape + (1,) * (xp.ndim(sum_a) - xp.ndim(count_a))
    na, nb, n = (xp.reshape(v, shape) for v in (count_a, count_b, count))
    delta = sum_b / xp.maximum(nb, 1.0) - sum_a / xp.maximum(na, 1.0)
    cross = xp.where((na > 0) & (nb > 0), delta * delta * (na * nb / xp.maximum(n, 1.0)), 0.0)
    return count, sum_a + sum_b, m2_a + m2_b + cross


__all__ = ["HIGHEST", "chan_merge", "masked_sum", "pair_moments", "pair_sums"]
