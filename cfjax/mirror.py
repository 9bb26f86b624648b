r"""Mirror-CFE core: feature-map reflection, L-BFGS refinement, transitions, class spatial prior.

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
* :func:`class_activation_maps` / :func:`csp_mask`: the class spatial prior that tells the
  decoder where it may edit the source's skip features.

Everything here is pure, works on ONE example and is ``jax.vmap``-able; ``source``/``target``
may be traced integers.

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

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import optax
import optax.tree_utils as otu
from jaxtyping import Array, Bool, Float, Int

SOLVERS = ("jaxopt", "optax", "exact")


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


class ReflectResult(NamedTuple):
    """Result of :func:`reflect` for one example.

    Attributes:
      F_r: [h, w, C] the refined reflected map ``F'`` (what transitions end at).
      F_reflect: [h, w, C] the plain per-position reflection (before refinement).
      residual: [] ``||W GAP(F_r) + b - q||_2``.
      iterations: int [] solver iterations (0 for ``"exact"``).
      converged: bool [] the solver met its stopping criterion within ``maxiter``
        (``"exact"``: the residual is within float32 round-off of zero, i.e. ``q`` is reachable).
      target_logits: [K] ``q``, the source logits with ``s`` and ``t`` swapped.
    """

    F_r: Float[Array, "h w C"]
    F_reflect: Float[Array, "h w C"]
    residual: Float[Array, ""]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    target_logits: Float[Array, "K"]


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


def _check_reflect_args(F, W, source, target) -> None:
    """Shape checks always; class-index checks when ``source``/``target`` are concrete."""
    from cfjax.errors import bad_arg

    if W.ndim != 2:
        raise bad_arg("W", f"shape {tuple(W.shape)}", "a [K, C] head matrix")
    if F.ndim != 3 or F.shape[-1] != W.shape[1]:
        raise bad_arg("feature_map_F", f"shape {tuple(F.shape)}", f"a single [h, w, {W.shape[1]}] feature map matching W [K, C] (vmap for batches)")
    if isinstance(source, jax.core.Tracer) or isinstance(target, jax.core.Tracer):
        return
    K = W.shape[0]
    for name, v in (("source", source), ("target", target)):
        if not 0 <= int(v) < K:
            raise bad_arg(name, repr(v), f"a class index in [0, {K - 1}]")
    if int(source) == int(target):
        raise bad_arg("target", f"target == source == {int(source)}", "a target class different from the source")
    try:
        same_rows = bool(np.all(np.asarray(W[int(source)]) == np.asarray(W[int(target)])))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):  # W traced: no value check
        same_rows = False
    if same_rows:
        raise bad_arg("W", f"identical rows for source {int(source)} and target {int(target)}", "distinct head rows (no decision boundary between the classes)")


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

    Returns:
      :class:`ReflectResult`. Non-convergence is reported in ``converged`` (never raised
      inside ``jit``); check it and ``residual``.
    """
    if solver not in SOLVERS:
        from cfjax.errors import bad_arg

        raise bad_arg("solver", repr(solver), f"one of {SOLVERS}")
    F, W, b = jnp.asarray(feature_map_F), jnp.asarray(W), jnp.asarray(b)
    _check_reflect_args(F, W, source, target)
    w_m, b_m = mirror_plane(W, b, source, target)
    F_reflect = reflect_map(F, w_m, b_m)
    q = swapped_logits(W @ gap(F) + b, source, target)

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
) -> tuple[Float[Array, ""], Int[Array, ""], Bool[Array, ""]]:
    """The first counterfactual along a transition.

    Args:
      decoded_logits: the classifier's logits on the decoded images ``G(F_k)`` for each ``k``.
      ks: the grid, increasing (e.g. :func:`default_k_grid`).
      target: the target class.
      k_min: only ``k > k_min`` count (the logits cross the boundary at 0.5).

    Returns:
      ``(k, index, found)``: the smallest grid ``k > k_min`` whose decoded image is classified
      as ``target``; when none is, ``found`` is False, ``index`` the last grid point and ``k``
      NaN.
    """
    ks = jnp.asarray(ks)
    ok = (jnp.argmax(decoded_logits, -1) == target) & (ks > k_min + 1e-6)
    found = jnp.any(ok)
    idx = jnp.where(found, jnp.argmax(ok), ks.shape[0] - 1)
    return jnp.where(found, ks[idx], jnp.nan), idx.astype(jnp.int32), found


