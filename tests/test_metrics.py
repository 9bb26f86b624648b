"""Evaluation metrics against scipy / numpy references and hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from cfjax.eval import metrics
from cfjax.errors import InputError


# ------------------------------------------------------------------------------ blur
@pytest.mark.parametrize("sigma,radius", [(1.0, None), (2.0, None), (0.7, 2), (1.5, 5)])
def test_blur_matches_scipy(sigma, radius):
    x = np.random.default_rng(0).random((2, 17, 13, 2)).astype(np.float32)
    got = np.asarray(jax.jit(lambda v: metrics.gaussian_blur(v, sigma, radius))(jnp.asarray(x)))
    assert got.shape == x.shape and got.dtype == np.float32
    r = int(np.ceil(3 * sigma)) if radius is None else radius
    for i in range(2):
        for c in range(2):
            want = scipy.ndimage.gaussian_filter(x[i, ..., c].astype(np.float64), sigma, mode="reflect", radius=r)
            np.testing.assert_allclose(got[i, ..., c], want, atol=1e-5)
    if radius is None:  # sigma 1, 2: ceil(3 sigma) is also scipy's own truncate=3 radius
        want = scipy.ndimage.gaussian_filter(x[0, ..., 0].astype(np.float64), sigma, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(got[0, ..., 0], want, atol=1e-5)


def test_blur_basics():
    k = metrics.gaussian_kernel(1.0)
    assert k.shape == (7,) and k.sum() == pytest.approx(1.0) and np.all(k[:3] < k[1:4])
    const = jnp.full((1, 6, 5, 3), 0.3)
    np.testing.assert_allclose(metrics.gaussian_blur(const), 0.3, atol=1e-6)
    with pytest.raises(InputError, match="sigma"):
        metrics.gaussian_blur(const, 0.0)
    with pytest.raises(InputError, match="images"):
        metrics.gaussian_blur(jnp.zeros((5, 5, 1)))


# ---------------------------------------------------------------------- distances
def test_l1_l2_hand_numbers():
    x = jnp.zeros((3, 2, 2, 1))
    y = x.at[0, 0, 0, 0].set(1.0).at[1].set(0.5).at[2, :, :, 0].set(jnp.array([[0.1, 0.2], [0.3, 0.4]]))
    np.testing.assert_allclose(metrics.l1(x, y), [0.25, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(metrics.l2(x, y), [1.0, 1.0, np.sqrt(0.3)], rtol=1e-6)
    np.testing.assert_allclose(metrics.l1(y, x), metrics.l1(x, y))
    np.testing.assert_allclose(jax.jit(metrics.l2)(x, y), metrics.l2(x, y))
    with pytest.raises(InputError, match="shape"):
        metrics.l1(x, y[:2])


def test_perceptual_distance():
    def feats(v):
        return [jnp.concatenate([v, 1 - v, v**2], -1), v.reshape(v.shape[0], -1)]  # a map and a vector

    r = np.random.default_rng(2).random((3, 5, 5, 1)).astype(np.float32)
    s = np.random.default_rng(3).random((3, 5, 5, 1)).astype(np.float32)
    np.testing.assert_allclose(metrics.perceptual_distance(feats, r, r), 0, atol=1e-7)
    d = np.asarray(jax.jit(lambda a, b: metrics.perceptual_distance(feats, a, b))(r, s))
    assert d.shape == (3,) and np.all(d > 0) and np.all(d <= 8)
    np.testing.assert_allclose(d, metrics.perceptual_distance(feats, s, r), rtol=1e-6)
    # hand-checked: one-channel-pair features [v, 1 - v] at a single pixel
    two = lambda v: jnp.concatenate([v, 1 - v], -1)  # noqa: E731  (a single array is accepted)
    a, b = jnp.ones((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1))  # unit features (1, 0) vs (0, 1)
    assert float(metrics.perceptual_distance(two, a, b)[0]) == pytest.approx(2.0, rel=1e-6)
    # the channel normalisation makes it scale-invariant per position
    lin = lambda v: [jnp.concatenate([v, 2 * v + 0.1], -1)]  # noqa: E731
    np.testing.assert_allclose(metrics.perceptual_distance(lin, r, s), metrics.perceptual_distance(
        lambda v: [10 * f for f in lin(v)], r, s), rtol=1e-5)


# --------------------------------------------------------- validity and denoised validity
def test_validity_and_fail_rate():
    logits = jnp.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(metrics.validity(logits, jnp.array([1, 1, 1])), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(metrics.validity(jax.nn.softmax(logits), jnp.array([1, 0, 0])), [1.0, 1.0, 0.0])
    assert float(metrics.fail_rate(jnp.array([True, False, False]), jnp.array([True, True, False]))) == 0.5
    assert float(metrics.fail_rate(jnp.array([1.0, 0.0, 0.0, 1.0]))) == 0.5
    assert float(metrics.fail_rate(jnp.array([False]), jnp.array([False]))) == 0.0  # nothing masked in
    assert float(jax.jit(metrics.fail_rate)(jnp.array([False, True]), jnp.array([True, True]))) == 0.5


def test_denoised_validity_catches_checkerboard_adversary():
    h = w = 12
    cb = (np.indices((h, w)).sum(0) % 2 * 2 - 1).astype(np.float32)  # +-1 checkerboard
    smooth = np.where(np.arange(w) < w // 2, 1.0, -1.0)[None, :].repeat(h, 0).astype(np.float32)

    def linear(wt, margin=0.5):
        # logits [margin, <w, x>]: class 1 iff the w-component exceeds the margin. (With margin 0
        # the blurred checkerboard keeps a tiny positive residue: the truncated Gaussian does not
        # cancel frequency pi exactly.)
        def classify(x):
            s = jnp.sum(x[..., 0] * wt, axis=(1, 2))
            return jnp.stack([jnp.full_like(s, margin), s], -1)

        return classify

    blank = np.full((1, h, w, 1), 0.5, np.float32)  # <cb, blank> = 0: class 0
    adv = blank + 0.05 * cb[None, ..., None]  # +-0.05 pixel noise; score 0.05 * 144 = 7.2
    clf = linear(cb)
    t = jnp.array([1])
    assert float(metrics.validity(clf(blank), t)[0]) == 0.0
    assert float(metrics.validity(clf(adv), t)[0]) == 1.0  # valid...
    assert float(metrics.denoised_validity(clf, adv, t)[0]) == 0.0  # ...but only as noise
    blurred_score = float(clf(metrics.gaussian_blur(jnp.asarray(adv)))[0, 1])
    assert abs(blurred_score) < 0.1 * 7.2
    # a low-frequency (semantic-like) change of the same size survives the blur
    clf_s = linear(smooth)
    sem = blank + 0.05 * smooth[None, ..., None]
    assert float(metrics.validity(clf_s(sem), t)[0]) == 1.0
    assert float(metrics.denoised_validity(clf_s, sem, t)[0]) == 1.0
    both = jnp.concatenate([jnp.asarray(adv), jnp.asarray(adv)])
    np.testing.assert_array_equal(
        jax.jit(lambda x: metrics.denoised_validity(clf, x, jnp.array([1, 0])))(both), [0.0, 1.0])


# ---------------------------------------------------------------------------------- FID
def _ref_fid(a, b):
    """The textbook formula with scipy's sqrtm (ddof=1 covariances), float64."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _chunked(feats, chunk, garbage, m=None):
    """Accumulate in fixed-size chunks; the last one padded with masked garbage rows."""
    d = feats.shape[1]
    m = metrics.fid_moments_init(d) if m is None else m
    upd = jax.jit(metrics.fid_moments_update)
    for s in range(0, len(feats), chunk):
        part = feats[s : s + chunk]
        pad = np.full((chunk - len(part), d), garbage, np.float32)
        mask = np.arange(chunk) < len(part)
        m = upd(m, jnp.asarray(np.concatenate([part, pad]).astype(np.float32)), jnp.asarray(mask))
    return m


