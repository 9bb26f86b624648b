"""Shards and merge: `cfjax global ... --shard I/N` on 3 shards + `cfjax merge` gives the
unsharded run's summary (every non-timing field; floats up to float32 round-off), for
both methods; a merge of a missing, duplicated or foreign shard exits 2 and writes nothing."""

import json
import math
import shutil

import numpy as np
import pytest

from cfjax import parallel
from cfjax.cli import main, parse_shard
from cfjax.errors import InputError
from cfjax.jobs import skeleton
from smoke_models import MIRROR_PAIRS, shared_models_dir
from xla_env import child_env

TIMING = {"wall_s", "cf_per_s", "phase_wall_s", "total_wall_s", "models_wall_s", "resumed", "decoder_load_or_train_s", "load_or_train_s"}


REL = 1e-4


def _same_spread(a: dict, b: dict, path: str) -> None:
    """A std is compared through its variance, the well-conditioned quantity: every input moves by
    at most REL relative (below), so the variance moves by at most ~2 REL |x| std, |x| <= |mean| +
    std. A std compared directly cannot hold: near 0 it is sqrt of a variance near 0, and a
    variance off by 1e-9 is a std off by 3e-5 (the AVX2-only failure, issue 37)."""
    sa, sb = a["std"], b["std"]
    if isinstance(sa, float) and isinstance(sb, float) and not (math.isnan(sa) or math.isnan(sb)):
        scale = abs(a["mean"]) + max(sa, sb)
        assert abs(sa * sa - sb * sb) <= 2 * REL * scale * max(sa, sb) + 1e-12, (f"{path}/std", sa, sb)
    else:
        assert_same_summary(sa, sb, f"{path}/std")


