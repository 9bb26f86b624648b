"""Metrics and descriptors against slow, obviously-correct references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from cfjax import metrics
from cfjax.data import descriptors as desc


def test_blur_matches_scipy():
    x = np.random.default_rng(0).random((2, 17, 13, 2)).astype(np.float32)
    got = np.asarray(metrics.gaussian_blur(jnp.asarray(x), 1.0))
    for i in range(2):
        for c in range(2):
            want = scipy.ndimage.gaussian_filter(x[i, ..., c].astype(np.float64), 1.0, mode="reflect", truncate=3.0)
            np.testing.assert_allclose(got[i, ..., c], want, atol=1e-5)


def _ref_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_from_chunked_masked_moments_matches_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 6)).astype(np.float32)
    b = (rng.normal(size=(250, 6)) * 1.3 + 0.4).astype(np.float32)
    m = metrics.fid_moments_init(6)
    for s in range(0, 300, 128):  # 3 chunks, the last padded with garbage rows that are masked
        chunk = a[s : s + 128]
        pad = np.full((128 - len(chunk), 6), 1e6, np.float32)
        mask = np.arange(128) < len(chunk)
        m = metrics.fid_moments_update(m, jnp.asarray(np.concatenate([chunk, pad])), jnp.asarray(mask))
    mb = metrics.fid_moments_update(metrics.fid_moments_init(6), jnp.asarray(b))
    np.testing.assert_allclose(metrics.fid_from_moments(m, mb), _ref_fid(a.astype(np.float64), b.astype(np.float64)), rtol=2e-3)
    assert abs(metrics.fid(jnp.asarray(a), jnp.asarray(a))) < 1e-3


def test_l1_l2_and_perceptual():
    x = jnp.zeros((2, 2, 2, 1))
    y = x.at[0, 0, 0, 0].set(1.0).at[1].set(0.5)
    np.testing.assert_allclose(metrics.l1(x, y), [0.25, 0.5])
    np.testing.assert_allclose(metrics.l2(x, y), [1.0, 1.0])

    def feats(v):
        return [jnp.concatenate([v, 1 - v, v**2], -1)]

    r = np.random.default_rng(2).random((3, 5, 5, 1)).astype(np.float32)
    s = np.random.default_rng(3).random((3, 5, 5, 1)).astype(np.float32)
    assert np.allclose(metrics.perceptual_distance(feats, r, r), 0)
    d = metrics.perceptual_distance(feats, r, s)
    assert np.all(d > 0)
    np.testing.assert_allclose(d, metrics.perceptual_distance(feats, s, r), rtol=1e-6)


def test_denoised_validity_catches_checkerboard_adversary():
    h = w = 12
    cb = (np.indices((h, w)).sum(0) % 2 * 2 - 1).astype(np.float32)  # +-1 checkerboard

    def classify(x):  # class 1 iff the checkerboard component is positive
        s = jnp.sum(x[..., 0] * cb, axis=(1, 2))
        return jnp.stack([jnp.zeros_like(s) + 0.5, s], -1)

    blank = np.full((1, h, w, 1), 0.5, np.float32)
    adv = blank + 0.05 * cb[None, ..., None]
    assert int(jnp.argmax(classify(adv), -1)[0]) == 1  # valid before blurring
    assert float(metrics.validity(classify(adv), jnp.array([1]))[0]) == 1.0
    assert float(metrics.denoised_validity(classify, adv, jnp.array([1]))[0]) == 0.0
    assert float(metrics.fail_rate(jnp.array([True, False, False]), jnp.array([True, True, False]))) == 0.5


def _ref_desc(img):
    """Slow loop reference for area, width, height, slant."""
    g = img[..., 0].astype(np.float64)
    m = g > 0.5
    rows = [r for r in range(g.shape[0]) if m[r].any()]
    cols = [c for c in range(g.shape[1]) if m[:, c].any()]
    mass = g.sum()
    rb = sum(r * g[r, c] for r in range(g.shape[0]) for c in range(g.shape[1])) / mass
    cb = sum(c * g[r, c] for r in range(g.shape[0]) for c in range(g.shape[1])) / mass
    mu11 = sum(g[r, c] * (r - rb) * (c - cb) for r in range(g.shape[0]) for c in range(g.shape[1]))
    mu02 = sum(g[r, c] * (r - rb) ** 2 for r in range(g.shape[0]) for c in range(g.shape[1]))
    return m.sum(), np.arctan(-mu11 / mu02), cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1


def test_descriptors_against_loops_on_real_digits():
    from cfjax import data as cdata

    ds = cdata.load("mnist5k", "test", limit=6)
    d = np.asarray(desc.compute_descriptors(jnp.asarray(ds.images)))
    for i in range(6):
        area, slant, width, height = _ref_desc(ds.images[i])
        np.testing.assert_allclose(d[i, [0, 2, 3, 4]], [area, slant, width, height], rtol=1e-4, atol=1e-4)


def test_descriptors_on_synthetic_shapes():
    x = np.zeros((3, 28, 28, 1), np.float32)
    x[0, 4:24, 12:15] = 1  # 3-px vertical bar
    x[1, 4:24, 10:17] = 1  # 7-px vertical bar
    for r in range(4, 24):  # leaning right: columns shift right going up
        c = 14 + (14 - r) // 3
        x[2, r, c : c + 3] = 1
    d = np.asarray(desc.compute_descriptors(jnp.asarray(x)))
    names = desc.descriptor_names("digits")
    i = {n: j for j, n in enumerate(names)}
    assert d[0, i["width"]] == 3 and d[0, i["height"]] == 20 and d[0, i["area"]] == 60
    # 2*area/perimeter: 2*60/46 for the 3x20 bar, 2*140/54 for the 7x20 one
    assert d[0, i["thickness"]] == pytest.approx(120 / 46) and d[1, i["thickness"]] == pytest.approx(280 / 54)
    assert abs(d[0, i["slant"]]) < 1e-6 and d[2, i["slant"]] > 0.2
    c = np.asarray(desc.compute_descriptors(jnp.asarray(x[:1]), "clothing"))
    assert c.shape == (1, len(desc.descriptor_names("clothing")))
    assert c[0, 2] == pytest.approx(1.0 - np.abs(x[0, ..., 0] - x[0, :, ::-1, 0]).mean(), abs=1e-6)
    # batched == per image under jit
    f = jax.jit(desc.compute_descriptors)
    np.testing.assert_allclose(f(jnp.asarray(x)), np.concatenate([f(jnp.asarray(x[j : j + 1])) for j in range(3)]), rtol=1e-6)


def test_real_digits_ones_are_narrower_than_zeros():
    from cfjax import data as cdata

    ds = cdata.load("mnist5k", "test")
    d = desc.compute_descriptors_np(ds.images)
    assert np.all(np.isfinite(d))
    w = desc.descriptor_names().index("width")
    assert d[ds.labels == 1, w].mean() < d[ds.labels == 0, w].mean() - 5
    st = desc.fit_standardizer(d)
    b = np.asarray(desc.binarize(d, st))
    assert set(np.unique(b)) <= {0.0, 1.0} and 0.3 < b.mean() < 0.7
