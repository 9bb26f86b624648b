r"""Counterfactual Attacks: gradient steps on a generative latent until the class flips.

For one example, with a decoder :math:`G` and a classifier :math:`f`, the attack minimises
the loss :math:`L(z) = -p_y(f(G(z)))` with an optax optimiser (Adam by default),

.. math::  z_{t+1} = z_t + \mathrm{opt}\big(\nabla_z L(z_t)\big), \qquad
           \text{stop at the first } t \text{ with } p_y(f(G(z_t))) \ge \tau,

where :math:`p_y` is the target-class softmax probability (``objective="softmax"``) or, for a
binary classifier with one logit :math:`\ell`, :math:`\sigma(\ell)` when increasing
(``target=1``) and :math:`1 - \sigma(\ell)` when decreasing (``target=0``)
(``objective="sigmoid"``). The loss is the probability itself, not its logarithm, as in the
paper's code.

Semantics (identical on every code path below):

* the probability is checked at the current point BEFORE each step; the start point is
  checked too, so an example already past the threshold takes 0 steps and is a success;
* once past the threshold the example is frozen (``done``); ``steps_taken`` counts the
  optimiser steps actually applied;
* a zero gradient (global norm 0) or a non-finite loss/gradient ends the example as a
  failure (status 2 / 3), never as a success;
* ``success`` is judged by the threshold at the returned point, never by the iteration
  index (a step that lands past the threshold on the very last iteration is a success).

Code paths:

* :func:`attack` (one example): one fixed-length ``lax.scan`` carrying a ``done`` flag;
  ``jax.vmap`` it for batches. Optionally cut into blocks inside a ``while_loop`` that
  stops when every lane is done (``early_exit_every``), and optionally recording the image
  every ``record_every`` steps (a scan of blocks of a scan, nothing else stored).
* :func:`attack_batch` (a batch): by default the **compacted** schedule. A vmapped scan pays
  for every lane at every step until the slowest lane of the batch is finished (one
  budget-exhausting failure makes a batch run all ``steps``). The compacted schedule keeps
  the state of all ``n`` lanes, and repeatedly gathers ``w`` still-active lanes, advances
  them ``block`` steps (vmapped) and scatters them back, with ``w`` picked from a small
  static ladder (``n, n/4, n/16, ...``) as the largest width not above the number of active
  lanes. Cost ~ (sum of the lanes' own steps), not ``n * max``; each lane follows exactly
  the trajectory it has alone (asserted in the tests). ``schedule="vmap"`` is
  ``jax.vmap(attack)``.

:func:`attack_pixels` runs the same loop on the image itself, projected back to [0, 1]
after each step: the adversarial-noise baseline, with the same result type.

On the CPU backend ``decode`` and ``logits`` are re-interpreted by :func:`cpu_friendly` by
default (``rewrite_grads``): identical values and gradients, 3-5x faster attack steps on
XLA:CPU, whose convolution input-gradients are slow inside loops (details at the function).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import jax.extend.core as jex_core
import optax
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from cfjax._checks import check_finite, check_images
from cfjax.cpu_grads import cpu_friendly
from cfjax.cpu_grads import maybe_rewrite as _maybe_rewrite
from cfjax.errors import bad_arg

SUCCESS, BUDGET, ZERO_GRAD, NON_FINITE = 0, 1, 2, 3
STATUS_NAMES = {SUCCESS: "success", BUDGET: "budget_exhausted", ZERO_GRAD: "zero_gradient", NON_FINITE: "non_finite"}


class AttackResult(NamedTuple):
    """Outcome of one attack (every field gains a leading batch axis when batched).

    Attributes:
      z: final latent [D] (for the pixel attack: the final image, same as ``x``).
      x: final image ``decode(z)`` [H, W, C].
      target_prob: target probability at ``z`` [].
      steps_taken: optimiser steps applied before success/stop [] int32.
      success: ``target_prob >= threshold`` [] bool (judged by the threshold only).
      status: 0 success, 1 step budget exhausted, 2 zero gradient, 3 non-finite [] int32.
      trajectory: ``decode(z)`` at steps 0, r, 2r, ..., ``steps`` (``r = record_every``;
        frozen once done) [steps / r + 1, H, W, C], or ``None``.
      trajectory_probs: the target probability of each recorded image [steps / r + 1], or
        ``None``.
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
    """``None``/``"adam"`` (the paper's Adam), ``"sgd-normalized"``, or any optax transformation."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer is None or optimizer == "adam":
        return optax.adam(learning_rate)
    if optimizer == "sgd-normalized":
        return normalized_sgd(learning_rate)
    raise bad_arg("optimizer", repr(optimizer), "'adam', 'sgd-normalized' or an optax.GradientTransformation")


def target_probability(l: Float[Array, "k"], target, objective: str) -> Float[Array, ""]:
    """The probability the attack pushes up: ``softmax(l)[target]``, or for one sigmoid logit
    ``sigmoid(l)`` (target 1) / ``1 - sigmoid(l)`` (target 0)."""
    if objective == "softmax":
        return jax.nn.softmax(l)[target]
    s = jax.nn.sigmoid(jnp.reshape(l, ()))
    return jnp.where(target == 1, s, 1.0 - s)



def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _validate_options(steps, threshold, objective, record_every, early_exit_every):
    if objective not in ("softmax", "sigmoid"):
        raise bad_arg("objective", repr(objective), "'softmax' or 'sigmoid'")
    if not _is_int(steps) or steps <= 0:
        raise bad_arg("steps", repr(steps), "a positive integer")
    if isinstance(threshold, bool) or not isinstance(threshold, (float, int, np.floating)) or not 0.0 < threshold < 1.0:
        raise bad_arg("threshold", repr(threshold), "a probability strictly between 0 and 1")
    if not _is_int(record_every) or record_every < 0:
        raise bad_arg("record_every", repr(record_every), "a non-negative integer")
    if record_every and steps % record_every:
        raise bad_arg("record_every", record_every, f"a divisor of steps={steps}")
    if not _is_int(early_exit_every) or early_exit_every < 0:
        raise bad_arg("early_exit_every", repr(early_exit_every), "a non-negative integer")


def _num_classes(decode, logits, z0, objective: str, batched: bool) -> int:
    """Shape-check ``logits(decode(z0))`` without running it; returns K (2 for sigmoid)."""
    z1 = jax.ShapeDtypeStruct(z0.shape[1:] if batched else z0.shape, z0.dtype)
    try:
        out = jax.eval_shape(lambda z: logits(decode(z)), z1)
    except Exception as e:  # noqa: BLE001 - re-raised with the argument named
        raise bad_arg("z0", f"shape {tuple(z1.shape)} that decode/logits cannot take ({type(e).__name__}: {e})", "a latent decode accepts") from e
    shape = tuple(out.shape)
    if objective == "sigmoid":
        if shape not in ((), (1,)):
            raise bad_arg("logits", f"output shape {shape}", "shape () or (1,) for objective='sigmoid'")
        return 2
    if len(shape) != 1 or shape[0] < 2:
        raise bad_arg("logits", f"output shape {shape}", "shape (K,) with K >= 2 for objective='softmax' (one example, no batch axis)")
    return shape[0]


def _check_target_values(target, k: int, objective: str) -> None:
    if isinstance(target, jax.core.Tracer):
        return
    t = np.asarray(target)
    if not np.issubdtype(t.dtype, np.integer):
        raise bad_arg("target", f"dtype {t.dtype}", "an integer class index" + (" (1 increase, 0 decrease)" if objective == "sigmoid" else ""))
    if t.size and (t.min() < 0 or t.max() >= k):
        raise bad_arg("target", f"values in [{t.min()}, {t.max()}]", f"class indices in [0, {k - 1}]")


class _Fns(NamedTuple):
    prob_and_x: Callable  # (z, target) -> (p, x)
    step: Callable  # (lane, target) -> lane
    init: Callable  # z0 -> lane
    finish: Callable  # (lane, target) -> AttackResult without trajectory


def _lane_fns(decode, logits, *, steps, tx, threshold, objective, project) -> _Fns:
    """The per-example pieces every schedule is built from."""

    def prob_ok_x(z, target):
        x = decode(z)
        l = logits(x)
        p = target_probability(l, target, objective)
        # finite logits AND a finite probability: XLA:CPU's max does not always propagate NaN,
        # so a softmax of partly-NaN logits can come out finite; never trust it
        return p, jnp.all(jnp.isfinite(l)) & jnp.isfinite(p), x

    def prob_and_x(z, target):
        p, _, x = prob_ok_x(z, target)
        return p, x

    def loss(z, target):
        p, ok, _ = prob_ok_x(z, target)
        return -p, (p, ok)

    def step(lane: _Lane, target) -> _Lane:
        # `n < steps` is always true inside one scan of `steps` iterations; it is what ends a
        # lane in the compacted schedule, where lanes are advanced unevenly.
        active = ~lane.done & (lane.n < steps)
        (l, (p, ok)), g = jax.value_and_grad(loss, has_aux=True)(lane.z, target)
        finite = ok & jnp.isfinite(l) & jnp.all(jnp.isfinite(g))
        crossed = ok & (p >= threshold)  # NaN never counts as crossed
        gzero = optax.global_norm(g) == 0
        stop = active & (crossed | ~finite | gzero)
        code = jnp.where(crossed, SUCCESS, jnp.where(~finite, NON_FINITE, ZERO_GRAD))
        status = jnp.where(stop, code, lane.status).astype(jnp.int32)
        move = active & ~stop
        updates, new_state = tx.update(jnp.where(finite, g, 0.0), lane.opt_state, lane.z)
        z_new = optax.apply_updates(lane.z, updates)
        if project is not None:
            z_new = project(z_new)
        keep = lambda new, old: jnp.where(move, new, old)  # noqa: E731
        return _Lane(
            keep(z_new, lane.z),
            jax.tree_util.tree_map(keep, new_state, lane.opt_state),
            lane.done | stop,
            status,
            lane.n + move.astype(jnp.int32),
        )

    def init(z0) -> _Lane:
        return _Lane(z0, tx.init(z0), jnp.asarray(False), jnp.asarray(BUDGET, jnp.int32), jnp.asarray(0, jnp.int32))

    def finish(lane: _Lane, target) -> AttackResult:
        p, ok, x = prob_ok_x(lane.z, target)
        success = ok & (p >= threshold)  # by the threshold, also when it lands on the very last step
        status = jnp.where(success, SUCCESS, jnp.where(lane.status == SUCCESS, BUDGET, lane.status))
        status = jnp.where(~ok & ~success, NON_FINITE, status).astype(jnp.int32)
        return AttackResult(lane.z, x, p, lane.n, success, status)

    return _Fns(prob_and_x, step, init, finish)


def _run_one(fns: _Fns, z0, target, *, steps, record_every, early_exit_every) -> AttackResult:
    lane = fns.init(z0)

    def scan_steps(lane, length):
        return jax.lax.scan(lambda c, _: (fns.step(c, target), None), lane, None, length=length)[0]

    if record_every:

        def block(lane, _):
            lane = scan_steps(lane, record_every)
            p, x = fns.prob_and_x(lane.z, target)
            return lane, (x, p)

        p0, x0 = fns.prob_and_x(z0, target)
        lane, (xs, ps) = jax.lax.scan(block, lane, None, length=steps // record_every)
        res = fns.finish(lane, target)
        return res._replace(trajectory=jnp.concatenate([x0[None], xs]), trajectory_probs=jnp.concatenate([p0[None], ps]))
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


def _run_compact(fns: _Fns, z0s, targets, *, steps, block, min_width) -> AttackResult:
    n = targets.shape[0]
    lanes = jax.vmap(fns.init)(z0s)
    widths = _ladder(n, min_width)
    vstep = jax.vmap(fns.step)

    def finished(ls):
        return ls.done | (ls.n >= steps)

    def advance(width):
        def f(ls):
            fin = finished(ls)
            # the first `width` active lanes; fill with a finished lane (frozen by the mask,
            # so writing it back unchanged, even several times, is harmless)
            ids = jnp.nonzero(~fin, size=width, fill_value=jnp.argmax(fin))[0]
            sub = jax.tree_util.tree_map(lambda a: a[ids], ls)
            t = targets[ids]
            sub = jax.lax.scan(lambda c, _: (vstep(c, t), None), sub, None, length=block)[0]
            return jax.tree_util.tree_map(lambda a, b: a.at[ids].set(b), ls, sub)

        return f

    branches = [advance(w) for w in widths]

    def body(ls):
        remaining = jnp.sum(~finished(ls))
        i = jnp.minimum(jnp.sum(jnp.asarray(widths) > remaining), len(widths) - 1)
        return jax.lax.switch(i, branches, ls)

    lanes = jax.lax.while_loop(lambda ls: jnp.any(~finished(ls)), body, lanes)
    return jax.vmap(fns.finish)(lanes, targets)


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
    objective: str = "softmax",
    record_every: int = 0,
    project: Callable | None = None,
    early_exit_every: int = 10,
    rewrite_grads: bool | None = None,
) -> AttackResult:
    r"""Latent-space counterfactual attack on ONE example (``jax.vmap`` it, or use
    :func:`attack_batch`).

    Minimises :math:`-p_y(\mathrm{logits}(\mathrm{decode}(z)))` from ``z0`` with ``optimizer``
    until :math:`p_y \ge` ``threshold`` (checked before every step, start point included), for
    at most ``steps`` steps. See the module docstring for the exact semantics.

    Args:
      decode: ``z -> x [H, W, C]``, e.g. a VAE decoder (any JAX callable).
      logits: ``x -> [K]`` class logits (``[]``/``[1]`` for ``objective="sigmoid"``). It must
        include its own preprocessing: it sees exactly what ``decode`` returns.
      z0: the starting latent (e.g. the encoder mean of the image), any shape ``decode`` takes.
      target: class index to reach (softmax), or 1/0 to increase/decrease a sigmoid.
      steps: the step budget (the fixed scan length).
      learning_rate: the optimiser's (the paper: 0.1 MNIST, 0.01 CelebA).
      optimizer: ``None``/``"adam"`` (``optax.adam(learning_rate)``), ``"sgd-normalized"``
        (steps of length ``learning_rate`` along the normalised gradient) or any
        ``optax.GradientTransformation`` (then ``learning_rate`` is unused).
      threshold: success once the target probability is ``>=`` this, in (0, 1).
      objective: ``"softmax"`` or ``"sigmoid"``.
      record_every: record ``decode(z)`` every this many steps (0: no trajectory); must
        divide ``steps``.
      project: optional map applied after each step (the pixel attack clips to [0, 1]).
      early_exit_every: leave the loop once the example (under vmap: every lane) is done,
        checked every this many steps (0: always run all ``steps``). Results are identical
        either way. Used when it divides ``steps`` and ``record_every == 0``.
      rewrite_grads: run ``decode``/``logits`` through :func:`cpu_friendly` (same values and
        gradients; 3-4x faster attack steps on XLA:CPU). ``None``: only on the CPU backend.

    Returns:
      :class:`AttackResult`; ``trajectory`` has ``steps // record_every + 1`` images.

    Raises:
      InputError: bad options, non-finite ``z0``, a ``target`` outside ``[0, K)``, or a
        ``logits`` output that is not ``[K]`` (``[]``/``[1]`` for sigmoid).

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> r = attack(lambda z: z, lambda x: W @ x, jnp.array([1.0, 0.0]), 1, steps=50)
      >>> bool(r.success), int(r.status), int(r.steps_taken) > 0
      (True, 0, True)
    """
    _validate_options(steps, threshold, objective, record_every, early_exit_every)
    z0 = jnp.asarray(z0) if not isinstance(z0, jax.core.Tracer) else z0
    check_finite(z0, "z0")
    k = _num_classes(decode, logits, z0, objective, batched=False)
    if np.ndim(target) != 0:
        raise bad_arg("target", f"shape {np.shape(target)}", "a scalar class index (use attack_batch for batches)")
    _check_target_values(target, k, objective)
    decode, logits = _maybe_rewrite(decode, rewrite_grads), _maybe_rewrite(logits, rewrite_grads)
    fns = _lane_fns(decode, logits, steps=steps, tx=make_optimizer(optimizer, learning_rate), threshold=float(threshold), objective=objective, project=project)
    return _run_one(fns, z0, jnp.asarray(target, jnp.int32), steps=steps, record_every=record_every, early_exit_every=early_exit_every)


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
    [0, 1] after every step, :math:`x_{t+1} = \Pi_{[0,1]}(x_t + \mathrm{opt}(\nabla_x[-p_y]))`.

    Same options and result type as :func:`attack` (``z`` and ``x`` are both the final
    image). On an undefended classifier it flips the class with small, structured noise: the
    adversarial example the latent attack is compared against.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.linspace(-1.0, 1.0, 12)
      >>> lg = lambda x: jnp.stack([0.0, jnp.dot(x.reshape(-1), w)])
      >>> r = attack_pixels(lg, jnp.full((3, 4, 1), 0.5), 1, steps=100, learning_rate=0.05)
      >>> bool(r.success), float(r.x.min()) >= 0.0
      (True, True)
    """
    check_images(x0, "x0", batched=False)
    return attack(_identity, logits, x0, target, learning_rate=learning_rate, project=_clip01, **kw)


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
    objective: str = "softmax",
    record_every: int = 0,
    project: Callable | None = None,
    early_exit_every: int = 10,
    rewrite_grads: bool | None = None,
) -> AttackResult:
    """:func:`attack` on a batch; every result field gains a leading batch axis ``n``.

    jit-friendly (bind the options with ``functools.partial`` and jit the rest); value
    checks are skipped for traced arguments.

    Args:
      decode, logits, steps, learning_rate, optimizer, threshold, objective, record_every,
        project, early_exit_every, rewrite_grads: as in :func:`attack`.
      z0: starting latents [n, ...].
      target: [n] target per example.
      source: optional [n] source classes; a ``target == source`` pair is refused.
      schedule: ``"compact"`` (default; see the module docstring: cost ~ the sum of the
        examples' own step counts) or ``"vmap"`` (``jax.vmap(attack)``; every lane costs the
        slowest one's steps). Both give the same per-example results. A trajectory
        (``record_every > 0``) always uses ``"vmap"``.
      block: steps per compaction round (refill granularity).
      min_width: the smallest width of the compaction ladder.

    Returns:
      :class:`AttackResult` with a leading batch axis.

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.eye(3)
      >>> r = attack_batch(lambda z: z, lambda x: W @ x, jnp.zeros((4, 3)), jnp.array([0, 1, 2, 1]), steps=50)
      >>> r.success.shape, bool(r.success.all())
      ((4,), True)
    """
    _validate_options(steps, threshold, objective, record_every, early_exit_every)
    if schedule not in ("compact", "vmap"):
        raise bad_arg("schedule", repr(schedule), "'compact' or 'vmap'")
    if not _is_int(block) or block <= 0:
        raise bad_arg("block", repr(block), "a positive integer")
    if not _is_int(min_width) or min_width <= 0:
        raise bad_arg("min_width", repr(min_width), "a positive integer")
    if not hasattr(z0, "shape"):
        z0 = jnp.asarray(z0)
    if z0.ndim < 2 or z0.shape[0] == 0:
        raise bad_arg("z0", f"shape {tuple(z0.shape)}", "a non-empty batch [n, ...]")
    target = target if isinstance(target, jax.core.Tracer) else jnp.asarray(target)
    if target.shape != (z0.shape[0],):
        raise bad_arg("target", f"shape {tuple(target.shape)}", f"shape ({z0.shape[0]},), one per example")
    check_finite(z0, "z0")
    k = _num_classes(decode, logits, z0, objective, batched=True)
    _check_target_values(target, k, objective)
    if source is not None and not isinstance(source, jax.core.Tracer) and not isinstance(target, jax.core.Tracer):
        s = np.asarray(source)
        if s.shape != tuple(target.shape):
            raise bad_arg("source", f"shape {s.shape}", f"shape {tuple(target.shape)}, like target")
        if np.any(s == np.asarray(target)):
            raise bad_arg("target", f"target == source for {int(np.sum(s == np.asarray(target)))} examples", "a target class different from the source")
    decode, logits = _maybe_rewrite(decode, rewrite_grads), _maybe_rewrite(logits, rewrite_grads)
    fns = _lane_fns(decode, logits, steps=steps, tx=make_optimizer(optimizer, learning_rate), threshold=float(threshold), objective=objective, project=project)
    target = target.astype(jnp.int32)
    if schedule == "vmap" or record_every:
        one = functools.partial(_run_one, fns, steps=steps, record_every=record_every, early_exit_every=early_exit_every)
        return jax.vmap(one)(z0, target)
    return _run_compact(fns, z0, target, steps=steps, block=block, min_width=min_width)


def attack_pixels_batch(logits: Callable, x0: Float[Array, "n h w c"], target: Int[Array, "n"], *, learning_rate: float = 0.01, **kw) -> AttackResult:
    """:func:`attack_pixels` on a batch (same options as :func:`attack_batch`)."""
    check_images(x0, "x0")
    return attack_batch(_identity, logits, x0, target, learning_rate=learning_rate, project=_clip01, **kw)
