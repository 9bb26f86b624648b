"""The streamed, sharded whole-dataset pass on a toy step with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import parallel
from cfjax.errors import CheckpointError, InputError
from xla_env import child_env


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
        parallel.explain_dataset(_toy_step({"traces": 0}), _init(), data, chunk_size=3 * jax.device_count() // 2, progress=False)  # not a multiple
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


def _run_two_workers(tmp_path, *extra):
    import os
    import subprocess
    import sys

    port = _free_port()
    here = os.path.dirname(__file__)
    env = child_env()
    procs = [
        subprocess.Popen([sys.executable, os.path.join(here, "mh_worker.py"), str(port), str(i), str(tmp_path / f"{i}.json"), *extra], env=env)
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=240) == 0


@pytest.mark.multiprocess
def test_two_processes_match_single_process(tmp_path):
    import json

    _run_two_workers(tmp_path)
    outs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert outs[0]["devices"] == 4 and outs[0]["local"] == 2
    data = _data(77, seed=5)
    s, sq, n = _reference(data)
    for o in outs:
        np.testing.assert_allclose(o["sum"], s, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(o["sq"], sq, rtol=1e-5, atol=1e-4)
        assert o["count"] == n
    assert outs[0]["sum"] == outs[1]["sum"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_peer_busy_past_the_cpu_collective_timeout_is_waited_for(tmp_path):
    """Process 0 spends 40 s in ``process0_first`` (as if training the models) while process 1
    waits: the barrier is the coordination service's (hours), not a gloo collective (30 s)."""
    import json

    _run_two_workers(tmp_path, "40")
    s, _, n = _reference(_data(77, seed=5))
    for i in range(2):
        o = json.loads((tmp_path / f"{i}.json").read_text())
        np.testing.assert_allclose(o["sum"], s, rtol=1e-5, atol=1e-4)
        assert o["count"] == n


# ------------------------------------------------------------------------------ row sources larger than memory


def _sum_step(acc, batch, mask):
    m = mask.astype(jnp.float32)
    return {"sum": acc["sum"] + jnp.sum(batch["x"] * m[:, None], 0), "n": acc["n"] + jnp.sum(m)}, None


def _sum_init(d=4):
    return {"sum": np.zeros(d, np.float32), "n": np.zeros((), np.float32)}


class _Spy:
    """A row source that records every read (and refuses to be read whole)."""

    def __init__(self, src):
        self.src, self.reads = src, []

    def __len__(self):
        return len(self.src)

    def __getitem__(self, s):
        assert isinstance(s, slice), s
        a, b, _ = s.indices(len(self.src))
        self.reads.append(b - a)
        return self.src[s]


def test_memmap_of_100k_rows_streams_chunk_by_chunk_and_resumes(tmp_path):
    n, d, chunk = 100_000, 4, 4096
    path = tmp_path / "rows.f32"
    w = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))
    for s in range(0, n, 25_000):  # small integers: every partial sum is exact in float32
        w[s : s + 25_000] = (np.arange(s, min(s + 25_000, n))[:, None] % 7 + np.arange(d)[None, :]).astype(np.float32)
    w.flush()
    del w
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
    expect = (np.arange(n)[:, None] % 7 + np.arange(d)[None, :]).sum(0)
    acc = parallel.explain_dataset(_sum_step, _sum_init(d), {"x": mm}, chunk_size=chunk, progress=False)
    np.testing.assert_array_equal(acc["sum"], expect.astype(np.float32))
    assert acc["n"] == n
    spy = _Spy(mm)
    kw = dict(chunk_size=chunk, checkpoint_dir=tmp_path / "ck", checkpoint_every=3, run_config={"m": "memmap"}, progress=False)
    parallel.explain_dataset(_sum_step, _sum_init(d), {"x": spy}, stop_after=7, **kw)  # "crash" after 7 chunks
    resumed = parallel.explain_dataset(_sum_step, _sum_init(d), {"x": spy}, **kw)
    np.testing.assert_array_equal(resumed["sum"], acc["sum"])
    assert max(spy.reads) == chunk and sum(spy.reads) == n + chunk  # one chunk per read; the 7th (after checkpoint 6) read again
    # lazy views over the memmap: a shuffled selection of rows, then a contiguous part of it
    idx = np.random.default_rng(0).permutation(n)[:30_001]
    view = parallel.take_rows(parallel.Rows(mm, idx), slice(1, None))
    got = parallel.explain_dataset(_sum_step, _sum_init(d), {"x": view}, chunk_size=chunk, progress=False)
    np.testing.assert_array_equal(got["sum"], (idx[1:, None] % 7 + np.arange(d)[None, :]).sum(0).astype(np.float32))


