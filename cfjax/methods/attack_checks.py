"""The checks of what an attack is called with: the start point, the targets, the sources,
and a shape probe of the model callables. Each failure is an
:class:`~cfjax.errors.InputError` raised before the attack is traced.

* the start point (``z0``, or the pixel attack's ``x0``) is float32 or float64: integer and
  float16/bfloat16 starts are refused (the optimiser's state underflows there);
* the shape probe traces ``decode``, ``logits``, ``objective``, ``success_fn`` and
  ``proximity`` abstractly (``jax.eval_shape``, nothing runs) on one example; a failure, or
  an output of the wrong kind, names that callable, the shape and dtype it was called on and
  the underlying error. ``decode``'s image and ``logits``' output must be float32 or float64
  too: low-precision model arithmetic goes through ``compute_dtype``
  (:class:`~cfjax.methods.attack_options.AttackOptions`), so the image returned as ``x``, the
  score and the gradients are never rounded to 16 bits;
* concrete preset targets (and sources) are integers in ``[0, K)``, cast to int32 on the host;
  ``target != source``; concrete start points are finite. Traced values cannot be checked on
  the host: the step loop ends an out-of-range traced target with status 3 instead.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._checks import check_finite, describe, probe
from cfjax.errors import bad_arg
from cfjax.methods.attack_options import Spec

LOW_PRECISION_ROUTE = "cast it with .astype(jnp.float32) and pass compute_dtype=jnp.bfloat16 for low-precision model arithmetic"


class Names(NamedTuple):
    """How an entry point's messages name its start point (the latent attack's ``z0``, the
    pixel attack's ``x0``)."""

    start: str  # the argument: "z0" / "x0"
    one: str  # one example of it: "latent" / "image"
    latent: bool  # whether a user ``decode`` sits before ``logits``


LATENT = Names("z0", "latent", True)
PIXELS = Names("x0", "image", False)


