"""Faults on purpose: SIGKILL at many points of a streamed run always resumes to the identical
result; unwritable or full output folders fail early with a clear message."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cfjax.errors import InputError
from cfjax.io import check_writable_dir
from xla_env import child_env

HERE = os.path.dirname(__file__)


def _run(ckpt, out, kill_after=None):
    env = child_env()
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "kill_worker.py"), str(ckpt), str(out)], stdout=subprocess.PIPE, text=True, env=env)
    if kill_after is None:
        assert p.wait(timeout=300) == 0
        return True
    seen = 0
    for line in p.stdout:
        if line.startswith("chunk"):
            seen += 1
            if seen >= kill_after:
                time.sleep(0.05 * (kill_after % 3))  # vary the point inside a chunk too
                p.send_signal(signal.SIGKILL)
                break
    p.wait(timeout=60)
    return p.returncode == 0


@pytest.mark.slow
def test_sigkill_at_many_points_resumes_to_identical_result(tmp_path):
    ref_out = tmp_path / "ref.json"
    _run("", ref_out)
    ref = json.loads(ref_out.read_text())
    ck, out = tmp_path / "ck", tmp_path / "out.json"
    kills = 0
    for point in (1, 2, 3, 4, 5, 3):  # chunks seen by the *current* process before the kill
        if _run(ck, out, kill_after=point):
            break
        kills += 1
        assert not out.exists()
        if (ck / "accumulators").exists():  # whatever is under the final name is complete
            from cfjax import checkpoint as ckpt

            ckpt.restore(ck / "accumulators")
    _run(ck, out)
    assert kills >= 5
    got = json.loads(out.read_text())
    assert got == ref  # bitwise-identical accumulators (JSON of float32 values)


def test_unwritable_output_fails_early(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a file instead
            target = tmp_path / "afile"
            target.write_text("x")
            bad = target / "out"
        else:
            bad = ro / "out"
        with pytest.raises(InputError, match="out.*writable"):
            check_writable_dir(bad, "out")
    finally:
        os.chmod(ro, 0o700)


def test_full_disk_fails_early(tmp_path):
    with pytest.raises(InputError, match="free disk"):
        check_writable_dir(tmp_path, "out", min_free_mb=10**12)


def _cursor(state_dir) -> int:
    """The chunk cursor of the latest accumulator checkpoint (0 if none yet)."""
    for _ in range(20):
        try:
            meta = json.loads((state_dir / "accumulators" / "cfjax_meta.json").read_text())
            return int(meta["extra"]["cursor"])
        except FileNotFoundError:
            return 0
        except (json.JSONDecodeError, KeyError):  # pragma: no cover - racing the atomic rename
            time.sleep(0.01)
    return 0


@pytest.mark.slow
def test_sigkill_cfjax_global_at_five_points_resumes_to_the_same_summary(tmp_path, tmp_path_factory):
    """`cfjax global` itself, killed with SIGKILL at >= 5 different points (after 1, 2, 3, ...
    checkpointed chunks, plus a random delay inside the next chunk), restarted with the same
    command each time: the final summary equals an uninterrupted run's."""
    from smoke_models import shared_models_dir

    models = shared_models_dir(tmp_path_factory, "attack")  # the session's smoke models, read only
    args = ["global", "--method", "attack", "--data", "mnist5k", "--smoke", "--no-pixel", "--limit", "16", "--batch-size", "8",
            "--checkpoint-every", "1", "--no-figures", "--models-dir", str(models)]
    # every run in a child on 2 simulated devices (the reference too: the summaries are compared
    # bitwise, so the device count must match; 2 shards each chunk as 8 would, at a third of the
    # thread overhead on a 2-core box)
    env = child_env(2)
    cmd = [sys.executable, "-m", "cfjax", *args, "--out"]
    assert subprocess.run([*cmd, str(tmp_path / "ref")], env=env, stdout=subprocess.DEVNULL, timeout=600).returncode == 0  # uninterrupted
    ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert ref["n_devices"] == 2
    assert (tmp_path / "ref" / "report.html").is_file() and not list((tmp_path / "ref").glob("figures/*.png"))  # --no-figures
    run = tmp_path / "run"
    cmd = [*cmd, str(run)]
    rng = np.random.default_rng(0)
    kills, points = 0, []
    for point in range(1, 8):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and _cursor(run / "state" / "latent") < point:
            time.sleep(0.02)
        if p.poll() is not None:  # finished before this point
            break
        time.sleep(float(rng.uniform(0.0, 0.3)))  # somewhere inside the next chunk
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        if p.returncode == -signal.SIGKILL:
            kills += 1
            points.append(_cursor(run / "state" / "latent"))
            assert not (run / "summary.json").exists()
        if kills >= 5:
            break
    assert kills >= 5, points
    assert subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600).returncode == 0
    got = json.loads((run / "summary.json").read_text())
    assert got["resumed"] is True and got["cf_per_s"] is None  # a resumed run does not claim a rate
    timing = {"wall_s", "cf_per_s", "phase_wall_s", "total_wall_s", "models_wall_s", "resumed"}
    for k in ref:
        if k not in timing:
            assert got[k] == ref[k], k  # bitwise: JSON of the same float32 sums
    assert len(set(points)) >= 5, points  # five different kill points
