"""Every cfjax number in the README's Mirror-CFE table equals its committed summary JSON (rounded
as shown), and every interval shown is the summary's own ``<key>_ci`` or, for summaries written
before those existed, the Wilson interval of the recorded rate and row count."""

import json
import re
from pathlib import Path

import pytest

from cfjax.eval.intervals import wilson

ROOT = Path(__file__).resolve().parent.parent
ROWS = {("paper", "mnist5k"): "mirror_mnist_paper", ("robust", "mnist5k"): "mirror_mnist_robust",
        ("paper", "Fashion-MNIST"): "mirror_fashion_paper", ("robust", "Fashion-MNIST"): "mirror_fashion_robust"}
NUM = r"(-?\d+\.\d+)"
WITH_CI = re.compile(NUM + r" \[" + NUM + ", " + NUM + r"\]")


def _table_rows():
    out = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| \*\*cfjax, preset `(\w+)`\*\*[^|]*\| ([\w-]+) \|", line)
        if m:
            out[(m.group(1), m.group(2))] = [c.strip() for c in line.split("|")[1:-1]]
    return out


def _check_rate(cell: str, s: dict, key: str, n_key: str):
    m = WITH_CI.fullmatch(cell.strip())
    assert m, (key, cell)
    v, lo, hi = map(float, m.groups())
    assert v == pytest.approx(round(s[key], 3), abs=1e-9), (key, v, s[key])
    ci = s.get(f"{key}_ci") or wilson(int(round(s[key] * s[n_key])), s[n_key])
    assert (lo, hi) == pytest.approx((round(ci[0], 3), round(ci[1], 3)), abs=1e-9), (key, (lo, hi), ci)


def test_readme_mirror_table_equals_the_summaries():
    rows = _table_rows()
    assert set(rows) == set(ROWS), set(rows) ^ set(ROWS)
    for key, name in ROWS.items():
        s = json.loads((ROOT / "experiments" / "results" / f"{name}_summary.json").read_text())
        c = rows[key]
        l1, l1pm = (float(v) for v in c[2].split("/"))
        assert (l1, l1pm) == (round(s["l1"], 3), round(s["l1_pm1"], 3)), (name, c[2])
        assert float(c[3]) == round(s["lpips_alex"], 3), (name, c[3])
        _check_rate(c[4], s, "denoised_validity", "n_found")
        _check_rate(c[5], s, "validity", "n_counterfactuals")
        first, k1 = re.fullmatch(r"(.+) \(k=1: (.+)\)", c[6]).groups()
        _check_rate(first, s, "oracle_validity", "n_counterfactuals")
        _check_rate(k1, s, "oracle_validity_k1", "n_counterfactuals")
        gap, signed = re.fullmatch(r"\**" + NUM + r" \(" + NUM + r"\)\**", c[7]).groups()
        fa = s["faithfulness"]
        assert (float(gap), float(signed)) == (round(fa["target_prob_gap_at_cf"], 3), round(fa["target_prob_gap_signed_at_cf"], 3)), (name, c[7])
        assert float(c[8]) == round(s["first_cf_k_mean"], 3), (name, c[8])


def _value_ci(cell: str, v: float, ci) -> None:
    m = WITH_CI.match(cell.strip())
    assert m, cell
    got = tuple(map(float, m.groups()))
    assert got == pytest.approx((round(v, 3), round(ci[0], 3), round(ci[1], 3)), abs=1e-9), (cell, v, ci)


def test_readme_reference_model_table_equals_the_summaries():
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| \*\*cfjax `(\w+)`, reference models\*\* \|", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in line.split("|")[1:-1]]
    assert set(rows) == {"paper", "robust"}
    for preset, c in rows.items():
        s = json.loads((ROOT / "experiments" / "results" / f"mirror_mnist_{preset}_reference_test_summary.json").read_text())
        assert s["split"] == "test" and set(s["reference_models"]) == {"classifier", "oracle"}
        _value_ci(c[1], s["validity"], s["validity_ci"])
        _value_ci(c[2], s["denoised_validity"], s["denoised_validity_ci"])
        assert f"(ceiling {s['denoised_validity_ceiling']:.3f})" in c[2]
        _value_ci(c[3], s["l1"], s["l1_ci"])
        _value_ci(c[4], s["lpips_alex"], s["lpips_alex_ci"])
        _value_ci(c[5], s["faithfulness"]["target_prob_gap_at_cf"], s["target_prob_gap_at_cf_ci"])
        for cell, key in zip(c[6:9], ("first_cf", "confident_cf", "k1")):
            _value_ci(cell, s["oracle_validity_at"][key], s["oracle_validity_at_ci"][key])
        assert float(c[9]) == round(s["oracle_ceiling"], 3)
