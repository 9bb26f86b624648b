"""Figures (matplotlib, Agg backend) and a self-contained HTML report of a run.

Every file is written atomically (temporary name, then ``os.replace``; see :mod:`cfjax.io`),
so an interrupted run never leaves a half-written figure or report behind. Images are
``[H, W, C]`` floats in [0, 1]; differences use a diverging colour map centred on 0.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cfjax.io import atomic_savefig, atomic_write_text  # noqa: E402

DIFF_CMAP = "RdBu_r"


def _img(a):
    a = np.asarray(a, np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def show(ax, img, title=None, cmap="gray", vmin=0.0, vmax=1.0):
    img = _img(img)
    ax.imshow(np.clip(img, vmin, vmax) if img.ndim == 3 else img, cmap=cmap if img.ndim == 2 else None, vmin=vmin, vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def _diff(a, b):
    """Signed difference ``a - b`` averaged over channels [H, W]."""
    return np.mean(np.asarray(a, np.float32) - np.asarray(b, np.float32), axis=-1)


def grid_figure(original, reconstruction, counterfactual, path, row_titles: Sequence[str] | None = None):
    """Rows of original | reconstruction | counterfactual | difference (cf - reconstruction).

    The difference is taken against the reconstruction: the latent attack starts there, so
    that is what it changed (the VAE's own reconstruction error is a separate matter).

    Args:
      original, reconstruction, counterfactual: ``[n, H, W, C]``.
      path: output file (``.png``).
      row_titles: optional ``n`` labels, e.g. ``"4->9"``.

    Returns:
      The written path.
    """
    n = len(original)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.3, n * 1.35), squeeze=False)
    for i in range(n):
        show(axes[i, 0], original[i], "original" if i == 0 else None)
        show(axes[i, 1], reconstruction[i], "reconstruction" if i == 0 else None)
        show(axes[i, 2], counterfactual[i], "counterfactual" if i == 0 else None)
        show(axes[i, 3], _diff(counterfactual[i], reconstruction[i]), "difference" if i == 0 else None, cmap=DIFF_CMAP, vmin=-1, vmax=1)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def progression_strip(
    trajectories,
    probs,
    path,
    row_titles: Sequence[str] | None = None,
    every: int | None = None,
    steps_taken=None,
    max_cols: int = 12,
):
    """One row per example: the recorded image every ``every`` steps, the target probability
    above it.

    Args:
      trajectories: ``[n, T, H, W, C]`` (or one ``[T, H, W, C]``), e.g.
        ``AttackResult.trajectory``.
      probs: ``[n, T]`` (or ``[T]``).
      path: output file.
      row_titles: optional labels.
      every: steps between recorded images (for the column labels).
      steps_taken: optional ``[n]``: columns after every row has stopped (frozen frames) are
        dropped, keeping one frozen frame.
      max_cols: at most this many columns (evenly subsampled, first and last kept).

    Returns:
      The written path.
    """
    trajectories = np.asarray(trajectories)
    probs = np.asarray(probs)
    if trajectories.ndim == 4:
        trajectories, probs = trajectories[None], probs[None]
    n, t = trajectories.shape[:2]
    last = t - 1
    if steps_taken is not None and every:
        last = min(t - 1, int(np.ceil(np.max(np.asarray(steps_taken)) / every)) + 1)
    cols = np.arange(last + 1)
    if len(cols) > max_cols:
        cols = np.unique(np.round(np.linspace(0, last, max_cols)).astype(int))
    fig, axes = plt.subplots(n, len(cols), figsize=(len(cols) * 0.9, n * 1.05), squeeze=False)
    for i in range(n):
        for jj, j in enumerate(cols):
            step = f"{j * every}: " if every else ""
            show(axes[i, jj], trajectories[i, j], f"{step}{probs[i, j]:.2f}")
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def _bars(ax, stats: dict, title: str, top_k: int):
    items = [(n, v) for n, v in stats.items() if v.get("count", 0) and v.get("mean") is not None and np.isfinite(v["mean"])]
    items = sorted(items, key=lambda t: -abs(t[1]["mean"]))[:top_k]
    if items:
        names = [n for n, _ in items][::-1]
        means = [v["mean"] for _, v in items][::-1]
        stds = [v["std"] for _, v in items][::-1]
        ax.barh(names, means, xerr=stds, color=["tab:red" if m < 0 else "tab:blue" for m in means], error_kw={"lw": 0.6})
        ax.axvline(0, color="k", lw=0.6)
        title = f"{title} (n={items[0][1]['count']})"
    else:
        ax.text(0.5, 0.5, "no successful counterfactuals", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)


def attribution_bars(stats: dict, path, title: str = "", top_k: int = 10, pairs: Sequence[str] | None = None):
    """Bar chart(s) of global attribution: signed mean with the std as error bars.

    Args:
      stats: either one stats dict ``{attr: {mean, mean_abs, std, count}}`` (one panel) or a
        whole :func:`cfjax.methods.attribution.global_finalize` result (a panel for ``"overall"`` and
        one per pair in ``pairs``; default: every pair present, at most 12).
      path: output file.
      title: figure title (one panel) or prefix.
      top_k: the attributes with the largest |mean| per panel.
      pairs: which ``"s->t"`` pairs to draw for a whole result.

    Returns:
      The written path.
    """
    if "overall" in stats and "pairs" in stats:
        keys = list(pairs) if pairs is not None else list(stats["pairs"])[:12]
        keys = [k for k in keys if k in stats["pairs"]]
        panels = [("overall", stats["overall"])] + [(k, stats["pairs"][k]) for k in keys]
    else:
        panels = [(title or "global attribution", stats)]
    ncol = min(len(panels), 4)
    nrow = int(np.ceil(len(panels) / ncol))
    rows = max(min(top_k, max(len(p[1]) for p in panels)), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, (0.22 * rows + 0.9) * nrow), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (name, st) in zip(axes.ravel(), panels):
        _bars(ax, st, name if len(panels) > 1 else (title or name), top_k)
    fig.supxlabel("global score: mean of s * (P_a(z_cf) - P_a(z_orig))", fontsize=8)
    if len(panels) > 1 and title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, path)


def pair_heatmap(values: np.ndarray, class_names, path, title: str, fmt="{:.2f}"):
    """K x K heat map (source rows, target columns), e.g. validity per pair (NaN: no data)."""
    v = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(np.ma.masked_invalid(v), cmap="viridis", vmin=0, vmax=1)
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


def side_by_side(original, latent, pixel, path, row_titles: Sequence[str] | None = None):
    """original | latent counterfactual | its difference | pixel counterfactual | its difference.

    ``latent``/``pixel`` are :class:`cfjax.attack.AttackResult` (batched; ``.x`` is used) or
    image arrays ``[n, H, W, C]``. The pixel attack's difference is high-frequency noise; the
    latent one is a change of shape.
    """
    lx = np.asarray(getattr(latent, "x", latent))
    px = np.asarray(getattr(pixel, "x", pixel))
    n = len(original)
    fig, axes = plt.subplots(n, 5, figsize=(5 * 1.3, n * 1.35), squeeze=False)
    for i in range(n):
        show(axes[i, 0], original[i], "original" if i == 0 else None)
        show(axes[i, 1], lx[i], "latent CF" if i == 0 else None)
        show(axes[i, 2], _diff(lx[i], original[i]), "latent diff" if i == 0 else None, cmap=DIFF_CMAP, vmin=-1, vmax=1)
        show(axes[i, 3], px[i], "pixel CF" if i == 0 else None)
        show(axes[i, 4], _diff(px[i], original[i]), "pixel diff" if i == 0 else None, cmap=DIFF_CMAP, vmin=-1, vmax=1)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    return atomic_savefig(fig, path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _table(d: dict) -> str:
    rows = [f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items() if not isinstance(v, dict)]
    return "<table>" + "".join(rows) + "</table>"


def _attr_table(stats: dict, top_k: int = 10) -> str:
    items = sorted(((n, v) for n, v in stats.items() if v.get("count")), key=lambda t: -abs(t[1]["mean"] or 0.0))[:top_k]
    head = "<tr><th>attribute</th><th>mean (signed)</th><th>mean |change|</th><th>std</th><th>count</th></tr>"
    rows = [
        f"<tr><td>{html.escape(n)}</td><td>{v['mean']:+.4f}</td><td>{v['mean_abs']:.4f}</td><td>{v['std']:.4f}</td><td>{v['count']}</td></tr>"
        for n, v in items
    ]
    return "<table>" + head + "".join(rows) + "</table>"


def _rows_table(rows: dict, label: str = "pair") -> str:
    """A table with one row per key of ``rows`` (dicts of scalars sharing keys)."""
    cols = list(dict.fromkeys(c for r in rows.values() for c, v in r.items() if not isinstance(v, dict)))
    head = f"<tr><th>{html.escape(label)}</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"
    body = [
        f"<tr><td>{html.escape(str(name))}</td>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
        for name, r in rows.items()
    ]
    return "<table>" + head + "".join(body) + "</table>"


def write_report(out_dir, summary: dict, figures: Sequence[tuple[str, str, str]], title: str = "cfjax report") -> Path:
    """Write ``out_dir/report.html``: the summary as tables, then the figures.

    The top-level scalars of ``summary`` form the first table, each dict holding scalars
    (e.g. ``baseline_pixel``, ``status_counts``, and one level inside them) a table of its own, and
    ``global_attribution`` (if present) a ranked attribute table, ``pairs`` (if present: per
    class-pair metrics) one row per pair. Figures are
    ``(title, path relative to out_dir, caption)`` shown with ``<img src=...>``; the folder
    is self-contained (move it as a whole).

    Returns:
      The report path.
    """
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
        if isinstance(v, dict) and v and not all(isinstance(x, dict) for x in v.values()):
            parts += [f"<h3>{html.escape(k)}</h3>", _table(v)]
            for kk, vv in v.items():  # one level further (e.g. baseline_pixel.status_counts)
                if isinstance(vv, dict) and vv and not any(isinstance(x, dict) for x in vv.values()):
                    parts += [f"<h4>{html.escape(k)}.{html.escape(kk)}</h4>", _table(vv)]
    ga = summary.get("global_attribution")
    if isinstance(ga, dict) and ga and all(isinstance(v, dict) for v in ga.values()):
        parts += ["<h3>global_attribution (all pairs, successful counterfactuals)</h3>", _attr_table(ga)]
    pr = summary.get("pairs")
    if isinstance(pr, dict) and pr and all(isinstance(v, dict) for v in pr.values()):
        parts += ["<h3>per class pair (source -> target)</h3>", _rows_table(pr)]
    parts.append("<h2>Figures</h2>")
    for t, rel, cap in figures:
        parts.append(f"<figure><h3>{html.escape(t)}</h3><img src='{html.escape(str(rel))}'><figcaption>{html.escape(cap)}</figcaption></figure>")
    parts.append("<p>All numbers: <a href='summary.json'>summary.json</a></p></body></html>")
    return atomic_write_text(out_dir / "report.html", "\n".join(parts))
