r"""Ground truth by intervention: how much a classifier relies on each planted cue.

For a classifier ``logits`` and a (source, target) pair, the reliance on cue :math:`c` is measured
on held-out source images whose cues were drawn independently of the label
(:func:`cfjax.data.planted.randomize`): each image is rendered twice, identical except for
:math:`c`, once at its source-typical level (``off``) and once at its target-typical level
(``on``), every other cue kept at the image's own level. Two numbers per cue:

* ``delta_p``: the mean change of :math:`p(\text{target})`,
  :math:`\frac1n \sum_i p_t(x_i^{c=on}) - p_t(x_i^{c=off})`, with a percentile-bootstrap 95%
  interval over images;
* ``flip_rate``: among the images NOT classified as the target at ``off``, the share classified
  as the target at ``on``, with a Wilson interval.

The cues are ranked by ``|delta_p|`` (:func:`reliance_ranking`). A cue is *relied on* when its
``delta_p`` is at least ``min_effect`` and its interval excludes 0; a model that relies on no cue
is reported as such (``relies_on_nothing``), never dropped.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax.data import planted as pl
from cfjax.errors import bad_arg
from cfjax.eval.intervals import bootstrap, wilson

MIN_EFFECT = 0.1
"""A cue is relied on when switching it moves p(target) by at least this much (and the
bootstrap interval of the change excludes 0)."""


def batched_probs(logits: Callable, batch: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """A host function ``images [n, h, w, c] -> softmax probabilities [n, K]`` from a single-example
    ``logits(x) -> [K]`` (jitted ``vmap``, chunks of ``batch``)."""
    f = jax.jit(jax.vmap(lambda x: jax.nn.softmax(logits(x))))

    def probs(images: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(f(jnp.asarray(images[s : s + batch]))) for s in range(0, len(images), batch)])

    return probs


def cue_reliance(
    logits: Callable[[Float[Array, "h w c"]], Float[Array, "k"]],
    images: Float[Array, "n h w c"],
    levels: dict,
    *,
    source: int,
    target: int,
    cues: Sequence[str] = pl.CUE_ORDER,
    min_effect: float = MIN_EFFECT,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Interventional reliance of ``logits`` on every cue in ``cues``.

    Args:
      logits: single-example ``x [h, w, c] -> [K]``.
      images: ``[n, h, w, c]`` held-out BASE images of the source class (no cue rendered yet).
      levels: ``{cue: [n]}`` each image's own cue levels (from :func:`cfjax.data.planted.randomize`);
        the switched cue is overridden, the others kept.
      source, target: class indices in ``[0, K)``.
      cues: the cues to measure.
      min_effect: the smallest ``delta_p`` counted as reliance.
      n_boot: bootstrap resamples; ``seed`` their seed.

    Returns:
      ``{"cues": {cue: {"delta_p", "delta_p_ci", "flip_rate", "flip_rate_ci", "n", "n_flippable",
      "relied_on"}}, "ranking": [cues by |delta_p|], "relies_on_nothing": bool,
      "accuracy_off": share classified as source with every cue as drawn}``.
    """
    cues = pl.check_cue_names(cues)
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) < 2:
        raise bad_arg("images", f"shape {images.shape}", "[n, h, w, c] with n >= 2")
    if source == target:
        raise bad_arg("source, target", f"{source}, {target}", "two different classes")
    probs = batched_probs(logits)
    base = probs(pl.render_np(images, levels))
    out = {}
    for c in cues:
        p_off = probs(pl.switch(images, levels, c, on=False))
        p_on = probs(pl.switch(images, levels, c, on=True))
        d = p_on[:, target] - p_off[:, target]
        flippable = p_off.argmax(1) != target
        flips = flippable & (p_on.argmax(1) == target)
        lo, hi = bootstrap(d, n_boot=n_boot, seed=seed)
        mean = float(d.mean())
        out[c] = {"delta_p": mean, "delta_p_ci": [lo, hi], "flip_rate": float(flips.sum() / max(flippable.sum(), 1)),
                  "flip_rate_ci": list(wilson(int(flips.sum()), int(flippable.sum()))), "n": int(len(d)),
                  "n_flippable": int(flippable.sum()),
                  "relied_on": bool(abs(mean) >= min_effect and (lo > 0 or hi < 0))}
    return {"cues": out, "ranking": reliance_ranking(out), "relies_on_nothing": not any(v["relied_on"] for v in out.values()),
            "accuracy_off": float((base.argmax(1) == source).mean())}


def reliance_ranking(per_cue: dict) -> list[str]:
    """Cue names sorted by decreasing ``|delta_p|`` (ties by name)."""
    return sorted(per_cue, key=lambda c: (-abs(per_cue[c]["delta_p"]), c))


def reliance_vector(result: dict, cues: Sequence[str]) -> np.ndarray:
    """``|delta_p|`` of ``cues`` (in that order) from a :func:`cue_reliance` result."""
    return np.array([abs(result["cues"][c]["delta_p"]) for c in cues], np.float64)


__all__ = ["MIN_EFFECT", "batched_probs", "cue_reliance", "reliance_ranking", "reliance_vector"]
