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

Custom objectives: ``objective=fn(logits, target) -> loss`` (a scalar, minimised) with
``success_fn=fn(logits, target) -> p``, the score the stop rule compares with ``threshold`` and
reports as ``target_prob``; an optional proximity term ``proximity_weight * proximity(z - z0)``;
``threshold_rule=">"``; ``on_zero_gradient="continue"`` (keep stepping through a zero gradient).
Every option is a field of :class:`~cfjax.methods.attack_options.AttackOptions`.

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

Every entry point takes the options as ``options=`` and/or as keywords (which build it or
override its fields). Arguments are checked before the attack is traced
(:mod:`cfjax.methods.attack_checks`); a preset target outside ``[0, K)`` that only a trace
sees (the caller's own ``jit``) gets a NaN ``target_prob`` and status 3. Low precision: ``z``,
the optimiser, the image, the score and the gradients are float32 (or float64);
float16/bfloat16 starts and model outputs are refused. ``compute_dtype=jnp.bfloat16`` is the
route to low-precision model arithmetic: bfloat16 operands for the matrix multiplications and
convolutions of ``decode``/``logits``, float32 accumulation and outputs
(:func:`~cfjax.methods.jaxpr_rewrite.mixed_precision`).

On the CPU backend ``decode`` and ``logits`` are re-interpreted by
:func:`~cfjax.methods.jaxpr_rewrite.cpu_friendly` by default (``rewrite_grads``): identical
values and gradients, 3-5x faster attack steps on XLA:CPU, whose convolution input-gradients
are slow inside loops (details at the function).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from cfjax._checks import check_images
from cfjax.errors import bad_arg
from cfjax.methods.attack_checks import LATENT, PIXELS, Names, check_batch_args, check_single_args, check_source_values, check_target_values, num_classes
from cfjax.methods.attack_compiled import CompiledAttack
from cfjax.methods.attack_options import PRESETS, PROXIMITIES, AttackOptions, Spec, build_options, spec_of, takes_options
from cfjax.methods.attack_options import make_optimizer, normalized_sgd, sigmoid_probability, softmax_probability, target_probability
from cfjax.methods.jaxpr_rewrite import cpu_friendly, maybe_rewrite, mixed_precision

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
      status: 0 success, 1 step budget exhausted, 2 zero gradient, 3 non-finite (also: a preset
        target outside ``[0, K)`` seen only under ``jit``, with a NaN ``target_prob``) [] int32.
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


class _Fns(NamedTuple):
    prob_and_x: Callable  # (z, target) -> (p, x)
    step: Callable  # (lane, target) -> (lane, (x, p, active, n_before))
    init: Callable  # z0 -> lane
    finish: Callable  # (lane, target) -> AttackResult without trajectory


def _all_finite(tree) -> Bool[Array, ""]:
    """Every floating leaf of ``tree`` finite (a scalar bool)."""
    oks = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    return functools.reduce(jnp.logical_and, oks, jnp.asarray(True))


def _scorer(decode, logits, spec: Spec) -> Callable:
    """``(z, target) -> (p, logits, ok, x)``: the score at ``z``, and whether the point, image,
    logits and score are all finite. A preset target outside ``[0, K)`` (possible only when
    traced: concrete ones are refused on the host) has no score: ``p`` is NaN, so ``ok`` is
    false and the example ends with status 3, never as a success."""

    def in_range(l, target):
        k = 2 if spec.score_kind == "sigmoid" else jnp.shape(l)[-1]
        return (target >= 0) & (target < k)

    def score_ok_x(z, target):
        x = decode(z)
        l = logits(x)
        if spec.compute_dtype is not None:  # the model's outputs back in z's precision
            x, l = x.astype(z.dtype), l.astype(z.dtype)
        p = spec.score(l, target)
        if jnp.shape(p) != ():
            raise bad_arg("success_fn", f"a score of shape {jnp.shape(p)}", "a scalar score per example (logits, target) -> []")
        if spec.score_kind != "custom":
            p = jnp.where(in_range(l, target), p, jnp.nan)
        # a finite point, image, logits AND score: XLA:CPU's max does not always propagate
        # NaN, so a relu of a NaN image or a softmax of partly-NaN logits can come out finite;
        # never trust it (a NaN z0 under the caller's own jit ends with status 3, not 2)
        return p, l, _all_finite(z) & _all_finite(x) & _all_finite(l) & jnp.isfinite(p), x

    return score_ok_x


def _lane_fns(decode, logits, spec: Spec) -> _Fns:
    """The per-example pieces every schedule is built from."""
    steps, threshold, tx, project = spec.steps, spec.threshold, spec.tx, spec.project
    score_ok_x = _scorer(decode, logits, spec)

    def past(p):
        return p > threshold if spec.rule == ">" else p >= threshold

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


def _run_one(fns: _Fns, z0, target, spec: Spec) -> AttackResult:
    """One example: a scan of ``steps`` (blocks of it when recording or exiting early)."""
    steps, record_every, early_exit_every = spec.steps, spec.record_every, spec.early_exit_every
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


def _run_compact(fns: _Fns, z0s, targets, spec: Spec, *, block: int, min_width: int) -> AttackResult:
    """The compacted schedule (module docstring): rounds of ``block`` steps on the active lanes."""
    steps, record_every = spec.steps, spec.record_every
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


def _prepare(decode, logits, spec: Spec, rewrite_grads) -> tuple[Callable, Callable]:
    """The model callables as the loop runs them: mixed precision, then the CPU rewrite."""
    if spec.compute_dtype is not None:
        decode, logits = mixed_precision(decode, spec.compute_dtype), mixed_precision(logits, spec.compute_dtype)
    return maybe_rewrite(decode, rewrite_grads), maybe_rewrite(logits, rewrite_grads)


# ------------------------------------------------------------------ public entry points


@takes_options(batch=False)
def attack(
    decode: Callable[[Float[Array, "d"]], Float[Array, "h w c"]],
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    z0: Float[Array, "d"],
    target: int | Int[Array, ""],
    options: AttackOptions | None = None,
    **kw,
) -> AttackResult:
    r"""Latent-space counterfactual attack on ONE example (``jax.vmap`` it, or use
    :func:`attack_batch` / :func:`make_attack`).

    Minimises the loss (by default :math:`-p_y(\mathrm{logits}(\mathrm{decode}(z)))`) from
    ``z0`` with ``optimizer`` until the score passes ``threshold`` (checked before every step,
    start point included), for at most ``steps`` steps. See the module docstring for the
    exact semantics.

    Args:
      decode: ``z -> x [H, W, C]``, e.g. a VAE decoder (any JAX callable), returning float32
        (or float64); a float16/bfloat16 image is refused (use ``compute_dtype``).
      logits: ``x -> [K]`` class logits (``[]``/``[1]`` for ``objective="sigmoid"``), float32
        (or float64). It must include its own preprocessing: it sees exactly what ``decode``
        returns.
      z0: the starting latent (e.g. the encoder mean of the image), any shape ``decode`` takes;
        float32 (or float64). float16/bfloat16 and integer starts are refused.
      target: class index to reach (softmax), 1/0 to increase/decrease a sigmoid, or whatever
        a custom ``objective``/``success_fn`` takes.
      options: an :class:`AttackOptions` (its batch-schedule fields are unused here); the
        keywords below build it, or override its fields.{options}

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
    return _attack(LATENT, decode, logits, z0, target, build_options(options, kw, batch=False, where="attack"))


def _attack(names: Names, decode, logits, z0, target, opts: AttackOptions) -> AttackResult:
    """:func:`attack` with checked options, the start point's argument named as ``names`` says."""
    spec = spec_of(opts)
    z0, target = check_single_args(z0, target, spec, names, "use attack_batch for batches")
    k = num_classes(decode, logits, z0, target, spec, batched=False, names=names)
    target = check_target_values(target, k, spec)
    fns = _lane_fns(*_prepare(decode, logits, spec, opts.rewrite_grads), spec)
    return _run_one(fns, z0, target, spec)


_PIXEL_DEFAULTS = {"learning_rate": 0.01}


def _clip01(x):
    return jnp.clip(x, 0.0, 1.0)


def _identity(x):
    return x


def _pixel_options(options, kw: dict, *, batch: bool) -> AttackOptions:
    """The pixel attack's options: ``project`` is refused (it always clips to [0, 1]); the
    learning rate defaults to 0.01 when ``options`` is not given."""
    if "project" in kw or getattr(options, "project", None) is not None:
        raise bad_arg("project", "a projection", "no projection for a pixel attack (it always clips to [0, 1])")
    opts = build_options(options, kw, batch=batch, where="the pixel attack", drop=("project",), defaults=_PIXEL_DEFAULTS)
    return dataclasses.replace(opts, project=_clip01)


@takes_options(batch=False, drop=("project",), defaults=_PIXEL_DEFAULTS)
def attack_pixels(
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    x0: Float[Array, "h w c"],
    target: int | Int[Array, ""],
    options: AttackOptions | None = None,
    **kw,
) -> AttackResult:
    r"""Pixel-space baseline: the loop of :func:`attack` on the image itself, projected to
    [0, 1] after every step, :math:`x_{t+1} = \Pi_{[0,1]}(x_t + \mathrm{opt}(\nabla_x L))`.

    Same options and result type as :func:`attack` (``z`` and ``x`` are both the final
    image; a proximity term measures ``x - x0``). Its messages name ``x0`` and ``logits``
    (there is no ``decode``); ``project`` is refused (it always clips). On an undefended
    classifier it flips the class with small, structured noise: the adversarial example the
    latent attack is compared against.

    Args:
      logits: ``x -> [K]`` class logits.
      x0: the image [H, W, C] in [0, 1].
      target: as in :func:`attack`.
      options: an :class:`AttackOptions` (used as given: the 0.01 learning-rate default
        applies to keywords only); the keywords below build it, or override its fields.{options}

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
    return _attack(PIXELS, _identity, logits, x0, target, _pixel_options(options, kw, batch=False))


@takes_options(batch=True)
def attack_batch(
    decode: Callable,
    logits: Callable,
    z0: Float[Array, "n d"],
    target: Int[Array, "n"],
    options: AttackOptions | None = None,
    *,
    source: Int[Array, "n"] | None = None,
    **kw,
) -> AttackResult:
    """:func:`attack` on a batch; every result field gains a leading batch axis ``n``.

    jit-friendly, but an un-jitted call traces and compiles every time (~seconds): for
    repeated calls use :func:`make_attack`, which binds the options and compiles once per
    input shape. Value checks are skipped for traced arguments.

    Args:
      decode, logits: as in :func:`attack`.
      z0: starting latents [n, ...].
      target: [n] target per example ([n, ...] for a custom ``success_fn``).
      options: an :class:`AttackOptions`; the keywords below build it, or override its fields.
      source: optional [n] source classes in ``[0, K)``; a ``target == source`` pair is refused.{options}

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
    return _attack_batch(LATENT, decode, logits, z0, target, build_options(options, kw, batch=True, where="attack_batch"), source)


def _attack_batch(names: Names, decode, logits, z0, target, opts: AttackOptions, source=None) -> AttackResult:
    """:func:`attack_batch` with checked options, the start point's argument named as ``names`` says."""
    spec = spec_of(opts)
    z0, target = check_batch_args(z0, target, source, spec, names)
    k = num_classes(decode, logits, z0, target, spec, batched=True, names=names)
    target = check_target_values(target, k, spec)
    check_source_values(source, k)
    fns = _lane_fns(*_prepare(decode, logits, spec, opts.rewrite_grads), spec)
    if opts.schedule == "vmap":
        return jax.vmap(functools.partial(_run_one, fns, spec=spec))(z0, target)
    return _run_compact(fns, z0, target, spec, block=opts.block, min_width=opts.min_width)


@takes_options(batch=True, drop=("project",), defaults=_PIXEL_DEFAULTS)
def attack_pixels_batch(logits: Callable, x0: Float[Array, "n h w c"], target: Int[Array, "n"], options: AttackOptions | None = None,
                        **kw) -> AttackResult:
    """:func:`attack_pixels` on a batch (same options as :func:`attack_batch`, without ``project``).

    Args:
      logits: ``x -> [K]`` class logits (one example).
      x0: images [n, H, W, C] in [0, 1].
      target: [n] target per example.
      options: as in :func:`attack_pixels`.{options}

    Returns:
      :class:`AttackResult` with a leading batch axis.
    """
    check_images(x0, "x0")
    return _attack_batch(PIXELS, _identity, logits, x0, target, _pixel_options(options, kw, batch=True))


# ------------------------------------------------------------------ compile once, call many


class Attack(CompiledAttack):
    __doc__ = CompiledAttack.__doc__
    run_single = staticmethod(_attack)
    run_batch = staticmethod(_attack_batch)


@takes_options(batch=True)
def make_attack(decode: Callable, logits: Callable, options: AttackOptions | None = None, *, batched: bool = True, **kw) -> Attack:
    """A compiled-once latent attack: ``make_attack(decode, logits, options, **keywords)(z0, target)``.

    Args:
      decode, logits: the single-example model callables (as in :func:`attack`).
      options: an :class:`AttackOptions`; the keywords build it, or override its fields.
      batched: as in :class:`Attack`.{options}

    Returns:
      an :class:`Attack`.

    Example:
      >>> import jax.numpy as jnp
      >>> run = make_attack(lambda z: z, lambda x: jnp.eye(2) @ x, steps=20, threshold_rule=">")
      >>> int(run(jnp.zeros((3, 2)), jnp.array([0, 1, 1])).status.max())
      0
    """
    return Attack(decode, logits, options, batched=batched, **kw)


@takes_options(batch=True, drop=("project",), defaults=_PIXEL_DEFAULTS)
def make_pixel_attack(logits: Callable, options: AttackOptions | None = None, *, batched: bool = True, **kw) -> Attack:
    """A compiled-once pixel attack (:func:`attack_pixels_batch`): ``(x0, target) -> AttackResult``.

    Args:
      logits: ``x -> [K]`` (single example).
      options: as in :func:`attack_pixels`.
      batched: as in :class:`Attack`.{options}

    Returns:
      an :class:`Attack` whose calls take images in [0, 1] and clip after every step.
    """
    opts = _pixel_options(options, kw, batch=batched)
    return Attack(_identity, logits, opts, batched=batched, _pixels=True)


__all__ = [
    "Attack", "AttackOptions", "AttackResult", "BUDGET", "NON_FINITE", "PRESETS", "PROXIMITIES", "STATUS_NAMES", "SUCCESS", "ZERO_GRAD",
    "attack", "attack_batch", "attack_pixels", "attack_pixels_batch", "cpu_friendly", "make_attack", "make_optimizer", "make_pixel_attack",
    "mixed_precision", "normalized_sgd", "sigmoid_probability", "softmax_probability", "target_probability",
]
