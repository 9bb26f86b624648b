r"""Mirror-CFE: feature-map reflection, L-BFGS refinement, transitions, the first counterfactual.

The classifier is a GAP-CNN: its last conv map :math:`F \in \mathbb{R}^{h \times w \times C}`
is averaged to :math:`z = \mathrm{GAP}(F)` and read by one linear head
:math:`\ell = W z + b` (``W`` [K, C]). For a source class ``s`` and target ``t`` the
decision boundary between them is the hyperplane :math:`w_m \cdot x + b_m = 0` with
:math:`w_m = W_t - W_s`, :math:`b_m = b_t - b_s` (the **mirror**).

* :func:`reflect_map` reflects every spatial position of ``F`` across the mirror:
  :math:`r = x - 2 \frac{w_m \cdot x + b_m}{\|w_m\|^2} w_m` (squared norm: ``w_m`` is not a
  unit vector). GAP is linear, so ``GAP(F_r)`` is the exact reflection of ``z`` and the
  s/t margin is negated. No non-negativity is imposed.
* :func:`reflect` refines the reflection so that the logits become exactly the source logits
  with entries ``s`` and ``t`` swapped (``q``): it minimises :math:`\|W\,\mathrm{GAP}(F') + b -
  q\|^2` over the whole map ``F'`` starting at ``F_r``, with ``jaxopt.LBFGS`` (default),
  ``optax.lbfgs`` or the closed form (``"exact"``: the minimum-norm uniform per-channel shift
  :math:`\delta = W^+ (q - W\,\mathrm{GAP}(F_r) - b)`, :math:`W^+ = W^\top (W W^\top)^{-1}`
  for full-row-rank ``W``). The loss depends on ``F'`` only through its GAP and its gradient
  is the same at every position, so gradient-based solvers started at ``F_r`` also move ``F``
  by uniform shifts in the row space of ``W``: at convergence all three give the same map.
* :func:`transition` / :func:`logits_along`: :math:`F_k = F_s + k (F' - F_s)`; the logits
  interpolate exactly (``k = 0.5`` lies on the s/t boundary, ``k = 1`` swaps the
  confidences). :func:`first_counterfactual` picks the smallest ``k > 0.5`` whose *decoded*
  image the classifier assigns to ``t``.
* :func:`mirror_cfe`: the whole method on one image (reflect -> refine -> transitions ->
  decode -> first counterfactual); :class:`MirrorCFE` compiles it once for batches.

The functions here are pure, work on ONE example and are ``jax.vmap``-able; ``source``/``target``
may be traced integers.

Defined beside this module and re-exported here (``from cfjax.methods.mirror import X`` works
for each): :mod:`cfjax.methods.mirror_decode`, applying a trained decoder (the class spatial
prior :func:`csp_mask`, :func:`bind_mirror_decoder`, :func:`batched_decoder`, the path
vocabulary :data:`OTHERS` and :func:`resolve_others`), and :mod:`cfjax.methods.mirror_result`,
the result types (:class:`ReflectResult`, :class:`MirrorResult`, :data:`STATUS_NAMES`).

Example:
  >>> import jax, jax.numpy as jnp
  >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  >>> F = jax.random.normal(k1, (4, 4, 16)); W = jax.random.normal(k2, (5, 16)); b = jnp.zeros(5)
  >>> res = reflect(F, W, b, 0, 1, solver="exact")
  >>> l_s = W @ F.mean((0, 1)) + b; l_r = W @ res.F_r.mean((0, 1)) + b
  >>> bool(jnp.allclose(l_r[jnp.array([1, 0, 2, 3, 4])], l_s, atol=1e-3))
  True
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax
import optax.tree_utils as otu
from jaxtyping import Array, Bool, Float, Int

from cfjax.placement import align_batch
from cfjax.errors import bad_arg
from cfjax.methods import mirror_checks as mc
from cfjax.methods.mirror_decode import (  # re-exported with the names below: applying a decoder
    OTHERS, BoundMirrorDecoder, batched_decoder, bind_mirror_decoder, class_activation_maps, csp_mask, csp_rho, normalized_cam,
    resolve_others, skip_masks,
)
from cfjax.methods.mirror_result import FOUND, NO_FLIP, NON_FINITE, NOT_CONVERGED, STATUS_NAMES, MirrorResult, ReflectResult

SOLVERS = ("jaxopt", "optax", "exact")
"""The refinement's solvers (:func:`reflect`)."""
COMPOSE_MODES = ("decoded", "residual")
"""How each path image is formed (:func:`mirror_cfe`): the decoded image, or the source plus the
decoder's change (:func:`compose_residual`)."""


