r"""Attribute predictors on latents, local attribute scores and their global aggregation.

All attribute predictors are logistic regressions trained TOGETHER as one ``[D, A]`` weight
matrix (plus bias), so the attribute probabilities of a batch of latents are one matmul:
:math:`P(z) = \sigma(z W + b)`. The local importance of attribute :math:`a` for a counterfactual
is :math:`P_a(z_{cf}) - P_a(z_{orig})` (no re-encoding: the counterfactual is a latent already).

Global explanation over :math:`N` counterfactuals: :math:`G_a = \frac1N\sum_i s_i\,\ell_a(i)`
with :math:`s_i=+1` when the counterfactual raises the class probability and :math:`-1` when
it lowers it. :class:`GlobalSums` keeps plain sums per (source, target) pair so that the
aggregation is a sum over the batch axis (it shards and merges across chunks/hosts by
addition); only successful, non-padding counterfactuals are counted.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from cfjax.errors import bad_arg


class AttributePredictor(NamedTuple):
    """``A`` logistic regressions on ``D``-dim latents: ``W`` [D, A], ``b`` [A], ``names``."""

    W: Float[Array, "d a"]
    b: Float[Array, "a"]
    names: tuple


def fit_attribute_predictor(
    latents: Float[Array, "n d"],
    attributes: Float[Array, "n a"],
    names: Sequence[str],
    *,
    steps: int = 2000,
    learning_rate: float = 0.05,
    l2: float = 1e-3,
    seed: int = 0,
) -> AttributePredictor:
    """Fit all attribute logistic regressions at once (full-batch Adam, jitted scan).

    Inputs are standardised internally and the weights mapped back, so ``W``/``b`` apply to raw
    latents. ``attributes`` must be in {0, 1}.
    """
    z = np.asarray(latents, np.float32)
    y = np.asarray(attributes, np.float32)
    if z.ndim != 2 or y.ndim != 2 or len(z) != len(y):
        raise bad_arg("latents/attributes", f"shapes {z.shape} and {y.shape}", "[n, D] and [n, A] with the same n")
    if len(names) != y.shape[1]:
        raise bad_arg("names", f"{len(names)} names", f"one per attribute column ({y.shape[1]})")
    if not np.all((y == 0) | (y == 1)):
        raise bad_arg("attributes", "values other than 0/1", "binary attributes in {0, 1}")
    mu, sd = z.mean(0), z.std(0) + 1e-6
    zs = jnp.asarray((z - mu) / sd)
    yj = jnp.asarray(y)
    tx = optax.adam(learning_rate)
    del seed  # full-batch logistic regression from zeros is deterministic

    def loss(p):
        logit = zs @ p["W"] + p["b"]
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logit, yj)) + l2 * jnp.sum(p["W"] ** 2)

    @jax.jit
    def run(p):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=steps)
        return p

    p = run({"W": jnp.zeros((z.shape[1], y.shape[1])), "b": jnp.zeros(y.shape[1])})
    W = p["W"] / sd[:, None]
    b = p["b"] - jnp.asarray(mu / sd) @ p["W"]
    return AttributePredictor(W, b, tuple(names))


def predict_attributes(pred: AttributePredictor, z: Float[Array, "... d"]) -> Float[Array, "... a"]:
    """Attribute probabilities ``sigmoid(z @ W + b)``: one matmul for a whole batch."""
    return jax.nn.sigmoid(z @ pred.W + pred.b)


def local_scores(pred: AttributePredictor, z_orig: Float[Array, "... d"], z_cf: Float[Array, "... d"]) -> Float[Array, "... a"]:
    """``P_a(z_cf) - P_a(z_orig)`` for every attribute."""
    return predict_attributes(pred, z_cf) - predict_attributes(pred, z_orig)


def attribute_accuracy(pred: AttributePredictor, latents, attributes) -> dict:
    """Per-attribute accuracy of the predictors (threshold 0.5)."""
    p = np.asarray(predict_attributes(pred, jnp.asarray(latents)))
    acc = ((p > 0.5) == (np.asarray(attributes) > 0.5)).mean(0)
    return {n: float(a) for n, a in zip(pred.names, acc)}


class GlobalSums(NamedTuple):
    """Sums per (source, target) pair slot ``source * K + target``: ``signed`` (of s*local),
    ``abs`` (of |local|), ``sq`` (of local^2) [P, A], ``count`` [P]."""

    signed: Float[Array, "p a"]
    abs: Float[Array, "p a"]
    sq: Float[Array, "p a"]
    count: Float[Array, "p"]


def global_init(num_classes: int, num_attrs: int) -> GlobalSums:
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
    """Add the masked-in rows (successful, non-padding) to their pair slots (a one-hot matmul)."""
    k = int(round(np.sqrt(acc.count.shape[0])))
    slot = source * k + target
    m = mask.astype(scores.dtype)
    s = jnp.where(mask[:, None], scores, 0.0)
    oh = jax.nn.one_hot(slot, k * k, dtype=scores.dtype) * m[:, None]  # [n, P]
    return GlobalSums(
        acc.signed + oh.T @ (s * sign[:, None]),
        acc.abs + oh.T @ jnp.abs(s),
        acc.sq + oh.T @ (s**2),
        acc.count + jnp.sum(oh, 0),
    )


def global_merge(a: GlobalSums, b: GlobalSums) -> GlobalSums:
    return jax.tree_util.tree_map(jnp.add, a, b)


def _stats(signed, ab, sq, count, names) -> dict:
    out = {}
    for i, n in enumerate(names):
        c = float(count)
        mean = float(signed[i]) / c if c else float("nan")
        var = float(sq[i]) / c - mean**2 if c else float("nan")
        out[n] = {"mean": mean, "mean_abs": float(ab[i]) / c if c else float("nan"), "std": float(np.sqrt(max(var, 0.0))) if c else float("nan"), "count": int(c)}
    return out


def global_finalize(acc: GlobalSums, names: Sequence[str], class_names: Sequence[str] | None = None) -> dict:
    """``{"overall": {attr: {mean, mean_abs, std, count}}, "pairs": {"s->t": {...}}}``.

    ``mean`` is the signed global score G_a; ``std`` the spread of s*local (the sign is +-1,
    so the second moment is that of local).
    """
    signed, ab, sq, count = (np.asarray(x, np.float64) for x in acc)
    k = int(round(np.sqrt(len(count))))
    cn = list(class_names) if class_names else [str(i) for i in range(k)]
    pairs = {}
    for slot in np.flatnonzero(count > 0):
        s, t = divmod(int(slot), k)
        pairs[f"{cn[s]}->{cn[t]}"] = _stats(signed[slot], ab[slot], sq[slot], count[slot], names)
    overall = _stats(signed.sum(0), ab.sum(0), sq.sum(0), count.sum(), names)
    return {"overall": overall, "pairs": pairs}


def top_attributes(stats: dict, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` attributes with the largest |mean| of one stats dict (overall or a pair)."""
    items = [(n, v["mean"]) for n, v in stats.items() if v["count"] > 0]
    return sorted(items, key=lambda t: -abs(t[1]))[:k]


