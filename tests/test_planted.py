"""Planted cues (issue 33): round trips, planting strength, ground-truth reliance, the smoke benchmark."""

import jax
import numpy as np
import pytest

import cfjax.data as cd
from cfjax.data import planted as pl
from cfjax.errors import InputError


@pytest.fixture(scope="module")
def digits():
    ds = cd.load("mnist5k", "test")
    return ds.images[:200], ds.labels[:200]


@pytest.mark.parametrize("name", pl.CUE_ORDER)
def test_apply_then_measure_returns_the_value_set(digits, name):
    x, _ = digits
    cue = pl.make_cues()[name]
    for v in (cue.off, cue.on, 0.5 * (cue.off + cue.on)):
        m = np.asarray(cue.measure(cue.apply(x, v, jax.random.key(0))))
        err = np.abs(m - v)
        assert np.median(err) <= cue.tol / 2 + 1e-6, (name, v, np.median(err))
        assert (err <= cue.tol).mean() >= 0.93, (name, v, (err <= cue.tol).mean())
    assert cue.tol < abs(cue.on - cue.off) / 2


def test_every_cue_reads_back_its_level_with_all_cues_set(digits):
    x, y = digits
    p = pl.randomize(x, y, jax.random.key(1))
    m = pl.measure_all_np(p.images)
    cues = pl.make_cues()
    for i, n in enumerate(pl.CUE_ORDER):
        c = cues[n]
        assert ((m[:, i] > (c.on + c.off) / 2) == p.on[n]).mean() >= 0.97, n
        assert 0.35 < p.on[n].mean() < 0.65, n  # independent of anything, half on
    assert p.images.min() >= 0.0 and p.images.max() <= 1.0


def test_planting_strength_is_the_share_that_agrees_with_the_label():
    y = np.repeat(np.array([3, 8, 5]), 2000)
    x = np.zeros((len(y), 28, 28, 1), np.float32)
    on, _ = pl.draw_levels(y, jax.random.key(2), source=3, target=8, planted=("patch", "tag"), rho=0.9)
    for n in ("patch", "tag"):
        agree = np.where(y == 8, on[n], ~on[n])[y != 5]
        assert abs(agree.mean() - 0.9) < 0.02, n
        assert abs(on[n][y == 5].mean() - 0.5) < 0.05  # other classes: independent
    assert abs(on["stripe"][y == 8].mean() - 0.5) < 0.05  # unplanted: independent
    assert abs(np.corrcoef(on["patch"][y != 5], on["tag"][y != 5])[0, 1] - 0.64) < 0.05  # (2 rho - 1)^2
    null, _ = pl.draw_levels(y, jax.random.key(2), source=3, target=8, planted=("patch",), rho=0.5)
    assert abs(null["patch"][y == 8].mean() - null["patch"][y == 3].mean()) < 0.05
    with pytest.raises(InputError, match="rho"):
        pl.draw_levels(y, jax.random.key(0), source=3, target=8, planted=("patch",), rho=0.3)
    with pytest.raises(InputError, match="planted"):
        pl.draw_levels(y, jax.random.key(0), source=3, target=8, planted=("glitter",), rho=0.9)
    del x
