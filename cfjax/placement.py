"""Inputs placed however the caller placed them: one layout for a compiled batch call.

A user's arrays may arrive with any sharding: a ``NamedSharding`` on an **Explicit** or **Auto**
``jax.make_mesh`` mesh with any axis names, committed single-device arrays, or host numpy. cfjax's
compiled calls (:class:`cfjax.Attack`, :class:`cfjax.MirrorCFE`) run on batch-sharded inputs with
Auto axes, where XLA decides the collectives; in Explicit mode JAX instead asks every gather for
an output sharding (a ``ShardingTypeError``), and a vmap over arrays committed to different
devices fails. :func:`align_batch` makes the layout one:

* the **reference** is the first input sharded along its leading (batch) axis;
* a reference on a mesh with Explicit axes is viewed through the same mesh with Auto axes (same
  devices, same spec: no data moves);
* the other inputs follow it: batch-long arrays are sharded like it, the rest replicated on its
  mesh (a committed single-device ``source`` beside a sharded ``x``, say);
* without a sharded input, arrays committed to different devices are all put on the first one's.

The returned ``restore`` puts outputs back on the caller's own mesh (Explicit again), so code on
either side sees only its own mesh type. Traced inputs (a call inside the caller's own ``jit``) pass
through untouched: there the caller's sharding rules apply.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _named(x) -> NamedSharding | None:
    s = getattr(x, "sharding", None)
    return s if isinstance(s, NamedSharding) else None


def _batch_sharded(x) -> bool:
    s = _named(x)
    return s is not None and getattr(x, "ndim", 0) >= 1 and len(s.spec) >= 1 and s.spec[0] is not None


def auto_twin(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis Auto (same devices, names and shape; ``mesh`` itself if it is)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _follow(x, mesh: Mesh, batch_axis, n: int):
    """``x`` on ``mesh``: sharded on its leading axis like the batch when it is ``n`` long and
    divides evenly, replicated otherwise; host values and Python scalars pass through."""
    if not isinstance(x, jax.Array):
        return x
    s = _named(x)
    if s is not None and s.mesh.devices.shape == mesh.devices.shape and np.array_equal(s.mesh.devices, mesh.devices):
        return jax.device_put(x, NamedSharding(mesh, s.spec))  # the same layout on the Auto view
    size = int(np.prod([mesh.shape[a] for a in (batch_axis if isinstance(batch_axis, tuple) else (batch_axis,))]))
    lead = x.ndim >= 1 and x.shape[0] == n and n % size == 0
    return jax.device_put(x, NamedSharding(mesh, P(batch_axis) if lead else P()))


def align_batch(*arrays: Any) -> tuple[tuple, Callable[[Any], Any]]:
    """One layout for a batch call's inputs (see the module docstring).

    Args:
      arrays: the call's inputs, leading axis the batch (``None`` and host values allowed).

    Returns:
      ``(arrays, restore)``: the inputs, laid out as one; ``restore(tree)`` puts a result pytree back
      on the caller's mesh (the identity when nothing was moved to another mesh type).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> (x, t), restore = align_batch(jnp.zeros((4, 3)), jnp.zeros(4, int))
      >>> x.shape, restore(x) is x
      ((4, 3), True)
    """
    if any(isinstance(a, jax.core.Tracer) for a in arrays):  # under the caller's own jit: its layout rules
        return tuple(arrays), lambda tree: tree
    ref = next((a for a in arrays if isinstance(a, jax.Array) and _batch_sharded(a)), None)
    if ref is None:
        return _same_device(arrays), lambda tree: tree
    s = _named(ref)
    mesh = auto_twin(s.mesh)
    out = tuple(_follow(a, mesh, s.spec[0], ref.shape[0]) for a in arrays)
    if mesh is s.mesh:
        return out, lambda tree: tree

    def restore(tree):
        def back(a):
            sa = _named(a)
            if sa is not None and sa.mesh is mesh:
                return jax.device_put(a, NamedSharding(s.mesh, sa.spec))
            return a

        return jax.tree_util.tree_map(back, tree)

    return out, restore


def _same_device(arrays: Sequence) -> tuple:
    """Arrays committed to different single devices, all put on the first one's device."""
    devs = [next(iter(a.devices())) for a in arrays if isinstance(a, jax.Array) and len(a.devices()) == 1 and getattr(a, "committed", False)]
    if len(set(devs)) <= 1:
        return tuple(arrays)
    return tuple(jax.device_put(a, devs[0]) if isinstance(a, jax.Array) and len(a.devices()) == 1 else a for a in arrays)


__all__ = ["align_batch", "auto_twin"]
