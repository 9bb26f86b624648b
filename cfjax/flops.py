"""Count the floating-point operations of a JAX function from its jaxpr.

XLA's ``compiled.cost_analysis()["flops"]`` is backend-dependent and, on CPU, counts
convolutions that XLA rewrote into custom calls (oneDNN) as zero and loop bodies once, which
made the benchmark's FLOPs per counterfactual ~60x too small. This counter walks the jaxpr
(including ``jit``/``custom_vjp``/``scan``/``while`` bodies: a ``scan`` body times its length,
a ``while`` body once, as its trip count is not static) and counts the dense work only:

* ``dot_general``: ``2 * prod(output) * prod(contracted dims)``;
* ``conv_general_dilated``: ``2 * prod(output) * (C_in / groups) * prod(kernel window)``
  (transposed/input-gradient convolutions are convolutions too, with their own shapes).

Elementwise ops are ignored (they are memory-bound, not part of a "fraction of matmul peak").
"""

from __future__ import annotations

import math
from typing import Callable

import jax
from jax.extend import core as jex_core


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
    if name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        rhs = eqn.invars[1].aval.shape
        # rhs_spec = (out feature dim, in feature dim, spatial dims...)
        o_dim, i_dim, *sp = dn.rhs_spec
        window = math.prod(rhs[d] for d in sp)
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * rhs[i_dim] * window
    return 0.0


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of a (open) jaxpr, recursing into sub-jaxprs."""
    total = 0.0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in _sub_jaxprs(eqn):
            total += mult * jaxpr_flops(sub)
    return total


def count_flops(fn: Callable, *args, **kwargs) -> float:
    """Dense FLOPs (matmuls and convolutions) of one call ``fn(*args, **kwargs)``."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


__all__ = ["count_flops", "jaxpr_flops"]
