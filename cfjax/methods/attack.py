r"""Counterfactual Attacks: gradient steps on a generative latent until the class flips.

For one example, with a decoder :math:`G` and a classifier :math:`f`, the attack minimises
a loss :math:`L(z)` with an optax optimiser (Adam by default),

.. math::  z_{t+1} = z_t + \mathrm{opt}\big(\nabla_z L(z_t)\big), \qquad
           \text{stop at the first } t \text{ with } p(f(G(z_t))) \ge \tau,

By default (``objective="softmax"``) :math:`L(z) = -p_y` and :math:`p = p_y` is the
target-class softmax probability; ``objective="sigmoid"``: for a binary classifier with one
logit :math:`\ell`, :math:`p = \sigma(\ell)` when increasing (``target=1``) and
:math:`1 - \sigma(\ell)` when decreasing (``target=0``). The loss is the probability itself,
not its logarithm, as in the paper's code.

Custom objectives: ``objective=fn(logits, target) -> loss`` (a scalar, minimised; a margin
loss, a multi-label target, ...) with ``success_fn=fn(logits, target) -> p`` the score the
stop rule compares with ``threshold`` and that is reported as ``target_prob`` (default: the
target's softmax probability). An optional proximity term
``proximity_weight * proximity(z - z0)`` (``"l1"``: :math:`\|z - z_0\|_1`, ``"l2"``:
:math:`\|z - z_0\|_2^2`, or a callable) is added to the loss. ``threshold_rule=">"`` stops
at ``p > threshold`` instead of ``p >= threshold``; ``on_zero_gradient="continue"`` keeps
stepping through a zero gradient (Adam's momentum may still move ``z``) instead of ending the
example as a failure. ``compute_dtype=jnp.bfloat16`` runs the matrix multiplications and
convolutions of ``decode``/``logits`` on bfloat16 operands (float32 accumulation and
outputs) while ``z``, the optimiser state, the loss and the stop rule stay float32
(:func:`mixed_precision`).

Semantics (identical on every code path below, for every option):

* the score ``p`` is checked at the current point BEFORE each step; the start point is
  checked too, so an example already past the threshold takes 0 steps and is a success;
* once past the threshold the example is frozen (``done``); ``steps_taken`` counts the
  optimiser steps actually applied;
* a zero gradient (global norm 0) ends the example as a failure (status 2) unless
  ``on_zero_gradient="continue"``; a non-finite point ``z``, image ``x``, logit, score, loss
  or gradient always ends it as a failure (status 3), never as a success (so a NaN ``z0``
  inside the caller's own ``jit``, where the host check cannot see values, ends with status 3);
* ``success`` is judged by the threshold at the returned point, never by the iteration
  index (a step that lands past the threshold on the very last iteration is a success).

Code paths:

* :func:`attack` (one example): one fixed-length ``lax.scan`` carrying a ``done`` flag;
  ``jax.vmap`` it for batches. Optionally cut into blocks inside a ``while_loop`` that
  stops when every lane is done (``early_exit_every``), and optionally recording the image
  every ``record_every`` steps (a scan of blocks of a scan, the last block shorter when
  ``record_every`` does not divide ``steps``).
* :func:`attack_batch` (a batch): by default the **compacted** schedule. A vmapped scan pays
  for every lane at every step until the slowest lane of the batch is finished (one
  budget-exhausting failure makes a batch run all ``steps``). The compacted schedule keeps
  the state of all ``n`` lanes, and repeatedly gathers ``w`` still-active lanes, advances
  them ``block`` steps (vmapped) and scatters them back, with ``w`` picked from a small
  static ladder (``n, n/4, n/16, ...``) as the largest width not above the number of active
  lanes. Cost ~ (sum of the lanes' own steps), not ``n * max``; each lane follows exactly
  the trajectory it has alone (asserted in the tests). Recording works here too: each lane
  writes the image it evaluates at steps ``0, r, 2r, ...`` into its row of the trajectory.
  ``schedule="vmap"`` is ``jax.vmap(attack)``.
* :class:`Attack` / :func:`make_attack`: the options bound once and the batch attack jitted
  once; each call with already-seen shapes reuses the compiled program (no re-tracing).

:func:`attack_pixels` runs the same loop on the image itself, projected back to [0, 1]
after each step: the adversarial-noise baseline, with the same result type.

Input checks (every failure an :class:`~cfjax.errors.InputError` raised before the attack is
traced): the options; ``z0`` float32 or float64 (integer starts are refused, and so are
float16/bfloat16 ones: the optimiser's state underflows there, so cast to float32 and use
``compute_dtype`` for low-precision model arithmetic); a finite ``learning_rate > 0``;
integer targets (and ``source``) in ``[0, K)``, cast to int32 on the host; finite values of
concrete arrays. A shape probe then traces ``decode``, ``logits``, ``objective``,
``success_fn`` and ``proximity`` abstractly on one example; when one of them fails, or
returns the wrong kind of output, the error names that callable, the shape and dtype it was
called on and the underlying error (the pixel attack names ``x0``, it has no ``decode``).

On the CPU backend ``decode`` and ``logits`` are re-interpreted by :func:`cpu_friendly` by
default (``rewrite_grads``): identical values and gradients, 3-5x faster attack steps on
XLA:CPU, whose convolution input-gradients are slow inside loops (details at the function).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from cfjax._checks import check_finite, check_images
from cfjax.cpu_grads import cpu_friendly
from cfjax.cpu_grads import maybe_rewrite as _maybe_rewrite
from cfjax.cpu_grads import reinterpret
from cfjax.errors import bad_arg

SUCCESS, BUDGET, ZERO_GRAD, NON_FINITE = 0, 1, 2, 3
STATUS_NAMES = {SUCCESS: "success", BUDGET: "budget_exhausted", ZERO_GRAD: "zero_gradient", NON_FINITE: "non_finite"}


class AttackResult(NamedTuple):
    """Outcome of one attack (every field gains a leading batch axis when batched).

    Attributes:
      z: final latent [D] (for the pixel attack: the final image, same as ``x``).
      x: final image ``decode(z)`` [H, W, C].
      target_prob: the stop rule's score at ``z`` [] (the target probability for the
        presets, ``success_fn(logits, target)`` otherwise).
      steps_taken: optimiser steps applied before success/stop [] int32.
      success: ``target_prob >= threshold`` (``>`` with ``threshold_rule=">"``) [] bool,
        judged by the threshold only.
      status: 0 success, 1 step budget exhausted, 2 zero gradient, 3 non-finite [] int32.
      trajectory: ``decode(z)`` after ``min(j * r, steps)`` steps for ``j = 0 ..
        ceil(steps / r)`` (``r = record_every``; frozen once done)
        [ceil(steps / r) + 1, H, W, C], or ``None``.
      trajectory_probs: the score of each recorded image [ceil(steps / r) + 1], or ``None``.
    """

    z: Float[Array, "d"]
    x: Float[Array, "h w c"]
    target_prob: Float[Array, ""]
    steps_taken: Int[Array, ""]
    success: Bool[Array, ""]
    status: Int[Array, ""]
    trajectory: Float[Array, "t h w c"] | None = None
    trajectory_probs: Float[Array, "t"] | None = None


class _Lane(NamedTuple):
    """Loop state of one example."""

    z: Array  # [D] current point
    opt_state: optax.OptState
    done: Array  # [] bool: crossed the threshold / zero or non-finite gradient
    status: Array  # [] int32
    n: Array  # [] int32 steps applied
    z0: Array | None  # [D] start point (only carried when a proximity term needs it)


def normalized_sgd(learning_rate: float) -> optax.GradientTransformation:
    r"""Plain normalised gradient steps :math:`u = -\eta\, g / \|g\|` (stateless)."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(g, state, params=None):
        del params
        norm = optax.global_norm(g)
        return jax.tree_util.tree_map(lambda x: -learning_rate * x / jnp.maximum(norm, 1e-12), g), state

    return optax.GradientTransformation(init, update)


