"""Determinism on CPU, measured in fresh Python processes.

(a) The same seed gives bitwise-identical results across two separate processes (different
    ``PYTHONHASHSEED`` too): a latent attack of a randomly initialised Flax VAE + GAP-CNN
    classifier (``cfjax.models``) and a streamed ``explain_dataset`` pass over it.
(b) The dependence on the device count: the same pass with 1 and with 8 (simulated) CPU
    devices. The sharded sums are reduced in another order, so only a float tolerance is
    promised; the max abs difference seen is printed (``pytest -s``).

The children get ``XLA_FLAGS``/``JAX_PLATFORMS`` in their environment, i.e. before JAX is
imported; the three of them run concurrently.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xla_env import child_env

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import os, sys
import jax
import jax.numpy as jnp
import numpy as np

from cfjax.methods.attack import attack_batch
from cfjax.models import Classifier, VAE, bind_classifier, bind_vae
from cfjax.parallel import explain_dataset

seed, out = int(sys.argv[1]), sys.argv[2]
assert jax.default_backend() == "cpu"
# "rbg" keys: XLA:CPU compiles threefry-based Flax initialisers slowly (as cfjax.train does)
kc, kv, kr, kz = jax.random.split(jax.random.key(seed, impl="rbg"), 4)
shape = (8, 8, 1)
clf_m = Classifier(num_classes=3, widths=(4, 8))
vae_m = VAE(image_shape=shape, latent_dim=3, widths=(4, 8))
x0 = jnp.zeros((1, *shape))
cp = jax.jit(clf_m.init)(kc, x0)
vp = jax.jit(vae_m.init)(kv, x0, kr)
clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)

z0 = jax.random.normal(kz, (6, 3))
target = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
res = attack_batch(vae.decode, clf.logits, z0, target, steps=12, learning_rate=0.3, threshold=0.6)

rng = np.random.default_rng(seed)
data = {"x": rng.uniform(0.0, 1.0, (37, *shape)).astype(np.float32)}


def step(acc, batch, mask):
    z = jax.vmap(clf.features)(batch["x"])
    l = jax.vmap(clf.logits)(batch["x"])
    m = mask.astype(z.dtype)[:, None]
    return {
        "z_sum": acc["z_sum"] + jnp.sum(z * m, 0),
        "z_sq": acc["z_sq"] + jnp.sum(z * z * m, 0),
        "logit_sum": acc["logit_sum"] + jnp.sum(l * m, 0),
        "count": acc["count"] + jnp.sum(m),
    }, None


init = {"z_sum": np.zeros(8, np.float32), "z_sq": np.zeros(8, np.float32), "logit_sum": np.zeros(3, np.float32), "count": np.zeros((), np.float32)}
acc = explain_dataset(step, init, data, chunk_size=16, progress=False)

arrays = {f"attack_{k}": np.asarray(v) for k, v in res._asdict().items() if v is not None}
arrays.update({f"explain_{k}": np.asarray(v) for k, v in acc.items()})
arrays["z0"] = np.asarray(z0)
arrays["devices"] = np.asarray(jax.device_count())
np.savez(out, **arrays)
'''


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three concurrent child processes: seed 0 on 8 devices twice, seed 0 on 1 device."""
    tmp = tmp_path_factory.mktemp("determinism")
    script = tmp / "child.py"
    script.write_text(CHILD)
    specs = {"a": (8, "0"), "b": (8, "1"), "one": (1, "0")}  # name -> (devices, PYTHONHASHSEED)
    procs = {}
    for name, (n_dev, hashseed) in specs.items():
        env = child_env(n_dev, drop=("JAX_PLATFORMS", "JAX_ENABLE_X64"), JAX_PLATFORMS="cpu", TQDM_DISABLE="1", PYTHONHASHSEED=hashseed)
        procs[name] = subprocess.Popen([sys.executable, str(script), "0", str(tmp / f"{name}.npz")], env=env, cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for name, p in procs.items():
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"child {name} failed:\n{log}"
        with np.load(tmp / f"{name}.npz") as f:
            out[name] = {k: f[k] for k in f.files}
    return out


def test_same_seed_is_bitwise_identical_across_processes(runs):
    a, b = runs["a"], runs["b"]
    assert int(a["devices"]) == int(b["devices"]) == 8
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=np.issubdtype(a[k].dtype, np.floating)), (k, a[k], b[k])
    assert _digest(a) == _digest(b)
    # not vacuous: the attack really moved the latents and the pass really saw the data
    assert np.any(a["attack_steps_taken"] > 0) and not np.array_equal(a["attack_z"], a["z0"])
    assert float(a["explain_count"]) == 37.0 and np.all(np.isfinite(a["explain_z_sum"]))
    assert np.any(a["explain_z_sum"] != 0)


def test_device_count_changes_results_only_within_float_tolerance(runs):
    one, eight = runs["one"], runs["a"]
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    worst = {}
    for k in sorted(eight):
        if k == "devices":
            continue
        x, y = one[k], eight[k]
        assert x.shape == y.shape and x.dtype == y.dtype, k
        if np.issubdtype(x.dtype, np.floating):
            worst[k] = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=k)
        else:  # step counts, statuses, flags
            np.testing.assert_array_equal(x, y, err_msg=k)
    bitwise = sorted(k for k in worst if worst[k] == 0.0)
    print(f"\n[determinism] 1 vs 8 CPU devices, max abs difference per output: {worst}")
    print(f"[determinism] bitwise identical across device counts: {bitwise}")
    print(f"[determinism] overall max abs difference: {max(worst.values()):.3g}")
