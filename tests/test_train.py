import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from cfjax import checkpoint as ckpt
from cfjax.training import loop as ct
from cfjax.errors import CheckpointError, InputError


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def trained(mnist_small, tmp_path_factory):
    tr, te = mnist_small
    wd = tmp_path_factory.mktemp("clf")
    cfg = ct.TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, augment_shift=1, schedule="constant")
    res = ct.train_classifier(tr, te, ct.ClassifierConfig(widths=(16, 32, 32)), cfg, wd, progress=False)
    return res, wd, cfg


def test_classifier_training_lowers_loss_and_learns(trained, mnist_small):
    res, _, _ = trained
    assert len(res.history) == 2
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]
    # 10 classes: chance is 0.1; two short epochs on 1k real digits already do far better
    assert res.metrics["accuracy"] > 0.3
    assert res.history[1]["loss"] < res.history[0]["loss"]


def test_checkpoint_roundtrip_bit_identical(trained):
    res, wd, _ = trained
    back = ct.load_trained(wd, "classifier")
    assert _leaves_equal(back.params, res.params)
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    assert np.array_equal(np.asarray(back.module.apply(back.params, x)), np.asarray(res.module.apply(res.params, x)))


def test_load_or_train_reuses_and_refuses_other_config(trained, mnist_small):
    res, wd, cfg = trained
    tr, te = mnist_small
    again = ct.load_or_train_classifier(tr, te, ct.ClassifierConfig(widths=(16, 32, 32)), cfg, wd, progress=False)
    assert again.history == []  # came from the checkpoint, not retrained
    assert _leaves_equal(again.params, res.params)
    # a different architecture with the same workdir: the resume path refuses the checkpoint
    with pytest.raises(CheckpointError, match="widths"):
        ct.train_classifier(tr, te, ct.ClassifierConfig(widths=(8, 8, 8)), cfg, wd, progress=False)


def test_training_is_deterministic(mnist_small):
    tr, te = mnist_small
    cfg = ct.TrainConfig(epochs=1, batch_size=100)
    mc = ct.ClassifierConfig(widths=(8, 8, 8))
    a = ct.train_classifier(tr, te, mc, cfg, progress=False)
    b = ct.train_classifier(tr, te, mc, cfg, progress=False)
    assert _leaves_equal(a.params, b.params)


