"""Figures (matplotlib, Agg) and a self-contained HTML report of a run."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfjax.io import atomic_savefig, atomic_write_text  # noqa: E402


def _show(ax, img, title=None, cmap="gray", vmin=0.0, vmax=1.0):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def grid_figure(original, reconstruction, counterfactual, path, row_titles: Sequence[str] | None = None):
    """Rows of original | reconstruction | counterfactual | difference (cf - reconstruction)."""
    n = len(original)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.3, n * 1.35), squeeze=False)
    for i in range(n):
        diff = np.mean(np.asarray(counterfactual[i]) - np.asarray(reconstruction[i]), axis=-1)
        _show(axes[i, 0], original[i], "original" if i == 0 else None)
        _show(axes[i, 1], reconstruction[i], "reconstruction" if i == 0 else None)
        _show(axes[i, 2], counterfactual[i], "counterfactual" if i == 0 else None)
        _show(axes[i, 3], diff, "difference" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def progression_strip(trajectories, probs, path, row_titles: Sequence[str] | None = None, every: int | None = None):
    """One row per example: the image every k steps with the target probability above it."""
    trajectories = np.asarray(trajectories)
    probs = np.asarray(probs)
    if trajectories.ndim == 4:
        trajectories, probs = trajectories[None], probs[None]
    n, t = trajectories.shape[:2]
    fig, axes = plt.subplots(n, t, figsize=(t * 0.9, n * 1.05), squeeze=False)
    for i in range(n):
        for j in range(t):
            step = f"{j * every}: " if every else ""
            _show(axes[i, j], trajectories[i, j], f"{step}{probs[i, j]:.2f}")
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def attribution_bars(stats: dict, path, title: str = "", top_k: int = 10):
    """Horizontal bars of the signed global score (mean) with the std as error bars."""
    items = sorted(((n, v) for n, v in stats.items() if v.get("count", 0)), key=lambda t: -abs(t[1]["mean"]))[:top_k]
    fig, ax = plt.subplots(figsize=(4.5, 0.3 * max(len(items), 1) + 0.8))
    if items:
        names = [n for n, _ in items][::-1]
        means = [v["mean"] for _, v in items][::-1]
        stds = [v["std"] for _, v in items][::-1]
        ax.barh(names, means, xerr=stds, color=["tab:red" if m < 0 else "tab:blue" for m in means], error_kw={"lw": 0.6})
        ax.axvline(0, color="k", lw=0.6)
        n = items[0][1]["count"]
        ax.set_title(f"{title} (n={n})", fontsize=9)
    ax.set_xlabel("global score  (P_a(z_cf) - P_a(z_orig), signed)", fontsize=8)
    ax.tick_params(labelsize=7)
    return atomic_savefig(fig, path)


def pair_heatmap(values: np.ndarray, class_names, path, title: str, fmt="{:.2f}"):
    """K x K heat map (source rows, target columns), e.g. validity per pair."""
    v = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(v, cmap="viridis")
    k = len(class_names)
    ax.set_xticks(range(k), class_names, fontsize=6, rotation=90)
    ax.set_yticks(range(k), class_names, fontsize=6)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    for i in range(k):
        for j in range(k):
            if np.isfinite(v[i, j]):
                ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=5, color="w")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return atomic_savefig(fig, path)


def side_by_side(original, latent_cf, pixel_cf, path, row_titles: Sequence[str] | None = None):
    """original | latent counterfactual | pixel counterfactual | their differences."""
    n = len(original)
    fig, axes = plt.subplots(n, 5, figsize=(5 * 1.3, n * 1.35), squeeze=False)
    for i in range(n):
        _show(axes[i, 0], original[i], "original" if i == 0 else None)
        _show(axes[i, 1], latent_cf[i], "latent CF" if i == 0 else None)
        _show(axes[i, 2], np.mean(np.asarray(latent_cf[i]) - np.asarray(original[i]), -1), "latent diff" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
        _show(axes[i, 3], pixel_cf[i], "pixel CF" if i == 0 else None)
        _show(axes[i, 4], np.mean(np.asarray(pixel_cf[i]) - np.asarray(original[i]), -1), "pixel diff" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def _table(d: dict) -> str:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(out_dir, summary: dict, figures: Sequence[tuple[str, str, str]], title: str = "cfjax report") -> Path:
    """A self-contained ``report.html``: the summary's scalar fields as tables (top level and
    one level of nested dicts such as ``baseline_pixel``), then each (title, relative path,
    caption) figure."""
    out_dir = Path(out_dir)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}img{max-width:100%}"
        "figure{margin:1.5em 0}figcaption{font-size:13px;color:#444}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _table(summary),
    ]
    for k, v in summary.items():
        if isinstance(v, dict) and v and not any(isinstance(x, dict) for x in v.values()):
            parts += [f"<h3>{html.escape(k)}</h3>", _table(v)]
    parts.append("<h2>Figures</h2>")
    for t, rel, cap in figures:
        parts.append(f"<figure><h3>{html.escape(t)}</h3><img src='{html.escape(rel)}'><figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("<p>Full numbers: <a href='summary.json'>summary.json</a></p></body></html>")
    return atomic_write_text(out_dir / "report.html", "\n".join(parts))
