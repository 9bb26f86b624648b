"""Mirror-CFE ablation: the table of rows and the Pareto front of faithfulness against oracle
validity (issue 25 item 4).

    python experiments/mirror_pareto.py --rows 'experiments/results/mirror_presets/row_*.json' \
        --history 'experiments/results/mirror_ablation/rows/*.json' --out experiments/results/mirror_presets/pareto

Reads ``row.json`` files of ``experiments/mirror_ablation.py`` and writes:

* ``<out>.md``: one table per dataset, one row per ``--rows`` file (validity, D.Val, oracle
  validity at the first counterfactual and at k = 1, L1, LPIPS(AlexNet), |gap| and signed gap at
  the first counterfactual, feature L1 at it (relative to ||z_k||_1), first-CF k) with the
  command that made it;
* ``<out>.png``: |p_t(F(G(z_k))) - p_t(z_k)| at the first counterfactual (x, lower is more
  faithful) against oracle validity (y, higher reads more as the target class) for every row,
  ``--rows`` as filled markers, ``--history`` (earlier rounds, gap at the *grid* counterfactual,
  other oracles) as hollow ones, one colour per dataset, each dataset's Pareto front as a line;
* ``<out>.json``: the points and which are on the front.

A point is on the front when no other point of its dataset has both a lower-or-equal gap and
a higher-or-equal oracle validity (one of them strictly).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = [  # (header, key, digits)
    ("validity", "validity", 3), ("D.Val", "denoised_validity", 3), ("oracle", "oracle_validity", 3),
    ("oracle k=1", "oracle_validity_k1", 3), ("L1", "l1", 3), ("LPIPS", "lpips_alex", 3),
    ("abs gap at CF", "target_prob_gap_at_cf", 3), ("signed gap at CF", "target_prob_gap_signed_at_cf", 3),
    ("abs gap, path mean", "target_prob_gap_mean", 3), ("feature L1 at CF (rel)", None, 1), ("first-CF k", "first_cf_k_mean", 3),
    ("p_t(decoded) at CF", "target_prob_decoded_at_cf", 3),
]


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v, nd=3):
    v = _num(v)
    return "–" if v is None else f"{v:.{nd}f}"


def load_rows(patterns: list[str]) -> list[dict]:
    """Every ``row.json``-shaped file matched by ``patterns`` (sorted, deduplicated), with its
    path under ``_path``; files without ``validity`` are skipped."""
    out, seen = [], set()
    for pat in patterns:
        for f in sorted(glob.glob(pat)):
            if f in seen:
                continue
            seen.add(f)
            d = json.loads(Path(f).read_text())
            if isinstance(d, dict) and "validity" in d:
                out.append({**d, "_path": f})
    return out


def row_name(r: dict) -> str:
    return Path(r["_path"]).stem.removeprefix("row_")


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """``points`` = (gap, oracle); True where no other point is at least as good on both axes and
    better on one (lower gap, higher oracle)."""
    on = []
    for i, (g, o) in enumerate(points):
        dominated = any((g2 <= g and o2 >= o and (g2 < g or o2 > o)) for j, (g2, o2) in enumerate(points) if j != i)
        on.append(not dominated)
    return on


def _order(r: dict) -> tuple:
    """paper, the single changes on top of it, robust, then seeds and other first-CF rules."""
    n = row_name(r)
    rank = 0 if "_paper" in n else 2 if "_robust" in n else 1
    return (r.get("cf_threshold") is not None, "_s1" in n, rank, n)


def table(rows: list[dict]) -> str:
    rows = sorted(rows, key=_order)
    lines = []
    for data in sorted({r.get("data", "?") for r in rows}):
        lines += [f"### {data}", "", "| row | first CF rule | " + " | ".join(h for h, *_ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
        for r in (r for r in rows if r.get("data", "?") == data):
            cells = []
            for _h, key, nd in COLUMNS:
                if key is None:
                    a, rel = _num(r.get("feature_l1_at_cf")), _num(r.get("feature_l1_rel_at_cf"))
                    cells.append("–" if a is None else f"{a:.1f} ({rel:.2f})")
                else:
                    cells.append(_fmt(r.get(key), nd))
            rule = "argmax (paper)" if r.get("cf_threshold") is None else f"p_t >= {r['cf_threshold']}"
            lines.append(f"| {row_name(r)} | {rule} | " + " | ".join(cells) + " |")
        lines += ["", "Commands:", ""]
        lines += [f"- `{row_name(r)}`: `{r.get('command', '?')}`" for r in rows if r.get("data", "?") == data]
        lines.append("")
    return "\n".join(lines)


def points(rows: list[dict], kind: str) -> list[dict]:
    out = []
    for r in rows:
        g, o = _num(r.get("target_prob_gap_at_cf")), _num(r.get("oracle_validity"))
        if g is not None and o is not None:
            out.append({"name": row_name(r), "data": r.get("data", "?"), "gap": g, "oracle": o, "kind": kind, "cf_threshold": r.get("cf_threshold"),
                        "validity": _num(r.get("validity")), "path": r["_path"]})
    return out


def plot(pts: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"mnist5k": "tab:blue", "fashion_mnist": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for data in sorted({p["data"] for p in pts}):
        c = colours.get(data, "tab:gray")
        mine = [p for p in pts if p["data"] == data]
        hist = [p for p in mine if p["kind"] == "history"]
        new = [p for p in mine if p["kind"] == "rows"]
        ax.scatter([p["gap"] for p in hist], [p["oracle"] for p in hist], facecolors="none", edgecolors=c, s=22, alpha=0.6,
                   label=f"{data}: earlier rounds (gap at the grid CF)")
        arg = [p for p in new if not p.get("cf_threshold")]
        thr = [p for p in new if p.get("cf_threshold")]
        ax.scatter([p["gap"] for p in arg], [p["oracle"] for p in arg], color=c, s=46, edgecolors="k", linewidths=0.6,
                   label=f"{data}: this ablation (located CF, argmax rule)")
        if thr:
            ax.scatter([p["gap"] for p in thr], [p["oracle"] for p in thr], color=c, marker="D", s=40, edgecolors="k", linewidths=0.6,
                       label=f"{data}: same decoders, first CF at p_t >= threshold")
        offsets = [(4, 3), (4, -9), (4, 9), (4, -15)]
        for i, p in enumerate(sorted(new, key=lambda p: (p["gap"], p["oracle"]))):
            short = p["name"].removeprefix(f"{data}_").removesuffix("_3k")
            ax.annotate(short, (p["gap"], p["oracle"]), fontsize=6.5, xytext=offsets[i % len(offsets)], textcoords="offset points")
        front = sorted((p for p in mine if p["front"]), key=lambda p: p["gap"])
        ax.plot([p["gap"] for p in front], [p["oracle"] for p in front], color=c, lw=1.2, ls="--")
    ax.axvline(0.15, color="gray", lw=0.8, ls=":")
    ax.text(0.152, 0.02, "|gap| target 0.15", fontsize=7, color="gray")
    ax.set_xlabel("|p_t(F(G(z_k))) - p_t(z_k)| at the first counterfactual (lower = decoded image follows the path)")
    ax.set_ylabel("oracle validity at the first counterfactual")
    ax.set_title("Mirror-CFE decoders: faithfulness vs realism (dashed: Pareto front per dataset)", fontsize=9)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    from cfjax.io import atomic_savefig

    atomic_savefig(fig, path, dpi=130)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", required=True, help="glob(s) of this ablation's row.json files")
    p.add_argument("--history", nargs="*", default=[], help="glob(s) of earlier rows (hollow markers, not in the table)")
    p.add_argument("--out", required=True, help="output stem: writes OUT.md, OUT.png, OUT.json")
    a = p.parse_args(argv)
    rows = load_rows(a.rows)
    if not rows:
        from cfjax.errors import bad_arg

        raise bad_arg("--rows", a.rows, "glob(s) matching at least one row.json of experiments/mirror_ablation.py")
    hist = [r for r in load_rows(a.history) if r["_path"] not in {x["_path"] for x in rows}]
    pts = points(rows, "rows") + points(hist, "history")
    for data in {p["data"] for p in pts}:
        mine = [p for p in pts if p["data"] == data]
        for p_, on in zip(mine, pareto_front([(p["gap"], p["oracle"]) for p in mine])):
            p_["front"] = on
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from cfjax.io import atomic_write_json, atomic_write_text

    atomic_write_text(out.with_suffix(".md"), table(rows))
    plot(pts, out.with_suffix(".png"))
    res = {"command": "python experiments/mirror_pareto.py " + " ".join(sys.argv[1:] if argv is None else argv), "points": pts}
    atomic_write_json(out.with_suffix(".json"), res)
    print(f"wrote {out}.md/.png/.json: {len(rows)} rows, {len(hist)} earlier rows")
    return res


if __name__ == "__main__":
    main()
