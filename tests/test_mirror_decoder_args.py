"""``train_mirror_decoder`` refuses bad optimisation settings (learning rate, steps, batch size,
the Adam decays, the logging/checkpoint/eval counts) before any work, with an ``InputError``
naming the field. Fast: a toy classifier, and the tests fail if a decoder is built or compiled."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.errors import InputError
from cfjax.models import ClassifierFns
from cfjax.training import mirror_decoder as md

K, C = 3, 4


def _parts(n: int = 64):
    """A toy GAP classifier (no skips, F = the 2x2x4 image) and ``n`` images with labels."""
    W = jax.random.normal(jax.random.key(0), (K, C))
    clf = ClassifierFns.from_gap(lambda x: [x], W, jnp.zeros(K))
    images = np.asarray(jax.random.uniform(jax.random.key(3), (n, 2, 2, C)))
    return clf, images, np.arange(n, dtype=np.int32) % K


@pytest.fixture
def no_work(monkeypatch):
    """Building a decoder or compiling anything fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("training work started before the arguments were checked")

    monkeypatch.setattr(md, "build_decoder", refuse)
    monkeypatch.setattr(md, "_cached_jit", refuse)


BAD = [
    ("learning_rate", float("nan")),
    ("learning_rate", float("inf")),
    ("learning_rate", 0.0),
    ("learning_rate", -2e-4),
    ("learning_rate", "2e-4"),
    ("learning_rate", None),
    ("learning_rate", True),
    ("steps", 0),
    ("steps", -3),
    ("steps", 2.5),
    ("steps", True),
    ("batch_size", 0),
    ("batch_size", -1),
    ("batch_size", 16.0),
    ("log_every", 0),
    ("checkpoint_every", 0),
    ("eval_examples", 0),
    ("b1", 1.0),
    ("b2", float("nan")),
]


@pytest.mark.parametrize("field, value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_optimisation_settings_are_refused_before_any_work(field, value, no_work, tmp_path):
    clf, images, labels = _parts()
    cfg = dataclasses.replace(md.MirrorDecoderConfig.smoke(), **{field: value})
    with pytest.raises(InputError, match=rf"^MirrorDecoderConfig\.{field}: expected .*, got "):
        md.train_mirror_decoder(clf, (images, labels), cfg, workdir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_a_batch_larger_than_the_training_set_is_refused(no_work, tmp_path):
    """``batch_size=1000`` on 64 images used to spend over a minute on one step."""
    clf, images, labels = _parts(64)
    cfg = dataclasses.replace(md.MirrorDecoderConfig.smoke(), batch_size=1000)
    with pytest.raises(InputError, match=r"^MirrorDecoderConfig\.batch_size: expected at most the number of training images \(64\), got 1000"):
        md.train_mirror_decoder(clf, (images, labels), cfg, workdir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_the_job_config_refuses_them_under_its_own_field_name():
    """``MirrorJobConfig.validate`` runs the same checks (no data loaded), naming ``decoder.<field>``."""
    from cfjax.jobs.mirror import MirrorJobConfig

    job = MirrorJobConfig.smoke()
    for field, value in (("learning_rate", float("nan")), ("b2", 1.5), ("log_every", 0)):
        bad = dataclasses.replace(job, decoder=dataclasses.replace(job.decoder, **{field: value}))
        with pytest.raises(InputError, match=rf"^decoder\.{field}: expected"):
            bad.validate()


def test_good_values_pass_validation():
    """Python and numpy numbers are accepted; the presets and the smoke config validate."""
    for cfg in (md.MirrorDecoderConfig(), md.MirrorDecoderConfig.robust(), md.MirrorDecoderConfig.smoke()):
        cfg.validate()
    dataclasses.replace(md.MirrorDecoderConfig(), learning_rate=np.float32(1e-3), steps=np.int64(5), batch_size=1, b1=0.0).validate()