# CelebA: the paper's merges, and attributes dropped as abstract or redundant.
CELEBA_DROP = ("Attractive", "Blurry", "Young", "Male", "Smiling", "Mustache", "Goatee", "Sideburns", "5_o_Clock_Shadow", "No_Beard", "Black_Hair", "Brown_Hair", "Chubby", "Double_Chin")


def celeba_attributes(attributes: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, tuple]:
    """CelebA's 40 attributes with the paper's merges: ``Facial_hair`` = Mustache | Goatee |
    Sideburns | 5_o_Clock_Shadow | not No_Beard, ``Dark_hair`` = Black_Hair | Brown_Hair,
    ``Overweight`` = Chubby | Double_Chin; dropped: ``Attractive`` and ``Blurry`` (abstract) and
    the four explained labels (Young, Male, Smiling — and Attractive) so a classifier is not
    explained by its own label."""
    a = np.asarray(attributes) > 0.5
    idx = {n: i for i, n in enumerate(names)}
    missing = [n for n in ("Mustache", "Goatee", "Sideburns", "5_o_Clock_Shadow", "No_Beard", "Black_Hair", "Brown_Hair", "Chubby", "Double_Chin") if n not in idx]
    if missing:
        raise bad_arg("names", f"no {missing}", "CelebA's 40 attribute names")
    merged = {
        "Facial_hair": a[:, idx["Mustache"]] | a[:, idx["Goatee"]] | a[:, idx["Sideburns"]] | a[:, idx["5_o_Clock_Shadow"]] | ~a[:, idx["No_Beard"]],
        "Dark_hair": a[:, idx["Black_Hair"]] | a[:, idx["Brown_Hair"]],
        "Overweight": a[:, idx["Chubby"]] | a[:, idx["Double_Chin"]],
    }
    keep = [n for n in names if n not in CELEBA_DROP]
    cols = [a[:, idx[n]] for n in keep] + list(merged.values())
    return np.stack(cols, 1).astype(np.float32), tuple(keep) + tuple(merged)
