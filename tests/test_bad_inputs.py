"""Bad input at the public entry points: a clear error naming the argument, what was got and
what was expected, and nothing written. (More cases live next to their modules: test_data,
test_train, test_attack, test_parallel, test_mirror, test_attribution, test_*_cli; the full
table is in BUILD_NOTES.md.)"""


import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.training import loop as ct
from cfjax.cli import main
from cfjax.errors import CfjaxError, InputError

from cfjax.methods import attack as atk  # noqa: E402

W = jnp.linspace(-1.0, 1.0, 28 * 28 * 3).reshape(28 * 28, 3)


def logits(x):
    return x.reshape(-1) @ W


def _check_message(e, name):
    msg = str(e.value)
    assert name in msg and "expected" in msg and "got" in msg, msg


GOOD = np.full((2, 28, 28, 1), 0.5, np.float32)


@pytest.mark.parametrize(
    "x, what",
    [
        (GOOD[0], "rank-4"),  # missing batch axis
        (GOOD[:0], "empty batch"),
        ((GOOD * 255).astype(np.uint8), "dtype uint8"),
        (GOOD * 255, "values in [0, 1]"),  # 0..255 floats
        (np.concatenate([GOOD[:1], GOOD[1:] * 255]), "values in [0, 1]"),  # one image on 0..255
        (GOOD - 1.0, "values in [0, 1]"),
        (np.where(np.arange(784).reshape(1, 28, 28, 1) == 5, np.nan, GOOD).astype(np.float32), "non-finite"),
        (np.where(np.arange(784).reshape(1, 28, 28, 1) == 5, np.inf, GOOD).astype(np.float32), "non-finite"),
    ],
)
def test_pixel_attack_images(x, what):
    with pytest.raises(InputError) as e:
        atk.attack_pixels_batch(logits, jnp.asarray(x) if x.dtype != np.uint8 else x, jnp.ones(len(x), jnp.int32), steps=2)
    _check_message(e, "x0")
    assert what.split()[0] in str(e.value)


def test_pixel_attack_single_image_rank():
    with pytest.raises(InputError, match="x0.*rank-3"):
        atk.attack_pixels(logits, jnp.asarray(GOOD), 1, steps=2)


def test_latent_attack_nan_and_inf_latents():
    dec = lambda z: jnp.tile(jnp.tanh(z).mean(), (28, 28, 1)) * 0.5 + 0.5  # noqa: E731
    for bad in (jnp.nan, jnp.inf):
        with pytest.raises(InputError) as e:
            atk.attack_batch(dec, logits, jnp.zeros((3, 4)).at[1, 2].set(bad), jnp.array([0, 1, 2]), steps=2)
        _check_message(e, "z0")


def test_batch_of_one_works():
    r = atk.attack_pixels_batch(logits, jnp.asarray(GOOD[:1]), jnp.array([2]), steps=3)
    assert r.x.shape == (1, 28, 28, 1) and r.steps_taken.shape == (1,)


def _ds(images, labels):
    from cfjax.data import Dataset

    return Dataset(images=images, labels=labels.astype(np.int32), class_names=tuple(str(i) for i in range(10)), name="bad", attributes=None, attribute_names=(), split="train")


@pytest.mark.parametrize(
    "train_x, test_x, name, what",
    [
        (GOOD * 255, GOOD, "train.images", "values in [0, 1]"),
        (np.concatenate([GOOD[:1], GOOD[1:] * 255]), GOOD, "train.images", "values in [0, 1]"),
        (GOOD, np.full((2, 28, 28, 3), 0.5, np.float32), "test.images", "image shape"),  # wrong channels
        (GOOD, np.full((2, 32, 32, 1), 0.5, np.float32), "test.images", "image shape"),
        (GOOD[:0], GOOD, "train.images", "empty batch"),
    ],
)
def test_training_refuses_bad_images_and_writes_nothing(tmp_path, train_x, test_x, name, what):
    wd = tmp_path / "ckpt"
    with pytest.raises(InputError) as e:
        ct.train_classifier(_ds(train_x, np.arange(len(train_x)) % 10), _ds(test_x, np.arange(len(test_x)) % 10),
                            ct.ClassifierConfig(num_classes=10), ct.TrainConfig(epochs=1, batch_size=2), workdir=wd, progress=False)
    _check_message(e, name)
    assert what.split()[0] in str(e.value)
    assert not wd.exists() or not any(wd.iterdir())


def test_cli_bad_inputs_leave_no_output(tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        (["mirror", "--data", "mnist5k", "--smoke", "--source", "3", "--target", "3"], "target"),
        (["mirror", "--data", "mnist5k", "--smoke", "--source", "3", "--target", "12"], "target"),
        (["explain", "--method", "attack", "--data", "cifar", "--smoke"], "data"),
        (["global", "--method", "attack", "--data", "mnist5k", "--smoke", "--batch-size", "0"], "--batch-size"),
        (["mirror", "--data", "mnist5k", "--smoke", "--source", "3", "--target", "8", "--decoder-warm-start", str(tmp_path / "nope")],
         "decoder_warm_start"),
        (["train", "mirror-decoder", "--data", "mnist5k", "--smoke", "--warm-start", str(tmp_path / "nope")], "decoder_warm_start"),
    ]
    for argv, name in cases:
        assert main([*argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err
        assert name in err and "expected" in err, (argv, err)
        assert not (out / "summary.json").exists() and not list(out.rglob("*.tmp*")) if out.exists() else True


def test_errors_are_value_or_file_errors():
    from cfjax.errors import CheckpointError, DataNotFoundError

    assert issubclass(InputError, ValueError) and issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointError, CfjaxError)


def test_debug_nans_flag_turns_silent_nans_into_errors(monkeypatch):
    import jax

    from cfjax import cli

    seen = {}

    def _nan_parser(p):
        def run(a):
            seen["flag"] = bool(jax.config.jax_debug_nans)
            jax.jit(lambda x: jnp.log(x))(jnp.array(-1.0)).block_until_ready()  # NaN

        return run

    monkeypatch.setitem(cli.SUBCOMMANDS, "nan-probe", ("test only", _nan_parser))
    try:
        assert main(["nan-probe"]) == 0 and seen["flag"] is False  # silent NaN without the flag
        with pytest.raises(FloatingPointError, match="nan"):
            main(["--debug-nans", "nan-probe"])
        assert seen["flag"] is True
    finally:
        jax.config.update("jax_debug_nans", False)