def test_fid_from_chunked_masked_moments_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)).astype(np.float32)
    b = (rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) * 0.5 + 0.4).astype(np.float32)
    ma = _chunked(a, 128, 1e6)  # 3 chunks, 84 garbage rows in the last
    assert ma.sum.dtype == jnp.float32 and float(ma.n) == 300
    mb = _chunked(b, 100, np.nan)  # NaN padding must not leak either
    ref = _ref_fid(a.astype(np.float64), b.astype(np.float64))
    assert ref > 1.0
    np.testing.assert_allclose(metrics.fid_from_moments(ma, mb), ref, rtol=1e-3)
    np.testing.assert_allclose(metrics.fid(a, b), ref, rtol=1e-6)
    np.testing.assert_allclose(metrics.fid(jnp.asarray(a), jnp.asarray(b)), ref, rtol=1e-6)
    # merging per-shard moments = accumulating everything in one
    merged = metrics.fid_moments_merge(_chunked(a[:100], 64, 1e6), _chunked(a[100:], 64, -1e6))
    np.testing.assert_allclose(merged.n, ma.n)
    np.testing.assert_allclose(merged.outer, ma.outer, rtol=1e-5)
    np.testing.assert_allclose(metrics.fid_from_moments(merged, mb), ref, rtol=1e-3)
    # FID(x, x) ~ 0; FID is symmetric
    assert abs(metrics.fid(a, a)) < 1e-9
    assert abs(metrics.fid_from_moments(ma, ma)) < 1e-6
    np.testing.assert_allclose(metrics.fid_from_moments(mb, ma), metrics.fid_from_moments(ma, mb), rtol=1e-9)


def test_fid_float32_accumulation_precision():
    """ReLU-like features of moderate scale (mean ~0.6, std ~0.8), 20k rows in 20 float32 chunks."""
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(32, 32)) / np.sqrt(32)
    a = np.maximum(rng.normal(size=(20000, 32)) @ mix + 0.3, 0).astype(np.float32) * 2
    b = np.maximum(rng.normal(size=(20000, 32)) @ mix + 0.4, 0).astype(np.float32) * 2
    ref = _ref_fid(a.astype(np.float64), b.astype(np.float64))
    got = metrics.fid_from_moments(_chunked(a, 1000, 1e6), _chunked(b, 1000, 1e6))
    np.testing.assert_allclose(got, ref, rtol=1e-3)


def test_frechet_distance_edge_cases():
    assert metrics.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)) == pytest.approx(2.0)
    # 1-d: (mu1 - mu2)^2 + (s1 - s2)^2 with standard deviations s
    assert metrics.frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + (2 - 1) ** 2)
    # rank-deficient covariances (fewer samples than dimensions): finite, real, matches scipy
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 20)), rng.normal(size=(12, 20)) + 0.5
    got = metrics.fid(a, b)
    assert np.isfinite(got) and got > 0
    np.testing.assert_allclose(got, _ref_fid(a, b), rtol=1e-4)
    with pytest.raises(InputError, match="n >= 2"):
        metrics.fid(a[:1], b)
    with pytest.raises(InputError, match="at least 2"):
        metrics.fid_from_moments(metrics.fid_moments_init(20), metrics.fid_moments_init(20))
    with pytest.raises(InputError, match="feats"):
        metrics.fid_moments_update(metrics.fid_moments_init(3), jnp.zeros((4, 2)))
