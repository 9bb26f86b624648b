r"""Scoring explanations against interventional reliance (the planted-cue benchmark's metrics).

A **cell** is one trained classifier: its planted cue(s), :math:`\rho`, seed, its measured
reliance per cue (:mod:`cfjax.eval.reliance`) and, per explainer, a score per cue (larger
``|score|``: the explainer says the model uses the cue more) with a z statistic (``|mean| / SE``
of the per-example values behind the score). Per cell:

* **top-1 hit**: the explainer's top-ranked cue is the most-relied-on cue (cells whose model
  relies on some cue only);
* **reciprocal rank** of the most-relied-on cue in the explainer's ranking;
* **Spearman** correlation between ``|score|`` and ``|delta_p|`` over the cues;
* **false alarm** (null cells, :math:`\rho = 0.5`): the explainer's top-ranked cue is
  *flagged* (``z >= z_alarm``, default 3: about a 0.3% chance per cue under the explainer's own
  noise) while the model does not rely on it.

Aggregates (:func:`aggregate`) carry 95% intervals: Wilson for the rates (top-1, false alarm)
and a percentile bootstrap over cells for the means (reciprocal rank, Spearman). The lowest
:math:`\rho` at which the top-1 hit rate reaches 0.9 is read from the per-:math:`\rho` rates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cfjax.errors import bad_arg
from cfjax.eval.intervals import bootstrap, wilson

Z_ALARM = 3.0


def rank_order(scores: Sequence[float], names: Sequence[str], tie_seed: int | None = None) -> list[str]:
    """``names`` sorted by decreasing ``|score|`` (NaN last). Ties are broken by name, or at random
    with ``tie_seed`` (an explainer whose scores tie, e.g. two cues both perfectly correlated with
    the label, must not win by alphabetical order)."""
    s = np.asarray(scores, np.float64)
    if len(s) != len(names):
        raise bad_arg("scores", f"{len(s)} scores", f"one per name ({len(names)})")
    key = np.where(np.isfinite(s), -np.round(np.abs(s), 9), np.inf)
    tie = np.random.default_rng(tie_seed).permutation(len(s)) if tie_seed is not None else np.zeros(len(s))
    return [names[i] for i in sorted(range(len(s)), key=lambda i: (key[i], tie[i], names[i]))]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise bad_arg("a, b", f"shapes {a.shape}, {b.shape}", "two 1-d arrays of the same length >= 2")

    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for u in np.unique(v):
            m = v == u
            r[m] = r[m].mean()
        return r

    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def score_cell(cues: Sequence[str], reliance: dict, scores: Sequence[float], z: Sequence[float] | None = None,
               *, z_alarm: float = Z_ALARM, tie_seed: int | None = None) -> dict:
    """One explainer on one cell.

    Args:
      cues: the cue names, in the order of ``scores``.
      reliance: a :func:`cfjax.eval.reliance.cue_reliance` result.
      scores: the explainer's score per cue.
      z: ``|mean| / SE`` per cue (``None``: the explainer never flags, e.g. random).
      z_alarm: the flag threshold.
      tie_seed: breaks ties in the explainer's ranking at random (see :func:`rank_order`).

    Returns:
      ``{"ranking", "top1_hit", "reciprocal_rank", "spearman", "flagged", "false_alarm"}``;
      ``top1_hit``/``reciprocal_rank`` are ``None`` when the model relies on nothing,
      ``false_alarm`` is whether the top-ranked cue is flagged but not relied on.
    """
    cues = list(cues)
    rel = np.array([abs(reliance["cues"][c]["delta_p"]) for c in cues])
    order = rank_order(scores, cues, tie_seed)
    truth = cues[int(np.argmax(rel))]
    reliant = not reliance["relies_on_nothing"]
    zz = np.zeros(len(cues)) if z is None else np.nan_to_num(np.asarray(z, np.float64))
    flagged = [c for c, v in zip(cues, zz) if v >= z_alarm]
    top = order[0]
    return {
        "ranking": order,
        "top1_hit": (top == truth) if reliant else None,
        "reciprocal_rank": (1.0 / (order.index(truth) + 1)) if reliant else None,
        "spearman": spearman(np.abs(np.asarray(scores, np.float64)), rel),
        "flagged": flagged,
        "false_alarm": bool(top in flagged and not reliance["cues"][top]["relied_on"]),
    }


def _rate(hits) -> dict:
    h = [bool(v) for v in hits if v is not None]
    if not h:
        return {"value": None, "ci": [None, None], "n": 0}
    return {"value": float(np.mean(h)), "ci": list(wilson(int(sum(h)), len(h))), "n": len(h)}


def _mean(vals, seed: int = 0) -> dict:
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return {"value": None, "ci": [None, None], "n": 0}
    lo, hi = bootstrap(v, n_boot=2000, seed=seed) if len(v) >= 2 else (None, None)
    return {"value": float(v.mean()), "ci": [lo, hi], "n": int(len(v))}


def aggregate(rows: Sequence[dict], explainer: str) -> dict:
    """The benchmark table entry of one explainer over cell rows.

    Each row holds ``"rho"``, ``"planted"`` (a list of cue names) and
    ``row["explainers"][explainer]`` (a :func:`score_cell` result, or missing when not run).

    Returns:
      ``{"top1_rho_ge_0_9", "mrr_rho_ge_0_9", "spearman_reliance", "false_alarm_null", "two_cue_top1",
      "top1_by_rho": {rho: {...}}, "lowest_rho_top1_0_9"}``, each metric ``{"value", "ci", "n"}``
      (``value`` ``None`` where no cell counts, e.g. an explainer that was not run).
    """
    got = [r for r in rows if r.get("explainers", {}).get(explainer) is not None]
    e = lambda r: r["explainers"][explainer]  # noqa: E731
    hi = [r for r in got if r["rho"] >= 0.9 and len(r["planted"]) == 1]
    by_rho = {}
    for rho in sorted({r["rho"] for r in got if r["rho"] > 0.5}):
        by_rho[str(rho)] = _rate([e(r)["top1_hit"] for r in got if r["rho"] == rho and len(r["planted"]) >= 1])
    lowest = next((float(k) for k, v in by_rho.items() if v["value"] is not None and v["value"] >= 0.9), None)
    return {
        "top1_rho_ge_0_9": _rate([e(r)["top1_hit"] for r in hi]),
        "mrr_rho_ge_0_9": _mean([e(r)["reciprocal_rank"] for r in hi]),
        "spearman_reliance": _mean([e(r)["spearman"] for r in got if e(r)["top1_hit"] is not None]),
        "false_alarm_null": _rate([e(r)["false_alarm"] for r in got if r["rho"] == 0.5]),
        "two_cue_top1": _rate([e(r)["top1_hit"] for r in got if len(r["planted"]) == 2]),
        "top1_by_rho": by_rho,
        "lowest_rho_top1_0_9": lowest,
    }


__all__ = ["Z_ALARM", "aggregate", "rank_order", "score_cell", "spearman"]
