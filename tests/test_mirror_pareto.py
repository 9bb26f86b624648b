"""experiments/mirror_pareto.py (the issue-25 ablation table and Pareto plot) and
mirror_ablation.py's argument checks (no training)."""

import itertools
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import mirror_pareto  # noqa: E402

from cfjax.errors import InputError  # noqa: E402


def _front_by_brute_force(pts):
    """On the front iff no point is at least as good on both axes and strictly better on one."""
    out = []
    for i, (g, o) in enumerate(pts):
        out.append(all(not (g2 <= g and o2 >= o and (g2, o2) != (g, o)) for j, (g2, o2) in enumerate(pts) if j != i))
    return out


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        pts = [tuple(map(float, p)) for p in rng.uniform(size=(n, 2)).round(1)]  # ties on purpose
        assert mirror_pareto.pareto_front(pts) == _front_by_brute_force(pts)
    assert mirror_pareto.pareto_front([(0.1, 0.5), (0.2, 0.9), (0.3, 0.4), (0.1, 0.2)]) == [True, True, False, False]


def _row(data, gap, oracle, name_opts):
    return {"data": data, "validity": 0.9, "denoised_validity": 0.3, "oracle_validity": oracle, "oracle_validity_k1": 0.5,
            "l1": 0.1, "lpips_alex": 0.2, "target_prob_gap_at_cf": gap, "target_prob_gap_signed_at_cf": -gap,
            "target_prob_gap_mean": gap / 2, "feature_l1_at_cf": 60.0, "feature_l1_rel_at_cf": 0.2, "first_cf_k_mean": 0.6,
            "command": f"python experiments/mirror_ablation.py --data {data} {name_opts}"}


def test_table_plot_and_points(tmp_path):
    rows = {"row_mnist5k_paper_3k": _row("mnist5k", 0.36, 0.06, "--preset paper"),
            "row_mnist5k_robust_3k": _row("mnist5k", 0.14, 0.35, "--preset robust"),
            "row_mnist5k_bad_3k": _row("mnist5k", 0.40, 0.01, "--set x=1"),
            "row_fashion_mnist_paper_3k": _row("fashion_mnist", 0.29, 0.09, "--preset paper")}
    for k, v in rows.items():
        (tmp_path / f"{k}.json").write_text(json.dumps(v))
    (tmp_path / "hist").mkdir()
    (tmp_path / "hist" / "old.json").write_text(json.dumps({**_row("mnist5k", 0.2, 0.7, ""), "lpips_alex": None}))
    (tmp_path / "hist" / "not_a_row.json").write_text(json.dumps({"x": 1}))
    res = mirror_pareto.main(["--rows", str(tmp_path / "row_*.json"), "--history", str(tmp_path / "hist" / "*.json"), "--out", str(tmp_path / "out" / "p")])
    md = (tmp_path / "out" / "p.md").read_text()
    assert "### mnist5k" in md and "### fashion_mnist" in md and "--preset robust" in md
    line = [ln for ln in md.splitlines() if ln.startswith("| mnist5k_robust_3k |")][0]
    assert "| 0.140 | -0.140 |" in line and "60.0 (0.20)" in line
    assert (tmp_path / "out" / "p.png").stat().st_size > 10_000
    pts = {(p["name"], p["kind"]): p for p in res["points"]}
    assert len(pts) == 5  # 4 rows + 1 history row (the file without validity is skipped)
    assert pts[("mnist5k_robust_3k", "rows")]["front"] and pts[("old", "history")]["front"]
    assert not pts[("mnist5k_paper_3k", "rows")]["front"] and not pts[("mnist5k_bad_3k", "rows")]["front"]
    assert pts[("fashion_mnist_paper_3k", "rows")]["front"]  # alone in its dataset
    assert json.loads((tmp_path / "out" / "p.json").read_text())["points"]
    with pytest.raises(InputError, match="--rows"):
        mirror_pareto.main(["--rows", str(tmp_path / "nothing_*.json"), "--out", str(tmp_path / "x")])


def test_mirror_ablation_refuses_bad_options_before_training(tmp_path):
    import mirror_ablation

    for argv, msg in [(["--cf-threshold", "1.5"], "cf_threshold"), (["--set", "ema_decay=2"], "ema_decay"),
                      (["--set", "no_such_field=1"], "no_such_field")]:
        with pytest.raises(InputError, match=msg):
            mirror_ablation.main(["--out", str(tmp_path / "o"), *argv])
    assert not (tmp_path / "o").exists()