def test_record_sources_and_lazy_views_read_only_what_is_asked():
    class Records:  # a TFDS data_source / Grain MapDataset look-alike: one dict per index
        def __init__(self, n):
            self.n, self.batches = n, []

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"image": np.full((2, 2), i, np.float32), "label": i % 3}

        def __getitems__(self, keys):
            self.batches.append(len(keys))
            return [self[i] for i in keys]

    src = Records(50)
    x = parallel.RecordRows(src, "image")
    y = parallel.RecordRows(src, "label", np.int32)
    assert len(x) == 50 and x[3:5][:, 0, 0].tolist() == [3.0, 4.0] and y[4:7].tolist() == [1, 2, 0]
    part = parallel.take_rows(x, slice(10, 30))
    assert isinstance(part, parallel.RowSlice) and len(part) == 20 and part[0:2][:, 0, 0].tolist() == [10.0, 11.0]

    def step(acc, batch, mask):
        m = mask.astype(jnp.float32)
        return {"sum": acc["sum"] + jnp.sum(batch["x"][:, 0, 0] * m), "n": acc["n"] + jnp.sum(m * batch["y"])}, None

    src.batches.clear()
    acc = parallel.explain_dataset(step, {"sum": np.zeros((), np.float32), "n": np.zeros((), np.float32)},
                                   {"x": part, "y": parallel.take_rows(y, slice(10, 30))}, chunk_size=8, progress=False)
    assert float(acc["sum"]) == sum(range(10, 30)) and float(acc["n"]) == sum(i % 3 for i in range(10, 30))
    assert max(src.batches) <= 8
    # a plain numpy array's lazy view is a numpy view; Rows of Rows index through
    a = np.arange(20)
    assert parallel.take_rows(a, slice(5, 9)).base is a
    r = parallel.Rows(a, np.array([9, 3, 7, 1]))
    assert r[1:3].tolist() == [3, 7] and parallel.take_rows(r, slice(2, None))[:].tolist() == [7, 1]


# ------------------------------------------------------------------------------ logs fit for clusters


def test_progress_in_a_log_is_a_few_status_lines(monkeypatch):
    import io
    import sys

    from cfjax.progress import progress_bar

    monkeypatch.delenv("CFJAX_PROGRESS_INTERVAL", raising=False)
    log = io.StringIO()
    bar = progress_bar(range(5000), desc="mirror decoder", file=log, leave=False)  # as the decoder's training loop
    for i in bar:
        if i % 10 == 0:
            bar.set_postfix({"loss": f"{1.0 / (i + 1):.3f}"})  # a refresh each: not a line each in a log
    assert "\r" not in log.getvalue() and len(log.getvalue().splitlines()) <= 2, log.getvalue()
    # explain_dataset's bar, with stderr a log file (not a terminal): 100 chunks, <= 3 lines
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    parallel.explain_dataset(_sum_step, _sum_init(1), {"x": np.ones((800, 1), np.float32)}, chunk_size=8, desc="explain")
    lines = err.getvalue().splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("explain: 100% 100/100"), lines
    # every ~interval seconds a line: a short interval prints each status on its own line
    log = io.StringIO()
    for _ in progress_bar(range(4), desc="work", file=log, interval=0.0):
        pass
    assert "\r" not in log.getvalue() and len(log.getvalue().splitlines()) >= 4


def test_progress_on_a_terminal_is_a_tqdm_bar():
    import io

    from cfjax.progress import progress_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    t = Tty()
    for _ in progress_bar(range(3), desc="x", file=t, mininterval=0):
        pass
    assert "\r" in t.getvalue()