def gap(F: Float[Array, "h w C"]) -> Float[Array, "C"]:
    """Global average pooling of one feature map."""
    return jnp.mean(F, axis=(-3, -2))


def mirror_plane(W: Float[Array, "K C"], b: Float[Array, "K"], source, target) -> tuple[Float[Array, "C"], Float[Array, ""]]:
    """The s/t decision hyperplane ``w_m . x + b_m = 0`` with ``w_m = W_t - W_s``, ``b_m = b_t - b_s``
    (positive on the target side)."""
    W, b = jnp.asarray(W), jnp.asarray(b)
    return W[target] - W[source], b[target] - b[source]


def reflect_map(F: Float[Array, "h w C"], w_m: Float[Array, "C"], b_m: Float[Array, ""]) -> Float[Array, "h w C"]:
    r"""Reflect every position ``f`` of ``F`` across the plane ``w_m . x + b_m = 0``.

    :math:`p = f - \frac{w_m \cdot f + b_m}{\|w_m\|^2} w_m` (projection onto the plane),
    :math:`r = 2p - f`. Works for any leading shape (a vector ``z`` too).
    """
    nn = jnp.sum(w_m * w_m)
    # w_m = 0 (identical head rows): no boundary to reflect across; leave F as it is (the
    # refinement then reports whether the swapped logits are reachable) instead of NaNs
    margin = jnp.where(nn > 0, (F @ w_m + b_m) / jnp.where(nn > 0, nn, 1.0), 0.0)
    p = F - margin[..., None] * w_m
    return 2.0 * p - F


def swapped_logits(logits: Float[Array, "K"], source, target) -> Float[Array, "K"]:
    """``logits`` with entries ``source`` and ``target`` exchanged (the refinement's goal ``q``)."""
    logits = jnp.asarray(logits)
    ls, lt = logits[source], logits[target]
    return logits.at[source].set(lt).at[target].set(ls)


def reflection_target(logits: Float[Array, "K"], source, target, others: str = "keep") -> Float[Array, "K"]:
    r"""The logits ``q`` the refined reflection reaches (its end of the path, ``k = 1``).

    ``others="keep"`` (the paper): :func:`swapped_logits`, every other class keeps its logit.
    The path's logits interpolate linearly (:func:`logits_along`), so a third class ``j``
    whose logit lies above the s/t midpoint :math:`m = (\ell_s + \ell_t) / 2` stays the
    argmax past ``k = 0.5``, until :math:`k = (\ell_j - \ell_t) / (\ell_s - \ell_t)`: the
    path from s to t runs through j's region (on Fashion-MNIST most T-shirt -> Pullover paths
    pass through Shirt), and its first counterfactual sits on the t/j boundary.

    ``others="mirror"`` (a cfjax change, not in the paper; the path of the ``robust`` preset's
    decoders, ``MirrorDecoderConfig.robust().reflect_others``, while ``"keep"`` is the default):
    such a class is reflected across
    the midpoint as well, :math:`q_j = \min(\ell_j, 2m - \ell_j)`. Its logit then reaches
    ``m`` exactly at ``k = 0.5``, where s and t meet, and falls below t for every ``k > 0.5``:
    the path crosses from s straight into t. Classes below the midpoint keep their logits (they
    never block the path).
    """
    logits = jnp.asarray(logits)
    q = swapped_logits(logits, source, target)
    if others == "keep":
        return q
    if others != "mirror":
        raise bad_arg("others", repr(others), f"one of {OTHERS}")
    mid2 = logits[source] + logits[target]
    idx = jnp.arange(logits.shape[0])
    lowered = jnp.minimum(logits, mid2 - logits)
    return jnp.where((idx == source) | (idx == target), q, lowered)


def exact_shift(W: Float[Array, "K C"], r: Float[Array, "K"]) -> Float[Array, "C"]:
    r"""Minimum-norm ``delta`` with ``W delta = r``: :math:`W^\top (W W^\top)^{-1} r` (via ``pinv``,
    so a rank-deficient head gives the least-squares solution instead of NaNs)."""
    return jnp.linalg.pinv(W) @ r


