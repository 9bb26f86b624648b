"""experiments/bench.py end to end on a tiny configuration (the numbers themselves live in
BUILD_NOTES; here: the JSON schema and self-consistency)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))


@pytest.mark.slow
def test_bench_writes_consistent_json(tmp_path):
    import bench

    out = tmp_path / "bench.json"
    bench.main(["--out", str(out), "--batch-sizes", "8", "--steps", "2", "--repeats", "1", "--mirror"])
    r = json.loads(out.read_text())
    assert r["backend"] == "cpu" and r["matmul_peak_f32_flops"] > 1e8 and r["peak_rss_mb"] > 0
    (a,) = r["attack"]
    assert a["batch"] == 8 and a["steps"] == 2 and a["cf_per_s"] > 0 and a["compile_s"] > 0
    # 2 steps x ~58.8 MFLOP (forward + input gradient of decoder + classifier), counted from the jaxpr
    assert 100e6 < a["flops_per_cf"] < 140e6, a["flops_per_cf"]
    assert a["frac_of_matmul_peak"] == pytest.approx(a["flops_per_s"] / r["matmul_peak_f32_flops"])
    assert {x["solver"] for x in r["reflect"]} == {"exact", "jaxopt"}
    (m,) = r["mirror"]
    assert m["cf_per_s"] > 0 and m["k_grid"] == 21


@pytest.mark.slow
def test_bench_celeba64_writes_consistent_json(tmp_path):
    pytest.importorskip("torch", reason="the PyTorch side-by-side needs torch (.ci/run installs the CPU build)")
    import bench

    out = tmp_path / "bench_celeba64.json"
    bench.main(["--model", "celeba64", "--out", str(out), "--batch-sizes", "2", "--steps", "1", "--repeats", "1", "--torch"])
    r = json.loads(out.read_text())
    m = r["model"]
    assert m["name"] == "celeba64" and m["image_shape"] == [64, 64, 3] and m["latent_dim"] == 128
    assert 1e6 < m["classifier_params"] < 5e6, m["classifier_params"]
    assert len(r["loadavg_start"]) == 3 and len(r["loadavg_end"]) == 3
    (a,) = r["attack"]
    assert a["batch"] == 2 and a["steps"] == 1 and a["cf_per_s"] > 0 and a["compile_s"] > 0
    # one step of decode -> classify forward + input gradient at 64x64x3: ~4.1 GFLOP from the jaxpr
    assert 3e9 < a["flops_per_cf"] < 5e9, a["flops_per_cf"]
    assert a["frac_of_matmul_peak"] == pytest.approx(a["flops_per_s"] / r["matmul_peak_f32_flops"])
    (t,) = r["torch"]
    assert t["port_max_logit_diff"] < 1e-4 and t["batched_cf_per_s"] > 0 and "per_image_cf_per_s" not in t
    assert t["jax_over_torch_batched"] == pytest.approx(a["cf_per_s"] / t["batched_cf_per_s"])
