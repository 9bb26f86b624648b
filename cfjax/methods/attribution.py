r"""Attribute predictors on latents, local attribute scores and their global aggregation.

All attribute predictors are logistic regressions trained TOGETHER as one ``[D, A]`` weight
matrix (plus bias), so the attribute probabilities of a batch of latents are one matmul:
:math:`P(z) = \sigma(z W + b)`. The local importance of attribute :math:`a` for a counterfactual
is :math:`P_a(z_{cf}) - P_a(z_{orig})` (no re-encoding: the counterfactual is a latent already).

Global explanation over :math:`N` counterfactuals: :math:`G_a = \frac1N\sum_i s_i\,\ell_a(i)`
with :math:`s_i=+1` when the counterfactual raises the class probability and :math:`-1` when
it lowers it. :class:`GlobalSums` keeps sums per (source, target) pair so that the
aggregation is a sum over the batch axis (it shards over devices inside ``jit``); the spread
is carried as centred sums of squares combined with Chan's formula (:func:`cfjax.reduce.chan_merge`)
across chunks, hosts and shards (:func:`global_merge`). Only successful, non-padding
counterfactuals are counted.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from cfjax.errors import bad_arg
from cfjax.reduce import chan_merge, pair_moments, pair_sums


class AttributePredictor(NamedTuple):
    """``A`` logistic regressions on ``D``-dim latents: ``W`` [D, A], ``b`` [A], ``names``."""

    W: Float[Array, "d a"]
    b: Float[Array, "a"]
    names: tuple


_HI = jax.lax.Precision.HIGHEST  # exact f32 sums/products on GPUs too (no TF32)


def predict_attributes(pred: AttributePredictor, z: Float[Array, "... d"]) -> Float[Array, "... a"]:
    r"""Attribute probabilities :math:`P(z) = \sigma(z W + b)`: one matmul for a whole batch.

    Args:
      pred: the fitted predictors.
      z: latents ``[..., D]``.

    Returns:
      ``[..., A]`` probabilities.
    """
    return jax.nn.sigmoid(jnp.matmul(z, pred.W, precision=_HI) + pred.b)


def local_scores(pred: AttributePredictor, z_orig: Float[Array, "... d"], z_cf: Float[Array, "... d"]) -> Float[Array, "... a"]:
    r"""Local importance :math:`\ell_a = P_a(z_{cf}) - P_a(z_{orig})` of every attribute.

    Each counterfactual is scored against ITS OWN original latent (the reference notebook
    once used one stale original for all). No re-encoding: both are latents already.

    Example:
      >>> import jax.numpy as jnp
      >>> p = AttributePredictor(jnp.array([[1.0], [0.0]]), jnp.zeros(1), ("x",))
      >>> local_scores(p, jnp.zeros((1, 2)), jnp.array([[100.0, 0.0]])).round(3).tolist()
      [[0.5]]
    """
    return predict_attributes(pred, z_cf) - predict_attributes(pred, z_orig)


def attribute_accuracy(pred: AttributePredictor, latents, attributes) -> dict:
    """Per-attribute accuracy of the predictors at probability 0.5: ``{name: accuracy}``."""
    p = np.asarray(predict_attributes(pred, jnp.asarray(latents)))
    acc = ((p > 0.5) == (np.asarray(attributes) > 0.5)).mean(0)
    return {n: float(a) for n, a in zip(pred.names, acc)}


class GlobalSums(NamedTuple):
    r"""Sums per (source, target) pair slot ``source * K + target`` (``P = K * K`` slots).

    Attributes:
      signed: :math:`\sum_i s_i \ell_{ia}` [P, A].
      abs: :math:`\sum_i |\ell_{ia}|` [P, A].
      m2: :math:`\sum_i (s_i \ell_{ia} - G_a)^2` [P, A], the squared deviations from the
        slot's mean (no cancellation: the std of equal scores stays at float32 rounding, ~eps |x|).
      count: number of counterfactuals counted [P].

    ``signed``, ``abs`` and ``count`` add across parts; ``m2`` combines with Chan's formula
    (:func:`global_merge`).
    """

    signed: Float[Array, "p a"]
    abs: Float[Array, "p a"]
    m2: Float[Array, "p a"]
    count: Float[Array, "p"]


def global_init(num_classes: int, num_attrs: int) -> GlobalSums:
    """Zero sums for ``num_classes ** 2`` pair slots and ``num_attrs`` attributes (float32)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise bad_arg("num_classes", repr(num_classes), "a positive integer")
    if isinstance(num_attrs, bool) or not isinstance(num_attrs, (int, np.integer)) or num_attrs < 1:
        raise bad_arg("num_attrs", repr(num_attrs), "a positive integer")
    p = num_classes * num_classes
    return GlobalSums(jnp.zeros((p, num_attrs)), jnp.zeros((p, num_attrs)), jnp.zeros((p, num_attrs)), jnp.zeros((p,)))