def _lbfgs_optax(fun, x0, maxiter: int, tol: float):
    """``optax.lbfgs`` in a ``lax.while_loop``; returns ``(x, iterations, grad_norm)``."""
    opt = optax.lbfgs()
    vag = optax.value_and_grad_from_state(fun)

    def step(carry):
        x, state = carry
        value, grad = vag(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(x, updates), state

    def cont(carry):
        _, state = carry
        it = otu.tree_get(state, "count")
        err = otu.tree_norm(otu.tree_get(state, "grad"))
        return (it == 0) | ((it < maxiter) & (err >= tol))

    x, state = jax.lax.while_loop(cont, step, (x0, opt.init(x0)))
    # the linesearch state holds the gradient at the accepted x: the loop's own stopping test
    return x, otu.tree_get(state, "count"), otu.tree_norm(otu.tree_get(state, "grad"))


def _check_reflect_args(F, W, b, source, target) -> None:
    """:func:`reflect`'s checks (:mod:`cfjax.methods.mirror_checks`): the head, the map's
    shape against it, the classes (values when concrete), finite concrete ``F``."""
    K, _ = mc.check_head(W, b)
    if F.ndim != 3:
        raise bad_arg("feature_map_F", f"shape {tuple(F.shape)}", f"a single [h, w, {W.shape[1]}] feature map (vmap for batches)")
    mc.check_feature_map_channels(F.shape, W.shape, "feature_map_F")
    mc.check_class_pair(source, target, K)
    mc.check_distinct_rows(W, b, source, target)
    if mc.is_concrete(F) and not bool(np.all(np.isfinite(np.asarray(F)))):
        raise bad_arg("feature_map_F", "non-finite values (NaN/Inf)", "a finite feature map")


def reflect(
    feature_map_F: Float[Array, "h w C"],
    W: Float[Array, "K C"],
    b: Float[Array, "K"],
    source,
    target,
    *,
    solver: str = "jaxopt",
    maxiter: int = 100,
    tol: float = 1e-5,
    others: str = "keep",
) -> ReflectResult:
    r"""Mirror a feature map from ``source`` to ``target`` and refine it to the swapped logits.

    Args:
      feature_map_F: ``F`` [h, w, C] of one image (the classifier's last conv map).
      W, b: the linear head (``logits = W GAP(F) + b``), ``W`` [K, C].
      source, target: class indices (Python or traced ints).
      solver: ``"jaxopt"`` (``jaxopt.LBFGS``, default), ``"optax"`` (``optax.lbfgs`` in a
        ``while_loop``) or ``"exact"`` (closed-form per-channel shift, the test oracle).
        jaxopt runs with ``unroll=False``: its default (``"auto"``) unrolls the loop under
        ``vmap`` and is ~60x slower on CPU.
      maxiter: L-BFGS iteration cap.
      tol: stopping tolerance on the gradient norm of :math:`\|W\,\mathrm{GAP}(F') + b - q\|^2`.
      others: ``"keep"`` (the paper: ``q`` = the swapped logits) or ``"mirror"`` (classes above
        the s/t midpoint are reflected too, so the path never passes through a third class):
        :func:`reflection_target`.

    Returns:
      :class:`ReflectResult`. Non-convergence is reported in ``converged`` (never raised
      inside ``jit``); check it and ``residual``.
    """
    check_options(solver=solver, maxiter=maxiter, tol=tol)
    if others not in OTHERS:
        raise bad_arg("others", repr(others), f"one of {OTHERS}")
    F = mc.as_array(feature_map_F, "feature_map_F", "a feature map array [h, w, C]")
    W = mc.as_array(W, "W", "an array [K, C] (logits = W @ GAP(F) + b)")
    b = mc.as_array(b, "b", "an array [K]")
    _check_reflect_args(F, W, b, source, target)
    w_m, b_m = mirror_plane(W, b, source, target)
    F_reflect = reflect_map(F, w_m, b_m)
    q = reflection_target(W @ gap(F) + b, source, target, others)

    def loss(Fp):
        r = W @ gap(Fp) + b - q
        return jnp.sum(r * r)

    if solver == "exact":
        delta = exact_shift(W, q - W @ gap(F_reflect) - b)
        F_r = F_reflect + delta
        iterations = jnp.zeros((), jnp.int32)
        res = jnp.linalg.norm(W @ gap(F_r) + b - q)
        converged = res <= 1e-4 * (1.0 + jnp.linalg.norm(q))
    elif solver == "jaxopt":
        F_r, state = jaxopt.LBFGS(fun=loss, maxiter=maxiter, tol=tol, implicit_diff=False, unroll=False).run(F_reflect)
        iterations = jnp.asarray(state.iter_num, jnp.int32)
        converged = state.error <= tol
        res = jnp.linalg.norm(W @ gap(F_r) + b - q)
    else:
        F_r, iterations, err = _lbfgs_optax(loss, F_reflect, maxiter, tol)
        iterations = jnp.asarray(iterations, jnp.int32)
        converged = err <= tol
        res = jnp.linalg.norm(W @ gap(F_r) + b - q)
    return ReflectResult(F_r, F_reflect, res, iterations, jnp.asarray(converged), q)


def transition(F_s: Float[Array, "h w C"], F_r: Float[Array, "h w C"], k) -> Float[Array, "h w C"]:
    """``F_k = F_s + k (F_r - F_s)``: ``k = 0`` is the source, ``k = 1`` the refined mirror."""
    return F_s + k * (F_r - F_s)


def transitions(F_s: Float[Array, "h w C"], F_r: Float[Array, "h w C"], ks: Float[Array, "m"]) -> Float[Array, "m h w C"]:
    """:func:`transition` at every ``k`` of ``ks``."""
    ks = jnp.asarray(ks, F_s.dtype)
    return F_s[None] + ks[:, None, None, None] * (F_r - F_s)[None]


def logits_along(W: Float[Array, "K C"], b: Float[Array, "K"], F_s, F_r, ks: Float[Array, "m"]) -> Float[Array, "m K"]:
    """Head logits of ``GAP(F_k)`` along ``ks`` (exactly linear in ``k``)."""
    W, b = jnp.asarray(W), jnp.asarray(b)
    l_s = W @ gap(F_s) + b
    l_r = W @ gap(F_r) + b
    ks = jnp.asarray(ks, l_s.dtype)
    return l_s[None] + ks[:, None] * (l_r - l_s)[None]


def feature_crossing(logits: Float[Array, "K"], source, target, others: str = "keep") -> tuple[Float[Array, ""], Int[Array, ""]]:
    r"""Where the feature-space path enters the target class, in closed form (one example).

    Along the path the head's logits are :math:`\ell + k (q - \ell)` with ``q`` =
    :func:`reflection_target` (:func:`logits_along`), so the target is the argmax from
    :math:`k^* = \max(0.5, \max_{j \ne s,t} (\ell_j - \ell_t) / (\ell_s - \ell_t))` on
    (``others="keep"``; ``others="mirror"``: always 0.5). Returns ``(k*, blocker)``: ``blocker``
    is the class that holds the path just before ``k*`` (``source`` when no third class gets in
    the way). The first counterfactual of a faithful decoder sits at the first grid point past
    ``k*``, just across the target's boundary with ``blocker``.
    """
    logits = jnp.asarray(logits)
    q = reflection_target(logits, source, target, others)
    idx = jnp.arange(logits.shape[0])
    third = (idx != source) & (idx != target)
    # t passes a third class j where l_t + k (q_t - l_t) = l_j + k (q_j - l_j)
    dt, dj = q[target] - logits[target], q - logits
    denom = jnp.where(third, dt - dj, 1.0)
    k_j = jnp.where(third & (logits > logits[target]) & (denom > 0), (logits - logits[target]) / denom, 0.0)
    j = jnp.argmax(k_j)
    blocked = k_j[j] > 0.5 + 1e-5  # a mirrored class ties s and t at 0.5 itself (up to round-off): not a blocker
    return jnp.where(blocked, k_j[j], 0.5), jnp.where(blocked, j, jnp.asarray(source)).astype(jnp.int32)


def default_k_grid(step: float = 0.05) -> Float[Array, "m"]:
    """``0, step, ..., 1`` (21 points for ``step = 0.05``)."""
    n = int(round(1.0 / step))
    return jnp.linspace(0.0, 1.0, n + 1)


def first_counterfactual(
    decoded_logits: Float[Array, "m K"],
    ks: Float[Array, "m"],
    target,
    *,
    k_min: float = 0.5,
    threshold: float | None = None,
) -> tuple[Float[Array, ""], Int[Array, ""], Bool[Array, ""]]:
    """The first counterfactual along a transition.

    Args:
      decoded_logits: the classifier's logits on the decoded images ``G(F_k)`` for each ``k``.
      ks: the grid, increasing (e.g. :func:`default_k_grid`).
      target: the target class.
      k_min: only ``k > k_min`` count (the logits cross the boundary at 0.5).
      threshold: None (the paper): a decoded image counts when ``target`` is its argmax class;
        a float in (0, 1): its softmax target probability must also be ``>= threshold`` (a
        confidence margin, like the attack's stop rule; a cfjax option, not in the paper).

    Returns:
      ``(k, index, found)``: the smallest grid ``k > k_min`` whose decoded image is classified
      as ``target`` (with ``threshold``: that confidently); when none is, ``found`` is False,
      ``index`` the last grid point and ``k`` NaN.
    """
    ks = jnp.asarray(ks)
    ok = (jnp.argmax(decoded_logits, -1) == target) & (ks > k_min + 1e-6)
    if threshold is not None:
        ok = ok & (jax.nn.softmax(decoded_logits, -1)[:, target] >= threshold)
    found = jnp.any(ok)
    idx = jnp.where(found, jnp.argmax(ok), ks.shape[0] - 1)
    return jnp.where(found, ks[idx], jnp.nan), idx.astype(jnp.int32), found


# ------------------------------------------------------------------ the whole method


def compose_residual(
    x: Float[Array, "H W c"], x_path: Float[Array, "m H W c"], lo: float = 0.0, hi: float = 1.0
) -> Float[Array, "m H W c"]:
    """The source plus the decoder's change along the path: ``clip(x + x_path - x_path[0])``.

    ``x_path[0]`` is the decoded image at ``k = 0`` (the reconstruction ``G(F_s)``), so at
    ``k = 0`` this returns ``x`` itself and at every ``k`` only what the transition changes is
    applied to the real image; the decoder's reconstruction error (blur, lost print) is not
    counted as part of the counterfactual. Values are clipped to the image range ``[lo, hi]``.
    """
    return jnp.clip(x[None] + x_path - x_path[:1], lo, hi)


def check_options(*, solver=None, maxiter=None, tol=None, k_min=None, compose=None, threshold=None) -> None:
    """The scalar options of :func:`cfjax.mirror_cfe` (only those given)."""
    if solver is not None and solver not in SOLVERS:
        raise bad_arg("solver", repr(solver), f"one of {SOLVERS}")
    if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1):
        raise bad_arg("maxiter", repr(maxiter), "a positive integer")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) or not np.isfinite(tol) or tol <= 0):
        raise bad_arg("tol", repr(tol), "a finite tolerance > 0")
    if k_min is not None and (isinstance(k_min, bool) or not isinstance(k_min, (int, float, np.floating, np.integer)) or not 0.0 <= k_min < 1.0):
        raise bad_arg("k_min", repr(k_min), "a number in [0, 1) (counterfactuals are searched at k > k_min)")
    if compose is not None and compose not in COMPOSE_MODES:
        raise bad_arg("compose", repr(compose), f"one of {COMPOSE_MODES}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0.0 < threshold < 1.0):
        raise bad_arg("threshold", repr(threshold), "None (argmax rule) or a probability in (0, 1)")


def _checked_args(feature_maps, W, b, decode, x, source, target, *, ks, others, logits, **options):
    """:func:`mirror_cfe`'s checks, in order, before any of its work is traced (its docstring
    lists them). ``options``: ``solver``, ``maxiter``, ``tol``, ``k_min``, ``compose``,
    ``threshold``. Returns ``(W, b, x, ks, others)``: the head and image as arrays, the grid
    (default :func:`default_k_grid`) and the path (:func:`resolve_others`)."""
    mc.check_callable(feature_maps, "feature_maps", "x [H, W, c] -> [S_1, ..., S_L, F]")
    mc.check_callable(decode, "decode", "(F_k, skips, source, target, k) -> x [H, W, c]")
    if logits is not None:
        mc.check_callable(logits, "logits", "x [H, W, c] -> [K]")
    check_options(**options)
    others = resolve_others(others, decode)
    W = mc.as_array(W, "W", "an array [K, C] (logits = W @ GAP(F) + b)")
    b = mc.as_array(b, "b", "an array [K]")
    K, _ = mc.check_head(W, b)
    if isinstance(decode, BoundMirrorDecoder):
        mc.check_same_head(W, decode.W)
    x = mc.as_array(x, "x", "one image [H, W, c]")
    mc.check_image(x, "x", x_range=getattr(decode, "x_range", None))
    mc.check_class_pair(source, target, K)
    if ks is not None:
        mc.check_ks(ks, compose=options["compose"])
    ks = default_k_grid() if ks is None else jnp.asarray(ks, jnp.float32)
    map_specs = mc.probe_feature_maps(feature_maps, x.shape, x.dtype, W.shape)
    mc.probe_decoder(decode, map_specs, x.shape, source, target)
    if logits is None and mc.is_concrete(x):
        logits = getattr(feature_maps, "classifier_logits", None)
    if logits is not None:
        mc.probe_logits(logits, x.shape, x.dtype, K)
        mc.check_head_matches_logits(feature_maps, logits, W, b, x)
    return W, b, x, ks, others


def mirror_cfe(
    feature_maps: Callable,
    W: Float[Array, "K C"],
    b: Float[Array, "K"],
    decode: Callable,
    x: Float[Array, "H W c"],
    source,
    target,
    *,
    ks: Float[Array, "m"] | None = None,
    solver: str = "jaxopt",
    maxiter: int = 100,
    tol: float = 1e-5,
    k_min: float = 0.5,
    compose: str = "decoded",
    threshold: float | None = None,
    others: str | None = None,
    logits: Callable | None = None,
) -> MirrorResult:
    r"""Mirror-CFE for one image: reflect -> refine -> transitions -> decode -> first counterfactual.

    With the classifier's maps ``feature_maps(x) = [S_1, ..., S_L, F]`` (earlier block maps
    ``S_i``, the *skips*, and the last conv map ``F`` [h, w, C]; ``logits = W GAP(F) + b``):

    1. :func:`reflect`: ``F' `` = the per-position reflection of ``F`` across the s/t mirror
       ``(W_t - W_s) . f + (b_t - b_s) = 0``, refined (L-BFGS by default) so that
       ``W GAP(F') + b`` equals the source logits with entries s and t swapped;
    2. :func:`transitions`: :math:`F_k = F + k (F' - F)` for every ``k`` of the grid;
    3. ``x_k = decode(F_k, skips, source, target, k)`` for every ``k`` (with
       ``compose="residual"``: :func:`compose_residual`, the source plus the decoder's change
       ``x + x_k - x_0``);
    4. :func:`first_counterfactual`: the smallest ``k > k_min`` whose decoded image the
       classifier (``W GAP(F(x_k)) + b``) assigns to ``target`` (with ``threshold``: with at
       least that target probability).

    Pure and ``jax.vmap``-able over ``x``, ``source`` and ``target`` (they may be traced).

    Every argument is checked first (:mod:`cfjax.methods.mirror_checks`, a
    :class:`cfjax.InputError` naming it): callables; the head ``W`` [K, C] / ``b`` [K] against
    each other and the last map's ``C`` (a Dense kernel [C, K] is named as such); the decoder's
    output shape equal to ``x``'s; integer classes. On concrete values also: classes in range
    and distinct, an increasing ``ks`` in [0, 1], a finite ``x`` within the decoder's
    ``x_range`` (a decoder from :func:`bind_mirror_decoder`: [0, 1]), ``W`` equal to the head a
    bound decoder carries (``decode.W``), and with ``logits`` (or the classifier logits
    ``feature_maps`` carries) ``W GAP(F(x)) + b == logits(x)``. Inside a user's ``jit`` the value checks are skipped; a
    non-finite ``x`` or path then ends with ``status`` :data:`NON_FINITE`.

    Args:
      feature_maps: ``x [H, W, c] -> [S_1, ..., S_L, F]`` (a list; ``[F]`` when the decoder
        takes no skips), single example.
      W, b: the linear head after global average pooling, ``W`` [K, C] (a Flax ``Dense`` kernel
        is [C, K]: pass ``kernel.T``), ``b`` [K].
      decode: ``(F_k [h, w, C], skips, source, target, k) -> x [H, W, c]`` single example
        (e.g. :func:`bind_mirror_decoder`, which also carries the path it was trained on).
      x: the source image.
      source, target: class indices (Python ints or integer arrays; traced under ``vmap``).
      ks: the increasing grid in [0, 1] (default :func:`default_k_grid`, 0, 0.05, ..., 1).
      solver, maxiter, tol: of :func:`reflect`.
      k_min: counterfactuals are searched at ``k > k_min`` (the logits cross at 0.5).
      compose: ``"decoded"`` (the paper: the counterfactual is the decoded image ``G(F_k)``) or
        ``"residual"`` (:func:`compose_residual`: the source plus what the decoder changes
        between ``k = 0`` and ``k``, so the decoder's reconstruction error does not count as
        an edit; needs ``ks[0] == 0``; a cfjax option, not in the paper).
      threshold: of :func:`first_counterfactual` (None, the paper: the argmax rule).
      others: the path (:func:`reflection_target`): ``None`` (default) walks the decoder's own
        path (``decode.reflect_others``, set by :func:`bind_mirror_decoder`) or, for a plain
        callable without ``reflect_others``, ``"keep"`` (the paper); ``"keep"``/``"mirror"``
        explicitly. A value that contradicts the decoder's is refused, and so is ``None`` for a
        bound decoder whose path is not known (:func:`resolve_others`).
      logits: optional, the classifier's ``x -> [K]``: checked once (on ``x``) to equal
        ``W GAP(F(x)) + b``, so a head that is not the classifier's is refused. Without it, the
        ``classifier_logits`` that ``feature_maps`` carries (the ``feature_maps`` of
        :func:`cfjax.bind_classifier` and ``ClassifierFns.from_gap`` do) is checked the same way;
        a bare ``feature_maps`` callable with no ``logits`` cannot be checked.

    Returns:
      :class:`MirrorResult`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> W = jax.random.normal(jax.random.key(0), (3, 4)); b = jnp.zeros(3)
      >>> fmaps = lambda x: [x]                        # the image IS the feature map here
      >>> decode = lambda F, skips, s, t, k: F         # an identity "decoder"
      >>> x = jax.random.normal(jax.random.key(1), (2, 2, 4))
      >>> s = int(jnp.argmax(W @ x.mean((0, 1)) + b)); t = (s + 1) % 3
      >>> r = mirror_cfe(fmaps, W, b, decode, x, s, t, solver="exact")
      >>> bool(r.found), int(jnp.argmax(r.logits_path[-1])) == t
      (True, True)
    """
    W, b, x, ks, others = _checked_args(feature_maps, W, b, decode, x, source, target, ks=ks, others=others, logits=logits, solver=solver,
                                        maxiter=maxiter, tol=tol, k_min=k_min, compose=compose, threshold=threshold)
    maps = list(feature_maps(x))
    skips, F_s = maps[:-1], maps[-1]
    res = reflect(F_s, W, b, source, target, solver=solver, maxiter=maxiter, tol=tol, others=others)
    F_k = transitions(F_s, res.F_r, ks)
    x_k = jax.vmap(decode, in_axes=(0, None, None, None, 0))(F_k, skips, source, target, ks)
    if compose == "residual":
        x_k = compose_residual(x, x_k)
    z_dec = jax.vmap(lambda xi: gap(list(feature_maps(xi))[-1]))(x_k)
    logits_dec = z_dec @ W.T + b
    z_k = gap(F_k)
    logits_lin = z_k @ W.T + b
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(logits_lin)) & jnp.all(jnp.isfinite(logits_dec))
    k_cf, idx, found = first_counterfactual(logits_dec, ks, target, k_min=k_min, threshold=threshold)
    found = found & finite
    k_cf = jnp.where(found, k_cf, jnp.nan)
    status = jnp.where(~finite, NON_FINITE, jnp.where(~found, NO_FLIP, jnp.where(res.converged, FOUND, NOT_CONVERGED))).astype(jnp.int32)
    return MirrorResult(
        x_cf=x_k[idx], k_cf=k_cf, index=idx, found=found, status=status, x_path=x_k, ks=ks, logits_path=logits_dec,
        logits_features=logits_lin, z_path=z_k, z_decoded=z_dec, converged=jnp.asarray(res.converged),
        residual=res.residual, iterations=res.iterations, F_r=res.F_r,
    )