def make_optimizer(optimizer, learning_rate: float) -> optax.GradientTransformation:
    """``None``/``"adam"`` (the paper's Adam), ``"sgd-normalized"``, or any optax transformation
    (then ``learning_rate`` is unused). A used ``learning_rate`` must be finite and > 0
    (:class:`~cfjax.errors.InputError` otherwise; a traced one is not checked)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer is None or optimizer == "adam":
        _check_learning_rate(learning_rate)
        return optax.adam(learning_rate)
    if optimizer == "sgd-normalized":
        _check_learning_rate(learning_rate)
        return normalized_sgd(learning_rate)
    raise bad_arg("optimizer", repr(optimizer), "'adam', 'sgd-normalized' or an optax.GradientTransformation")


def softmax_probability(l: Float[Array, "k"], target) -> Float[Array, ""]:
    """``softmax(l)[target]``: the ``"softmax"`` preset's score (its loss is minus this)."""
    return jax.nn.softmax(l)[target]


def sigmoid_probability(l: Float[Array, "*one"], target) -> Float[Array, ""]:
    """For one sigmoid logit: ``sigmoid(l)`` (target 1) / ``1 - sigmoid(l)`` (target 0): the
    ``"sigmoid"`` preset's score (its loss is minus this)."""
    s = jax.nn.sigmoid(jnp.reshape(l, ()))
    return jnp.where(target == 1, s, 1.0 - s)


PRESETS: dict[str, Callable] = {"softmax": softmax_probability, "sigmoid": sigmoid_probability}
"""The string objectives: name -> score ``p(logits, target)``; the preset's loss is ``-p``."""


def target_probability(l: Float[Array, "k"], target, objective: str) -> Float[Array, ""]:
    """The probability the attack pushes up: ``softmax(l)[target]``, or for one sigmoid logit
    ``sigmoid(l)`` (target 1) / ``1 - sigmoid(l)`` (target 0)."""
    return PRESETS[objective](l, target)


def _l1(d):
    return jnp.sum(jnp.abs(d))


def _l2sq(d):
    return jnp.sum(d * d)


PROXIMITIES: dict[str, Callable] = {"l1": _l1, "l2": _l2sq}
"""``proximity`` presets: ``"l1"`` :math:`\\|d\\|_1`, ``"l2"`` :math:`\\|d\\|_2^2` (squared,
smooth at ``d = 0``), of ``d = z - z0``."""


# ------------------------------------------------------------------ mixed precision


_LOW_PRECISION_PRIMS = (lax.dot_general_p, lax.conv_general_dilated_p)


def _wider_float(a, dtype) -> bool:
    dt = getattr(a, "dtype", None)
    return dt is not None and jnp.issubdtype(dt, jnp.floating) and jnp.finfo(dt).bits > jnp.finfo(dtype).bits


def _low_precision_rule(dtype, eqn, invals):
    """The :func:`mixed_precision` cast as a :func:`cfjax.cpu_grads.eval_jaxpr` rule."""
    if eqn.primitive in _LOW_PRECISION_PRIMS and all(_wider_float(a, dtype) for a in invals):
        params = dict(eqn.params, preferred_element_type=eqn.outvars[0].aval.dtype)
        return [eqn.primitive.bind(*[a.astype(dtype) for a in invals], **params)]
    return None


def mixed_precision(fn: Callable, dtype) -> Callable:
    """``fn`` with the operands of every matrix multiplication and convolution rounded to
    ``dtype`` (e.g. ``jnp.bfloat16``), accumulated and returned in their original (float32)
    dtype; everything else (activations, normalisation, the outputs) keeps its dtype.

    Works on any JAX callable of arrays, including weights it closes over (a Flax ``apply``
    with float32 params, an Equinox module, plain ``jnp``): the function is traced once to a
    jaxpr and re-evaluated with the casts (also inside nested ``jit``); other higher-order
    primitives run unchanged in full precision. This is the accelerator policy "bf16 (or
    fp16) matmuls, float32 everything else"; on CPU expect no speed-up (XLA:CPU has no native
    bfloat16 convolutions). Prefer bfloat16: the backward pass rounds the cotangents too, and
    float16's narrow range lets small ones underflow to a zero gradient (on mnist5k, 9.5% of
    the attacks stopped with status 2 in float16, none in bfloat16).

    Args:
      fn: a function of arrays.
      dtype: the operand dtype, a floating dtype narrower than the operands'.

    Returns:
      The wrapped function (same signature and output dtypes).
    """

    rule = functools.partial(_low_precision_rule, dtype)

    @functools.wraps(fn)
    def wrapped(*args):
        return reinterpret(fn, rule, args)

    return wrapped


