"""The streamed, sharded whole-dataset pass on a toy step with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import parallel
from cfjax.errors import CheckpointError, InputError


def _toy_step(counter):
    def step(acc, batch, mask):
        counter["traces"] += 1
        x = batch["x"]
        m = mask.astype(x.dtype)
        feats = jnp.tanh(x @ jnp.linspace(-1, 1, x.shape[1] * 3).reshape(x.shape[1], 3))
        acc = {
            "sum": acc["sum"] + jnp.sum(feats * m[:, None], axis=0),
            "sq": acc["sq"] + jnp.sum(feats**2 * m[:, None], axis=0),
            "count": acc["count"] + jnp.sum(m),
        }
        return acc, {"feat": feats, "label": batch["y"]}

    return step


def _init():
    return {"sum": np.zeros(3, np.float32), "sq": np.zeros(3, np.float32), "count": np.zeros((), np.float32)}


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 5)).astype(np.float32), "y": np.arange(n, dtype=np.int32)}


def _reference(data):
    feats = np.tanh(data["x"].astype(np.float64) @ np.linspace(-1, 1, 15).reshape(5, 3))
    return feats.sum(0), (feats**2).sum(0), len(feats)


@pytest.mark.parametrize("n_devices", [1, 8])
def test_matches_reference_and_compiles_once(n_devices):
    mesh = parallel.data_mesh(jax.devices()[:n_devices])
    counter = {"traces": 0}
    data = _data(77)  # 77 = 4 full chunks of 16 + a padded one of 13
    acc = parallel.explain_dataset(_toy_step(counter), _init(), data, chunk_size=16, mesh=mesh, progress=False)
    s, sq, n = _reference(data)
    np.testing.assert_allclose(acc["sum"], s, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(acc["sq"], sq, rtol=1e-5, atol=1e-4)
    assert acc["count"] == n
    assert counter["traces"] == 1  # five chunks, one compilation


def test_device_count_invariance():
    data = _data(100, seed=3)
    a1 = parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=32, mesh=parallel.data_mesh(jax.devices()[:1]), progress=False)
    a8 = parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=32, mesh=parallel.data_mesh(), progress=False)
    for k in a1:
        np.testing.assert_allclose(a1[k], a8[k], rtol=1e-5, atol=1e-5)


def test_resume_is_identical_and_outputs_written(tmp_path):
    data = _data(90, seed=1)
    full = parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=8, progress=False)
    ck, out = tmp_path / "ck", tmp_path / "out"
    kw = dict(chunk_size=8, checkpoint_dir=ck, checkpoint_every=2, run_config={"m": "toy"}, outputs_dir=out, progress=False)
    parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, stop_after=5, **kw)  # "crash" after 5 chunks
    resumed = parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, **kw)
    for k in full:
        assert np.array_equal(full[k], resumed[k])
    files = sorted(out.glob("chunk_*.npz"))
    assert len(files) == 12
    labels = np.concatenate([np.load(f)["label"] for f in files])
    assert np.array_equal(labels, np.arange(90))  # padding never written, no duplicates
    # the same checkpoint dir with another run config is refused
    with pytest.raises(CheckpointError, match="fingerprint"):
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, **{**kw, "run_config": {"m": "other"}})


def test_bad_arguments():
    data = _data(10)
    with pytest.raises(InputError, match="chunk_size"):
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=12, progress=False)
    with pytest.raises(InputError, match="chunk_size"):
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=0, progress=False)
    with pytest.raises(InputError, match="data"):
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), {"x": data["x"], "y": data["y"][:3]}, chunk_size=8, progress=False)
    with pytest.raises(InputError, match="data"):
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), {"x": data["x"][:0], "y": data["y"][:0]}, chunk_size=8, progress=False)


def test_process_slice_covers_dataset():
    rows = [parallel.process_slice(10, i, 3) for i in range(3)]
    got = np.concatenate([np.arange(10)[s] for s in rows])
    assert np.array_equal(got, np.arange(10))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_match_single_process(tmp_path):
    import json
    import os
    import subprocess
    import sys

    port = _free_port()
    here = os.path.dirname(__file__)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen([sys.executable, os.path.join(here, "mh_worker.py"), str(port), str(i), str(tmp_path / f"{i}.json")], env=env)
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0
    outs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert outs[0]["devices"] == 4 and outs[0]["local"] == 2
    data = _data(77, seed=5)
    s, sq, n = _reference(data)
    for o in outs:
        np.testing.assert_allclose(o["sum"], s, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(o["sq"], sq, rtol=1e-5, atol=1e-4)
        assert o["count"] == n
    assert outs[0]["sum"] == outs[1]["sum"]
