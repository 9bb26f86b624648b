"""TFDS datasets and CelebA's attributes.

:func:`load_tfds` reads ``mnist``, ``fashion_mnist``, ``celeb_a`` and ``celeb_a_hq`` from a
prepared TFDS data dir through ``tfds.data_source`` (ArrayRecord, no TensorFlow), CelebA
centre-cropped and resized; :func:`read_celeba_attribute_file` reads a CelebA-format attribute
list (CelebA-HQ's attributes come from CelebAMask-HQ's file); a CelebA attribute *task* turns a
split into a 2-class dataset (``_with_task``).

Host-side numpy. Nothing downloads: a dataset that is not prepared raises
:class:`~cfjax.errors.DataNotFoundError` whose message gives the command that prepares it.
:mod:`cfjax.data.sources` (``load``) calls this and re-exports its public names.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.data.dataset import _CELEBA, _CLASS_NAMES, _TFDS_SPLITS, CELEBA_ATTRIBUTES, Dataset, _check_split, task_class_names
from cfjax.errors import DataNotFoundError, InputError, bad_arg

CELEBA_HQ_ATTRIBUTES_FILE = "CelebAMask-HQ-attribute-anno.txt"
_BATCH = 1024  # records per random-access read


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
    images, labels, attrs = _read_rows(src, rows[:n], f"{name}/{split}", image_size if celeb else None, attr_names, hq_attrs)
    return Dataset(images, labels, attrs, attr_names, _CLASS_NAMES[name], name, split)


def _read_rows(src, rows, desc: str, image_size: int | None, attr_names: tuple, hq_attrs: dict | None):
    """Records ``rows`` of a TFDS data source, :data:`_BATCH` at a time (a tqdm bar above 10,000),
    into preallocated arrays: float32 images in [0, 1], int32 labels, float32 attributes or None.

    ``image_size`` given: CelebA (3 channels, centre-cropped and resized on the fly, no labels,
    the attributes ``attr_names`` read from the record or, with ``hq_attrs``, CelebA-HQ's table);
    ``None``: a 28x28 MNIST (labels from the record)."""
    from tqdm.auto import tqdm

    celeb = image_size is not None
    n = len(rows)
    shape = (image_size, image_size, 3) if celeb else (28, 28, 1)
    images = np.empty((n, *shape), np.float32)
    labels = np.zeros(n, np.int32)
    attrs = np.empty((n, len(attr_names)), np.float32) if attr_names else None
    with tqdm(total=n, desc=desc, unit="img", disable=n <= 10_000, leave=False) as bar:
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
    return images, labels, attrs


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


__all__ = ["CELEBA_HQ_ATTRIBUTES_FILE", "load_tfds", "read_celeba_attribute_file"]
