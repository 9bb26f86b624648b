"""Locating the first counterfactual between two grid points (Mirror-CFE).

:func:`cfjax.methods.mirror.first_counterfactual` returns the first grid ``k > 0.5`` whose decoded
image is classified as the target, so with the default 0.05 grid every counterfactual sits at
0.55, 0.60, ...: the grid, not the method, decides where. :func:`locate_crossing` bisects the
bracket ``(k_lo, k_hi]`` -- the last grid point that is not a counterfactual and the first that
is -- down to ``|k_hi - k_lo| <= tol`` with a fixed number of decodes, so it is ``jax.vmap``-able
and compiles to one loop. Pure; no training, no I/O.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class Located(NamedTuple):
    """Result of :func:`locate_crossing` for one example.

    Attributes:
      k: [] the located ``k`` (the upper end of the final bracket: a point that *is* a
        counterfactual), the input ``k_hi`` when nothing was bisected.
      x: [H, W, c] the image decoded at ``k``.
      width: [] the final bracket width ``k_hi - k_lo`` (``<= tol`` after the loop).
      decodes: int [] the decodes spent (the static count, 0 when ``active`` is False).
    """

    k: Float[Array, ""]
    x: Float[Array, "H W c"]
    width: Float[Array, ""]
    decodes: Int[Array, ""]


def bisection_steps(width: float, tol: float) -> int:
    """The number of halvings that bring a bracket of ``width`` down to ``<= tol``:
    ``ceil(log2(width / tol))`` (0 when it already is). For the 0.05 grid and ``tol = 1e-3``: 6."""
    if not (width > 0 and tol > 0):
        raise ValueError(f"width and tol: expected positive numbers, got {width!r}, {tol!r}")
    return max(0, math.ceil(math.log2(width / tol) - 1e-12))


def locate_crossing(
    decode_at: Callable[[Float[Array, ""]], Float[Array, "H W c"]],
    is_counterfactual: Callable[[Float[Array, "H W c"]], Bool[Array, ""]],
    k_lo: Float[Array, ""],
    k_hi: Float[Array, ""],
    x_hi: Float[Array, "H W c"],
    *,
    steps: int,
    active: Bool[Array, ""] | bool = True,
) -> Located:
    """Bisect ``(k_lo, k_hi]`` for where the decoded image becomes a counterfactual.

    Invariant: ``decode_at(k_hi)`` is a counterfactual (``x_hi`` is that image) and ``k_lo`` is
    not (or is the decision boundary 0.5, below which no counterfactual is searched). Each of the
    ``steps`` iterations decodes the midpoint and keeps the half whose ends still disagree, so the
    result is a counterfactual within ``(k_hi - k_lo) / 2**steps`` of a point that is not.
    When the decoded class is not monotone in ``k`` inside the bracket, this finds *a* crossing in
    it (the bracket is one grid step, so every crossing in it is within that step).

    Args:
      decode_at: ``k -> x`` the (composed) image at ``k`` on this example's path.
      is_counterfactual: ``x -> bool`` the counterfactual rule (the classifier assigns the
        target; with a threshold, confidently).
      k_lo, k_hi: the bracket (scalars; ``k_lo < k_hi``).
      x_hi: the image at ``k_hi``.
      steps: the static number of decodes (:func:`bisection_steps`).
      active: False (e.g. no counterfactual was found on the grid): return ``(k_hi, x_hi)``
        unchanged with ``decodes = 0`` (the loop still runs under ``vmap``; its result is
        discarded).

    Returns:
      :class:`Located`.

    Example:
      >>> import jax.numpy as jnp
      >>> dec = lambda k: jnp.full((1, 1, 1), k)          # the "image" is k itself
      >>> cf = lambda x: x[0, 0, 0] >= 0.5371             # a counterfactual from k = 0.5371
      >>> r = locate_crossing(dec, cf, jnp.float32(0.5), jnp.float32(0.55), dec(0.55), steps=6)
      >>> bool(0.5371 <= r.k <= 0.5371 + 1e-3), int(r.decodes)
      (True, 6)
    """
    k_lo = jnp.asarray(k_lo, jnp.float32)
    k_hi = jnp.asarray(k_hi, jnp.float32)

    def body(_, carry):
        lo, hi, x = carry
        mid = 0.5 * (lo + hi)
        xm = decode_at(mid)
        cf = is_counterfactual(xm)
        return jnp.where(cf, lo, mid), jnp.where(cf, mid, hi), jnp.where(cf, xm, x)

    lo, hi, x = jax.lax.fori_loop(0, int(steps), body, (k_lo, k_hi, jnp.asarray(x_hi)))
    active = jnp.asarray(active, bool)
    return Located(
        k=jnp.where(active, hi, k_hi),
        x=jnp.where(active, x, x_hi),
        width=jnp.where(active, hi - lo, k_hi - k_lo),
        decodes=jnp.where(active, int(steps), 0).astype(jnp.int32),
    )


__all__ = ["Located", "bisection_steps", "locate_crossing"]
