"""Figures of the planted-cue benchmark: top-1 hit rate against rho per explainer, and one
counterfactual strip per cue kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cfjax.data.planted import CUE_KINDS, CUE_ORDER
from cfjax.io import atomic_savefig

SHOWN = ("attack", "pixel_attack", "saliency", "data_correlation", "random")


def hit_rate_figure(summary: dict, path: Path) -> Path:
    """Top-1 hit rate (Wilson 95% bars) against rho, one line per explainer and attack read-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    series = [(e, summary["explainers"][e]) for e in SHOWN] + [(f"attack:{r}", v) for r, v in summary["readouts"].items()]
    for i, (name, e) in enumerate(series):
        pts = [(float(r), v) for r, v in e["top1_by_rho"].items() if v["value"] is not None]
        if not pts:
            continue
        x = np.array([p[0] for p in pts]) + (i - len(series) / 2) * 0.002
        y = np.array([p[1]["value"] for p in pts])
        err = np.array([[p[1]["value"] - p[1]["ci"][0], p[1]["ci"][1] - p[1]["value"]] for p in pts]).T
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name, ls="--" if ":" in name else "-")
    ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    ax.set_xticks(sorted({float(r) for _, e in series for r in e["top1_by_rho"]}) or [1.0])
    ax.set_xlabel("rho (share of training images whose cue agrees with the label)")
    ax.set_ylabel("top-1 hit rate (reliant models, one- and two-cue cells)")
    ax.set_ylim(-0.05, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    else:
        ax.text(0.5, 0.5, "no reliant model at rho > 0.5: no top-1 rate", ha="center", transform=ax.transAxes)
    ax.set_title(f"{summary['data']} {summary['pair'][0]}->{summary['pair'][1]}: is the most-relied-on cue ranked first?", fontsize=9)
    return atomic_savefig(fig, path)


def strip_figure(out: Path, rows: list[dict], path: Path) -> Path | None:
    """One strip per cue kind, from its highest-rho single-cue cell: a source image with the cue
    off, the same image with the cue switched on (the intervention), its VAE reconstruction, the
    latent counterfactual, their difference, and the pixel counterfactual."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = []
    for c in CUE_ORDER:
        cand = [r for r in rows if r["planted"] == [c]]
        if cand:
            picks.append((c, max(cand, key=lambda r: (r["rho"], -r["seed"]))))
    if not picks:
        return None
    cols = ("cue off", "cue switched on", "VAE reconstruction", "latent CF", "CF - recon", "pixel CF")
    fig, axes = plt.subplots(len(picks), len(cols), figsize=(1.6 * len(cols), 1.75 * len(picks)), squeeze=False)
    for i, (c, r) in enumerate(picks):
        p = np.load(out / "cells" / f"{r['key']}.npz")
        j = CUE_ORDER.index(c)
        m = len(p["switched"])
        off = np.flatnonzero(~p["on"][:m, j].astype(bool) & p["ok"][:m].astype(bool))
        on = p["on"].astype(bool)
        k = int(off[np.argmin(on[off].sum(1))]) if len(off) else 0  # the cleanest: fewest other cues on
        sw = p["switched"][k, j]
        imgs = (p["x"][k], sw, p["x_rec"][k], p["x_cf"][k], p["x_cf"][k] - p["x_rec"][k], p["x_px"][k])
        for a, (t, im) in enumerate(zip(cols, imgs)):
            ax = axes[i, a]
            diff = a == 4
            ax.imshow(im[..., 0], cmap="RdBu_r" if diff else "gray", vmin=-0.5 if diff else 0, vmax=0.5 if diff else 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(t, fontsize=7)
        rel = r["reliance"]["cues"][c]["delta_p"]
        axes[i, 0].set_ylabel(f"{c}\n({CUE_KINDS[c]})\nrho {r['rho']:g}, dp {rel:+.2f}", fontsize=7)
    fig.suptitle("One strip per cue kind (source -> target); dp: reliance on the cue", fontsize=8)
    return atomic_savefig(fig, path)
