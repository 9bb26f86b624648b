"""Issue 27: MedMNIST+ .npz data, dataset specs, CelebA tasks, the ResNet, the high-resolution
Mirror decoder path. Tiny widths at full resolution; no data files are committed (the synthetic
generator writes them to tmp_path)."""

import socket
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax.data as cdata
from cfjax.data import medmnist as mm
from cfjax.data.synthetic import SHAPE_CLASSES, draw_shapes, write_medmnist_npz
from cfjax.errors import DataNotFoundError, InputError
from cfjax.models import ResNet, bind_classifier, head_weights
from cfjax.models.mirror_decoder import MirrorDecoder
from cfjax.models.resnet import binary_two_logit

TINY = dict(widths=(8, 8, 16, 16), groups=4)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("compressed", [False, True])
def test_synthetic_npz_round_trip(tmp_path, compressed):
    p = write_medmnist_npz(tmp_path, 32, n_train=40, n_val=8, n_test=16, seed=3, compressed=compressed)
    assert p.name == "bloodmnist_32.npz"
    raw = np.load(p)
    assert raw["train_images"].dtype == np.uint8 and raw["train_images"].shape == (40, 32, 32, 3)
    assert raw["train_labels"].shape == (40, 1) and sorted(np.bincount(raw["train_labels"][:, 0])) == [5] * 8
    x, y, names = mm.read_split(p, "train", 32, 8)
    assert isinstance(x, np.memmap) != compressed  # stored members are memory-mapped, deflated ones read
    np.testing.assert_array_equal(np.asarray(x), raw["train_images"])
    ds = cdata.load("bloodmnist", "test", data_dir=tmp_path, size=32)
    assert ds.images.shape == (16, 32, 32, 3) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images * 255, raw["test_images"], atol=1e-3)
    np.testing.assert_array_equal(ds.labels, raw["test_labels"][:, 0])
    assert ds.class_names == SHAPE_CLASSES and ds.num_classes == 8
    assert len(cdata.load("bloodmnist@32", "all", data_dir=tmp_path)) == 64
    assert len(cdata.load("bloodmnist@32", "all", data_dir=tmp_path, limit=45)) == 45  # crosses train -> val
    # same arguments, same file content; 28 px is MedMNIST's unsuffixed file
    assert write_medmnist_npz(tmp_path / "b", 28, n_train=8, n_val=8, n_test=8).name == "bloodmnist.npz"