def class_activation_maps(F: Float[Array, "h w C"], W: Float[Array, "K C"]) -> Float[Array, "h w K"]:
    """CAMs ``U[i, j, c] = W_c . F[i, j]`` (no bias)."""
    return F @ jnp.asarray(W).T


def normalized_cam(F: Float[Array, "h w C"], w_c: Float[Array, "C"]) -> Float[Array, "h w"]:
    """``ReLU(U_c) / max ReLU(U_c)`` in [0, 1] (all zeros when the class has no positive evidence)."""
    u = jax.nn.relu(F @ w_c)
    return u / jnp.maximum(jnp.max(u), 1e-8)


def csp_rho(k, rho_l: float, rho_u: float):
    """The CSP threshold ``clip(1 - k, rho_l, rho_u)``: a large ``k`` opens a wider region."""
    return jnp.clip(1.0 - jnp.asarray(k, jnp.float32), rho_l, rho_u)


def csp_mask(
    F_k: Float[Array, "h w C"],
    W: Float[Array, "K C"],
    source,
    target,
    k,
    rho_l: float = 0.1,
    rho_u: float = 0.5,
    out_hw: tuple[int, int] | None = None,
) -> Float[Array, "H W 1"]:
    """Class spatial prior: where the decoder may edit the source's skip features.

    The normalised CAMs of ``source`` and ``target`` on ``F_k`` are resized (bilinear) to
    ``out_hw`` and thresholded at ``rho = clip(1 - k, rho_l, rho_u)``:
    ``M = (CAM_s > rho) OR (CAM_t > rho)``, a {0, 1} float mask [H, W, 1].
    """
    W = jnp.asarray(W)
    out_hw = tuple(F_k.shape[:2]) if out_hw is None else tuple(out_hw)
    cams = jnp.stack([normalized_cam(F_k, W[source]), normalized_cam(F_k, W[target])], -1)
    if cams.shape[:2] != out_hw:
        cams = jax.image.resize(cams, (*out_hw, 2), "bilinear")
    rho = csp_rho(k, rho_l, rho_u)
    return jnp.any(cams > rho, axis=-1, keepdims=True).astype(F_k.dtype)


__all__ = [
    "SOLVERS",
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
    "transition",
    "transitions",
]


# ============================================================================ decoder training
#
# The decoder G maps F_k back to an image; it is trained with the classifier frozen
# (DESIGN.md §5). The method functions above stay free of Flax/optax; everything below
# builds on them.



@dataclasses.dataclass(frozen=True)
class MirrorDecoderConfig:
    """Decoder architecture, losses and optimisation (DESIGN.md §5).

    One decoder per dataset serves every (source, target) pair unless ``pairs`` restricts
    training to some directed pairs. Each training sample: a real image, ``source`` = its
    label, ``target`` = a random other class, ``k ~ U[0, 1]`` (a ``rec_fraction`` of each batch
    uses ``k = 0`` for the reconstruction term), ``F_k`` from the refined reflection solved
    with ``train_solver`` (``"exact"``: closed form, the same map L-BFGS converges to).
    """

    widths: tuple[int, ...] = (48, 24, 16)
    """Decoder channels per skip level, deepest first."""
    editor_width: int = 8
    fk_channels: int = 16
    disc_widths: tuple[int, ...] = (32, 64)
    rho_l: float = 0.1
    """CSP threshold bounds: ``rho = clip(1 - k, rho_l, rho_u)``."""
    rho_u: float = 0.5
    steps: int = 1500
    """~0.25-0.45 s/step on 2 CPU cores (mnist5k, batch 32): 6-11 minutes."""
    batch_size: int = 32
    learning_rate: float = 2e-4
    b1: float = 0.5
    b2: float = 0.999
    w_cls: float = 1.0
    w_adv: float = 1.0
    w_rec: float = 1.0
    w_fea: float = 0.1
    """Down-weighted from 1: ``||z_k - GAP(F(G))||_2`` is in raw feature units (``||z|| ~ 35``
    for the default MNIST classifier, so ~10x the other terms) and has an irreducible floor
    (about 11% of the reflected ``z`` entries are negative, out of reach of post-ReLU features);
    at weight 1 it starved ``L_cls`` (flip rate at k=1 after 600 steps: 0.39 vs 0.74 at 0.1)."""
    w_tri: float = 1.0
    tri_a: float = 0.2
    rec_fraction: float = 0.25
    """Fraction of each batch decoded at ``k = 0`` (where ``L_rec`` is measured)."""
    pairs: tuple | None = None
    """Directed ``(source, target)`` pairs to train on (both directions are NOT implied);
    ``None``: every ordered pair of distinct classes."""
    train_solver: str = "exact"
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    eval_examples: int = 256

    @classmethod
    def smoke(cls) -> "MirrorDecoderConfig":
        """Runs in seconds (tests, ``--smoke``)."""
        return cls(widths=(16, 8, 8), editor_width=8, fk_channels=8, disc_widths=(8, 16), steps=20,
                   batch_size=16, log_every=5, checkpoint_every=10, eval_examples=32)


