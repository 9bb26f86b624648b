r"""Counterfactual Attacks: gradient steps on a generative latent until the class flips.

For one example, with a decoder :math:`G` and a classifier :math:`f`,

.. math::  z_{t+1} = z_t - \mathrm{opt}\big(\nabla_z [-p_y(f(G(z_t)))]\big), \qquad
           \text{stop once } p_y(f(G(z_t))) \ge \tau,

where :math:`p_y` is the target-class softmax probability (``objective="softmax"``) or the
sigmoid of a binary logit, increased (target 1) or decreased (target 0)
(``objective="sigmoid"``). The loss is the probability itself, as in the paper's code.

The loop is ONE fixed-length ``lax.scan``; a per-example ``done`` flag freezes an example as
soon as it crosses the threshold (or its gradient is zero or non-finite), so ``jax.vmap`` over a
batch gives every example exactly the trajectory it would have alone. ``attack_pixels`` runs the
same loop on the image (projected to [0, 1]): the adversarial baseline.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from cfjax._checks import check_finite
from cfjax.errors import bad_arg

SUCCESS, BUDGET, ZERO_GRAD, NON_FINITE = 0, 1, 2, 3
STATUS_NAMES = {SUCCESS: "success", BUDGET: "budget_exhausted", ZERO_GRAD: "zero_gradient", NON_FINITE: "non_finite"}


class AttackResult(NamedTuple):
    """Outcome of one attack (leading batch axis when vmapped).

    Attributes:
      z: final latent [D] (the final image for the pixel attack).
      x: final image ``decode(z)`` [H, W, C].
      target_prob: target probability at ``z`` [].
      steps_taken: optimiser steps applied [] int32.
      success: ``target_prob >= threshold`` [] bool (judged by the threshold only).
      status: 0 success, 1 step budget exhausted, 2 zero gradient, 3 non-finite.
      trajectory: images every ``record_every`` steps [T, H, W, C], or ``None``.
      trajectory_probs: target probabilities of those images [T], or ``None``.
    """

    z: Float[Array, "d"]
    x: Float[Array, "h w c"]
    target_prob: Float[Array, ""]
    steps_taken: Int[Array, ""]
    success: Bool[Array, ""]
    status: Int[Array, ""]
    trajectory: Float[Array, "t h w c"] | None = None
    trajectory_probs: Float[Array, "t"] | None = None


def normalized_sgd(learning_rate: float) -> optax.GradientTransformation:
    """Plain steps of length ``learning_rate`` along the normalised negative gradient."""

    def init(params):
        return optax.EmptyState()

    def update(g, state, params=None):
        norm = optax.global_norm(g)
        return jax.tree_util.tree_map(lambda x: -learning_rate * x / jnp.maximum(norm, 1e-12), g), state

    return optax.GradientTransformation(init, update)


def make_optimizer(optimizer, learning_rate: float) -> optax.GradientTransformation:
    """``"adam"`` (default, the paper's), ``"sgd-normalized"``, or any optax transformation."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if optimizer in (None, "adam"):
        return optax.adam(learning_rate)
    if optimizer == "sgd-normalized":
        return normalized_sgd(learning_rate)
    raise bad_arg("optimizer", repr(optimizer), "'adam', 'sgd-normalized' or an optax.GradientTransformation")


def target_probability(l: Float[Array, "k"], target, objective: str) -> Float[Array, ""]:
    """The probability the attack pushes up: softmax[target], or sigmoid / 1 - sigmoid."""
    if objective == "softmax":
        return jax.nn.softmax(l)[target]
    s = jax.nn.sigmoid(jnp.reshape(l, ()))
    return jnp.where(target == 1, s, 1.0 - s)


def _validate(z0, target, steps, threshold, objective, record_every, logits_shape):
    if objective not in ("softmax", "sigmoid"):
        raise bad_arg("objective", repr(objective), "'softmax' or 'sigmoid'")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise bad_arg("steps", repr(steps), "a positive integer")
    if not (isinstance(threshold, (float, int)) and 0.0 < threshold < 1.0):
        raise bad_arg("threshold", repr(threshold), "a probability strictly between 0 and 1")
    if isinstance(record_every, bool) or not isinstance(record_every, (int, np.integer)) or record_every < 0:
        raise bad_arg("record_every", repr(record_every), "a non-negative integer")
    if record_every and steps % record_every:
        raise bad_arg("record_every", record_every, f"a divisor of steps={steps}")
    check_finite(z0, "z0")
    if not isinstance(target, jax.core.Tracer):
        t = np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer):
            raise bad_arg("target", f"dtype {t.dtype}", "an integer class index")
        k = 2 if objective == "sigmoid" else int(logits_shape[-1])
        if t.size and (t.min() < 0 or t.max() >= k):
            raise bad_arg("target", f"values in [{t.min()}, {t.max()}]", f"class indices in [0, {k - 1}]")