def test_shapes_are_the_shapes():
    """Class is the shape: a disk fills its centre, a ring does not, a square fills its corners
    more than a disk of the same size (drawn without jitter noise: compare dark-pixel masks)."""
    x = draw_shapes(np.repeat(np.arange(8), 20), 64, seed=0).astype(np.float32) / 255
    dark = x.mean(-1) < x.mean((1, 2, 3))[:, None, None] - 0.1
    cover = dark.reshape(8, 20, 64, 64).mean((1, 2, 3))
    assert cover.min() > 0.03 and cover[4] < cover[0]  # ring covers less than the disk
    assert draw_shapes(np.array([0, 1]), 28, seed=1).tobytes() == draw_shapes(np.array([0, 1]), 28, seed=1).tobytes()
    with pytest.raises(InputError, match="labels"):
        draw_shapes(np.array([8]), 32)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_medmnist_format_errors_name_file_key_and_expectation(tmp_path):
    good = dict(train_images=np.zeros((4, 16, 16, 3), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    with pytest.raises(DataNotFoundError, match=r"bloodmnist_16\.npz.*not found.*medmnist"):
        cdata.load("bloodmnist", data_dir=tmp_path, size=16)
    with pytest.raises(DataNotFoundError, match="data_dir.*does not exist"):
        cdata.load("bloodmnist", data_dir=tmp_path / "nope", size=16)
    cases = [
        ({"train_images": good["train_images"]}, r"key 'train_labels', got keys \['train_images'\]"),
        ({**good, "train_images": np.zeros((4, 16, 16, 3), np.float32)}, "key 'train_images': expected dtype uint8, got float32"),
        ({**good, "train_images": np.zeros((4, 16, 16, 2), np.uint8)}, r"key 'train_images': expected shape \[N, H, W\] or \[N, H, W, 3\]"),
        ({**good, "train_images": np.zeros((4, 20, 20, 3), np.uint8)}, "expected 16x16 images.*got 20x20"),
        ({**good, "train_labels": np.zeros((4, 2), np.uint8)}, r"key 'train_labels': expected shape \[N, 1\].*got \(4, 2\)"),
        ({**good, "train_labels": np.zeros((3, 1), np.uint8)}, "expected 4 labels"),
        ({**good, "train_labels": np.full((4, 1), 9, np.uint8)}, r"class indices in 0..7, got range \[9, 9\]"),
        ({**good, "train_labels": np.zeros((4, 1), np.float32)}, "expected integer labels"),
    ]
    for arrays, msg in cases:
        p = _npz(tmp_path / "bloodmnist_16.npz", **arrays)
        with pytest.raises(InputError, match=r"bloodmnist_16\.npz.*" + msg):
            cdata.load("bloodmnist", "train", data_dir=tmp_path, size=16)
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="bloodmnist_16.npz.*expected a MedMNIST .npz"):
        cdata.load("bloodmnist", "train", data_dir=tmp_path, size=16)
    # grey [N, H, W] MedMNIST files get a channel axis
    _npz(tmp_path / "bloodmnist_16.npz", train_images=np.full((4, 16, 16), 255, np.uint8), train_labels=np.arange(4)[:, None])
    assert cdata.load("bloodmnist@16", data_dir=tmp_path).images.shape == (4, 16, 16, 1)


def test_specs_and_argument_checks():
    assert cdata.dataset_spec("bloodmnist", 128) == "bloodmnist@128"
    assert cdata.parse_spec("celeb_a@64:Mouth_Slightly_Open") == ("celeb_a", 64, "Mouth_Slightly_Open")
    assert cdata.class_names("bloodmnist@224") == cdata.BLOODMNIST_CLASSES and len(cdata.BLOODMNIST_CLASSES) == 8
    assert cdata.class_names("celeb_a:Smiling") == ("not Smiling", "Smiling") and cdata.class_names("celeb_a@64") == ()
    for bad, msg in [("bloodmnist@x", "SIZE a positive integer"), ("mnist@64", "28 .*for 'mnist'"), ("bloodmnist:Smiling", "no task for 'bloodmnist'"),
                     ("celeb_a:Smilin", "a CelebA attribute"), ("cifar", "one of"), ("bloodmnist@4", "at least 8 px")]:
        with pytest.raises(InputError, match=msg):
            cdata.parse_spec(bad)
    with pytest.raises(InputError, match="size: expected the size in the dataset spec"):
        cdata.dataset_spec("bloodmnist@64", 128)
    with pytest.raises(InputError, match="split: expected one of \\('train', 'val', 'test', 'all'\\)"):
        cdata.load("bloodmnist", "validation")


def test_celeb_a_task_and_attributes_as_descriptors_under_mock_data(no_network):
    """The celeb_a path at 64 px: a binary task from an attribute, the other attributes as the
    attack's descriptors (predictors fit on the VAE latents), one attack step through a ResNet."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from cfjax.methods.attack import attack_batch
    from cfjax.methods.attribution import celeba_attributes, local_scores
    from cfjax.models import VAE, bind_vae
    from cfjax.training.attributes import fit_attribute_predictor

    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = cdata.load("celeb_a", "train", size=64, task="Smiling")
        hq = cdata.load("celeb_a_hq@64", "test")
    assert ds.images.shape == (16, 64, 64, 3) and ds.class_names == ("not Smiling", "Smiling")
    np.testing.assert_array_equal(ds.labels, ds.attributes[:, ds.attribute_names.index("Smiling")])
    assert ds.attribute_names == cdata.CELEBA_ATTRIBUTES
    assert hq.image_shape == (64, 64, 3) and hq.attributes is None and len(hq) >= 1
    desc, names = celeba_attributes(ds.attributes, ds.attribute_names)
    assert "Smiling" not in names and len(names) == 29
    vae = VAE(image_shape=(64, 64, 3), latent_dim=8, widths=(8, 8, 8))
    vp = vae.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jax.random.key(1))
    v = bind_vae(vae, vp)
    z = np.asarray(jax.vmap(v.encode)(jnp.asarray(ds.images)))
    pred = fit_attribute_predictor(z, desc, names, steps=20)
    clf = ResNet(num_classes=2, **TINY)
    f = bind_classifier(clf, clf.init(jax.random.key(2), jnp.zeros((1, 64, 64, 3))))
    z0 = jnp.asarray(z[:2])
    res = attack_batch(v.decode, f.logits, z0, jnp.asarray(1 - ds.labels[:2]), steps=2, learning_rate=0.05, threshold=0.99)
    assert res.x.shape == (2, 64, 64, 3)
    assert local_scores(pred, z0, res.z).shape == (2, 29)
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("size,shapes", [(64, [64, 32, 16, 8]), (128, [32, 16, 8, 4]), (224, [56, 28, 14, 7])])
def test_resnet_contract(size, shapes):
    m = ResNet(num_classes=8, **TINY)
    p = m.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    x = jax.random.uniform(jax.random.key(1), (3, size, size, 3))
    maps = m.apply(p, x, method=ResNet.feature_maps)
    assert [a.shape[1] for a in maps] == shapes and maps[-1].shape[-1] == 16
    f = bind_classifier(m, p)
    W, b = head_weights(p)
    assert W.shape == (8, 16) and f.W.shape == (8, 16)
    np.testing.assert_allclose(f.logits(x[0]), W @ jnp.mean(maps[-1][0], (0, 1)) + b, rtol=1e-4, atol=1e-5)
    # GroupNorm: an example's logits do not depend on the batch it is in (no batch statistics)
    np.testing.assert_allclose(m.apply(p, x)[1], m.apply(p, x[1:2])[0], rtol=1e-4, atol=1e-5)
    assert f.feature_maps(x[0])[-1].shape == maps[-1].shape[1:]


def test_resnet_binary_bf16_and_checks():
    m = ResNet(num_classes=1, **TINY)
    p = m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    logit = m.apply(p, x)
    assert logit.shape == (2, 1)
    W2, b2 = binary_two_logit(*head_weights(p))
    z = m.apply(p, x, method=ResNet.features)
    np.testing.assert_allclose(jax.nn.softmax(z @ W2.T + b2)[:, 1], jax.nn.sigmoid(logit[:, 0]), rtol=1e-5)
    mb = ResNet(num_classes=1, dtype=jnp.bfloat16, **TINY)
    out = mb.apply(p, x)  # same params (f32), bf16 compute
    assert out.dtype == jnp.float32 and np.allclose(out, logit, atol=0.1)
    with pytest.raises(InputError, match="groups=3 must divide every width"):
        ResNet(num_classes=2, widths=(8, 8, 16, 16), groups=3).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    n = sum(a.size for a in jax.tree_util.tree_leaves(jax.eval_shape(lambda: ResNet(num_classes=1000).init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))))
    assert 11.6e6 < n < 11.8e6  # ResNet-18 at ImageNet shape (11.69 M in torchvision; GroupNorm has the same affine count)


@pytest.mark.parametrize("size", [128, 224])
def test_mirror_decoder_high_resolution_path(size):
    clf = ResNet(num_classes=8, **TINY)
    cp = clf.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    x = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
    *skips, F = clf.apply(cp, x, method=ResNet.feature_maps)
    masks = [jnp.ones((*s.shape[:3], 1)) for s in skips]
    g = MirrorDecoder(image_shape=(size, size, 3), widths=(16, 8, 8), editor_width=8, skip_mode="eq12", remat=False)
    gp = g.init(jax.random.key(2), F, skips, masks)
    assert any(k.startswith("tail") for k in gp["params"])  # the x2 tail climbs from the 1/4-size skip
    out = g.apply(gp, F, skips, masks)
    assert out.shape == (2, size, size, 3) and float(out.min()) >= 0 and float(out.max()) <= 1

    if size != 128:
        return  # remat / bf16 equivalence once, at 128 px

    def loss(p, mod):
        return jnp.mean((mod.apply(p, F, skips, masks) - x) ** 2)

    g_r = g.clone(remat=True)
    assert jax.tree_util.tree_structure(g_r.init(jax.random.key(2), F, skips, masks)) == jax.tree_util.tree_structure(gp)
    np.testing.assert_allclose(g_r.apply(gp, F, skips, masks), out, atol=1e-6)
    ga, gb = jax.grad(loss)(gp, g), jax.grad(loss)(gp, g_r)
    for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    small = [s[:, :8, :8] for s in skips], [m[:, :8, :8] for m in masks]  # bf16 convs compile slowly on XLA:CPU: a small crop
    gs = MirrorDecoder(image_shape=(32, 32, 3), widths=(16, 8, 8), editor_width=8, skip_mode="eq12")
    sp = gs.init(jax.random.key(3), F[:, :2, :2], *small)
    o32, o16 = gs.apply(sp, F[:, :2, :2], *small), gs.clone(dtype=jnp.bfloat16).apply(sp, F[:, :2, :2], *small)
    assert o16.dtype == jnp.float32 and float(jnp.abs(o16 - o32).max()) < 0.05


# ---------------------------------------------------------------- end to end at 128 px


def test_both_methods_run_at_128_px_on_a_medmnist_npz(tmp_path):
    """The issue's two commands on a synthetic bloodmnist_128.npz (tiny ResNet/VAE/decoder at
    full resolution: zoo.smoke_for)."""
    import json

    from cfjax.cli import main

    data = tmp_path / "data"
    write_medmnist_npz(data, 128, n_train=64, n_val=8, n_test=16, compressed=True)  # MedMNIST's own files are deflated
    common = ["--data", "bloodmnist", "--size", "128", "--data-dir", str(data), "--smoke", "--no-lpips", "--models-dir", str(tmp_path / "models")]
    assert main(["explain", "mirror", *common, "--source", "0", "--target", "1", "--out", str(tmp_path / "m"), "--no-oracle", "--no-figures"]) == 0
    s = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert s["dataset"] == "bloodmnist@128" and s["pair"] == "circle->square"
    assert main(["global", "attack", *common, "--out", str(tmp_path / "a"), "--no-pixel", "--limit", "4"]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["dataset"] == "bloodmnist@128" and s["n_counterfactuals"] == 4 * 7
    assert (tmp_path / "models" / "bloodmnist@128" / "classifier").is_dir()
    assert main(["explain", "mirror", *common, "--size", "96", "--source", "0", "--target", "1", "--out", str(tmp_path / "x")]) == 2  # no 96 px file


def test_global_attack_on_celeb_a_uses_its_attributes_as_descriptors(tmp_path, no_network):
    """`cfjax global attack --data celeb_a --size 64 --task Mouth_Slightly_Open` on TFDS mock
    data: the attribute predictors are fit on CelebA's labelled attributes (the paper's 29 minus
    the task), not on image descriptors, and the global explanation is over them."""
    import json

    tfds = pytest.importorskip("tensorflow_datasets")
    from cfjax.cli import main

    common = ["--data", "celeb_a", "--size", "64", "--task", "Mouth_Slightly_Open", "--smoke", "--no-lpips", "--models-dir", str(tmp_path / "models")]
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        assert main(["global", "attack", *common, "--out", str(tmp_path / "a"), "--no-pixel", "--limit", "6"]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["dataset"] == "celeb_a@64:Mouth_Slightly_Open" and s["n_counterfactuals"] == 6
    assert "Mouth_Slightly_Open" not in s["attributes"] and "Smiling" not in s["attributes"]
    assert {"Facial_hair", "Eyeglasses", "Dark_hair"} <= set(s["attributes"]) and len(s["attributes"]) == 28
    assert set(s["global_attribution"]) == set(s["attributes"]) and s["descriptor_change"] is None
    assert set(s["attribute_predictor_accuracy"]) == set(s["attributes"])
    assert (tmp_path / "a" / "figures" / "attribution_overall.png").is_file()
    assert not (tmp_path / "a" / "figures" / "descriptor_change_pairs.png").exists()
    assert "tensorflow" not in sys.modules