class DecoderTrained(NamedTuple):
    """A trained Mirror-CFE decoder.

    Attributes:
      module, params: the :class:`~cfjax.models.mirror_decoder.MirrorDecoder` and its params.
      disc_module, disc_params: the patch discriminator (``None`` params after a reload of
        ``best``, which stores G only).
      history: per ``log_every`` steps, the mean of every loss term (``cls, adv, rec, fea, tri,
        total, d``) over the interval.
      metrics: end-of-training evaluation (see :func:`evaluate_mirror_decoder`).
      config: the JSON config it was trained (and is checked) with.
    """

    module: Any
    params: Any
    disc_module: Any
    disc_params: Any
    history: list
    metrics: dict
    config: dict


def skip_masks(
    F_k: Float[Array, "h w C"],
    W: Float[Array, "K C"],
    source,
    target,
    k,
    skip_hws: Sequence[tuple[int, int]],
    rho_l: float,
    rho_u: float,
) -> list:
    """One :func:`csp_mask` per skip resolution (one example)."""
    return [csp_mask(F_k, W, source, target, k, rho_l, rho_u, hw) for hw in skip_hws]


def build_decoder(cfg: MirrorDecoderConfig, image_shape):
    from cfjax.models.mirror_decoder import MirrorDecoder, PatchDiscriminator

    g = MirrorDecoder(image_shape=tuple(image_shape), widths=tuple(cfg.widths), editor_width=cfg.editor_width, fk_channels=cfg.fk_channels)
    return g, PatchDiscriminator(widths=tuple(cfg.disc_widths))


def bind_mirror_decoder(module, params, W, rho_l: float, rho_u: float) -> Callable:
    """Single-example ``decode(F_k, skips, source, target, k) -> x`` [H, W, c] that computes the
    CSP masks itself (``skips``: the source image's earlier block maps, unbatched)."""
    W = jnp.asarray(W)

    def decode(F_k, skips, source, target, k):
        masks = skip_masks(F_k, W, source, target, k, [s.shape[:2] for s in skips], rho_l, rho_u)
        return module.apply(params, F_k[None], [s[None] for s in skips], [m[None] for m in masks])[0]

    return decode


