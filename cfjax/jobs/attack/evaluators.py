"""The Counterfactual Attacks job's metrics (sums only): :func:`attack_evaluators`, the global
attribution sums with their own merge, and :func:`attack_chunk` (one chunk's rows and sums)."""

from __future__ import annotations

import jax.numpy as jnp

from cfjax.eval import evaluators as E
from cfjax.jobs.attack.rows import AttackFns, attack_rows
from cfjax.methods import attribution as attr
from cfjax.methods.attack import STATUS_NAMES


def attack_chunk(fns: AttackFns, x, source, target, mask, *, num_classes: int, **kw) -> tuple[dict, dict]:
    """:func:`attack_rows` followed by the job's evaluators on this one chunk:
    ``(rows, states)`` (the states are the chunk's sums; see :func:`attack_evaluators`)."""
    rows = attack_rows(fns, x, source, target, mask, **kw)
    evs = attack_evaluators(num_classes, [str(i) for i in range(num_classes)], fns.predictor.names,
                            latent=True, descriptors=kw.get("descriptors") is not None)
    return rows, E.update_states(evs, E.init_states(evs), rows)


def _attribution(name: str, key: str, num_classes: int, names, class_names, out: str) -> E.Evaluator:
    """Global attribution sums (:class:`cfjax.methods.attribution.GlobalSums`) of ``rows[key]``
    over successful counterfactuals (sign +1: a multiclass counterfactual raises the target)."""

    def init():
        return attr.global_init(num_classes, len(names))

    def update(s, rows):
        return attr.global_update(attr.GlobalSums(*s), rows[key], rows["source"], rows["target"], jnp.ones_like(rows["ok"]), rows["ok"] > 0)

    def finalize(s):
        return {out: attr.global_finalize(attr.GlobalSums(*s), names, class_names)}

    def merge(a, b):
        return attr.global_merge(attr.GlobalSums(*a), attr.GlobalSums(*b))

    return E.custom(name, init, update, finalize, merge)


def attack_evaluators(num_classes: int, class_names, attribute_names=(), *, latent: bool = True, descriptors: bool = True,
                      lpips_alex: bool = False) -> list:
    """The attack job's metrics (sums only). ``latent=False``: the pixel baseline's subset;
    ``lpips_alex``: the rows carry ``lpips_alex``."""
    means = {"validity": ("ok", "w"), "mean_steps": ("steps", "ok"), "mean_steps_all": ("steps", "w"), "l1": ("l1", "ok"),
             "l2": ("l2", "ok"), "target_prob_mean": ("target_prob", "w"), "denoised_validity": ("dval", "ok")}
    if latent:
        means.update(latent_l2=("latent_l2", "ok"), l1_vs_reconstruction=("l1_recon", "ok"))
    if lpips_alex:
        means["lpips_alex"] = ("lpips_alex", "ok")
    evs = [
        E.counts("counts", {"n_counterfactuals": "w", "n_start_past_threshold": "start_past"}),
        E.weighted_means("means", means, complements={"fail_rate": "validity"}),
        E.categorical("status", "status", "w", [STATUS_NAMES[i] for i in range(len(STATUS_NAMES))], "status_counts"),
        E.pair_table("pairs", num_classes, class_names, count="w", rates={"validity": "ok"},
                     means={"mean_steps": ("steps", "ok"), "l1": ("l1", "ok"), "l2": ("l2", "ok"), "denoised_validity": ("dval", "ok")}),
    ]
    if latent:
        evs.append(_attribution("attr", "scores", num_classes, attribute_names, class_names, "global_attribution_full"))
        if descriptors:
            evs.append(_attribution("desc", "desc_change", num_classes, attribute_names, class_names, "descriptor_change_full"))
    return evs


__all__ = ["attack_chunk", "attack_evaluators"]