def test_vae_training_lowers_loss(mnist_small):
    tr, te = mnist_small
    res = ct.train_vae(tr, te, ct.VAEConfig(latent_dim=8), ct.TrainConfig(epochs=2, batch_size=64), progress=False)
    assert res.history[1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[1]["mse"] < res.history[0]["mse"]
    assert res.metrics["mse"] < 0.08  # predicting the mean image gives ~0.1


def test_resume_after_interrupted_training(mnist_small, tmp_path):
    tr, te = mnist_small
    mc = ct.ClassifierConfig(widths=(8, 8, 8))
    full = ct.train_classifier(tr, te, mc, ct.TrainConfig(epochs=2, batch_size=100), progress=False)
    one = ct.TrainConfig(epochs=2, batch_size=100)
    wd1 = tmp_path / "wd1"
    import unittest.mock as um

    orig_save = ckpt.save
    calls = {"n": 0}

    def crashing_save(path, tree, **kw):
        out = orig_save(path, tree, **kw)
        if str(path).endswith("last"):
            calls["n"] += 1
            if calls["n"] == 1:
                raise KeyboardInterrupt("simulated crash after epoch 1")
        return out

    with um.patch.object(ckpt, "save", crashing_save):
        with pytest.raises(KeyboardInterrupt):
            ct.train_classifier(tr, te, mc, one, wd1, progress=False)
    resumed = ct.train_classifier(tr, te, mc, one, wd1, progress=False)
    assert len(resumed.history) == 2
    assert _leaves_equal(resumed.params, full.params)


def test_bad_inputs_raise_clear_errors(mnist_small):
    tr, te = mnist_small
    with pytest.raises(InputError, match="train.images"):
        ct.train_classifier(tr._replace(images=tr.images[..., 0]), te, progress=False)
    with pytest.raises(InputError, match="train.images.*dtype"):
        ct.train_classifier(tr._replace(images=(tr.images * 255).astype(np.uint8)), te, progress=False)
    with pytest.raises(InputError, match="train.labels"):
        ct.train_classifier(tr._replace(labels=tr.labels + 10), te, ct.ClassifierConfig(num_classes=10), progress=False)
    with pytest.raises(InputError, match="schedule"):
        ct.train_classifier(tr, te, train_cfg=ct.TrainConfig(schedule="linear"), progress=False)


def test_corrupted_and_missing_checkpoint(trained, tmp_path):
    res, wd, _ = trained
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.restore(tmp_path / "nope")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(wd / "best", bad)
    # truncate the largest data file
    files = sorted((p for p in bad.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    big = files[-1]
    data = big.read_bytes()
    big.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        ckpt.restore(bad, res.params)
    # a meta.json that is not JSON
    bad2 = tmp_path / "bad2"
    shutil.copytree(wd / "best", bad2)
    (bad2 / ckpt.META).write_text("{not json")
    with pytest.raises(CheckpointError, match="readable"):
        ckpt.restore(bad2)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    tree = {"a": np.arange(4.0)}
    ckpt.save(tmp_path / "c", tree, kind="x")
    import orbax.checkpoint as ocp

    def boom(self, *a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", boom)
    with pytest.raises(OSError):
        ckpt.save(tmp_path / "c", {"a": np.zeros(4)}, kind="x")
    # the old checkpoint is intact and no temp dirs are left behind
    back, _ = ckpt.restore(tmp_path / "c")
    assert np.array_equal(back["a"], np.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_blur_augmentation_option():
    import jax
    import jax.numpy as jnp

    from cfjax.eval.metrics import gaussian_blur

    # off by default and absent from the recorded config (old checkpoints keep matching)
    assert "augment_blur" not in ct.TrainConfig().as_dict() and ct.TrainConfig(augment_blur=0.5).as_dict()["augment_blur"] == 0.5
    x = jax.random.uniform(jax.random.key(0), (400, 12, 12, 1))
    y = ct.random_blur(jax.random.key(1), x, 0.5)
    changed = np.any(np.asarray(y != x), axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6
    # every changed image is one of the three blurs of its original
    blurs = [np.asarray(gaussian_blur(x, s)) for s in (0.5, 1.0, 1.5)]
    for i in np.flatnonzero(changed)[:20]:
        assert any(np.array_equal(np.asarray(y[i]), b[i]) for b in blurs)
    assert np.array_equal(np.asarray(ct.random_blur(jax.random.key(1), x, 0.0)), np.asarray(x))
    with pytest.raises(InputError, match="augment_blur"):
        ct.fit(params={"w": jnp.zeros(1)}, loss_fn=None, eval_fn=None, train_arrays=(np.zeros((4, 1)),), test_arrays=(np.zeros((4, 1)),),
               cfg=ct.TrainConfig(augment_blur=2.0, batch_size=2), select="loss")


def test_flip_augmentation_option():
    import jax

    assert "augment_flip" not in ct.TrainConfig().as_dict() and ct.TrainConfig(augment_flip=True).as_dict()["augment_flip"] is True
    x = jax.random.uniform(jax.random.key(0), (400, 6, 7, 1))
    y = np.asarray(ct.random_flip(jax.random.key(1), x))
    xn = np.asarray(x)
    flipped = np.array([np.array_equal(y[i], xn[i, :, ::-1]) for i in range(len(xn))])
    same = np.array([np.array_equal(y[i], xn[i]) for i in range(len(xn))])
    assert np.all(flipped ^ same)  # each image either kept or mirrored left-right, never both/neither
    assert 0.4 < flipped.mean() < 0.6