def mirror_decoder_losses(
    g_params,
    d_params,
    g_module,
    d_module,
    clf,
    batch: dict,
    cfg: MirrorDecoderConfig,
):
    """The five generator losses and the discriminator loss on one batch (pure).

    ``batch``: ``x`` [B, H, W, c] source images, ``source``/``target`` [B], ``k`` [B],
    ``x_ref`` [B, H, W, c] (a real target-class image where ``k >= 0.5``, another
    source-class image otherwise). ``clf`` is a :class:`cfjax.models.ClassifierFns`.

    Returns:
      ``(total, terms, x_k)``; ``terms`` holds ``cls, adv, rec, fea, tri`` (batch means).
    """
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    x, s, t, k, x_ref = batch["x"], batch["source"], batch["target"], batch["k"], batch["x_ref"]
    maps = jax.lax.stop_gradient(jax.vmap(clf.feature_maps)(x))
    skips, F_s = list(maps[:-1]), maps[-1]
    res = jax.vmap(lambda F, ss, tt: reflect(F, W, b, ss, tt, solver=cfg.train_solver))(F_s, s, t)
    F_k = jax.lax.stop_gradient(F_s + k[:, None, None, None] * (res.F_r - F_s))
    hws = [sk.shape[1:3] for sk in skips]
    masks = jax.vmap(lambda f, ss, tt, kk: skip_masks(f, W, ss, tt, kk, hws, cfg.rho_l, cfg.rho_u))(F_k, s, t, k)
    z_s, z_k = gap(F_s), gap(F_k)
    z_ref = jax.lax.stop_gradient(jax.vmap(clf.features)(x_ref))
    logp_k = jax.nn.log_softmax(z_k @ W.T + b)
    x_k = g_module.apply(g_params, F_k, skips, masks)
    z_g = jax.vmap(clf.features)(x_k)
    logp_g = jax.nn.log_softmax(z_g @ W.T + b)
    L_cls = jnp.mean(jnp.sum(jnp.exp(logp_k) * (logp_k - logp_g), -1))
    L_adv = jnp.mean(jax.nn.softplus(-d_module.apply(d_params, x_k)))
    rec = (k == 0).astype(x.dtype)
    d_sk = jnp.mean(jnp.abs(x_k - x), axis=(1, 2, 3))
    L_rec = jnp.sum(rec * d_sk) / jnp.maximum(jnp.sum(rec), 1.0)
    L_fea = jnp.mean(jnp.sqrt(jnp.sum((z_k - z_g) ** 2, -1) + 1e-12))
    d_kr = jnp.mean(jnp.abs(x_k - x_ref), axis=(1, 2, 3))
    # 1 / beta = ||z_s - z_k|| / ||z_k - z_ref||  (0 at k = 0: the term becomes d(x_s, x_k))
    inv_beta = jnp.linalg.norm(z_s - z_k, axis=-1) / (jnp.linalg.norm(z_k - z_ref, axis=-1) + 1e-6)
    a = cfg.tri_a
    L_tri = jnp.mean(jax.nn.relu((1 - a) * inv_beta * d_kr - d_sk) + jax.nn.relu(d_sk - (1 + a) * inv_beta * d_kr))
    terms = {"cls": L_cls, "adv": L_adv, "rec": L_rec, "fea": L_fea, "tri": L_tri}
    total = cfg.w_cls * L_cls + cfg.w_adv * L_adv + cfg.w_rec * L_rec + cfg.w_fea * L_fea + cfg.w_tri * L_tri
    return total, terms, x_k


def discriminator_loss(d_params, d_module, real, fake):
    """Non-saturating GAN discriminator loss ``softplus(-D(real)) + softplus(D(fake))`` (means)."""
    return jnp.mean(jax.nn.softplus(-d_module.apply(d_params, real))) + jnp.mean(jax.nn.softplus(d_module.apply(d_params, fake)))


def _pair_table(cfg: MirrorDecoderConfig, labels: np.ndarray, num_classes: int) -> np.ndarray:
    pairs = cfg.pairs
    if pairs is None:
        pairs = [(s, t) for s in range(num_classes) for t in range(num_classes) if s != t]
    pairs = np.asarray([(int(s), int(t)) for s, t in pairs], np.int32)
    from cfjax.errors import bad_arg

    if pairs.size == 0 or pairs.min() < 0 or pairs.max() >= num_classes or np.any(pairs[:, 0] == pairs[:, 1]):
        raise bad_arg("MirrorDecoderConfig.pairs", repr(cfg.pairs), f"(source, target) pairs of distinct classes in [0, {num_classes - 1}]")
    present = set(np.unique(labels).tolist())
    pairs = np.asarray([p for p in pairs if p[0] in present and p[1] in present], np.int32)
    if len(pairs) == 0:
        raise bad_arg("train data", "no images of the requested pairs' classes", "images of both classes of a pair")
    return pairs


def sample_batch(step: int, cfg: MirrorDecoderConfig, images: np.ndarray, labels: np.ndarray, by_class: list, pairs: np.ndarray) -> dict:
    """The host-side batch of training step ``step`` (a pure function of ``(seed, step)``: a
    resumed run sees the same batches)."""
    rng = np.random.default_rng([cfg.seed, step])
    B = cfg.batch_size
    pr = pairs[rng.integers(0, len(pairs), B)]
    s, t = pr[:, 0], pr[:, 1]
    idx = np.array([by_class[c][rng.integers(0, len(by_class[c]))] for c in s])
    k = rng.uniform(0.0, 1.0, B).astype(np.float32)
    k[: int(round(cfg.rec_fraction * B))] = 0.0
    ref = np.empty(B, np.int64)
    for i in range(B):
        if k[i] >= 0.5:
            pool = by_class[t[i]]
            ref[i] = pool[rng.integers(0, len(pool))]
        else:
            pool = by_class[s[i]]
            j = pool[rng.integers(0, len(pool))]
            if j == idx[i] and len(pool) > 1:  # another source-class image
                j = pool[(np.searchsorted(pool, j) + 1) % len(pool)]
            ref[i] = j
    return {"x": images[idx], "source": s, "target": t, "k": k, "x_ref": images[ref]}


