"""Data layer: real MNIST-5k, IDX files, TFDS (mocked, and real ArrayRecord files written here).

Nothing here touches the network: the TFDS tests run with socket connections forbidden.
"""

import gzip
import os
import socket
import sys

import numpy as np
import pytest

from cfjax import data as cdata
from cfjax.errors import DataNotFoundError, InputError

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------- mnist5k (real data)


def test_mnist5k_real_shapes_ranges_balance():
    tr, te = cdata.load("mnist5k", "train"), cdata.load("mnist5k", "test")
    assert tr.images.shape == (4000, 28, 28, 1) and te.images.shape == (1000, 28, 28, 1)
    assert tr.images.dtype == np.float32 and tr.labels.dtype == np.int32
    assert tr.images.min() == 0.0 and tr.images.max() == 1.0
    assert np.all(np.bincount(tr.labels) == 400) and np.all(np.bincount(te.labels) == 100)
    assert tr.num_classes == 10 and tr.image_shape == (28, 28, 1) and len(te) == 1000
    assert tr.attributes is None and tr.attribute_names == ()
    trh = {r.tobytes() for r in tr.images.reshape(len(tr), -1)}  # disjoint: no shared image
    assert not any(r.tobytes() in trh for r in te.images.reshape(len(te), -1))
    again = cdata.load("mnist5k", "test")
    assert np.array_equal(again.images, te.images) and np.array_equal(again.labels, te.labels)
    again.images[0] = 0.5  # the caller's copy: the cached raw arrays are untouched
    assert not np.array_equal(cdata.load("mnist5k", "test").images[0], again.images[0])
    few = cdata.load("mnist5k", "test", limit=50)
    assert len(few) == 50 and len(np.unique(few.labels)) > 5  # a prefix mixes the classes
    assert len(cdata.load("mnist5k", "all")) == 5000


def test_subset_and_classes():
    te = cdata.load("mnist5k", "test")
    pair = cdata.classes(te, [3, 8])
    assert len(pair) == 200 and set(np.unique(pair.labels)) == {3, 8}
    s = cdata.subset(te, [2, 0])
    assert np.array_equal(s.images[1], te.images[0]) and s.labels[0] == te.labels[2]
    assert s._replace(name="x").name == "x" and s.name == "mnist5k"


# ---------------------------------------------------------------- IDX


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_and_fake_fashion_dir(tmp_path, gz):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    imgs = {s: rng.integers(0, 256, (n, 28, 28)) for s, n in (("train", 12), ("t10k", 5))}
    for s, x in imgs.items():
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte{sfx}", x, gz)
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte{sfx}", np.arange(len(x)) % 10, gz)
    back = cdata.load_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}")
    assert back.shape == (5, 28, 28) and back.dtype == np.uint8 and np.array_equal(back, imgs["t10k"])
    assert list(cdata.load_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}")) == [i % 10 for i in range(12)]
    ds = cdata.load("fashion_mnist", "test", source="idx", data_dir=tmp_path)
    assert ds.images.shape == (5, 28, 28, 1) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images[..., 0], imgs["t10k"] / 255.0, rtol=1e-6)
    assert ds.labels.dtype == np.int32 and list(ds.labels) == [0, 1, 2, 3, 4]
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert len(cdata.load("fashion_mnist", "all", source="idx", data_dir=tmp_path)) == 17
    assert len(cdata.load("fashion_mnist", "train", data_dir=tmp_path, limit=3)) == 3  # auto finds IDX


