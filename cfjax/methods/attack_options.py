"""What a Counterfactual Attack is asked to do: :class:`AttackOptions`, spelled once.

Every attack entry point (:func:`cfjax.attack`, :func:`cfjax.attack_batch`,
:func:`cfjax.make_attack`, :class:`cfjax.Attack` and the pixel twins) takes an
``options: AttackOptions`` argument; its fields may also be passed as keywords, which build
(or, next to ``options``, override) it. The entry points' signatures are derived from the
fields (:func:`takes_options`), so an option is added here and nowhere else.

This module also holds what the options name: the score presets (:data:`PRESETS`), the
proximity presets (:data:`PROXIMITIES`) and the optimiser factory (:func:`make_optimizer`),
and resolves a validated :class:`AttackOptions` into the :class:`Spec` the step loop runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from cfjax.errors import bad_arg

MAX_INT = 2**31 - 1
"""The largest step count (and step interval) an attack accepts: its step counter is int32."""

# ------------------------------------------------------------------ presets


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

# ------------------------------------------------------------------ optimiser factory


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


def _check_learning_rate(learning_rate) -> None:
    """A finite ``learning_rate > 0`` (not checked: a traced value, an optax schedule)."""
    if isinstance(learning_rate, jax.core.Tracer) or callable(learning_rate):
        return
    v = learning_rate
    if hasattr(v, "dtype") and np.ndim(v) == 0 and (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        v = float(v)  # a numpy/jax scalar
    if not (_is_real(v) and math.isfinite(v) and v > 0):
        raise bad_arg("learning_rate", repr(learning_rate), "a finite number > 0 (or an optax schedule)")


# ------------------------------------------------------------------ number options


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_real(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (float, int, np.floating, np.integer))


def _concrete(name: str, v):
    """``v`` as a Python/NumPy scalar: a concrete 0-d JAX or NumPy array becomes its value; a
    traced one is refused (an option fixes the compiled program, it cannot be a tracer)."""
    if isinstance(v, jax.core.Tracer):
        raise bad_arg(name, f"a traced value {v.aval.str_short()}",
                      "a concrete number: attack options are fixed when the attack is traced, so pass a Python or NumPy scalar "
                      "(computed outside jax.jit, or as a static argument)")
    if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
        return np.asarray(v)[()]
    return v


def _count(name: str, v, low: int, what: str) -> int:
    """An integer option in ``[low, MAX_INT]``."""
    v = _concrete(name, v)
    if not _is_int(v) or not low <= v <= MAX_INT:
        raise bad_arg(name, repr(v), f"{what} no larger than 2**31 - 1 (the step counter is int32)")
    return int(v)


def _real(name: str, v, expected: str, ok: Callable[[float], bool]) -> float:
    """A real option for which ``ok(float(v))`` holds."""
    v = _concrete(name, v)
    if not _is_real(v) or not ok(float(v)):
        raise bad_arg(name, repr(v), expected)
    return float(v)


# ------------------------------------------------------------------ the options


_BATCH = {"batch": True}  # field metadata: an option of a batch (its schedule), unused for one example


@dataclasses.dataclass(frozen=True)
class AttackOptions:
    """The options of one attack, checked when built (an :class:`~cfjax.errors.InputError`
    names the bad one). Numbers may be Python, NumPy or concrete JAX scalars; they are stored
    as Python ``int``/``float``.

    Attributes:
      steps: the step budget (the fixed scan length), a positive integer below 2**31.
      learning_rate: the optimiser's (the paper: 0.1 MNIST, 0.01 CelebA); finite and > 0
        (an optax schedule or a traced value is passed through unchecked).
      optimizer: ``None``/``"adam"`` (``optax.adam(learning_rate)``), ``"sgd-normalized"``
        (steps of length ``learning_rate`` along the normalised gradient) or any
        ``optax.GradientTransformation`` (then ``learning_rate`` is unused).
      threshold: success once the score ``p`` passes this; in (0, 1) for the preset scores,
        any finite number for a custom ``success_fn``. A concrete number (not traced).
      objective: ``"softmax"`` (loss ``-softmax(logits)[target]``), ``"sigmoid"`` (one logit,
        loss ``-sigmoid`` / ``-(1 - sigmoid)`` for target 1 / 0) or a callable
        ``(logits, target) -> loss`` (a scalar, minimised; ``target`` is passed through as
        given, so it may be a multi-label vector).
      success_fn: the score ``(logits, target) -> p`` of the stop rule, reported as
        ``target_prob``: ``None`` (the preset's probability for a string objective, the
        target's softmax probability for a callable one), ``"softmax"``, ``"sigmoid"`` or a
        callable.
      proximity: ``"l1"`` (sum of absolute values), ``"l2"`` (squared Euclidean norm) or a
        callable ``d -> scalar``; ``proximity_weight * proximity(z - z0)`` is added to the loss.
      proximity_weight: a finite weight >= 0; 0 (default) adds nothing.
      threshold_rule: ``">="`` (default) or ``">"``: the comparison of ``p`` with ``threshold``.
      on_zero_gradient: ``"fail"`` (default: a zero gradient ends the example, status 2) or
        ``"continue"`` (keep stepping; it ends by success or the budget).
      compute_dtype: ``None`` (float32) or a floating dtype such as ``jnp.bfloat16``: the
        operands of the matrix multiplications and convolutions in ``decode``/``logits``
        (:func:`cfjax.methods.jaxpr_rewrite.mixed_precision`); ``z``, the optimiser, the
        image, the loss and the stop rule stay float32. The one route to low-precision
        arithmetic: float16/bfloat16 starts and model outputs are refused.
      record_every: record ``decode(z)`` after ``0, r, 2r, ...`` steps and after ``steps``
        (0: no trajectory); any positive ``r``, the last gap may be shorter.
      project: optional map applied after each step (the pixel attack clips to [0, 1]).
      early_exit_every: leave the loop once the example (under vmap: every lane) is done,
        checked every this many steps (0: always run all ``steps``). Results are identical
        either way. Used when it divides ``steps`` and ``record_every == 0``.
      rewrite_grads: run ``decode``/``logits`` through
        :func:`cfjax.methods.jaxpr_rewrite.cpu_friendly` (same values and gradients; 3-4x
        faster attack steps on XLA:CPU). ``None``: only on the CPU backend.
      schedule: (batches only) ``"compact"`` (default: cost ~ the sum of the examples' own
        step counts) or ``"vmap"`` (``jax.vmap(attack)``; every lane costs the slowest
        one's steps). Both give the same per-example results, trajectories included.
      block: (batches only) steps per compaction round (refill granularity), >= 1.
      min_width: (batches only) the smallest width of the compaction ladder, >= 1.

    Example:
      >>> opts = AttackOptions(steps=200, threshold=0.6)
      >>> opts.steps, dataclasses.replace(opts, steps=50).steps
      (200, 50)
    """

    steps: int = 1000
    learning_rate: float = 0.1
    optimizer: str | optax.GradientTransformation | None = None
    threshold: float = 0.5
    objective: str | Callable = "softmax"
    success_fn: str | Callable | None = None
    proximity: str | Callable = "l1"
    proximity_weight: float = 0.0
    threshold_rule: str = ">="
    on_zero_gradient: str = "fail"
    compute_dtype: Any = None
    record_every: int = 0
    project: Callable | None = None
    early_exit_every: int = 10
    rewrite_grads: bool | None = None
    schedule: str = dataclasses.field(default="compact", metadata=_BATCH)
    block: int = dataclasses.field(default=5, metadata=_BATCH)
    min_width: int = dataclasses.field(default=8, metadata=_BATCH)

    def __post_init__(self):
        for name, value in _checked(self).items():
            object.__setattr__(self, name, value)


def _checked(o: AttackOptions) -> dict[str, Any]:
    """Every field checked (naming the bad one), numbers as Python scalars."""
    kind = _score(o)[1]
    out = {"steps": _count("steps", o.steps, 1, "a positive integer")}
    if kind == "custom":
        out["threshold"] = _real("threshold", o.threshold, "a finite number (compared with success_fn's score)", math.isfinite)
    else:
        out["threshold"] = _real("threshold", o.threshold, "a probability strictly between 0 and 1", lambda v: 0.0 < v < 1.0)
    if o.threshold_rule not in (">=", ">"):
        raise bad_arg("threshold_rule", repr(o.threshold_rule), "'>=' or '>'")
    if o.on_zero_gradient not in ("fail", "continue"):
        raise bad_arg("on_zero_gradient", repr(o.on_zero_gradient), "'fail' or 'continue'")
    out["proximity_weight"] = _real("proximity_weight", o.proximity_weight, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
    _proximity(o)
    _compute_dtype(o.compute_dtype)
    out["record_every"] = _count("record_every", o.record_every, 0, "a non-negative integer")
    out["early_exit_every"] = _count("early_exit_every", o.early_exit_every, 0, "a non-negative integer")
    if o.project is not None and not callable(o.project):
        raise bad_arg("project", type(o.project).__name__, "None or a callable applied after each step")
    if o.rewrite_grads not in (None, True, False):
        raise bad_arg("rewrite_grads", repr(o.rewrite_grads), "None, True or False")
    if o.schedule not in ("compact", "vmap"):
        raise bad_arg("schedule", repr(o.schedule), "'compact' or 'vmap'")
    out["block"] = _count("block", o.block, 1, "a positive integer")
    out["min_width"] = _count("min_width", o.min_width, 1, "a positive integer")
    make_optimizer(o.optimizer, o.learning_rate)  # checks optimizer and (when used) the rate
    return out


def _score(o: AttackOptions) -> tuple[Callable, str]:
    """The stop rule's score and its kind (``"softmax"``, ``"sigmoid"`` or ``"custom"``)."""
    if not (isinstance(o.objective, str) and o.objective in PRESETS) and not callable(o.objective):
        raise bad_arg("objective", repr(o.objective), f"one of {sorted(PRESETS)} or a callable (logits, target) -> loss")
    success_fn = o.success_fn
    if success_fn is None:
        success_fn = o.objective if isinstance(o.objective, str) else "softmax"
    if isinstance(success_fn, str):
        if success_fn not in PRESETS:
            raise bad_arg("success_fn", repr(success_fn), f"one of {sorted(PRESETS)} or a callable (logits, target) -> score")
        return PRESETS[success_fn], success_fn
    if callable(success_fn):
        return success_fn, "custom"
    raise bad_arg("success_fn", repr(success_fn), f"None, one of {sorted(PRESETS)} or a callable (logits, target) -> score")


def _proximity(o: AttackOptions) -> Callable:
    if isinstance(o.proximity, str):
        if o.proximity not in PROXIMITIES:
            raise bad_arg("proximity", repr(o.proximity), f"one of {sorted(PROXIMITIES)} or a callable (z - z0) -> scalar")
        return PROXIMITIES[o.proximity]
    if callable(o.proximity):
        return o.proximity
    raise bad_arg("proximity", repr(o.proximity), f"one of {sorted(PROXIMITIES)} or a callable (z - z0) -> scalar")


def _compute_dtype(compute_dtype):
    """``None`` for float32 (or ``None``), the narrower floating dtype otherwise."""
    if compute_dtype is None:
        return None
    try:
        dt = jnp.dtype(compute_dtype)
    except TypeError as e:
        raise bad_arg("compute_dtype", repr(compute_dtype), "None or a floating dtype such as jnp.bfloat16") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise bad_arg("compute_dtype", repr(compute_dtype), "None or a floating dtype such as jnp.bfloat16")
    return None if dt == jnp.dtype(jnp.float32) else dt


# ------------------------------------------------------------------ resolved for the loop


class Spec(NamedTuple):
    """An :class:`AttackOptions` resolved for the step loop: presets replaced by callables."""

    steps: int
    threshold: float
    rule: str  # ">=" or ">"
    loss: Callable | None  # (logits, target) -> loss; None: the score's -p
    score: Callable  # (logits, target) -> p
    score_kind: str  # "softmax", "sigmoid" or "custom"
    proximity: Callable | None  # d -> [] of d = z - z0; None: no term
    proximity_weight: float
    continue_on_zero: bool
    compute_dtype: Any  # None: float32
    record_every: int
    early_exit_every: int
    tx: optax.GradientTransformation
    project: Callable | None


def spec_of(o: AttackOptions) -> Spec:
    """Resolve the (already checked) options: the loss, score and proximity callables, the
    optimiser and the compute dtype."""
    score, kind = _score(o)
    if isinstance(o.objective, str):
        loss = None if o.objective == kind else (lambda l, t, _p=PRESETS[o.objective]: -_p(l, t))
    else:
        loss = o.objective
    prox = _proximity(o) if o.proximity_weight > 0 else None
    return Spec(o.steps, o.threshold, o.threshold_rule, loss, score, kind, prox, o.proximity_weight, o.on_zero_gradient == "continue",
                _compute_dtype(o.compute_dtype), o.record_every, o.early_exit_every, make_optimizer(o.optimizer, o.learning_rate), o.project)


# ------------------------------------------------------------------ keywords as sugar


def option_names(*, batch: bool, drop: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The fields an entry point takes as keywords, in declaration order: all of them for a
    batch, without the schedule fields for one example, minus ``drop``."""
    return tuple(f.name for f in dataclasses.fields(AttackOptions) if (batch or not f.metadata.get("batch")) and f.name not in drop)


def build_options(options: AttackOptions | None, kw: dict, *, batch: bool, where: str, drop: tuple[str, ...] = (),
                  defaults: dict | None = None) -> AttackOptions:
    """``options`` with the keyword options ``kw`` applied over it (``defaults`` first when
    ``options`` is ``None``). Unknown keywords are refused, naming ``where``'s options."""
    if options is not None and not isinstance(options, AttackOptions):
        raise bad_arg("options", type(options).__name__, "an AttackOptions (or None) with the options as keywords")
    for name in drop:
        if name in kw:
            raise bad_arg(name, f"{name}={kw[name]!r}", f"no {name} for {where}")
    allowed = option_names(batch=batch, drop=drop)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise bad_arg("options", ", ".join(unknown), f"options of {where}: {', '.join(sorted(allowed))}")
    if options is None:
        return AttackOptions(**{**(defaults or {}), **kw})
    return dataclasses.replace(options, **kw) if kw else options


def takes_options(*, batch: bool, drop: tuple[str, ...] = (), defaults: dict | None = None) -> Callable:
    """Decorator for an entry point ``fn(..., options=None, **kw)``: its signature shows every
    option as a keyword after its own parameters (derived from the fields of
    :class:`AttackOptions`, ``defaults`` overriding theirs), and ``{options}`` in its docstring
    becomes the options' descriptions. The function itself still receives them in ``**kw``."""

    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fields = {f.name: f for f in dataclasses.fields(AttackOptions)}
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=(defaults or {}).get(n, fields[n].default),
                                     annotation=fields[n].type) for n in option_names(batch=batch, drop=drop)]
        fn.__signature__ = sig.replace(parameters=params)
        if fn.__doc__:  # None under python -OO
            fn.__doc__ = fn.__doc__.replace("{options}", _options_doc(option_names(batch=batch, drop=drop)))
        return fn

    return wrap


def _options_doc(names) -> str:
    """The ``Attributes:`` entries of :class:`AttackOptions` for ``names``, as ``Args:`` lines."""
    doc = AttackOptions.__doc__ or ""
    body = doc.split("Attributes:\n", 1)[-1].split("\n\n", 1)[0]
    entries, current = [], None
    for line in body.splitlines():
        if line.startswith("      ") and not line.startswith("        "):
            current = [line]
            entries.append(current)
        elif current is not None:
            current.append(line)
    keep = [e for e in entries if e[0].strip().split(":", 1)[0] in names]
    return "\n" + "\n".join(ln for e in keep for ln in e)


__all__ = [
    "MAX_INT",
    "PRESETS",
    "PROXIMITIES",
    "AttackOptions",
    "Spec",
    "build_options",
    "make_optimizer",
    "normalized_sgd",
    "option_names",
    "sigmoid_probability",
    "softmax_probability",
    "spec_of",
    "takes_options",
    "target_probability",
]