def _blur(x, sigma: float = 1.0):
    from cfjax.metrics import gaussian_blur

    return gaussian_blur(x, sigma)


_JIT_CACHE: dict = {}


def _cached_jit(key: tuple, hold, build: Callable) -> Callable:
    """A jitted function per ``key`` (classifier callables by identity, configs by value), so
    repeated training/evaluation calls in one process compile once. ``hold`` keeps the objects
    whose ``id`` is in the key alive."""
    if key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= 8:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        _JIT_CACHE[key] = (hold, jax.jit(build()))
    return _JIT_CACHE[key][1]


def evaluate_mirror_decoder(
    clf,
    module,
    params,
    cfg: MirrorDecoderConfig,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    n: int = 256,
    seed: int = 0,
    solver: str = "exact",
) -> dict:
    """Quick held-out check of a decoder: flip rate at ``k = 1`` (decoded image classified as a
    random target, among the decoder's ``cfg.pairs`` when it has them) with and without a Gaussian blur (sigma 1), L1 of the ``k = 0``
    reconstruction, and feature faithfulness at ``k = 1``."""
    rng = np.random.default_rng(seed)
    if cfg.pairs is None:  # every pair: random images, random other class
        idx = rng.choice(len(images), min(n, len(images)), replace=False)
        t = (labels[idx] + rng.integers(1, num_classes, len(idx))) % num_classes
    else:  # only the decoder's pairs
        pairs = np.asarray(cfg.pairs, np.int64)
        pool = np.flatnonzero(np.isin(labels, pairs[:, 0]))
        idx = rng.choice(pool, min(n, len(pool)), replace=False)
        t = np.array([rng.choice(pairs[pairs[:, 0] == c, 1]) for c in labels[idx]])
    x, s = jnp.asarray(images[idx]), jnp.asarray(labels[idx], jnp.int32)
    t = jnp.asarray(t, jnp.int32)
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)

    def build():
        def run(params, x, s, t):
            decode_batch = batched_decoder(module, params, W, cfg)
            maps = jax.vmap(clf.feature_maps)(x)
            F_s = maps[-1]
            res = jax.vmap(lambda F, ss, tt: reflect(F, W, b, ss, tt, solver=solver))(F_s, s, t)
            x0 = decode_batch(F_s, maps[:-1], s, t, jnp.zeros_like(s, jnp.float32))
            x1 = decode_batch(res.F_r, maps[:-1], s, t, jnp.ones_like(s, jnp.float32))
            z1 = jax.vmap(clf.features)(x1)
            zb = jax.vmap(clf.features)(_blur(x1))
            return {
                "flip_rate_k1": jnp.mean(jnp.argmax(z1 @ W.T + b, -1) == t),
                "denoised_flip_rate_k1": jnp.mean(jnp.argmax(zb @ W.T + b, -1) == t),
                "rec_l1_k0": jnp.mean(jnp.abs(x0 - x)),
                "faithfulness_l1_k1": jnp.mean(jnp.sum(jnp.abs(gap(res.F_r) - z1), -1)),
            }

        return run

    run = _cached_jit(("eval", id(clf), cfg, solver, tuple(images.shape[1:])), clf, build)
    return {k: float(v) for k, v in run(params, x, s, t).items()}


def batched_decoder(module, params, W, cfg: MirrorDecoderConfig) -> Callable:
    """Batched ``decode(F_k [n,h,w,C], skips [list of n,hi,wi,ci], source [n], target [n], k [n])
    -> x [n, H, W, c]`` computing the CSP masks (``cfg.rho_l``/``rho_u``) itself."""
    W = jnp.asarray(W)

    def decode_batch(F_k, skips, s, t, k):
        hws = [sk.shape[1:3] for sk in skips]
        masks = jax.vmap(lambda f, ss, tt, kk: skip_masks(f, W, ss, tt, kk, hws, cfg.rho_l, cfg.rho_u))(F_k, s, t, k)
        return module.apply(params, F_k, list(skips), masks)

    return decode_batch