def global_update(
    acc: GlobalSums,
    scores: Float[Array, "n a"],
    source: Int[Array, "n"],
    target: Int[Array, "n"],
    sign: Float[Array, "n"],
    mask: Bool[Array, "n"],
) -> GlobalSums:
    r"""Add a batch of local scores to their pair slots; pure and jit-able.

    Only masked-in rows count (successful counterfactuals, not padding); masked-out rows are
    zeroed before any arithmetic, so even NaN garbage there cannot leak. The per-slot sums are
    one one-hot contraction over the batch axis (a sum over a sharded axis: XLA all-reduces).

    Args:
      acc: the running sums.
      scores: ``[n, A]`` local scores.
      source, target: ``[n]`` class indices in ``[0, K)``.
      sign: ``[n]`` :math:`s_i`: +1 when the counterfactual raises the class probability, -1
        when it lowers it.
      mask: ``[n]`` bool.

    Returns:
      The updated :class:`GlobalSums`.
    """
    k = int(round(np.sqrt(acc.count.shape[0])))
    m = jnp.asarray(mask).astype(jnp.float32)
    s = jnp.where(mask[:, None], scores, 0.0)
    sgn = jnp.where(mask, sign, 0.0)
    count, signed, m2 = pair_moments(s * sgn[:, None], source, target, m, k)
    return global_merge(acc, GlobalSums(signed, pair_sums(jnp.abs(s), source, target, m, k), m2, count))


def global_merge(a: GlobalSums, b: GlobalSums) -> GlobalSums:
    """Combine two partial aggregations of disjoint counterfactuals (chunks, hosts, shards):
    sums add, ``m2`` by Chan's formula. Pure; numpy or JAX arrays."""
    count, signed, m2 = chan_merge(a.count, a.signed, a.m2, b.count, b.signed, b.m2)
    return GlobalSums(signed, a.abs + b.abs, m2, count)


def _stats(signed, ab, m2, count, names) -> dict:
    out = {}
    c = float(count)
    for i, n in enumerate(names):
        if not c:
            out[n] = {"mean": float("nan"), "mean_abs": float("nan"), "std": float("nan"), "count": 0}
            continue
        out[n] = {"mean": float(signed[i]) / c, "mean_abs": float(ab[i]) / c, "std": float(np.sqrt(max(float(m2[i]) / c, 0.0))),
                  "count": int(round(c))}
    return out


def _overall(signed, m2, count) -> np.ndarray:
    """The pooled ``M2`` over every slot: the slots' own ``M2`` plus their means' spread around
    the overall mean (the law of total variance; float64, non-negative terms only)."""
    n = count.sum()
    if not n:
        return np.zeros(signed.shape[1])
    mean = signed.sum(0) / n
    slot_mean = signed / np.maximum(count, 1.0)[:, None]
    return m2.sum(0) + (count[:, None] * (slot_mean - mean) ** 2).sum(0)


def global_finalize(acc: GlobalSums, names: Sequence[str], class_names: Sequence[str] | None = None) -> dict:
    r"""Means from the sums: ``{"overall": {attr: stats}, "pairs": {"s->t": {attr: stats}}}``.

    ``stats = {"mean": G_a, "mean_abs", "std", "count"}`` with
    :math:`G_a = \frac1N \sum_i s_i \ell_{ia}` (> 0: the attribute rises with the class),
    the mean of :math:`|\ell_{ia}|`, the (population) std of :math:`s_i \ell_{ia}` and
    :math:`N`. Only pairs with at least one counted counterfactual appear; pair keys use
    ``class_names`` (default ``"0"``, ``"1"``, ...). Computed on the host in float64.
    """
    signed, ab, m2, count = (np.asarray(x, np.float64) for x in acc)
    k = int(round(np.sqrt(len(count))))
    cn = list(class_names) if class_names else [str(i) for i in range(k)]
    if len(cn) != k:
        raise bad_arg("class_names", f"{len(cn)} names", f"{k} class names")
    if len(names) != signed.shape[1]:
        raise bad_arg("names", f"{len(names)} names", f"{signed.shape[1]} attribute names")
    pairs = {}
    for slot in np.flatnonzero(count > 0):
        s, t = divmod(int(slot), k)
        pairs[f"{cn[s]}->{cn[t]}"] = _stats(signed[slot], ab[slot], m2[slot], count[slot], names)
    overall = _overall(signed, m2, count)
    overall = _stats(signed.sum(0), ab.sum(0), overall, count.sum(), names)
    return {"overall": overall, "pairs": pairs}