def _model_output(name: str, out, on: str, what: str):
    """``out`` must be one float32/float64 array (not a tuple, not integers, not 16-bit)."""
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise bad_arg(name, f"{describe(out)} (called on {on})", f"one floating array {what}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise bad_arg(name, f"an output of dtype {out.dtype} (called on {on})", f"a floating array {what} (gradients flow through it)")
    if jnp.finfo(out.dtype).bits < 32:
        raise bad_arg(name, f"an output of dtype {out.dtype} (called on {on})",
                      f"a float32 (or float64) array {what}: float16/bfloat16 outputs are refused (the attack's image, score and "
                      f"gradients stay float32); {LOW_PRECISION_ROUTE.replace('cast it', 'return it')}")
    return out


def check_start_dtype(z0, names: Names) -> None:
    """The start point is float32 or float64 (checked on the dtype, so also for tracers)."""
    dt = z0.dtype
    if not jnp.issubdtype(dt, jnp.floating):
        raise bad_arg(names.start, f"dtype {dt}", f"a floating (float32) {names.one} array; cast it with .astype(jnp.float32)")
    if jnp.finfo(dt).bits < 32:
        raise bad_arg(names.start, f"dtype {dt}",
                      f"a float32 (or float64) {names.one}: float16/bfloat16 starts are refused (the optimiser's state underflows there "
                      f"and most examples stop after one step); {LOW_PRECISION_ROUTE}")


def check_single_args(z0, target, spec: Spec, names: Names, hint: str):
    """One example: a float32/float64, finite (when concrete) start point and a scalar preset
    target; returns ``(z0, target)`` as arrays (tracers untouched)."""
    z0 = z0 if isinstance(z0, jax.core.Tracer) else jnp.asarray(z0)
    check_start_dtype(z0, names)
    check_finite(z0, names.start)
    if spec.score_kind != "custom" and np.ndim(target) != 0:
        raise bad_arg("target", f"shape {np.shape(target)}", f"a scalar class index ({hint})")
    return z0, target if isinstance(target, jax.core.Tracer) else jnp.asarray(target)


def _check_outputs(decode, logits, z1, spec: Spec, names: Names) -> tuple:
    """Probe ``decode`` (latent attacks) and ``logits`` on one example ``z1``; returns the
    logits' abstract value and ``z1``'s description."""
    on_z = f"{describe(z1)}, one {names.one} of {names.start}"
    if names.latent:
        x = probe("decode", decode, (z1,), f"a callable taking one {names.one} as {names.start} holds it (no batch axis) and returning an image [H, W, C]", on_z)
        x = _model_output("decode", x, on_z, "(the image [H, W, C]; return only the image, e.g. a VAE's mean)")
        on_x = f"{describe(x)}, what decode returned"
    else:
        x, on_x = z1, on_z
    out = probe("logits", logits, (x,), "a callable taking ONE image [H, W, C] (no batch axis) and returning its logits [K]", on_x)
    out = _model_output("logits", out, on_x, "of logits [K]")
    shape = tuple(out.shape)
    if spec.score_kind == "sigmoid":
        if shape not in ((), (1,)):
            raise bad_arg("logits", f"output shape {shape}", "shape () or (1,) for objective='sigmoid'")
    elif spec.score_kind != "custom" and (len(shape) != 1 or shape[0] < 2):
        raise bad_arg("logits", f"output shape {shape}", "shape (K,) with K >= 2 for objective='softmax' (one example, no batch axis)")
    return out


def num_classes(decode, logits, z0, target, spec: Spec, *, batched: bool, names: Names = LATENT) -> int:
    """The shape probe (see the module docstring) on one example of ``z0`` and ``target``.
    Returns K (2 for sigmoid, the last axis' size for a custom score)."""
    z1 = jax.ShapeDtypeStruct(z0.shape[1:] if batched else z0.shape, z0.dtype)
    t = jnp.asarray(target) if not hasattr(target, "shape") else target
    t1 = jax.ShapeDtypeStruct(t.shape[1:] if batched else t.shape, jnp.int32 if spec.score_kind != "custom" else t.dtype)
    out = _check_outputs(decode, logits, z1, spec, names)
    on_l = f"logits {describe(out)} and target {describe(t1)}"
    p = probe("success_fn", spec.score, (out, t1), "a callable (logits, target) -> scalar score", on_l)
    if getattr(p, "shape", None) != ():
        raise bad_arg("success_fn", f"a score of {describe(p)} (called on {on_l})", "a scalar score per example (logits, target) -> []")
    if spec.loss is not None:
        v = probe("objective", spec.loss, (out, t1), "a callable (logits, target) -> scalar loss", on_l)
        if getattr(v, "shape", None) != () or not jnp.issubdtype(v.dtype, jnp.floating):
            raise bad_arg("objective", f"a loss of {describe(v)} (called on {on_l})", "a scalar floating loss per example (logits, target) -> []")
    if spec.proximity is not None:
        on_d = f"{describe(z1)}, z - {names.start} for one example"
        v = probe("proximity", spec.proximity, (z1,), "a callable (z - z0) -> scalar", on_d)
        if getattr(v, "shape", None) != () or not jnp.issubdtype(v.dtype, jnp.floating):
            raise bad_arg("proximity", f"{describe(v)} (called on {on_d})", "a scalar floating penalty (z - z0) -> []")
    shape = tuple(out.shape)
    if spec.score_kind == "custom":
        return shape[-1] if shape else 1
    return 2 if spec.score_kind == "sigmoid" else shape[0]


def check_target_values(target, k: int, spec: Spec):
    """Integer targets in ``[0, K)`` for the presets (values only when concrete); returns the
    target cast to int32 (on the host when concrete), so that uint8/int64 targets reuse the
    program compiled for int32."""
    if spec.score_kind == "custom":
        return target
    if isinstance(target, jax.core.Tracer):
        if not jnp.issubdtype(target.dtype, jnp.integer):
            raise bad_arg("target", f"dtype {target.dtype}", "integer class indices")
        return target.astype(jnp.int32)
    t = np.asarray(target)
    if not np.issubdtype(t.dtype, np.integer):
        raise bad_arg("target", f"dtype {t.dtype}", "an integer class index" + (" (1 increase, 0 decrease)" if spec.score_kind == "sigmoid" else ""))
    if t.size and (t.min() < 0 or t.max() >= k):
        raise bad_arg("target", f"values in [{t.min()}, {t.max()}]", f"class indices in [0, {k - 1}]")
    return jnp.asarray(t.astype(np.int32))


def check_source_values(source, k: int) -> None:
    """Concrete ``source`` classes are integers in ``[0, K)``."""
    if source is None or isinstance(source, jax.core.Tracer):
        return
    s = np.asarray(source)
    if not np.issubdtype(s.dtype, np.integer):
        raise bad_arg("source", f"dtype {s.dtype}", "integer class indices")
    if s.size and (s.min() < 0 or s.max() >= k):
        raise bad_arg("source", f"values in [{s.min()}, {s.max()}]", f"class indices in [0, {k - 1}]")


def check_batch_args(z0, target, source, spec: Spec, names: Names = LATENT):
    """Shape/dtype/value checks of a batch (values only for concrete arrays); returns ``(z0, target)``."""
    if not hasattr(z0, "shape"):
        z0 = jnp.asarray(z0)
    if z0.ndim < 2 or z0.shape[0] == 0:
        raise bad_arg(names.start, f"shape {tuple(z0.shape)}", "a non-empty batch [n, ...]")
    check_start_dtype(z0, names)
    target = target if isinstance(target, jax.core.Tracer) else jnp.asarray(target)
    n = z0.shape[0]
    if spec.score_kind == "custom":
        if target.ndim < 1 or target.shape[0] != n:
            raise bad_arg("target", f"shape {tuple(target.shape)}", f"a leading axis of size {n}, one per example")
    elif target.shape != (n,):
        raise bad_arg("target", f"shape {tuple(target.shape)}", f"shape ({n},), one per example")
    check_finite(z0, names.start)
    if source is not None and not isinstance(source, jax.core.Tracer) and not isinstance(target, jax.core.Tracer):
        s = np.asarray(source)
        if s.shape != tuple(target.shape):
            raise bad_arg("source", f"shape {s.shape}", f"shape {tuple(target.shape)}, like target")
        if np.any(s == np.asarray(target)):
            raise bad_arg("target", f"target == source for {int(np.sum(s == np.asarray(target)))} examples", "a target class different from the source")
    return z0, target


__all__ = [
    "LATENT",
    "PIXELS",
    "Names",
    "check_batch_args",
    "check_single_args",
    "check_source_values",
    "check_start_dtype",
    "check_target_values",
    "num_classes",
]