def _decoder_config(cfg: MirrorDecoderConfig, image_shape, num_classes: int, data_name: str, classifier_digest: str) -> dict:
    return {
        "decoder": dataclasses.asdict(cfg),
        "image_shape": list(image_shape),
        "num_classes": int(num_classes),
        "data": data_name,
        "classifier_digest": classifier_digest,
    }


def train_mirror_decoder(
    clf,
    train,
    cfg: MirrorDecoderConfig | None = None,
    *,
    test=None,
    workdir: str | Path | None = None,
    classifier_digest: str = "?",
    progress: bool = True,
    stop_after: int | None = None,
) -> DecoderTrained:
    """Train the Mirror-CFE decoder against a frozen classifier.

    Args:
      clf: :class:`cfjax.models.ClassifierFns` of the frozen classifier.
      train: a :class:`cfjax.data.Dataset` (images [N, H, W, c] in [0, 1], labels [N]).
      cfg: :class:`MirrorDecoderConfig`.
      test: optional held-out split for the end-of-training check (default: ``train``).
      workdir: ``last`` (G, D, both optimiser states, step, history) every
        ``checkpoint_every`` steps and at the end, ``best`` (G only) at the end; an existing
        ``last`` with the same config is resumed, one with another config refused.
      classifier_digest: identifies the classifier in the checkpoint config
        (:func:`cfjax.checkpoint.tree_digest` of its params) so a decoder trained against
        another classifier is never reused silently.
      stop_after: run at most this many steps in this call and return without the final
        evaluation/``best`` (tests use it to simulate a crash; ``last`` is written).

    Returns:
      :class:`DecoderTrained` with the per-term loss history.
    """
    from cfjax import checkpoint as ckpt
    from cfjax._checks import check_images, check_labels
    from cfjax.errors import bad_arg
    from tqdm.auto import tqdm

    cfg = cfg or MirrorDecoderConfig()
    if cfg.train_solver not in SOLVERS:
        raise bad_arg("MirrorDecoderConfig.train_solver", repr(cfg.train_solver), f"one of {SOLVERS}")
    images = np.asarray(train.images, np.float32)
    labels = np.asarray(train.labels, np.int32)
    check_images(images, "train.images", check_range=False)
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    K = int(W.shape[0])
    check_labels(labels, "train.labels", K, len(images))
    pairs = _pair_table(cfg, labels, K)
    by_class = [np.flatnonzero(labels == c) for c in range(K)]
    image_shape = images.shape[1:]
    g_module, d_module = build_decoder(cfg, image_shape)
    x0 = jnp.asarray(images[:1])

    def build_init():
        def init(kg, kd, x0):
            maps = jax.vmap(clf.feature_maps)(x0)
            ones = [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]]
            return g_module.init(kg, maps[-1], list(maps[:-1]), ones), d_module.init(kd, x0)

        return init

    # "rbg" keys: XLA:CPU compiles threefry-based initialisers very slowly (~15 s for G)
    kg, kd = jax.random.split(jax.random.key(cfg.seed, impl="rbg"))
    g_params, d_params = _cached_jit(("init", id(clf), cfg, tuple(image_shape)), clf, build_init)(kg, kd, x0)
    tx_g = optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2)
    tx_d = optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2)
    state = {"g": g_params, "d": d_params, "opt_g": tx_g.init(g_params), "opt_d": tx_d.init(d_params)}
    config = _decoder_config(cfg, image_shape, K, getattr(train, "name", "?"), classifier_digest)
    start, history = 0, []
    workdir = Path(workdir) if workdir is not None else None
    if workdir is not None and (workdir / "last").is_dir():
        state, meta = ckpt.restore(workdir / "last", state, kind="mirror-decoder-train-state", config=config)
        start, history = int(meta["extra"]["step"]), list(meta["extra"]["history"])

    def build():
        def step(state, batch):
            def g_loss(gp):
                total, terms, x_k = mirror_decoder_losses(gp, state["d"], g_module, d_module, clf, batch, cfg)
                return total, (terms, x_k)

            (total, (terms, x_k)), gg = jax.value_and_grad(g_loss, has_aux=True)(state["g"])
            d_l, dg = jax.value_and_grad(discriminator_loss)(state["d"], d_module, batch["x"], jax.lax.stop_gradient(x_k))
            ug, opt_g = tx_g.update(gg, state["opt_g"], state["g"])
            ud, opt_d = tx_d.update(dg, state["opt_d"], state["d"])
            new = {"g": optax.apply_updates(state["g"], ug), "d": optax.apply_updates(state["d"], ud), "opt_g": opt_g, "opt_d": opt_d}
            return new, {**terms, "total": total, "d": d_l}

        return step

    step = _cached_jit(("train", id(clf), cfg, tuple(image_shape)), clf, build)

    def save_last(s, hist):
        if workdir is not None:
            ckpt.save(workdir / "last", state, kind="mirror-decoder-train-state", config=config, extra={"step": s, "history": hist})

    t0 = time.perf_counter()
    buf: list = []
    bar = tqdm(range(start, cfg.steps), desc="mirror decoder", disable=not progress, leave=False, initial=start, total=cfg.steps)
    for i in bar:
        if stop_after is not None and i - start >= stop_after:
            save_last(i, history)
            return DecoderTrained(g_module, jax.device_get(state["g"]), d_module, jax.device_get(state["d"]), history, {}, config)
        batch = {k_: jnp.asarray(v) for k_, v in sample_batch(i, cfg, images, labels, by_class, pairs).items()}
        state, aux = step(state, batch)
        buf.append(aux)
        if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
            vals = jax.device_get(buf)
            rec = {"step": i + 1, **{k_: float(np.mean([v[k_] for v in vals])) for k_ in vals[0]}}
            history.append(rec)
            buf = []
            bar.set_postfix({k_: f"{v:.3f}" for k_, v in rec.items() if k_ != "step"})
        if (i + 1) % cfg.checkpoint_every == 0 and i + 1 < cfg.steps:
            save_last(i + 1, history)
    train_s = time.perf_counter() - t0
    ev = test if test is not None else train
    metrics = evaluate_mirror_decoder(clf, g_module, state["g"], cfg, np.asarray(ev.images, np.float32), np.asarray(ev.labels, np.int32), K,
                                      n=cfg.eval_examples, seed=cfg.seed)
    metrics["train_s"] = train_s
    metrics["steps_run"] = cfg.steps - start
    if workdir is not None:
        save_last(cfg.steps, history)
        ckpt.save(workdir / "best", state["g"], kind="mirror-decoder", config=config, extra={"metrics": metrics, "history": history})
    if progress:
        tqdm.write("mirror decoder: " + ", ".join(f"{k_}={v:.4g}" for k_, v in metrics.items()))
    return DecoderTrained(g_module, jax.device_get(state["g"]), d_module, jax.device_get(state["d"]), history, metrics, config)