def _run(decode, logits, z0, target, *, steps, tx, threshold, objective, record_every, project, early_exit_every):
    def prob_and_x(z):
        x = decode(z)
        return target_probability(logits(x), target, objective), x

    def loss(z):
        p, x = prob_and_x(z)
        return -p, p

    def one_step(carry, _):
        z, opt_state, done, status, n = carry
        (l, p), g = jax.value_and_grad(loss, has_aux=True)(z)
        finite = jnp.isfinite(l) & jnp.all(jnp.isfinite(g))
        gzero = jnp.all(g == 0)
        active = ~done
        crossed = p >= threshold
        status = jnp.where(active & crossed, SUCCESS, status)
        status = jnp.where(active & ~crossed & ~finite, NON_FINITE, status)
        status = jnp.where(active & ~crossed & finite & gzero, ZERO_GRAD, status)
        done = done | (active & (crossed | ~finite | gzero))
        updates, new_state = tx.update(jnp.where(finite, g, 0.0), opt_state, z)
        z_new = optax.apply_updates(z, updates)
        if project is not None:
            z_new = project(z_new)
        z = jnp.where(done, z, z_new)
        opt_state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), opt_state, new_state)
        n = n + (~done).astype(jnp.int32)
        return (z, opt_state, done, status, n), None

    carry = (z0, tx.init(z0), jnp.asarray(False), jnp.asarray(BUDGET, jnp.int32), jnp.asarray(0, jnp.int32))
    traj = traj_p = None
    if record_every:

        def block(carry, _):
            carry, _ = jax.lax.scan(one_step, carry, None, length=record_every)
            p, x = prob_and_x(carry[0])
            return carry, (x, p)

        p0, x0 = prob_and_x(z0)
        carry, (xs, ps) = jax.lax.scan(block, carry, None, length=steps // record_every)
        traj = jnp.concatenate([x0[None], xs])
        traj_p = jnp.concatenate([p0[None], ps])
    elif early_exit_every and steps % early_exit_every == 0:
        # Same trajectory as one scan of `steps`, cut into blocks; the loop ends once every
        # example is done. Under vmap the predicate is batched: the whole batch stops when its
        # slowest lane is done (lanes already done are frozen by the mask inside each block).
        def cond(c):
            return (c[0] < steps // early_exit_every) & ~c[1][2]

        def body(c):
            i, inner = c
            inner, _ = jax.lax.scan(one_step, inner, None, length=early_exit_every)
            return i + 1, inner

        _, carry = jax.lax.while_loop(cond, body, (jnp.asarray(0), carry))
    else:
        carry, _ = jax.lax.scan(one_step, carry, None, length=steps)
    z, _, done, status, n = carry
    p, x = prob_and_x(z)
    success = p >= threshold  # by the threshold, also when it lands on the very last step
    status = jnp.where(success, SUCCESS, jnp.where(status == SUCCESS, BUDGET, status))
    return AttackResult(z, x, p, n, success, status, traj, traj_p)


def attack(
    decode: Callable[[Float[Array, "d"]], Float[Array, "h w c"]],
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    z0: Float[Array, "d"],
    target: int | Int[Array, ""],
    *,
    steps: int = 1000,
    learning_rate: float = 0.1,
    optimizer: str | optax.GradientTransformation | None = "adam",
    threshold: float = 0.5,
    objective: str = "softmax",
    record_every: int = 0,
    project: Callable | None = None,
    early_exit_every: int = 10,
) -> AttackResult:
    """Latent-space counterfactual attack on ONE example (``jax.vmap`` it for batches).

    Args:
      decode: ``z [D] -> x [H, W, C]``, e.g. a VAE decoder (any JAX callable).
      logits: ``x -> [K]`` class logits (``[]``/``[1]`` for ``objective="sigmoid"``). It must
        include its own preprocessing: it sees exactly what ``decode`` returns.
      z0: the starting latent [D] (e.g. the encoder mean of the image).
      target: class to reach (softmax), or 1/0 to increase/decrease a sigmoid.
      steps: the fixed scan length (the step budget).
      learning_rate: Adam's (the paper: 0.1 MNIST, 0.01 CelebA).
      optimizer: ``"adam"``, ``"sgd-normalized"`` or an optax transformation.
      threshold: success once the target probability is >= this.
      objective: ``"softmax"`` or ``"sigmoid"``.
      record_every: record the image every this many steps (0: no trajectory).
      project: optional map applied after each step (the pixel attack clips to [0, 1]).
      early_exit_every: stop the loop once every example is done, checked every this many
        steps (0: always run all ``steps``). Results are identical either way; it only saves
        the steps after the slowest example of a batch has finished. Needs
        ``steps % early_exit_every == 0`` (else the plain scan runs).

    Returns:
      :class:`AttackResult`.

    Example:
      >>> import jax.numpy as jnp
      >>> W = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> r = attack(lambda z: z, lambda x: W @ x, jnp.array([1.0, 0.0]), 1, steps=50)
      >>> bool(r.success), int(r.steps_taken) > 0
      (True, True)
    """
    shape = jax.eval_shape(lambda z: logits(decode(z)), z0).shape
    _validate(z0, target, steps, threshold, objective, record_every, shape)
    tx = make_optimizer(optimizer, learning_rate)
    return _run(
        decode, logits, jnp.asarray(z0), jnp.asarray(target, jnp.int32),
        steps=steps, tx=tx, threshold=float(threshold), objective=objective, record_every=record_every, project=project,
        early_exit_every=early_exit_every,
    )


def _clip01(x):
    return jnp.clip(x, 0.0, 1.0)


def attack_pixels(
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    x0: Float[Array, "h w c"],
    target: int | Int[Array, ""],
    *,
    learning_rate: float = 0.01,
    **kw,
) -> AttackResult:
    """The same loop on the image itself, clipped to [0, 1] after every step: the
    pixel-space (adversarial-noise) baseline. Same options and result type as :func:`attack`."""
    return attack(lambda x: x, logits, x0, target, learning_rate=learning_rate, project=_clip01, **kw)


def attack_batch(
    decode: Callable,
    logits: Callable,
    z0: Float[Array, "n d"],
    target: Int[Array, "n"],
    *,
    source: Int[Array, "n"] | None = None,
    **kw,
) -> AttackResult:
    """``jax.vmap`` of :func:`attack` over a batch (same options; result fields gain a batch axis).

    ``source`` (optional) is checked to differ from ``target`` elementwise.
    """
    target = jnp.asarray(target)
    if z0.ndim < 2 or z0.shape[0] == 0:
        raise bad_arg("z0", f"shape {tuple(z0.shape)}", "a non-empty batch [n, ...]")
    if target.shape != (z0.shape[0],):
        raise bad_arg("target", f"shape {tuple(target.shape)}", f"shape ({z0.shape[0]},), one per example")
    if source is not None and not isinstance(source, jax.core.Tracer) and np.any(np.asarray(source) == np.asarray(target)):
        raise bad_arg("target", "target == source for some examples", "a target class different from the source")
    one = functools.partial(attack, decode, logits, **kw)
    return jax.vmap(one)(z0, target)


def attack_pixels_batch(logits: Callable, x0: Float[Array, "n h w c"], target: Int[Array, "n"], **kw) -> AttackResult:
    """``jax.vmap`` of :func:`attack_pixels`."""
    target = jnp.asarray(target)
    if target.shape != (x0.shape[0],):
        raise bad_arg("target", f"shape {tuple(target.shape)}", f"shape ({x0.shape[0]},), one per example")
    return jax.vmap(functools.partial(attack_pixels, logits, **kw))(x0, target)
