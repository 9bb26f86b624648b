"""The small pieces both training loops compose (``cfjax.training.loop``: ``adam``,
``train_step``, ``eval_sums``, ``restore_last``/``save_last``), ``checkpoint.matches`` and
``io.jsonable``. Fast: tiny linear models, no classifier."""

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax import checkpoint as ckpt
from cfjax.errors import CheckpointError, InputError
from cfjax.io import jsonable
from cfjax.training import loop


def _loss(params, batch, key):
    x, y = batch
    r = x @ params["w"] + params["b"] - y
    return jnp.mean(r**2), {"max_abs": jnp.max(jnp.abs(r))}


def _data(n=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.25).astype(np.float32)


def test_train_step_is_one_optax_update():
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    tx = loop.adam(1e-2, "constant", 10)
    batch = tuple(map(jnp.asarray, _data()))
    state, loss, aux = jax.jit(functools.partial(loop.train_step, loss_fn=_loss, tx=tx))(
        {"params": params, "opt_state": tx.init(params)}, batch, None)
    grads = jax.grad(lambda p: _loss(p, batch, None)[0])(params)
    updates, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(params), params)
    want = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(loss) == pytest.approx(float(_loss(params, batch, None)[0])) and set(aux) == {"max_abs"}


def test_adam_schedules_and_a_bad_name():
    params = {"w": jnp.ones(2)}
    cos = loop.adam(1.0, "cosine", 4)
    state = cos.init(params)
    assert cos.update(params, state, params)[0]["w"].shape == (2,)
    with pytest.raises(InputError, match=r"^TrainConfig\.schedule: expected 'cosine' or 'constant', got 'linear'"):
        loop.adam(1.0, "linear", 4, name="TrainConfig.schedule")


def test_eval_sums_adds_the_chunks():
    x, y = _data(10)

    def step(p, batch):
        xb, yb = batch
        return {"sq": jnp.sum((xb @ p - yb) ** 2), "count": xb.shape[0]}

    p = jnp.ones(3)
    sums = loop.eval_sums(jax.jit(step), p, (x, y), 4)  # chunks of 4, 4, 2
    assert sums["count"] == 10.0
    assert sums["sq"] == pytest.approx(float(np.sum((x @ np.ones(3) - y) ** 2)), rel=1e-5)


def test_restore_last_and_save_last(tmp_path):
    state = {"params": {"w": np.arange(3.0, dtype=np.float32)}}
    assert loop.restore_last(None, state, "m-train-state", {}) == (state, None)
    assert loop.restore_last(tmp_path, state, "m-train-state", {}) == (state, None)
    loop.save_last(None, state, "m-train-state", {}, {"epoch": 1})  # no workdir: nothing written
    loop.save_last(tmp_path, state, "m-train-state", {"a": 1}, {"epoch": 2, "history": [{"loss": float("nan")}]})
    back, extra = loop.restore_last(tmp_path, {"params": {"w": np.zeros(3, np.float32)}}, "m-train-state", {"a": 1})
    np.testing.assert_array_equal(back["params"]["w"], state["params"]["w"])
    assert extra["epoch"] == 2 and math.isnan(extra["history"][0]["loss"])  # a NaN history reads back as NaN
    with pytest.raises(CheckpointError, match="another config"):
        loop.restore_last(tmp_path, state, "m-train-state", {"a": 2})


def test_checkpoint_matches(tmp_path):
    config = {"model": {"widths": (8, 16)}, "lr": np.float32(0.5), "n": np.int64(3), "where": Path("x")}
    ckpt.save(tmp_path / "best", {"w": np.ones(2)}, kind="vae", config=config)
    assert ckpt.matches(tmp_path / "best", "vae", config)
    assert ckpt.matches(tmp_path / "best", "vae", {"model": {"widths": [8, 16]}, "lr": 0.5, "n": 3, "where": "x"})
    assert not ckpt.matches(tmp_path / "best", "classifier", config)
    assert not ckpt.matches(tmp_path / "best", "vae", {**config, "n": 4})
    assert not ckpt.matches(tmp_path / "missing", "vae", config)
    (tmp_path / "best" / ckpt.META).write_text("{not json")
    assert not ckpt.matches(tmp_path / "best", "vae", config)


def test_jsonable():
    obj = {1: (np.float32(0.5), np.int64(2), float("nan")), "p": Path("a/b"), "x": jnp.float32(1.5)}
    assert jsonable(obj) == {"1": [0.5, 2, None], "p": "a/b", "x": 1.5}
    kept = jsonable(obj, keep_nonfinite=True)
    assert kept["1"][:2] == [0.5, 2] and math.isnan(kept["1"][2])