def test_idx_corrupted_and_truncated(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(bytes([1, 2, 3, 4]) + b"\0" * 20)
    with pytest.raises(InputError, match="bad-idx.*magic"):
        cdata.load_idx(p)
    trunc = tmp_path / "trunc-idx"
    _write_idx(trunc, np.zeros((4, 3, 3)), gz=False)
    trunc.write_bytes(trunc.read_bytes()[:-5])
    with pytest.raises(InputError, match="trunc-idx.*truncated"):
        cdata.load_idx(trunc)
    head = tmp_path / "head-idx"
    head.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(InputError, match="head-idx.*truncated header"):
        cdata.load_idx(head)
    cut = tmp_path / "cut-idx.gz"
    _write_idx(cut, np.zeros((50, 28, 28)), gz=True)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(InputError, match="cut-idx.gz"):
        cdata.load_idx(cut)
    with pytest.raises(DataNotFoundError, match="nope.*does not exist"):
        cdata.load_idx(tmp_path / "nope")


@pytest.mark.skipif(not os.path.isdir(cdata.FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    ds = cdata.load("fashion_mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.images.dtype == np.float32
    assert np.all(np.bincount(ds.labels) == 1000)
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0


# ---------------------------------------------------------------- TFDS


def test_tfds_under_mock_data(no_network):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        for name in ("mnist", "fashion_mnist"):
            ds = cdata.load(name, "train", source="tfds")
            assert ds.images.shape == (6, 28, 28, 1) and ds.images.dtype == np.float32
            assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.max() > 0.5
            assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < 10
            assert ds.num_classes == 10 and ds.attributes is None
        assert len(cdata.load("mnist", "test", source="tfds", limit=4)) == 4
        assert len(cdata.load("mnist", "all")) == 6  # the mock gives num_examples for "train+test" too
        for size in (64, 32):
            c = cdata.load("celeb_a", "test", image_size=size)
            assert c.images.shape == (6, size, size, 3) and c.images.dtype == np.float32
            assert c.attributes.shape == (6, 40) and c.attributes.dtype == np.float32
            assert set(np.unique(c.attributes)) <= {0.0, 1.0}
            assert len(c.attribute_names) == 40 and c.attribute_names[0] == "5_o_Clock_Shadow"
            assert {"Male", "Smiling", "Young", "Attractive"} <= set(c.attribute_names)
            assert np.all(c.labels == 0) and c.class_names == () and c.num_classes == 0
        assert len(cdata.load("celeb_a", "validation", image_size=16)) == 6
    assert "tensorflow" not in sys.modules


def _prepare(name, data_dir, sizes, make):
    """Write a real (tiny) ArrayRecord TFDS dataset with the registered builder's features."""
    from PIL import Image

    builder = tfds.builder(name, data_dir=str(data_dir), file_format="array_record")

    def examples(split, n):
        for i in range(n):
            ex = make(split, i)
            ex["image"] = Image.fromarray(ex["image"])  # PIL-encoded: numpy would need TensorFlow
            yield i, ex

    builder._split_generators = lambda dl_manager: {s: examples(s, n) for s, n in sizes.items()}
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def test_tfds_real_array_record_mnist(tmp_path, no_network):
    tfds.disable_progress_bar()
    _prepare(
        "mnist",
        tmp_path,
        {"train": 30, "test": 7},
        lambda s, i: {"image": np.full((28, 28), 20 * (i % 10) + (s == "test"), np.uint8), "label": i % 10},
    )
    ds = cdata.load("mnist", "train", data_dir=tmp_path)
    assert ds.images.shape == (30, 28, 28, 1) and sorted(np.bincount(ds.labels)) == [3] * 10
    # records come back shuffled by TFDS, but each image still matches its label
    np.testing.assert_allclose(ds.images[:, 0, 0, 0] * 255, 20 * ds.labels, atol=1e-4)
    te = cdata.load("mnist", "test", data_dir=tmp_path, limit=5)
    assert len(te) == 5 and np.allclose(te.images[:, 0, 0, 0] * 255, 20 * te.labels + 1, atol=1e-4)
    assert len(cdata.load("mnist", "all", data_dir=tmp_path)) == 37
    assert "tensorflow" not in sys.modules


def test_tfds_real_array_record_celeb_a(tmp_path, no_network):
    from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as cb

    tfds.disable_progress_bar()

    def make(split, i):
        img = np.zeros((218, 178, 3), np.uint8)
        img[:, :, 0] = 255  # the 20-row bands above and below the central square stay red
        img[20:198] = 30 + 40 * i  # the central 178x178 square is grey, its level encodes i
        return {
            "image": img,
            "attributes": {k: (i + j) % 3 == 0 for j, k in enumerate(cb.ATTR_HEADINGS)},
            "landmarks": {k: 0 for k in cb.LANDMARK_HEADINGS},
            "identity": {"Identity_No": i},
        }

    _prepare("celeb_a", tmp_path, {"train": 5, "validation": 2, "test": 3}, make)
    ds = cdata.load("celeb_a", "train", data_dir=tmp_path, image_size=32)
    assert ds.images.shape == (5, 32, 32, 3) and ds.attribute_names == tuple(cb.ATTR_HEADINGS)
    i = np.rint((ds.images.mean(axis=(1, 2, 3)) * 255 - 30) / 40).astype(int)
    assert sorted(i) == [0, 1, 2, 3, 4]
    want = (i[:, None] + np.arange(40)[None]) % 3 == 0
    assert np.array_equal(ds.attributes, want.astype(np.float32))
    centre = ds.images[:, 2:-2, 2:-2] * 255  # grey, no red band from the crop (JPEG tolerance)
    assert np.abs(centre - (30 + 40 * i)[:, None, None, None]).max() < 12
    assert len(cdata.load("celeb_a", "all", data_dir=tmp_path, image_size=8)) == 10
    assert cdata.load("celeb_a", "validation", data_dir=tmp_path, image_size=178).image_shape == (178, 178, 3)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument_and_the_fix(tmp_path, no_network):
    with pytest.raises(InputError, match=r"name: expected one of \('mnist5k'.*got 'cifar'"):
        cdata.load("cifar")
    with pytest.raises(InputError, match=r"split: expected one of \('train', 'test', 'all'\).*got 'validation'"):
        cdata.load("mnist5k", "validation")
    with pytest.raises(InputError, match="source"):
        cdata.load("mnist", source="idx")
    with pytest.raises(InputError, match="limit"):
        cdata.load("mnist5k", limit=0)
    with pytest.raises(InputError, match="image_size"):
        cdata.load_tfds("celeb_a", image_size=0)
    with pytest.raises(DataNotFoundError, match="data_dir.*missing.*apt-get install dataset-fashion-mnist"):
        cdata.load("fashion_mnist", source="idx", data_dir=tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="data_dir.*missing.*download_and_prepare"):
        cdata.load("mnist", data_dir=tmp_path / "missing")
    empty = tmp_path / "empty_tfds"
    empty.mkdir()
    for name in ("mnist", "fashion_mnist", "celeb_a"):
        with pytest.raises(DataNotFoundError, match=f"{name}.*empty_tfds.*file_format='array_record'") as e:
            cdata.load(name, data_dir=empty, source="tfds")
        assert e.value.__cause__ is not None  # TFDS's own error is chained
    with pytest.raises(DataNotFoundError, match="manual_dir"):
        cdata.load("celeb_a", data_dir=empty)
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte"):
        cdata.load_fashion_mnist_idx("test", empty)
