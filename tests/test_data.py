import gzip
import os

import numpy as np
import pytest

from cfjax import data as cdata
from cfjax.errors import DataNotFoundError, InputError


def test_mnist5k_real_shapes_ranges_balance():
    tr, te = cdata.load("mnist5k", "train"), cdata.load("mnist5k", "test")
    assert tr.images.shape == (4000, 28, 28, 1) and te.images.shape == (1000, 28, 28, 1)
    assert tr.images.dtype == np.float32 and tr.labels.dtype == np.int32
    assert tr.images.min() == 0.0 and tr.images.max() == 1.0
    assert np.all(np.bincount(tr.labels) == 400) and np.all(np.bincount(te.labels) == 100)
    # disjoint: no test image equals a train image
    trh = {r.tobytes() for r in tr.images.reshape(len(tr), -1)}
    assert not any(r.tobytes() in trh for r in te.images.reshape(len(te), -1))
    again = cdata.load("mnist5k", "test")
    assert np.array_equal(again.images, te.images) and np.array_equal(again.labels, te.labels)
    # returned arrays are the caller's to modify
    again.images[0] = 0.5
    assert not np.array_equal(cdata.load("mnist5k", "test").images[0], again.images[0])
    assert len(cdata.load("mnist5k", "test", limit=7)) == 7


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
    assert back.shape == (5, 28, 28) and np.array_equal(back, imgs["t10k"])
    ds = cdata.load("fashion_mnist", "test", source="idx", data_dir=tmp_path)
    assert ds.images.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(ds.images[..., 0], imgs["t10k"] / 255.0, rtol=1e-6)
    assert list(ds.labels) == [0, 1, 2, 3, 4]
    assert ds.class_names[0] == "T-shirt/top"
    assert len(cdata.load("fashion_mnist", "all", source="idx", data_dir=tmp_path)) == 17


def test_idx_corrupted_and_truncated(tmp_path):
    p = tmp_path / "bad-idx"
    p.write_bytes(bytes([1, 2, 3, 4]) + b"\0" * 20)
    with pytest.raises(InputError, match="magic"):
        cdata.load_idx(p)
    good = tmp_path / "trunc-idx"
    _write_idx(good, np.zeros((4, 3, 3)), gz=False)
    good.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        cdata.load_idx(good)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        cdata.load_idx(tmp_path / "nope")


@pytest.mark.skipif(not os.path.isdir(cdata.sources.FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    ds = cdata.load("fashion_mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1)
    assert np.all(np.bincount(ds.labels) == 1000)
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0


def test_tfds_paths_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        for name in ("mnist", "fashion_mnist"):
            ds = cdata.load(name, "train", source="tfds")
            assert ds.images.shape == (6, 28, 28, 1) and ds.images.dtype == np.float32
            assert ds.labels.min() >= 0 and ds.labels.max() < 10
        for size in (64, 32):
            c = cdata.load("celeb_a", "test", image_size=size)
            assert c.images.shape == (6, size, size, 3)
            assert c.attributes.shape == (6, 40) and set(np.unique(c.attributes)) <= {0.0, 1.0}
            assert "Male" in c.attribute_names and "Smiling" in c.attribute_names


def test_errors_name_the_argument_and_the_fix(tmp_path):
    with pytest.raises(InputError, match="name.*mnist5k.*got 'cifar'"):
        cdata.load("cifar")
    with pytest.raises(InputError, match="split"):
        cdata.load("mnist5k", "validation")
    with pytest.raises(InputError, match="limit"):
        cdata.load("mnist5k", limit=0)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        cdata.load("fashion_mnist", source="idx", data_dir=tmp_path / "missing")
    with pytest.raises(DataNotFoundError, match="download_and_prepare"):
        cdata.load("mnist", data_dir=tmp_path / "missing")
    empty = tmp_path / "empty_tfds"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match="download_and_prepare"):
        cdata.load("mnist", data_dir=empty)