MIRROR_OPTIONS = ("ks", "solver", "maxiter", "tol", "k_min", "compose", "threshold", "others")
"""The keyword options :class:`MirrorCFE` passes on to :func:`mirror_cfe`."""


class MirrorCFE:
    """Compile once, call many: :func:`mirror_cfe` over a batch with the models and options bound.

    ``MirrorCFE(feature_maps, W, b, decode, ks=..., solver=...)(x [n, H, W, c], source [n],
    target [n]) -> MirrorResult`` (batched fields). The batched program is jitted once per input
    shape; classes are data, so any pair reuses it. :attr:`compile_count` says how many
    programs were compiled.

    The models and options are checked at construction, each batch on the host before the
    compiled call (:func:`mirror_cfe`'s checks; with ``logits``, or the classifier logits
    ``feature_maps`` carries, the head is checked against the classifier once, on the first
    image of the first batch).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> W = jax.random.normal(jax.random.key(0), (3, 4)); b = jnp.zeros(3)
      >>> run = MirrorCFE(lambda x: [x], W, b, lambda F, skips, s, t, k: F, solver="exact")
      >>> x = jax.random.normal(jax.random.key(1), (5, 2, 2, 4))
      >>> s = jnp.argmax(x.mean((1, 2)) @ W.T + b, -1); t = (s + 1) % 3
      >>> bool(run(x, s, t).found.all()), run.compile_count
      (True, 1)
    """

    def __init__(self, feature_maps: Callable, W, b, decode: Callable, *, logits: Callable | None = None, **options):
        """Bind the models and options (checked here, before anything is traced).

        Args:
          feature_maps, W, b, decode, logits: as in :func:`mirror_cfe`.
          **options: any of :data:`MIRROR_OPTIONS`, passed to :func:`mirror_cfe`.
        """
        unknown = sorted(set(options) - set(MIRROR_OPTIONS))
        if unknown:
            raise bad_arg("options", f"unknown {unknown}", f"keyword options among {MIRROR_OPTIONS}")
        mc.check_callable(feature_maps, "feature_maps", "x [H, W, c] -> [S_1, ..., S_L, F]")
        mc.check_callable(decode, "decode", "(F_k, skips, source, target, k) -> x [H, W, c]")
        if logits is not None:
            mc.check_callable(logits, "logits", "x [H, W, c] -> [K]")
        check_options(**{k: options[k] for k in ("solver", "maxiter", "tol", "k_min", "compose", "threshold") if k in options})
        if options.get("ks") is not None:
            mc.check_ks(options["ks"], compose=options.get("compose", "decoded"))
        options["others"] = resolve_others(options.get("others"), decode)
        self.W = mc.as_array(W, "W", "an array [K, C] (logits = W @ GAP(F) + b)")
        self.b = mc.as_array(b, "b", "an array [K]")
        self.num_classes, _ = mc.check_head(self.W, self.b)
        if isinstance(decode, BoundMirrorDecoder):
            mc.check_same_head(self.W, decode.W)
        if logits is None:
            logits = getattr(feature_maps, "classifier_logits", None)
        self.feature_maps, self.decode, self.logits = feature_maps, decode, logits
        self.options = dict(options)
        self._head_checked = logits is None
        self._compiles = 0
        one = lambda x, s, t: mirror_cfe(feature_maps, self.W, self.b, decode, x, s, t, **self.options)  # noqa: E731

        def batch(x, s, t):
            out = jax.vmap(one)(x, s, t)
            self._compiles += 1  # runs once per trace, i.e. per compiled program
            return out

        self._run = jax.jit(batch)

    @property
    def compile_count(self) -> int:
        """How many programs this object has traced and compiled (one per distinct input
        shape/dtype; a repeated shape reuses its program). Read-only."""
        return self._compiles

    def __call__(self, x: Float[Array, "n H W c"], source: Int[Array, "n"], target: Int[Array, "n"]) -> MirrorResult:
        """Explain a batch: ``x`` [n, H, W, c], ``source``/``target`` [n] integer classes, placed
        however the caller placed them (:func:`cfjax.placement.align_batch`); the result comes back
        on the caller's mesh."""
        (x, source, target), restore = align_batch(x, source, target)
        x = mc.as_array(x, "x", "a batch of images [n, H, W, c]")
        mc.check_image(x, "x", batched=True, x_range=getattr(self.decode, "x_range", None))
        st = mc.check_class_batch(source, target, self.num_classes, x.shape[0])
        if st is not None:
            source, target = st
        if not self._head_checked and mc.is_concrete(x):
            mc.check_head_matches_logits(self.feature_maps, self.logits, self.W, self.b, x[0])
            self._head_checked = True
        return restore(self._run(x, jnp.asarray(source, jnp.int32), jnp.asarray(target, jnp.int32)))


__all__ = [
    "COMPOSE_MODES",
    "SOLVERS",
    "compose_residual",
    "STATUS_NAMES",
    "MirrorCFE",
    "MIRROR_OPTIONS",
    "MirrorResult",
    "BoundMirrorDecoder",
    "NON_FINITE",
    "mirror_cfe",
    "ReflectResult",
    "class_activation_maps",
    "csp_mask",
    "csp_rho",
    "default_k_grid",
    "exact_shift",
    "first_counterfactual",
    "gap",
    "logits_along",
    "mirror_plane",
    "normalized_cam",
    "reflect",
    "reflect_map",
    "swapped_logits",
    "reflection_target",
    "feature_crossing",
    "OTHERS",
    "transition",
    "transitions",
    "skip_masks",
    "bind_mirror_decoder",
    "batched_decoder",
]