def top_attributes(stats: dict, k: int = 5, by: str = "mean") -> list[tuple[str, float]]:
    """The ``k`` attributes with the largest ``|stats[a][by]|``, as ``[(name, value), ...]``.

    ``stats`` is one stats dict (``result["overall"]`` or ``result["pairs"]["3->8"]``); a whole
    :func:`global_finalize` result means its ``"overall"``. Attributes with no counted
    counterfactual are skipped.
    """
    if "overall" in stats and "pairs" in stats:
        stats = stats["overall"]
    items = [(n, v[by]) for n, v in stats.items() if v.get("count", 0) > 0 and v[by] is not None and np.isfinite(v[by])]
    return sorted(items, key=lambda t: -abs(t[1]))[:k]


# CelebA: the explained labels, the abstract ones, and the sources of the paper's merges.
CELEBA_EXPLAINED = ("Young", "Attractive", "Male", "Smiling")
CELEBA_ABSTRACT = ("Attractive", "Blurry")
CELEBA_MERGES = {
    "Facial_hair": ("Mustache", "Goatee", "Sideburns", "5_o_Clock_Shadow", "~No_Beard"),
    "Dark_hair": ("Black_Hair", "Brown_Hair"),
    "Overweight": ("Chubby", "Double_Chin"),
}
CELEBA_DROP = tuple(dict.fromkeys(CELEBA_ABSTRACT + CELEBA_EXPLAINED + tuple(n.lstrip("~") for v in CELEBA_MERGES.values() for n in v)))


def celeba_attributes(attributes: np.ndarray, names: Sequence[str], exclude: Sequence[str] = ()) -> tuple[np.ndarray, tuple]:
    """CelebA's 40 binary attributes turned into the explanation attributes of the paper.

    Merged (logical OR): ``Facial_hair`` = Mustache | Goatee | Sideburns | 5_o_Clock_Shadow |
    (not No_Beard); ``Dark_hair`` = Black_Hair | Brown_Hair; ``Overweight`` = Chubby |
    Double_Chin (their sources are dropped as redundant). Dropped as abstract: ``Attractive``,
    ``Blurry``. Dropped as the labels being explained: ``Young``, ``Attractive``, ``Male``,
    ``Smiling`` (a classifier is not explained by its own label). 40 - 14 + 3 = 29 remain,
    in CelebA's order followed by the three merged ones.

    Args:
      attributes: ``[n, 40]`` in {0, 1} (or -1/1: values > 0.5 are "on").
      names: the 40 CelebA attribute names, in column order.
      exclude: further attributes to drop (the binary task being explained, e.g.
        ``"Mouth_Slightly_Open"``: a classifier is not explained by its own label).

    Returns:
      ``(attrs [n, 29 - len(new excludes)] float32 in {0, 1}, names)``.
    """
    a = np.asarray(attributes) > 0.5
    names = list(names)
    if a.ndim != 2 or a.shape[1] != len(names):
        raise bad_arg("attributes", f"shape {a.shape}", f"[n, {len(names)}], one column per name")
    idx = {n: i for i, n in enumerate(names)}
    missing = [n.lstrip("~") for v in CELEBA_MERGES.values() for n in v if n.lstrip("~") not in idx]
    if missing:
        raise bad_arg("names", f"no {missing}", "CelebA's 40 attribute names")
    unknown = [n for n in exclude if n not in idx and n not in CELEBA_MERGES]
    if unknown:
        raise bad_arg("exclude", unknown, "CelebA attribute names (or a merged one: " + ", ".join(CELEBA_MERGES) + ")")

    def col(n):
        return ~a[:, idx[n[1:]]] if n.startswith("~") else a[:, idx[n]]

    merged = {m: np.logical_or.reduce([col(n) for n in srcs]) for m, srcs in CELEBA_MERGES.items()}
    merged = {m: v for m, v in merged.items() if m not in exclude}
    keep = [n for n in names if n not in CELEBA_DROP and n not in exclude]
    cols = [a[:, idx[n]] for n in keep] + list(merged.values())
    return np.stack(cols, 1).astype(np.float32), tuple(keep) + tuple(merged)