# ------------------------------------------------------------------ options


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_real(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (float, int, np.floating, np.integer))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The validated options of one attack (built once by :func:`_parse_options`)."""

    steps: int
    threshold: float
    rule: str  # ">=" or ">"
    loss: Callable | None  # (logits, target) -> loss; None: the preset's -p
    score: Callable  # (logits, target) -> p
    score_kind: str  # "softmax", "sigmoid" or "custom"
    proximity: Callable | None  # d -> [] of d = z - z0; None: no term
    proximity_weight: float
    continue_on_zero: bool
    compute_dtype: Any
    record_every: int
    early_exit_every: int


def _parse_options(*, steps, threshold, objective, success_fn, proximity, proximity_weight, threshold_rule, on_zero_gradient, compute_dtype,
                   record_every, early_exit_every) -> _Spec:
    """Check every option (naming the bad one) and resolve presets."""
    if not (isinstance(objective, str) and objective in PRESETS) and not callable(objective):
        raise bad_arg("objective", repr(objective), f"one of {sorted(PRESETS)} or a callable (logits, target) -> loss")
    if success_fn is None:
        success_fn = objective if isinstance(objective, str) else "softmax"
    if isinstance(success_fn, str):
        if success_fn not in PRESETS:
            raise bad_arg("success_fn", repr(success_fn), f"one of {sorted(PRESETS)} or a callable (logits, target) -> score")
        score, kind = PRESETS[success_fn], success_fn
    elif callable(success_fn):
        score, kind = success_fn, "custom"
    else:
        raise bad_arg("success_fn", repr(success_fn), f"None, one of {sorted(PRESETS)} or a callable (logits, target) -> score")
    if isinstance(objective, str):
        loss = None if objective == kind else (lambda l, t, _p=PRESETS[objective]: -_p(l, t))
    else:
        loss = objective
    if not _is_int(steps) or steps <= 0:
        raise bad_arg("steps", repr(steps), "a positive integer")
    if kind == "custom":
        if not _is_real(threshold) or not math.isfinite(threshold):
            raise bad_arg("threshold", repr(threshold), "a finite number (compared with success_fn's score)")
    elif not _is_real(threshold) or not 0.0 < threshold < 1.0:
        raise bad_arg("threshold", repr(threshold), "a probability strictly between 0 and 1")
    if threshold_rule not in (">=", ">"):
        raise bad_arg("threshold_rule", repr(threshold_rule), "'>=' or '>'")
    if on_zero_gradient not in ("fail", "continue"):
        raise bad_arg("on_zero_gradient", repr(on_zero_gradient), "'fail' or 'continue'")
    if not _is_real(proximity_weight) or not math.isfinite(proximity_weight) or proximity_weight < 0:
        raise bad_arg("proximity_weight", repr(proximity_weight), "a finite number >= 0")
    if isinstance(proximity, str):
        if proximity not in PROXIMITIES:
            raise bad_arg("proximity", repr(proximity), f"one of {sorted(PROXIMITIES)} or a callable (z - z0) -> scalar")
        prox = PROXIMITIES[proximity]
    elif callable(proximity):
        prox = proximity
    else:
        raise bad_arg("proximity", repr(proximity), f"one of {sorted(PROXIMITIES)} or a callable (z - z0) -> scalar")
    if compute_dtype is not None:
        try:
            dt = jnp.dtype(compute_dtype)
        except TypeError as e:
            raise bad_arg("compute_dtype", repr(compute_dtype), "None or a floating dtype such as jnp.bfloat16") from e
        if not jnp.issubdtype(dt, jnp.floating):
            raise bad_arg("compute_dtype", repr(compute_dtype), "None or a floating dtype such as jnp.bfloat16")
        compute_dtype = None if dt == jnp.dtype(jnp.float32) else dt
    if not _is_int(record_every) or record_every < 0:
        raise bad_arg("record_every", repr(record_every), "a non-negative integer")
    if not _is_int(early_exit_every) or early_exit_every < 0:
        raise bad_arg("early_exit_every", repr(early_exit_every), "a non-negative integer")
    return _Spec(int(steps), float(threshold), threshold_rule, loss, score, kind, prox if proximity_weight > 0 else None,
                 float(proximity_weight), on_zero_gradient == "continue", compute_dtype, int(record_every), int(early_exit_every))


class _Names(NamedTuple):
    """How an entry point's messages name its start point (the latent attack's ``z0``, the
    pixel attack's ``x0``)."""

    start: str  # the argument: "z0" / "x0"
    one: str  # one example of it: "latent" / "image"
    latent: bool  # whether a user ``decode`` sits before ``logits``


_LATENT = _Names("z0", "latent", True)
_PIXELS = _Names("x0", "image", False)


def _describe(v) -> str:
    """``"shape (8,) float32"`` for an array or abstract value; what it is otherwise."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"shape {tuple(v.shape)} {v.dtype}"
    leaves = jax.tree_util.tree_leaves(v)
    if isinstance(v, (tuple, list, dict)):
        inner = ", ".join(_describe(a) for a in leaves[:3]) + (", ..." if len(leaves) > 3 else "")
        return f"a {type(v).__name__} of {len(leaves)} arrays ({inner})"
    return f"a {type(v).__name__}"


def _error_text(e: BaseException, limit: int = 400) -> str:
    """The exception's type and first lines, short enough for one message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {' '.join(lines[:2])}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _probe(name: str, fn: Callable, args: tuple, on: str, expected: str):
    """``jax.eval_shape(fn, *args)``; a failure becomes an :class:`InputError` naming ``fn``'s
    argument ``name``, the input it was called on (``on``) and the underlying error."""
    try:
        return jax.eval_shape(fn, *args)
    except Exception as e:  # noqa: BLE001 - re-raised naming the callable
        raise bad_arg(name, f"{_error_text(e)} (called on {on})", expected) from e


