"""`cfjax global`: the multi-pair Mirror-CFE pass against the per-pair job, and the attack's
multi-host path (2 processes on localhost) against a single-process run."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from cfjax._checks import parse_pairs
from cfjax.cli import main
from cfjax.errors import InputError
from cfjax.jobs import mirror as mjob
from smoke_models import shared_models_dir
from test_parallel import _free_port
from xla_env import child_env


def _outputs(d) -> dict:
    files = sorted(d.glob("chunk_*.npz"))
    assert files
    parts = [dict(np.load(f)) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.slow
def test_mirror_global_pass_equals_the_per_pair_job(tmp_path, tmp_path_factory):
    cfg = dataclasses.replace(mjob.MirrorJobConfig.smoke_config(), data_limit=100, limit=None, figures=False)
    models = shared_models_dir(tmp_path_factory, "mirror")  # the session's smoke models (the cache does not key on data_limit)
    g = mjob.run_mirror_global("mnist5k", tmp_path / "g", config=cfg, pairs=((3, 8), (8, 3), (4, 9)), models_dir=models, progress=False)
    p = mjob.run_mirror_explanation("mnist5k", tmp_path / "p", source=3, target=8, config=cfg, models_dir=models, progress=False)
    pairs = g["pairs"]
    assert set(pairs) == {"3->8", "8->3", "4->9"}
    assert sum(v["n"] for v in pairs.values()) == g["n_counterfactuals"]
    assert pairs["3->8"]["n"] == p["n_counterfactuals"] > 0
    assert pairs["3->8"]["validity"] == p["validity"]
    assert pairs["3->8"]["converged_rate"] == p["converged_rate"]
    # per example: the global pass's 3->8 rows are the per-pair job's rows, in the same order
    go, po = _outputs(tmp_path / "g" / "per_example" / "mirror"), _outputs(tmp_path / "p" / "per_example" / "mirror")
    sel = (go["source"] == 3) & (go["target"] == 8)
    assert sel.sum() == len(po["p_dec"])
    np.testing.assert_allclose(go["p_dec"][sel], po["p_dec"], atol=1e-4)
    np.testing.assert_array_equal(go["found"][sel], po["found"])
    np.testing.assert_array_equal(go["converged"][sel], po["converged"])
    assert "Per class pair" in (tmp_path / "g" / "report.html").read_text()


def test_global_rejects_bad_pairs_and_distributed_flags(tmp_path, capsys):
    with pytest.raises(InputError, match="--pairs"):
        parse_pairs("3-8", name="--pairs")
    with pytest.raises(InputError, match="source != target"):
        parse_pairs("3,3", 10)
    with pytest.raises(InputError, match=r"\[0, 9\]"):
        parse_pairs("3,10", 10)
    assert parse_pairs("3,8;8,3") == ((3, 8), (8, 3)) and parse_pairs("all") == "all" and parse_pairs([[3, 8]]) == ((3, 8),)
    assert main(["global", "--method", "mirror", "--smoke", "--out", str(tmp_path / "o"), "--pairs", "3,8,1"]) == 2
    assert "--pairs" in capsys.readouterr().err
    assert main(["global", "--out", str(tmp_path / "o"), "--num-processes", "2", "--process-id", "5"]) == 2
    assert "--process-id" in capsys.readouterr().err
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_attack_global_two_processes_equal_one(tmp_path, tmp_path_factory):
    models = shared_models_dir(tmp_path_factory, "attack")  # same models: only the run differs
    args = ["global", "--method", "attack", "--data", "mnist5k", "--smoke", "--no-pixel", "--batch-size", "24", "--models-dir", str(models)]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    one = json.loads((tmp_path / "single" / "summary.json").read_text())
    port = _free_port()
    env = child_env(2, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cfjax", *args, "--out", str(tmp_path / "multi"), "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(i), "--cpu-collectives", "gloo"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    two = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert two["n_processes"] == 2 and two["n_devices"] == 4 and one["n_processes"] == 1
    for k in ("n_counterfactuals", "status_counts", "validity"):
        assert two[k] == one[k], k
    for k in ("mean_steps", "l1", "l2", "latent_l2", "target_prob_mean"):
        assert two[k] == pytest.approx(one[k], rel=1e-4, abs=1e-5), k
    for a, st in one["global_attribution"].items():
        assert two["global_attribution"][a]["count"] == st["count"]
        assert two["global_attribution"][a]["mean"] == pytest.approx(st["mean"], rel=1e-4, abs=1e-5)
    for pair, st in one["pairs"].items():
        assert two["pairs"][pair]["n"] == st["n"] and two["pairs"][pair]["validity"] == st["validity"]
    # each process wrote only its own rows; together they are all the pairs
    files = sorted((tmp_path / "multi" / "per_example" / "latent").glob("chunk_*.npz"))
    assert {f.name.split(".")[1] for f in files} == {"p0", "p1"}
    assert sum(len(np.load(f)["source"]) for f in files) == one["n_counterfactuals"]
