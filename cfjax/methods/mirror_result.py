"""What Mirror-CFE returns: :class:`ReflectResult` (the refinement of one reflection),
:class:`MirrorResult` (the whole method on one example) and the status codes
:data:`STATUS_NAMES` of ``MirrorResult.status``.

:func:`~cfjax.methods.mirror.reflect` and :func:`~cfjax.methods.mirror.mirror_cfe` build them;
:mod:`cfjax.methods.mirror` re-exports every name defined here.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array, Bool, Float, Int


class ReflectResult(NamedTuple):
    """Result of :func:`~cfjax.methods.mirror.reflect` for one example.

    Attributes:
      F_r: [h, w, C] the refined reflected map ``F'`` (what transitions end at).
      F_reflect: [h, w, C] the plain per-position reflection (before refinement).
      residual: [] ``||W GAP(F_r) + b - q||_2``.
      iterations: int [] solver iterations (0 for ``"exact"``).
      converged: bool [] the solver met its stopping criterion within ``maxiter``
        (``"exact"``: the residual is within float32 round-off of zero, i.e. ``q`` is reachable).
      target_logits: [K] ``q``, the source logits with ``s`` and ``t`` swapped
        (:func:`~cfjax.methods.mirror.reflection_target`; with ``others="mirror"`` blocking classes lowered).
    """

    F_r: Float[Array, "h w C"]
    F_reflect: Float[Array, "h w C"]
    residual: Float[Array, ""]
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    target_logits: Float[Array, "K"]


FOUND, NO_FLIP, NOT_CONVERGED, NON_FINITE = 0, 1, 2, 3
STATUS_NAMES = {FOUND: "found", NO_FLIP: "no_flip", NOT_CONVERGED: "not_converged", NON_FINITE: "non_finite"}
"""``MirrorResult.status``: ``found`` (a decoded counterfactual on the path and the refinement
converged), ``no_flip`` (no decoded image on the path is classified as the target),
``not_converged`` (a counterfactual was found but the refinement did not meet its tolerance),
``non_finite`` (the image, the feature path or the decoded path's logits hold NaN/Inf: only
reachable inside a user's ``jit``, where the up-front value checks cannot run; ``found`` is
then False)."""


class MirrorResult(NamedTuple):
    """Result of :func:`~cfjax.methods.mirror.mirror_cfe` for one example (``m`` grid points, ``K`` classes).

    Attributes:
      x_cf: [H, W, c] the first counterfactual ``G(F_k*)`` (the ``k = 1`` image when none).
      k_cf: [] its ``k`` (NaN when none was found).
      index: int [] its grid index (the last one when none).
      found: bool [] some decoded image with ``k > k_min`` is classified as the target.
      status: int [] :data:`STATUS_NAMES` code.
      x_path: [m, H, W, c] decoded images along the path.
      ks: [m] the grid.
      logits_path: [m, K] the classifier's logits on ``x_path``.
      logits_features: [m, K] head logits of ``GAP(F_k)`` (exactly linear in ``k``).
      z_path: [m, C] ``GAP(F_k)``.
      z_decoded: [m, C] ``GAP(F(G(F_k)))`` (faithfulness: compare with ``z_path``).
      converged, residual, iterations: of the refinement (:class:`ReflectResult`).
      F_r: [h, w, C] the refined reflection of the last map (the path's ``k = 1`` end; with the
        source map it gives any ``F_k`` off the grid, e.g. for :mod:`cfjax.methods.locate`).
    """

    x_cf: Float[Array, "H W c"]
    k_cf: Float[Array, ""]
    index: Int[Array, ""]
    found: Bool[Array, ""]
    status: Int[Array, ""]
    x_path: Float[Array, "m H W c"]
    ks: Float[Array, "m"]
    logits_path: Float[Array, "m K"]
    logits_features: Float[Array, "m K"]
    z_path: Float[Array, "m C"]
    z_decoded: Float[Array, "m C"]
    converged: Bool[Array, ""]
    residual: Float[Array, ""]
    iterations: Int[Array, ""]
    F_r: Float[Array, "h w C"] | None = None


__all__ = ["FOUND", "MirrorResult", "NON_FINITE", "NOT_CONVERGED", "NO_FLIP", "ReflectResult", "STATUS_NAMES"]
