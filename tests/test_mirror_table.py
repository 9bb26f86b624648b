"""experiments/mirror_table.py --global: the issue-11 table from one global Mirror summary."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import mirror_table  # noqa: E402

SUMMARY = {
    "method": "mirror", "dataset": "fashion_mnist", "n_counterfactuals": 30, "l1": 0.11, "l1_pm1": 0.22, "lpips_alex": 0.2,
    "validity": 0.95, "validity_k1": 0.9, "denoised_validity": 0.8, "denoised_validity_k1": 0.85, "oracle_validity": 0.5,
    "oracle_validity_k1": 0.875, "first_cf_k_mean": 0.61, "fail_rate": 0.05, "converged_rate": 1.0,
    "real_target_ceiling": {"Pullover": {"denoised_validity_given_valid": 0.941}, "T-shirt/top": {"denoised_validity_given_valid": 0.974}},
    "pairs": {
        "T-shirt/top->Pullover": {"n": 20, "l1": 0.125, "lpips_alex": 0.25, "validity": 1.0, "validity_k1": 0.95, "denoised_validity": 0.75,
                                  "denoised_validity_k1": 0.9, "oracle_validity": 0.35, "oracle_validity_k1": 0.8, "first_cf_k_mean": 0.6},
        "Pullover->T-shirt/top": {"n": 10, "l1": 0.0625, "validity": 0.85, "denoised_validity": 0.9, "first_cf_k_mean": 0.7},
    },
}


def _cells(md: str, first: str, second: str) -> list[str]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    (row,) = [r for r in rows if r[0] == first and r[1] == second]
    return row


def test_global_table_places_each_number_in_its_column():
    att = {"dataset": "fashion_mnist", "pairs": {"T-shirt/top->Pullover": {"n": 1000, "l1": 0.1, "validity": 1.0, "denoised_validity": 0.737}}}
    md = mirror_table.global_table(SUMMARY, att)
    head = _cells(md, "method", "pair")
    row = dict(zip(head, _cells(md, "Mirror-CFE (cfjax)", "T-shirt/top->Pullover")))
    assert row["L1 [0,1] / [-1,1]"] == "0.125 / 0.250"  # [-1, 1] is twice [0, 1]
    assert row["D.Val (first CF / k=1)"] == "0.750 / 0.900"
    assert row["D.Val of recognised real targets"] == "0.941"  # the TARGET class's ceiling
    assert row["oracle validity (first CF / k=1)"] == "0.350 / 0.800"
    assert row["LPIPS(AlexNet)"] == "0.250" and row["n"] == "20"
    other = dict(zip(head, _cells(md, "Mirror-CFE (cfjax)", "Pullover->T-shirt/top")))
    assert other["D.Val of recognised real targets"] == "0.974" and other["oracle validity (first CF / k=1)"] == "– / –"
    pooled = dict(zip(head, _cells(md, "**Mirror-CFE (cfjax), all counterfactuals pooled**", "all")))
    assert pooled["validity (first CF / k=1)"] == "**0.950 / 0.900**" and pooled["n"] == "30"
    assert _cells(md, "Mirror-CFE (paper)", "same pairs, avg")[4] == "0.99"  # Fashion-MNIST's printed D.Val
    latent = dict(zip(head, _cells(md, "latent attack (cfjax; the attack summary's classifier)", "T-shirt/top->Pullover")))
    assert latent["L1 [0,1] / [-1,1]"] == "0.100 / 0.200" and latent["D.Val (first CF / k=1)"] == "0.737"
    assert "%fail (no valid counterfactual on the path) 5.0%" in md


def test_global_cli_writes_the_file_and_refuses_a_non_mirror_summary(tmp_path, capsys):
    src, out = tmp_path / "summary.json", tmp_path / "table.md"
    src.write_text(json.dumps(SUMMARY))
    mirror_table.main(["--global", str(src), "--out", str(out)])
    assert out.read_text().startswith("### Mirror-CFE on fashion_mnist: 2 pairs")
    bad = tmp_path / "attack.json"
    bad.write_text(json.dumps({"method": "attack", "pairs": {}}))
    with pytest.raises(SystemExit):
        mirror_table.main(["--global", str(bad)])
    assert "is not the summary of a global Mirror pass" in capsys.readouterr().err