def _one_array(name: str, out, on: str, what: str):
    """``out`` must be one floating array (not a tuple, not integers)."""
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise bad_arg(name, f"{_describe(out)} (called on {on})", f"one floating array {what}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise bad_arg(name, f"an output of dtype {out.dtype} (called on {on})", f"a floating array {what} (gradients flow through it)")
    return out


def _check_start_dtype(z0, names: _Names) -> None:
    """The start point is float32 or float64 (checked on the dtype, so also for tracers)."""
    dt = z0.dtype
    if not jnp.issubdtype(dt, jnp.floating):
        raise bad_arg(names.start, f"dtype {dt}", f"a floating (float32) {names.one} array; cast it with .astype(jnp.float32)")
    if jnp.finfo(dt).bits < 32:
        raise bad_arg(names.start, f"dtype {dt}",
                      f"a float32 (or float64) {names.one}: float16/bfloat16 starts are refused (the optimiser's state underflows there and most examples stop after one step); "
                      "cast it with .astype(jnp.float32) and pass compute_dtype=jnp.bfloat16 for low-precision model arithmetic")


def _check_learning_rate(learning_rate) -> None:
    """A finite ``learning_rate > 0`` (not checked: a traced value, an optax schedule)."""
    if isinstance(learning_rate, jax.core.Tracer) or callable(learning_rate):
        return
    v = learning_rate
    if hasattr(v, "dtype") and np.ndim(v) == 0 and (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        v = float(v)  # a numpy/jax scalar
    if not (_is_real(v) and math.isfinite(v) and v > 0):
        raise bad_arg("learning_rate", repr(learning_rate), "a finite number > 0 (or an optax schedule)")


def _num_classes(decode, logits, z0, target, spec: _Spec, *, batched: bool, names: _Names = _LATENT) -> int:
    """The shape probe: trace ``decode``, ``logits``, ``objective``, ``success_fn`` and
    ``proximity`` abstractly (``jax.eval_shape``, nothing runs) on one example of ``z0`` and
    ``target``; a failure names the callable, the shape and dtype it was called on and the
    error. Returns K (2 for sigmoid, the last axis' size for a custom score)."""
    z1 = jax.ShapeDtypeStruct(z0.shape[1:] if batched else z0.shape, z0.dtype)
    t = jnp.asarray(target) if not hasattr(target, "shape") else target
    t1 = jax.ShapeDtypeStruct(t.shape[1:] if batched else t.shape, jnp.int32 if spec.score_kind != "custom" else t.dtype)
    on_z = f"{_describe(z1)}, one {names.one} of {names.start}"
    if names.latent:
        x = _probe("decode", decode, (z1,), on_z, f"a callable taking one {names.one} as {names.start} holds it (no batch axis) and returning an image [H, W, C]")
        x = _one_array("decode", x, on_z, "(the image [H, W, C]; return only the image, e.g. a VAE's mean)")
        on_x = f"{_describe(x)}, what decode returned"
    else:
        x, on_x = z1, on_z
    out = _probe("logits", logits, (x,), on_x, "a callable taking ONE image [H, W, C] (no batch axis) and returning its logits [K]")
    out = _one_array("logits", out, on_x, "of logits [K]")
    shape = tuple(out.shape)
    if spec.score_kind == "sigmoid":
        if shape not in ((), (1,)):
            raise bad_arg("logits", f"output shape {shape}", "shape () or (1,) for objective='sigmoid'")
    elif spec.score_kind != "custom" and (len(shape) != 1 or shape[0] < 2):
        raise bad_arg("logits", f"output shape {shape}", "shape (K,) with K >= 2 for objective='softmax' (one example, no batch axis)")
    on_l = f"logits {_describe(out)} and target {_describe(t1)}"
    p = _probe("success_fn", spec.score, (out, t1), on_l, "a callable (logits, target) -> scalar score")
    if getattr(p, "shape", None) != ():
        raise bad_arg("success_fn", f"a score of {_describe(p)} (called on {on_l})", "a scalar score per example (logits, target) -> []")
    if spec.loss is not None:
        v = _probe("objective", spec.loss, (out, t1), on_l, "a callable (logits, target) -> scalar loss")
        if getattr(v, "shape", None) != () or not jnp.issubdtype(v.dtype, jnp.floating):
            raise bad_arg("objective", f"a loss of {_describe(v)} (called on {on_l})", "a scalar floating loss per example (logits, target) -> []")
    if spec.proximity is not None:
        on_d = f"{_describe(z1)}, z - {names.start} for one example"
        v = _probe("proximity", spec.proximity, (z1,), on_d, "a callable (z - z0) -> scalar")
        if getattr(v, "shape", None) != () or not jnp.issubdtype(v.dtype, jnp.floating):
            raise bad_arg("proximity", f"{_describe(v)} (called on {on_d})", "a scalar floating penalty (z - z0) -> []")
    if spec.score_kind == "custom":
        return shape[-1] if shape else 1
    return 2 if spec.score_kind == "sigmoid" else shape[0]


def _check_target_values(target, k: int, spec: _Spec):
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


def _check_source_values(source, k: int) -> None:
    """Concrete ``source`` classes are integers in ``[0, K)``."""
    if source is None or isinstance(source, jax.core.Tracer):
        return
    s = np.asarray(source)
    if not np.issubdtype(s.dtype, np.integer):
        raise bad_arg("source", f"dtype {s.dtype}", "integer class indices")
    if s.size and (s.min() < 0 or s.max() >= k):
        raise bad_arg("source", f"values in [{s.min()}, {s.max()}]", f"class indices in [0, {k - 1}]")


def _check_batch_args(z0, target, source, spec: _Spec, names: _Names = _LATENT):
    """Shape/dtype/value checks of a batch (values only for concrete arrays); returns ``(z0, target)``."""
    if not hasattr(z0, "shape"):
        z0 = jnp.asarray(z0)
    if z0.ndim < 2 or z0.shape[0] == 0:
        raise bad_arg(names.start, f"shape {tuple(z0.shape)}", "a non-empty batch [n, ...]")
    _check_start_dtype(z0, names)
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


# ------------------------------------------------------------------ the per-example loop


class _Fns(NamedTuple):
    prob_and_x: Callable  # (z, target) -> (p, x)
    step: Callable  # (lane, target) -> (lane, (x, p, active, n_before))
    init: Callable  # z0 -> lane
    finish: Callable  # (lane, target) -> AttackResult without trajectory


def _all_finite(tree) -> Bool[Array, ""]:
    """Every floating leaf of ``tree`` finite (a scalar bool)."""
    oks = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return functools.reduce(jnp.logical_and, oks, jnp.asarray(True))


def _lane_fns(decode, logits, *, spec: _Spec, tx, project) -> _Fns:
    """The per-example pieces every schedule is built from."""
    steps, threshold = spec.steps, spec.threshold

    def past(p):
        return p > threshold if spec.rule == ">" else p >= threshold

    def score_ok_x(z, target):
        x = decode(z)
        l = logits(x)
        if spec.compute_dtype is not None:  # the model's outputs back in z's precision
            x, l = x.astype(z.dtype), l.astype(z.dtype)
        p = spec.score(l, target)
        if jnp.shape(p) != ():
            raise bad_arg("success_fn", f"a score of shape {jnp.shape(p)}", "a scalar score per example (logits, target) -> []")
        # a finite point, image, logits AND score: XLA:CPU's max does not always propagate
        # NaN, so a relu of a NaN image or a softmax of partly-NaN logits can come out finite;
        # never trust it (a NaN z0 under the caller's own jit ends with status 3, not 2)
        return p, l, _all_finite(z) & _all_finite(x) & _all_finite(l) & jnp.isfinite(p), x

    def prob_and_x(z, target):
        p, _, _, x = score_ok_x(z, target)
        return p, x

    def loss(z, z0, target):
        p, l, ok, x = score_ok_x(z, target)
        value = -p if spec.loss is None else spec.loss(l, target)
        if jnp.shape(value) != ():
            raise bad_arg("objective", f"a loss of shape {jnp.shape(value)}", "a scalar loss per example (logits, target) -> []")
        if spec.proximity is not None:
            value = value + spec.proximity_weight * spec.proximity(z - z0)
        return value, (p, ok, x)

    def step(lane: _Lane, target):
        # `n < steps` is always true inside one scan of `steps` iterations; it is what ends a
        # lane in the compacted schedule, where lanes are advanced unevenly.
        active = ~lane.done & (lane.n < steps)
        (l, (p, ok, x)), g = jax.value_and_grad(loss, has_aux=True)(lane.z, lane.z0, target)
        finite = ok & jnp.isfinite(l) & jnp.all(jnp.isfinite(g))
        crossed = ok & past(p)  # NaN never counts as crossed
        halt = crossed | ~finite
        if not spec.continue_on_zero:
            halt = halt | (optax.global_norm(g) == 0)
        stop = active & halt
        code = jnp.where(crossed, SUCCESS, jnp.where(~finite, NON_FINITE, ZERO_GRAD))
        status = jnp.where(stop, code, lane.status).astype(jnp.int32)
        move = active & ~stop
        updates, new_state = tx.update(jnp.where(finite, g, 0.0), lane.opt_state, lane.z)
        z_new = optax.apply_updates(lane.z, updates)
        if project is not None:
            z_new = project(z_new)
        keep = lambda new, old: jnp.where(move, new, old)  # noqa: E731
        new = _Lane(keep(z_new, lane.z), jax.tree_util.tree_map(keep, new_state, lane.opt_state), lane.done | stop, status,
                    lane.n + move.astype(jnp.int32), lane.z0)
        return new, (x, p, active, lane.n)

    def init(z0) -> _Lane:
        return _Lane(z0, tx.init(z0), jnp.asarray(False), jnp.asarray(BUDGET, jnp.int32), jnp.asarray(0, jnp.int32),
                     z0 if spec.proximity is not None else None)

    def finish(lane: _Lane, target) -> AttackResult:
        p, _, ok, x = score_ok_x(lane.z, target)
        success = ok & past(p)  # by the threshold, also when it lands on the very last step
        status = jnp.where(success, SUCCESS, jnp.where(lane.status == SUCCESS, BUDGET, lane.status))
        status = jnp.where(~ok & ~success, NON_FINITE, status).astype(jnp.int32)
        return AttackResult(lane.z, x, p, lane.n, success, status)

    return _Fns(prob_and_x, step, init, finish)


def _record_times(steps: int, record_every: int) -> np.ndarray:
    """Steps at which the trajectory is recorded: ``0, r, 2r, ..., steps`` (last gap may be shorter)."""
    return np.minimum(np.arange(-(-steps // record_every) + 1) * record_every, steps)


def _run_one(fns: _Fns, z0, target, *, steps, record_every, early_exit_every) -> AttackResult:
    lane = fns.init(z0)

    def scan_steps(lane, length):
        return jax.lax.scan(lambda c, _: (fns.step(c, target)[0], None), lane, None, length=length)[0]

    if record_every:

        def block(lane, _):
            lane = scan_steps(lane, record_every)
            p, x = fns.prob_and_x(lane.z, target)
            return lane, (x, p)

        p0, x0 = fns.prob_and_x(z0, target)
        lane, (xs, ps) = jax.lax.scan(block, lane, None, length=steps // record_every)
        xs, ps = [x0[None], xs], [p0[None], ps]
        if steps % record_every:  # the last, shorter block
            lane = scan_steps(lane, steps % record_every)
            p, x = fns.prob_and_x(lane.z, target)
            xs, ps = xs + [x[None]], ps + [p[None]]
        res = fns.finish(lane, target)
        return res._replace(trajectory=jnp.concatenate(xs), trajectory_probs=jnp.concatenate(ps))
    if early_exit_every and steps % early_exit_every == 0 and steps > early_exit_every:
        # The same trajectory as one scan of `steps`, cut into blocks; the loop ends once the
        # example is done. Under vmap the predicate is batched: the batch stops when its
        # slowest lane is done (finished lanes are frozen by the mask inside each block).
        def cond(c):
            return (c[0] < steps // early_exit_every) & ~c[1].done

        def body(c):
            return c[0] + 1, scan_steps(c[1], early_exit_every)

        lane = jax.lax.while_loop(cond, body, (jnp.asarray(0), lane))[1]
    else:
        lane = scan_steps(lane, steps)
    return fns.finish(lane, target)


def _ladder(n: int, min_width: int) -> tuple[int, ...]:
    """Widths n, n/4, n/16, ... (>= min_width), descending."""
    ws, w = [n], n
    while w // 4 >= max(min_width, 1):
        w //= 4
        ws.append(w)
    return tuple(ws)


def _run_compact(fns: _Fns, z0s, targets, *, steps, block, min_width, record_every=0) -> AttackResult:
    # a round never needs more steps than the budget: finished lanes are frozen by the mask, so
    # capping changes no result, only the work (a 2-step budget ran whole 5-step rounds before)
    block = max(1, min(int(block), int(steps)))
    n = targets.shape[0]
    lanes = jax.vmap(fns.init)(z0s)
    widths = _ladder(n, min_width)
    vstep = jax.vmap(fns.step)
    times = _record_times(steps, record_every) if record_every else None
    if record_every:
        p_aval, x_aval = jax.eval_shape(fns.prob_and_x, z0s[0], targets[0])
        rec0 = (jnp.zeros((n, len(times), *x_aval.shape), x_aval.dtype), jnp.zeros((n, len(times)), p_aval.dtype))
    else:
        rec0 = None

    def finished(ls):
        return ls.done | (ls.n >= steps)

    def advance(width):
        def f(carry):
            ls, rec = carry
            fin = finished(ls)
            # the first `width` active lanes; fill with a finished lane (frozen by the mask,
            # so writing it back unchanged, even several times, is harmless)
            ids = jnp.nonzero(~fin, size=width, fill_value=jnp.argmax(fin))[0]
            sub = jax.tree_util.tree_map(lambda a: a[ids], ls)
            t = targets[ids]
            if record_every:
                # each lane writes the image it evaluates at steps 0, r, 2r, ... (only while
                # active: a finished filler lane writes nothing); the rest is filled at the end
                sub, (xs, ps, act, k) = jax.lax.scan(lambda c, _: vstep(c, t), sub, None, length=block)
                slot = jnp.where(act & (k % record_every == 0), k // record_every, len(times))  # out of range: dropped
                rows = jnp.broadcast_to(ids, slot.shape)
                rec = (rec[0].at[rows, slot].set(xs, mode="drop"), rec[1].at[rows, slot].set(ps, mode="drop"))
            else:
                sub = jax.lax.scan(lambda c, _: (vstep(c, t)[0], None), sub, None, length=block)[0]
            return jax.tree_util.tree_map(lambda a, b: a.at[ids].set(b), ls, sub), rec

        return f

    branches = [advance(w) for w in widths]

    def body(carry):
        remaining = jnp.sum(~finished(carry[0]))
        i = jnp.minimum(jnp.sum(jnp.asarray(widths) > remaining), len(widths) - 1)
        return jax.lax.switch(i, branches, carry)

    lanes, rec = jax.lax.while_loop(lambda c: jnp.any(~finished(c[0])), body, (lanes, rec0))
    res = jax.vmap(fns.finish)(lanes, targets)
    if not record_every:
        return res
    frozen = jnp.asarray(times)[None, :] >= res.steps_taken[:, None]  # at or past the lane's last step: its final point
    xs = jnp.where(frozen.reshape(frozen.shape + (1,) * (rec[0].ndim - 2)), res.x[:, None], rec[0])
    return res._replace(trajectory=xs, trajectory_probs=jnp.where(frozen, res.target_prob[:, None], rec[1]))


def _prepare(decode, logits, spec: _Spec, rewrite_grads):
    if spec.compute_dtype is not None:
        decode, logits = mixed_precision(decode, spec.compute_dtype), mixed_precision(logits, spec.compute_dtype)
    return _maybe_rewrite(decode, rewrite_grads), _maybe_rewrite(logits, rewrite_grads)


# ------------------------------------------------------------------ public entry points

_OPTIONS_DOC = """
      steps: the step budget (the fixed scan length).
      learning_rate: the optimiser's (the paper: 0.1 MNIST, 0.01 CelebA); finite and > 0.
      optimizer: ``None``/``"adam"`` (``optax.adam(learning_rate)``), ``"sgd-normalized"``
        (steps of length ``learning_rate`` along the normalised gradient) or any
        ``optax.GradientTransformation`` (then ``learning_rate`` is unused).
      threshold: success once the score ``p`` passes this; in (0, 1) for the preset scores,
        any finite number for a custom ``success_fn``.
      objective: ``"softmax"`` (loss ``-softmax(logits)[target]``), ``"sigmoid"`` (one logit,
        loss ``-sigmoid`` / ``-(1 - sigmoid)`` for target 1 / 0) or a callable
        ``(logits, target) -> loss`` (a scalar, minimised; ``target`` is passed through as
        given, so it may be a multi-label vector).
      success_fn: the score ``(logits, target) -> p`` of the stop rule, reported as
        ``target_prob``: ``None`` (the preset's probability for a string objective, the
        target's softmax probability for a callable one), ``"softmax"``, ``"sigmoid"`` or a
        callable.
      proximity, proximity_weight: add ``proximity_weight * proximity(z - z0)`` to the loss;
        ``proximity`` is ``"l1"`` (sum of absolute values), ``"l2"`` (squared Euclidean
        norm) or a callable ``d -> scalar``; weight 0 (default) adds nothing.
      threshold_rule: ``">="`` (default) or ``">"``: the comparison of ``p`` with ``threshold``.
      on_zero_gradient: ``"fail"`` (default: a zero gradient ends the example, status 2) or
        ``"continue"`` (keep stepping; it ends by success or the budget).
      compute_dtype: ``None`` (float32) or a floating dtype such as ``jnp.bfloat16``: the
        operands of the matrix multiplications and convolutions in ``decode``/``logits``
        (:func:`mixed_precision`); ``z``, the optimiser, the loss and the stop rule stay float32.
      record_every: record ``decode(z)`` after ``0, r, 2r, ...`` steps and after ``steps``
        (0: no trajectory); any positive ``r``, the last gap may be shorter.
      project: optional map applied after each step (the pixel attack clips to [0, 1]).
      early_exit_every: leave the loop once the example (under vmap: every lane) is done,
        checked every this many steps (0: always run all ``steps``). Results are identical
        either way. Used when it divides ``steps`` and ``record_every == 0``.
      rewrite_grads: run ``decode``/``logits`` through :func:`cpu_friendly` (same values and
        gradients; 3-4x faster attack steps on XLA:CPU). ``None``: only on the CPU backend."""


def attack(
    decode: Callable[[Float[Array, "d"]], Float[Array, "h w c"]],
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    z0: Float[Array, "d"],
    target: int | Int[Array, ""],
    *,
    steps: int = 1000,
    learning_rate: float = 0.1,
    optimizer: str | optax.GradientTransformation | None = None,
    threshold: float = 0.5,
    objective: str | Callable = "softmax",
    success_fn: str | Callable | None = None,
    proximity: str | Callable = "l1",
    proximity_weight: float = 0.0,
    threshold_rule: str = ">=",
    on_zero_gradient: str = "fail",
    compute_dtype=None,
    record_every: int = 0,
    project: Callable | None = None,
    early_exit_every: int = 10,
    rewrite_grads: bool | None = None,
) -> AttackResult:
    r"""Latent-space counterfactual attack on ONE example (``jax.vmap`` it, or use
    :func:`attack_batch` / :func:`make_attack`).

    Minimises the loss (by default :math:`-p_y(\mathrm{logits}(\mathrm{decode}(z)))`) from
    ``z0`` with ``optimizer`` until the score passes ``threshold`` (checked before every step,
    start point included), for at most ``steps`` steps. See the module docstring for the
    exact semantics.

    Args:
      decode: ``z -> x [H, W, C]``, e.g. a VAE decoder (any JAX callable).
      logits: ``x -> [K]`` class logits (``[]``/``[1]`` for ``objective="sigmoid"``). It must
        include its own preprocessing: it sees exactly what ``decode`` returns.
      z0: the starting latent (e.g. the encoder mean of the image), any shape ``decode`` takes;
        float32 (or float64). float16/bfloat16 and integer starts are refused.
      target: class index to reach (softmax), 1/0 to increase/decrease a sigmoid, or whatever
        a custom ``objective``/``success_fn`` takes.{options}

    Returns:
      :class:`AttackResult`; ``trajectory`` has ``ceil(steps / record_every) + 1`` images.

    Raises:
      InputError: bad options, a ``z0`` that is not float32/float64 or not finite, a
        ``target`` outside ``[0, K)``, a ``logits`` output that is not ``[K]``
        (``[]``/``[1]`` for sigmoid), or a callable (``decode``, ``logits``, ``objective``,
        ``success_fn``, ``proximity``) that fails or returns the wrong kind of output on one
        example (the message names it and the input it was given).

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> r = attack(lambda z: z, lambda x: W @ x, jnp.array([1.0, 0.0]), 1, steps=50)
      >>> bool(r.success), int(r.status), int(r.steps_taken) > 0
      (True, 0, True)
    """
    return _attack(_LATENT, **locals())  # every argument, by name


def _attack(names: _Names, decode, logits, z0, target, *, steps, learning_rate, optimizer, threshold, objective, success_fn, proximity,
            proximity_weight, threshold_rule, on_zero_gradient, compute_dtype, record_every, project, early_exit_every,
            rewrite_grads) -> AttackResult:
    """:func:`attack` with the start point's argument named as ``names`` says."""
    spec = _parse_options(steps=steps, threshold=threshold, objective=objective, success_fn=success_fn, proximity=proximity,
                          proximity_weight=proximity_weight, threshold_rule=threshold_rule, on_zero_gradient=on_zero_gradient,
                          compute_dtype=compute_dtype, record_every=record_every, early_exit_every=early_exit_every)
    tx = make_optimizer(optimizer, learning_rate)
    z0 = jnp.asarray(z0) if not isinstance(z0, jax.core.Tracer) else z0
    _check_start_dtype(z0, names)
    check_finite(z0, names.start)
    if spec.score_kind != "custom" and np.ndim(target) != 0:
        raise bad_arg("target", f"shape {np.shape(target)}", "a scalar class index (use attack_batch for batches)")
    if not isinstance(target, jax.core.Tracer):
        target = jnp.asarray(target)
    k = _num_classes(decode, logits, z0, target, spec, batched=False, names=names)
    target = _check_target_values(target, k, spec)
    decode, logits = _prepare(decode, logits, spec, rewrite_grads)
    fns = _lane_fns(decode, logits, spec=spec, tx=tx, project=project)
    return _run_one(fns, z0, target, steps=spec.steps, record_every=spec.record_every, early_exit_every=spec.early_exit_every)


if attack.__doc__:  # None under python -OO
    attack.__doc__ = attack.__doc__.replace("{options}", _OPTIONS_DOC)

_SINGLE_DEFAULTS = {k: p.default for k, p in inspect.signature(attack).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _pixel_options(kw: dict, allowed, **fixed) -> dict:
    """The pixel attack's options: refuses unknown ones and ``project`` (always clipping)."""
    if "project" in kw:
        raise bad_arg("project", "a projection", "no projection for a pixel attack (it always clips to [0, 1])")
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise bad_arg("options", ", ".join(unknown), f"options of the pixel attack: {', '.join(sorted(allowed))}")
    return {**kw, **fixed}


def _clip01(x):
    return jnp.clip(x, 0.0, 1.0)


def _identity(x):
    return x


def attack_pixels(
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    x0: Float[Array, "h w c"],
    target: int | Int[Array, ""],
    *,
    learning_rate: float = 0.01,
    **kw,
) -> AttackResult:
    r"""Pixel-space baseline: the loop of :func:`attack` on the image itself, projected to
    [0, 1] after every step, :math:`x_{t+1} = \Pi_{[0,1]}(x_t + \mathrm{opt}(\nabla_x L))`.

    Same options and result type as :func:`attack` (``z`` and ``x`` are both the final
    image; a proximity term measures ``x - x0``). Its messages name ``x0`` and ``logits``
    (there is no ``decode``); ``project`` is refused (it always clips). On an undefended classifier it flips the
    class with small, structured noise: the adversarial example the latent attack is compared
    against.

    Args:
      logits: ``x -> [K]`` class logits.
      x0: the image [H, W, C] in [0, 1].
      target: as in :func:`attack`.
      learning_rate: the optimiser's.
      **kw: every other option of :func:`attack`.

    Returns:
      :class:`AttackResult`.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.linspace(-1.0, 1.0, 12)
      >>> lg = lambda x: jnp.stack([0.0, jnp.dot(x.reshape(-1), w)])
      >>> r = attack_pixels(lg, jnp.full((3, 4, 1), 0.5), 1, steps=100, learning_rate=0.05)
      >>> bool(r.success), float(r.x.min()) >= 0.0
      (True, True)
    """
    check_images(x0, "x0", batched=False)
    opts = _pixel_options(kw, set(_SINGLE_DEFAULTS) - {"learning_rate"}, learning_rate=learning_rate, project=_clip01)
    return _attack(_PIXELS, _identity, logits, x0, target, **{**_SINGLE_DEFAULTS, **opts})


def attack_batch(
    decode: Callable,
    logits: Callable,
    z0: Float[Array, "n d"],
    target: Int[Array, "n"],
    *,
    source: Int[Array, "n"] | None = None,
    schedule: str = "compact",
    block: int = 5,
    min_width: int = 8,
    steps: int = 1000,
    learning_rate: float = 0.1,
    optimizer: str | optax.GradientTransformation | None = None,
    threshold: float = 0.5,
    objective: str | Callable = "softmax",
    success_fn: str | Callable | None = None,
    proximity: str | Callable = "l1",
    proximity_weight: float = 0.0,
    threshold_rule: str = ">=",
    on_zero_gradient: str = "fail",
    compute_dtype=None,
    record_every: int = 0,
    project: Callable | None = None,
    early_exit_every: int = 10,
    rewrite_grads: bool | None = None,
) -> AttackResult:
    """:func:`attack` on a batch; every result field gains a leading batch axis ``n``.

    jit-friendly, but an un-jitted call traces and compiles every time (~seconds): for
    repeated calls use :func:`make_attack`, which binds the options and compiles once per
    input shape. Value checks are skipped for traced arguments.

    Args:
      decode, logits: as in :func:`attack`.
      z0: starting latents [n, ...].
      target: [n] target per example ([n, ...] for a custom ``success_fn``).
      source: optional [n] source classes in ``[0, K)``; a ``target == source`` pair is refused.
      schedule: ``"compact"`` (default; see the module docstring: cost ~ the sum of the
        examples' own step counts) or ``"vmap"`` (``jax.vmap(attack)``; every lane costs the
        slowest one's steps). Both give the same per-example results, trajectories included.
      block: steps per compaction round (refill granularity).
      min_width: the smallest width of the compaction ladder.{options}

    Returns:
      :class:`AttackResult` with a leading batch axis.

    Raises:
      InputError: as :func:`attack`, plus bad batch shapes, ``schedule``, ``block``,
        ``min_width``, a ``source`` outside ``[0, K)`` or ``target == source``.

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.eye(3)
      >>> r = attack_batch(lambda z: z, lambda x: W @ x, jnp.zeros((4, 3)), jnp.array([0, 1, 2, 1]), steps=50)
      >>> r.success.shape, bool(r.success.all())
      ((4,), True)
    """
    return _attack_batch(_LATENT, **locals())  # every argument, by name


def _attack_batch(names: _Names, decode, logits, z0, target, *, source, schedule, block, min_width, steps, learning_rate, optimizer, threshold,
                  objective, success_fn, proximity, proximity_weight, threshold_rule, on_zero_gradient, compute_dtype, record_every, project,
                  early_exit_every, rewrite_grads) -> AttackResult:
    """:func:`attack_batch` with the start point's argument named as ``names`` says."""
    spec = _parse_options(steps=steps, threshold=threshold, objective=objective, success_fn=success_fn, proximity=proximity,
                          proximity_weight=proximity_weight, threshold_rule=threshold_rule, on_zero_gradient=on_zero_gradient,
                          compute_dtype=compute_dtype, record_every=record_every, early_exit_every=early_exit_every)
    _check_schedule(schedule, block, min_width)
    tx = make_optimizer(optimizer, learning_rate)
    z0, target = _check_batch_args(z0, target, source, spec, names)
    k = _num_classes(decode, logits, z0, target, spec, batched=True, names=names)
    target = _check_target_values(target, k, spec)
    _check_source_values(source, k)
    decode, logits = _prepare(decode, logits, spec, rewrite_grads)
    fns = _lane_fns(decode, logits, spec=spec, tx=tx, project=project)
    if schedule == "vmap":
        one = functools.partial(_run_one, fns, steps=spec.steps, record_every=spec.record_every, early_exit_every=spec.early_exit_every)
        return jax.vmap(one)(z0, target)
    return _run_compact(fns, z0, target, steps=spec.steps, block=block, min_width=min_width, record_every=spec.record_every)


if attack_batch.__doc__:
    attack_batch.__doc__ = attack_batch.__doc__.replace("{options}", _OPTIONS_DOC)

_BATCH_DEFAULTS = {k: p.default for k, p in inspect.signature(attack_batch).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _check_schedule(schedule, block, min_width) -> None:
    if schedule not in ("compact", "vmap"):
        raise bad_arg("schedule", repr(schedule), "'compact' or 'vmap'")
    if not _is_int(block) or block <= 0:
        raise bad_arg("block", repr(block), "a positive integer")
    if not _is_int(min_width) or min_width <= 0:
        raise bad_arg("min_width", repr(min_width), "a positive integer")


def attack_pixels_batch(logits: Callable, x0: Float[Array, "n h w c"], target: Int[Array, "n"], *, learning_rate: float = 0.01, **kw) -> AttackResult:
    """:func:`attack_pixels` on a batch (same options as :func:`attack_batch`).

    Args:
      logits: ``x -> [K]`` class logits (one example).
      x0: images [n, H, W, C] in [0, 1].
      target: [n] target per example.
      learning_rate: the optimiser's.
      **kw: every other option of :func:`attack_batch`.

    Returns:
      :class:`AttackResult` with a leading batch axis.
    """
    check_images(x0, "x0")
    opts = _pixel_options(kw, set(_BATCH_DEFAULTS) - {"learning_rate"}, learning_rate=learning_rate, project=_clip01)
    return _attack_batch(_PIXELS, _identity, logits, x0, target, **{**_BATCH_DEFAULTS, **opts})


# ------------------------------------------------------------------ compile once, call many

_BATCH_OPTIONS = frozenset(
    ("schedule", "block", "min_width", "steps", "learning_rate", "optimizer", "threshold", "objective", "success_fn", "proximity",
     "proximity_weight", "threshold_rule", "on_zero_gradient", "compute_dtype", "record_every", "project", "early_exit_every",
     "rewrite_grads")
)
_SINGLE_OPTIONS = _BATCH_OPTIONS - {"schedule", "block", "min_width"}
_SPEC_OPTIONS = ("steps", "threshold", "objective", "success_fn", "proximity", "proximity_weight", "threshold_rule", "on_zero_gradient",
                 "compute_dtype", "record_every", "early_exit_every")


class Attack:
    """An attack with its models and options bound once and its program compiled once per
    input shape: ``Attack(decode, logits, **options)(z0, target) -> AttackResult``.

    Calling :func:`attack_batch` directly re-traces and re-compiles the whole loop on every
    call (seconds per call, even for a toy model); an ``Attack`` jits it once, so later calls
    with the same shapes and dtypes only run the compiled program. The options are checked at
    construction; each call still checks argument shapes and dtypes, and (for concrete arrays)
    the target and source ranges, ``target != source`` and finite ``z0`` on the host, without
    tracing again. Concrete preset targets are cast to int32 on the host, so uint8 or int64
    targets reuse the int32 program; :attr:`compile_count` says how many programs were built.

    The models are closed over: their weights are constants of the compiled program. A model
    changed in place afterwards (an NNX module trained further) is NOT seen by later calls of
    the same shapes; build a new ``Attack`` or pass the weights as data (docs/byom.md).

    Args:
      decode: ``z -> x [H, W, C]`` (single example; ``_identity`` for the pixel attack, see
        :func:`make_pixel_attack`).
      logits: ``x -> [K]``.
      batched: ``True`` (default): calls take a batch (:func:`attack_batch`); ``False``: one
        example (:func:`attack`).
      **options: any option of :func:`attack_batch` (of :func:`attack` when
        ``batched=False``) except ``source``, which goes with each call.

    Example:
      >>> import jax.numpy as jnp
      >>> run = Attack(lambda z: z, lambda x: jnp.eye(3) @ x, steps=50)
      >>> r = run(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 1]))   # traces and compiles
      >>> r = run(jnp.ones((4, 3)), jnp.array([2, 2, 0, 1]))    # reuses the program
      >>> bool(r.success.all()), run.compile_count
      (True, 1)
    """

    def __init__(self, decode: Callable, logits: Callable, *, batched: bool = True, **options):
        if not callable(decode):
            raise bad_arg("decode", type(decode).__name__, "a callable z -> x")
        if not callable(logits):
            raise bad_arg("logits", type(logits).__name__, "a callable x -> logits")
        allowed = _BATCH_OPTIONS if batched else _SINGLE_OPTIONS
        unknown = sorted(set(options) - allowed - {"_pixels"})
        if unknown:
            raise bad_arg("options", ", ".join(unknown), f"options of {'attack_batch' if batched else 'attack'}: {', '.join(sorted(allowed))}")
        self._pixels = options.pop("_pixels", False)
        self._names = _PIXELS if self._pixels else _LATENT
        defaults = _BATCH_DEFAULTS if batched else _SINGLE_DEFAULTS
        self._spec = _parse_options(**{k: options.get(k, defaults[k]) for k in _SPEC_OPTIONS})
        if batched:
            _check_schedule(options.get("schedule", "compact"), options.get("block", 5), options.get("min_width", 8))
        make_optimizer(options.get("optimizer"), options.get("learning_rate", defaults["learning_rate"]))  # checks optimizer and rate
        self.decode, self.logits, self.batched, self.options = decode, logits, batched, dict(options)
        self._k: dict = {}
        self._compiles = 0
        impl = functools.partial(_attack_batch if batched else _attack, self._names, decode, logits, **{**defaults, **options})

        def _attack_program(z0, target):  # runs only while jit traces, i.e. once per program it compiles
            self._compiles += 1
            return impl(z0, target)

        self._fn = jax.jit(_attack_program)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"{type(self).__name__}({'batched' if self.batched else 'single'}{', ' if opts else ''}{opts})"

    @property
    def compile_count(self) -> int:
        """How many programs this attack has traced and compiled so far: one per distinct
        ``(z0, target)`` shape and dtype signature (0 before the first call). For a user's own
        test that a loop of calls does not recompile. A call made inside an outer ``jax.jit``
        counts once per trace of that outer function."""
        return self._compiles

    def _classes(self, z0, target) -> int:
        key = (tuple(z0.shape), str(z0.dtype), tuple(np.shape(target)), str(getattr(target, "dtype", "")))
        if key not in self._k:  # traces the callables abstractly once per shape
            self._k[key] = _num_classes(self.decode, self.logits, z0, target, self._spec, batched=self.batched, names=self._names)
        return self._k[key]

    def __call__(self, z0: Float[Array, "n d"], target: Int[Array, "n"], source: Int[Array, "n"] | None = None) -> AttackResult:
        """Run the attack (compiling on the first call with these shapes).

        Args:
          z0: starting latents [n, ...] (one example [...] when ``batched=False``; images
            [n, H, W, C] for a pixel attack, named ``x0`` in its messages).
          target: [n] targets (a scalar when ``batched=False``).
          source: optional [n] source classes, checked in ``[0, K)`` and ``!= target`` on the
            host.

        Returns:
          :class:`AttackResult` (with a leading batch axis when batched).
        """
        names = self._names
        if self._pixels:
            check_images(z0, names.start, batched=self.batched)
        if self.batched:
            z0, target = _check_batch_args(z0, target, source, self._spec, names)
        else:
            z0 = z0 if isinstance(z0, jax.core.Tracer) else jnp.asarray(z0)
            _check_start_dtype(z0, names)
            check_finite(z0, names.start)
            if self._spec.score_kind != "custom" and np.ndim(target) != 0:
                raise bad_arg("target", f"shape {np.shape(target)}", "a scalar class index (use a batched Attack for batches)")
            target = target if isinstance(target, jax.core.Tracer) else jnp.asarray(target)
        k = self._classes(z0, target)
        target = _check_target_values(target, k, self._spec)  # preset targets: int32, cast on the host
        _check_source_values(source, k)
        return self._fn(z0, target)


def make_attack(decode: Callable, logits: Callable, **options) -> Attack:
    """A compiled-once latent attack: ``make_attack(decode, logits, **options)(z0, target)``.

    Args:
      decode, logits: the single-example model callables (as in :func:`attack`).
      **options: ``batched`` and any option of :func:`attack_batch`.

    Returns:
      an :class:`Attack`.

    Example:
      >>> import jax.numpy as jnp
      >>> run = make_attack(lambda z: z, lambda x: jnp.eye(2) @ x, steps=20, threshold_rule=">")
      >>> int(run(jnp.zeros((3, 2)), jnp.array([0, 1, 1])).status.max())
      0
    """
    return Attack(decode, logits, **options)


def make_pixel_attack(logits: Callable, *, learning_rate: float = 0.01, **options) -> Attack:
    """A compiled-once pixel attack (:func:`attack_pixels_batch`): ``(x0, target) -> AttackResult``.

    Args:
      logits: ``x -> [K]`` (single example).
      learning_rate: the optimiser's.
      **options: ``batched`` and any option of :func:`attack_batch` except ``project``.

    Returns:
      an :class:`Attack` whose calls take images in [0, 1] and clip after every step.
    """
    if "project" in options:
        raise bad_arg("project", "a projection", "no projection for a pixel attack (it always clips to [0, 1])")
    return Attack(_identity, logits, learning_rate=learning_rate, project=_clip01, _pixels=True, **options)


__all__ = [
    "Attack",
    "AttackResult",
    "BUDGET",
    "NON_FINITE",
    "PRESETS",
    "PROXIMITIES",
    "STATUS_NAMES",
    "SUCCESS",
    "ZERO_GRAD",
    "attack",
    "attack_batch",
    "attack_pixels",
    "attack_pixels_batch",
    "cpu_friendly",
    "make_attack",
    "make_optimizer",
    "make_pixel_attack",
    "mixed_precision",
    "normalized_sgd",
    "sigmoid_probability",
    "softmax_probability",
    "target_probability",
]
