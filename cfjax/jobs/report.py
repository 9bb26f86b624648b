"""Figures (matplotlib, Agg backend) and a self-contained HTML report of a run.

Every file is written atomically (temporary name, then ``os.replace``; see :mod:`cfjax.io`),
so an interrupted run never leaves a half-written figure or report behind. Images are
``[H, W, C]`` floats in [0, 1]; differences use a diverging colour map centred on 0.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

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


def fmt_number(v) -> str:
    """A number for reading: 3 significant digits (``0.97362 -> "0.974"``, ``1399.3 -> "1,400"``,
    ``1.2e-05 -> "1.20e-05"``); ints, bools and text unchanged. Exact values stay in
    ``summary.json``."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "n/a" if np.isnan(v) else str(v)
        if v == 0.0:
            return "0"
        r = float(f"{v:.3g}")
        if abs(r) >= 1000:
            return f"{r:,.0f}"
        if abs(r) < 1e-3:
            return f"{v:.2e}"
        return f"{r:.{max(0, 2 - int(np.floor(np.log10(abs(r)))))}f}"
    return str(v)


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return fmt_number(v)


def _table(d: dict) -> str:
    rows = [f"<tr><th scope='row'>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in d.items() if not isinstance(v, dict)]
    return "<div class='scroll'><table>" + "".join(rows) + "</table></div>"


def _attr_table(stats: dict, top_k: int = 10) -> str:
    items = sorted(((n, v) for n, v in stats.items() if v.get("count")), key=lambda t: -abs(t[1]["mean"] or 0.0))[:top_k]
    head = "<tr><th scope='col'>attribute</th><th scope='col'>mean (signed)</th><th scope='col'>mean |change|</th><th scope='col'>std</th><th scope='col'>count</th></tr>"
    rows = [
        f"<tr><td>{html.escape(n)}</td><td>{html.escape(fmt_number(v['mean']))}</td><td>{html.escape(fmt_number(v['mean_abs']))}</td>"
        f"<td>{html.escape(fmt_number(v['std']))}</td><td>{v['count']}</td></tr>"
        for n, v in items
    ]
    return "<table>" + head + "".join(rows) + "</table>"


def _sort_key(v):
    """Missing values last whatever the direction of the sort."""
    return (v is None or (isinstance(v, float) and not np.isfinite(v)), v if isinstance(v, (int, float)) else 0.0)


def _rows_table(rows: dict, label: str = "pair", sort_by: str | None = None, table_id: str = "pairs-table") -> str:
    """One row per key of ``rows`` (dicts of scalars sharing keys), sorted ascending by ``sort_by``
    (worst first for a rate such as validity); every column sorts on a click (inline script)."""
    cols = list(dict.fromkeys(c for r in rows.values() for c, v in r.items() if not isinstance(v, dict)))
    items = list(rows.items())
    if sort_by in cols:
        items.sort(key=lambda kv: _sort_key(kv[1].get(sort_by)))
    head = f"<tr><th scope='col'>{html.escape(label)}</th>" + "".join(f"<th scope='col'>{html.escape(c)}</th>" for c in cols) + "</tr>"

    def cell(v):
        num = v if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else ""
        return f"<td data-v='{num}'>{html.escape(_fmt(v))}</td>"

    body = [f"<tr><td>{html.escape(str(name))}</td>" + "".join(cell(r.get(c)) for c in cols) + "</tr>" for name, r in items]
    return (f"<div class='scroll'><table id='{table_id}' class='sortable'><thead>{head}</thead><tbody>" + "".join(body)
            + "</tbody></table></div>")


_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.title = 'click to sort'; th.style.cursor = 'pointer';
    th.addEventListener('click', function () {
      var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
      var rows = Array.prototype.slice.call(t.tBodies[0].rows);
      rows.sort(function (a, b) {
        var x = a.cells[i], y = b.cells[i];
        var u = x.dataset.v, v = y.dataset.v;
        if (u !== undefined && v !== undefined && u !== '' && v !== '') return (asc ? 1 : -1) * (parseFloat(u) - parseFloat(v));
        if (u === '' && v !== '') return 1; if (v === '' && u !== '') return -1;
        return (asc ? 1 : -1) * x.textContent.localeCompare(y.textContent);
      });
      rows.forEach(function (r) { t.tBodies[0].appendChild(r); });
    });
  });
});
"""

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
    "h1{font-size:22px;margin:.3em 0}h2{font-size:18px;margin:1.2em 0 .4em}"
    "#headline{display:flex;flex-wrap:wrap;gap:6px;margin:.5em 0 1em}"
    "#headline>div{border:1px solid #ccd;border-radius:6px;padding:4px 10px;background:#f6f7fb;min-width:7em}"
    "#headline .label{font-size:11px;color:#556}#headline .value{font-size:17px;font-weight:600}"
    "table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}"
    "th{background:#f0f0f4}img{max-width:100%;height:auto}figure{margin:1em 0 1.6em}"
    ".scroll{overflow-x:auto;max-width:100%}td{overflow-wrap:anywhere;max-width:40em}figcaption{font-size:13px;color:#333;max-width:900px}details{margin:1.5em 0}summary{cursor:pointer;font-weight:600}"
)


def embed_png(path) -> str:
    """A ``data:image/png;base64,...`` URI of ``path`` (the report stays one self-contained file)."""
    import base64

    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _figure_html(out_dir: Path, fig) -> str:
    t, rel, cap = fig[:3]
    alt = fig[3] if len(fig) > 3 and fig[3] else f"{t}: {cap}"
    path = out_dir / rel
    if not path.is_file():
        return f"<figure><figcaption><b>{html.escape(t)}</b>: figure file {html.escape(str(rel))} is missing</figcaption></figure>"
    return (f"<figure><img src='{embed_png(path)}' alt='{html.escape(alt, quote=True)}' data-file='{html.escape(str(rel), quote=True)}'>"
            f"<figcaption><b>{html.escape(t)}.</b> {html.escape(cap)}</figcaption></figure>")


def write_report(
    out_dir,
    summary: dict,
    figures: Sequence[tuple],
    title: str = "cfjax report",
    *,
    headline: Sequence[tuple[str, Any]] | None = None,
    pairs_sort: str | None = "validity",
) -> Path:
    """Write ``out_dir/report.html``, one self-contained file ordered for a reader.

    1. ``headline``: ``(label, value)`` boxes (method, data, classifier, n, validity, ...); values
       are rounded to 3 significant digits (:func:`fmt_number`; exact values in ``summary.json``).
    2. the figures, embedded as PNG data URIs (the files stay on disk too), each with its caption
       and alt text: ``(title, path relative to out_dir, caption[, alt])``; the alt text defaults
       to ``"title: caption"``.
    3. ``global_attribution`` (if present) as a ranked attribute table, then ``pairs`` (if
       present) one row per class pair sorted by ``pairs_sort`` ascending (worst pairs first;
       every column sorts on a click; the sorting script is inline).
    4. run details, collapsed (``<details>``): every top-level scalar of ``summary`` and each dict
       of scalars (configuration, timings, environment).

    No external resource is referenced (no scripts, styles, fonts or images from elsewhere), so
    ``report.html`` alone shows everything offline.

    Returns:
      The report path.
    """
    out_dir = Path(out_dir)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if headline:
        boxes = [f"<div><div class='label'>{html.escape(str(k))}</div><div class='value'>{html.escape(_fmt(v))}</div></div>"
                 for k, v in headline if v is not None]
        parts.append("<section id='headline' aria-label='headline'>" + "".join(boxes) + "</section>")
    if figures:
        parts.append("<section id='figures'><h2>Figures</h2>" + "".join(_figure_html(out_dir, f) for f in figures) + "</section>")
    ga = summary.get("global_attribution")
    if isinstance(ga, dict) and ga and all(isinstance(v, dict) for v in ga.values()):
        parts += ["<section id='attribution'><h2>Global attribution (all pairs, successful counterfactuals)</h2>", _attr_table(ga), "</section>"]
    pr = summary.get("pairs")
    if isinstance(pr, dict) and pr and all(isinstance(v, dict) for v in pr.values()):
        order = f"sorted by {pairs_sort}, lowest first; " if pairs_sort else ""
        parts += ["<section id='pairs'><h2>Per class pair (source -> target)</h2>",
                  f"<p>{len(pr)} pairs, {html.escape(order)}click a column header to sort.</p>", _rows_table(pr, sort_by=pairs_sort), "</section>"]
    parts += ["<details id='details'><summary>Run details: configuration, timings, environment</summary>", _table(summary)]
    for k, v in summary.items():
        if k in ("pairs", "global_attribution"):
            continue
        if isinstance(v, dict) and v and not all(isinstance(x, dict) for x in v.values()):
            parts += [f"<h3>{html.escape(k)}</h3>", _table(v)]
            for kk, vv in v.items():  # one level further (e.g. baseline_pixel.status_counts)
                if isinstance(vv, dict) and vv and not any(isinstance(x, dict) for x in vv.values()):
                    parts += [f"<h4>{html.escape(k)}.{html.escape(kk)}</h4>", _table(vv)]
    parts.append("<p>Exact values of every number: <code>summary.json</code> next to this file.</p></details>")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return atomic_write_text(out_dir / "report.html", "\n".join(parts))