def load_or_train_mirror_decoder(
    clf,
    train,
    cfg: MirrorDecoderConfig | None = None,
    *,
    test=None,
    workdir: str | Path,
    classifier_digest: str = "?",
    progress: bool = True,
) -> DecoderTrained:
    """Reuse ``workdir/best`` when it was written with the same config (decoder config, image
    shape, data, classifier digest), else train (resuming from ``workdir/last``)."""
    from cfjax import checkpoint as ckpt

    cfg = cfg or MirrorDecoderConfig()
    workdir = Path(workdir)
    config = _decoder_config(cfg, np.asarray(train.images).shape[1:], int(np.asarray(clf.W).shape[0]), getattr(train, "name", "?"), classifier_digest)
    if (workdir / "best").is_dir():
        meta = ckpt.read_meta(workdir / "best")
        if meta.get("kind") == "mirror-decoder" and meta.get("config") == ckpt._jsonable(config):
            g_module, d_module = build_decoder(cfg, config["image_shape"])
            x0 = jnp.zeros((1, *config["image_shape"]), jnp.float32)
            maps = jax.vmap(clf.feature_maps)(x0)
            shapes = jax.eval_shape(lambda: g_module.init(jax.random.key(0), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]]))
            like = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes)
            params, meta = ckpt.restore(workdir / "best", like, kind="mirror-decoder", config=config)
            return DecoderTrained(g_module, params, d_module, None, meta["extra"].get("history", []), meta["extra"].get("metrics", {}), config)
    return train_mirror_decoder(clf, train, cfg, test=test, workdir=workdir, classifier_digest=classifier_digest, progress=progress)


__all__ += [
    "DecoderTrained",
    "MirrorDecoderConfig",
    "batched_decoder",
    "bind_mirror_decoder",
    "build_decoder",
    "discriminator_loss",
    "evaluate_mirror_decoder",
    "load_or_train_mirror_decoder",
    "mirror_decoder_losses",
    "sample_batch",
    "skip_masks",
    "train_mirror_decoder",
]
