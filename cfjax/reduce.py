"""Masked, shardable reductions over the batch axis: the only primitives accumulators use.

Every accumulator in cfjax is a pytree of **sums** over examples. A sum over a batch axis that
is sharded over a ``("data",)`` mesh is an all-reduce inside ``jit``; sums of chunks, devices,
hosts and shards combine by addition, so streaming, resuming and merging are exact.

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


__all__ = ["HIGHEST", "masked_sum", "pair_sums"]