def assert_same_summary(a, b, path=""):
    """Equal in every non-timing field: exact for counts, strings, lists, None; floats to rel 1e-4
    (stds through their variances: :func:`_same_spread`).

    Not bitwise: besides the summation order, a shard feeds each device a different number of
    rows than the unsharded run, and XLA:CPU picks its kernels by shape, so a decoded image's
    class probability can move by ~2e-5 relative (seen at 4 simulated devices)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        spread = "std" in a and "mean" in a
        if spread:
            _same_spread(a, b, path)
        for k in a:
            if k not in TIMING and not (spread and k == "std"):
                assert_same_summary(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same_summary(u, v, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or b == pytest.approx(a, rel=REL, abs=1e-6), (path, a, b)
    else:
        assert a == b and type(a) is type(b), (path, a, b)


def _sharded_runs(root, args, models, n=3):
    """The unsharded run, its n shards (the session's smoke models, through --models-dir) and their merge."""
    base = [*args, "--models-dir", str(models)]
    assert main([*base, "--out", str(root / "full")]) == 0
    shards = [root / f"shard{i}" for i in range(n)]
    for i, d in enumerate(shards):
        assert main([*base, "--out", str(d), "--shard", f"{i}/{n}"]) == 0
    assert main(["merge", *map(str, reversed(shards)), "--out", str(root / "merged")]) == 0  # any order
    return shards


@pytest.fixture(scope="module")
def attack_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    args = ["global", "attack", "--data", "mnist5k", "--smoke", "--limit", "5", "--pixel-limit", "2", "--batch-size", "8"]
    models = shared_models_dir(tmp_path_factory, "attack")
    return root, _sharded_runs(root, args, models), [*args, "--models-dir", str(models)]


@pytest.fixture(scope="module")
def mirror_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    args = ["global", "mirror", "--data", "mnist5k", "--smoke", "--pairs", MIRROR_PAIRS, "--limit", "40"]
    models = shared_models_dir(tmp_path_factory, "mirror")
    return root, _sharded_runs(root, args, models), [*args, "--models-dir", str(models)]


def _check_merged_report_in_browser(root, open_in_browser, name):
    """The merged report alone in headless Chromium (nothing when no Chromium is installed: the
    dedicated browser tests in test_report.py say so with a skip)."""
    if open_in_browser is None:
        return
    seen = open_in_browser(root / "merged" / "report.html", name)
    assert seen["images"] >= 2 and seen["decoded"] == seen["images"] and seen["missing_alt"] == 0
    assert seen["resources"] == []
    assert seen["headline_top"] < seen["first_figure_top"] < seen["viewport_height"]
    assert "validity" in seen["headline_text"] and seen["sortable_tables"] == 1
    assert seen["page_width"] <= seen["viewport_width"], "the page scrolls sideways"


def _check_merge(root, shards):
    full = json.loads((root / "full" / "summary.json").read_text())
    merged = json.loads((root / "merged" / "summary.json").read_text())
    assert_same_summary(full, merged)
    assert (root / "merged" / "report.html").is_file()
    assert sorted(p.name for p in (root / "merged" / "figures").glob("*.png")) == sorted(p.name for p in (root / "full" / "figures").glob("*.png"))
    recs = [json.loads((d / skeleton.SHARD_FILE).read_text()) for d in shards]
    assert len({r["fingerprint"] for r in recs}) == 1 and [r["shard"] for r in recs] == [0, 1, 2]
    for name in recs[0]["passes"]:  # the shards' rows tile every pass's rows
        sl = [r["passes"][name]["rows_slice"] for r in recs]
        assert sl[0][0] == 0 and sl[-1][1] == recs[0]["passes"][name]["rows_total"]
        assert all(sl[i][1] == sl[i + 1][0] for i in range(len(sl) - 1))
    m = json.loads((root / "merged" / skeleton.MERGE_FILE).read_text())
    assert m["num_shards"] == 3 and [s["shard"] for s in m["shards"]] == [0, 1, 2]
    assert not list(root.rglob("*.tmp"))
    return full, recs


@pytest.mark.slow
def test_attack_three_shards_merge_to_the_unsharded_summary(attack_shards, open_in_browser):
    root, shards, _ = attack_shards
    full, recs = _check_merge(root, shards)
    _check_merged_report_in_browser(root, open_in_browser, "report_merged_attack")
    assert full["n_counterfactuals"] == 45 and full["baseline_pixel"]["n_counterfactuals"] == 18
    assert [r["passes"]["latent"]["rows"] for r in recs] == [15, 15, 15] and [r["passes"]["pixel"]["rows"] for r in recs] == [6, 6, 6]
    # per-example outputs: each shard wrote its own rows, together the unsharded run's
    rows = [np.concatenate([np.load(f)["target"] for f in sorted((d / "per_example" / "latent").glob("chunk_*.npz"))]) for d in shards]
    ref = np.concatenate([np.load(f)["target"] for f in sorted((root / "full" / "per_example" / "latent").glob("chunk_*.npz"))])
    np.testing.assert_array_equal(np.concatenate(rows), ref)


@pytest.mark.slow
def test_mirror_three_shards_merge_to_the_unsharded_summary(mirror_shards, open_in_browser):
    root, shards, _ = mirror_shards
    full, recs = _check_merge(root, shards)
    _check_merged_report_in_browser(root, open_in_browser, "report_merged_mirror")
    assert full["n_counterfactuals"] >= 6 and sum(r["passes"]["mirror"]["rows"] for r in recs) == full["n_counterfactuals"]


@pytest.mark.slow
def test_merge_refuses_missing_duplicate_and_foreign_shards(attack_shards, mirror_shards, tmp_path, capsys):
    root, (s0, s1, s2), args = attack_shards
    mroot, (m0, m1, m2), _ = mirror_shards
    out = tmp_path / "never"

    def refused(*dirs, says):
        assert main(["merge", *map(str, dirs), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and "expected" in err, err
        assert not out.exists()  # checked before anything is written

    refused(s0, s2, says="missing 1/3")
    refused(s0, s1, s1, s2, says="twice")
    refused(s0, m1, s2, says="another run")  # a Mirror shard in an attack merge
    refused(s0, tmp_path / "nowhere", s2, says="no such folder")
    # a shard of the same method with another option (its own run) is foreign too
    other = tmp_path / "other1"
    assert main([*args, "--steps", "10", "--out", str(other), "--shard", "1/3"]) == 0
    refused(s0, other, s2, says="cfg.steps: 20 vs 10")  # the refusal names the field
    # a shard of another split
    bad = tmp_path / "bad"
    shutil.copytree(s2, bad)
    rec = json.loads((bad / "shard.json").read_text())
    rec = {**rec, "num_shards": 4, "passes": {k: {**v, "rows_slice": [v["rows_total"] // 2, 3 * v["rows_total"] // 4], "rows": 3 * v["rows_total"] // 4 - v["rows_total"] // 2}
                                              for k, v in rec["passes"].items()}}
    (bad / "shard.json").write_text(json.dumps({**rec, "record_sha256": skeleton._record_digest(rec)}))  # as if written so
    refused(s0, s1, bad, says="one split")
    # a corrupted state file is caught by its digest
    shutil.rmtree(bad)
    shutil.copytree(m2, bad)
    (bad / skeleton.STATES_FILE).write_bytes(b"x" + (bad / skeleton.STATES_FILE).read_bytes())
    assert main(["merge", str(m0), str(m1), str(bad), "--out", str(out)]) == 2
    assert "states_sha256" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shard_rerun_resumes_and_another_index_is_refused(attack_shards, capsys):
    root, (s0, s1, s2), base = attack_shards
    before = (s1 / skeleton.STATES_FILE).read_bytes()
    (s1 / skeleton.SHARD_FILE).unlink()  # killed after its passes, before its record
    (s1 / skeleton.STATES_FILE).unlink()
    assert main([*base, "--out", str(s1), "--shard", "1/3"]) == 0
    rec = json.loads((s1 / skeleton.SHARD_FILE).read_text())
    assert rec["passes"]["latent"]["resumed"] and (s1 / skeleton.STATES_FILE).read_bytes() == before
    # the same folder for another shard: its files belong to shard 1/3
    assert main([*base, "--out", str(s1), "--shard", "2/3"]) == 2
    assert "role: 'shard 1/3' vs 'shard 2/3'" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["3/3", "1/0", "-1/3", "a/b", "1", "1/2/3"])
def test_bad_shard_flag_fails_before_any_work(tmp_path, capsys, text):
    out = tmp_path / "o"
    assert main(["global", "attack", "--data", "mnist5k", "--smoke", f"--shard={text}", "--out", str(out)]) == 2
    assert "--shard" in capsys.readouterr().err
    assert not out.exists()


def test_parse_shard_and_shard_slices():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 2 / 5 ") == (2, 5) and parse_shard(None) is None
    for n in (0, 1, 7, 10, 11):
        for k in (1, 3, 4, 12):
            cover = np.concatenate([np.arange(n)[parallel.shard_slice(n, i, k)] for i in range(k)])
            np.testing.assert_array_equal(cover, np.arange(n))
            sizes = [len(range(n)[parallel.shard_slice(n, i, k)]) for i in range(k)]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(InputError, match="shard"):
        parallel.shard_slice(10, 3, 3)
    with pytest.raises(InputError, match="shard"):
        skeleton.check_shard((1, 1))
    assert skeleton.check_shard(None) is None and skeleton.check_shard((np.int64(1), 2)) == (1, 2)


def test_merge_of_nothing_or_a_non_shard_folder(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main(["merge", str(tmp_path / "plain"), "--out", str(tmp_path / "o")]) == 2
    assert "shard.json" in capsys.readouterr().err
    with pytest.raises(InputError, match="shards"):
        skeleton.read_shards([])


@pytest.mark.slow
def test_ray_two_workers(tmp_path):
    """experiments/ray_shards.py: 2 local Ray workers, one shard each, then the merge."""
    pytest.importorskip("ray")
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "ray_shards.py")
    env = child_env()
    r = subprocess.run([sys.executable, script, "--out", str(tmp_path / "ray"), "--shards", "2", "--workers", "2", "--",
                        "global", "attack", "--data", "mnist5k", "--smoke", "--limit", "2", "--no-pixel"],
                       env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "ray" / "merged" / "summary.json").read_text())
    assert s["n_counterfactuals"] == 18
    recs = [json.loads((tmp_path / "ray" / f"shard_{i}" / "shard.json").read_text()) for i in range(2)]
    assert [r_["passes"]["latent"]["rows"] for r_ in recs] == [9, 9] and recs[0]["fingerprint"] == recs[1]["fingerprint"]

