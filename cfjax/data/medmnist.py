"""MedMNIST+ ``.npz`` files, read with bounded memory.

A MedMNIST+ file (``bloodmnist.npz`` at 28 px, ``bloodmnist_{64,128,224}.npz``) holds
``{train,val,test}_images`` uint8 [N, S, S, 3] (or [N, S, S] for grey datasets) and
``{train,val,test}_labels`` integer [N, 1]. They are what ``medmnist``'s ``download=True``
writes to ``~/.medmnist``; cfjax never downloads them.

**Memory.** An ``.npz`` is a zip archive, and ``np.load(..., mmap_mode="r")`` ignores
``mmap_mode`` for archives. :func:`read_member` memory-maps a member itself when it is *stored*
(``np.savez``: its bytes lie contiguously in the file) by locating the ``.npy`` payload inside
the zip; a *deflated* member (``np.savez_compressed``, as MedMNIST's own files are) cannot be
mapped and is decompressed in a stream into one uint8 array (the size of that split's uint8
images, never the whole file). :func:`cfjax.data.load` then converts to float32 in blocks of
1,024 images into a preallocated array and only the first ``limit`` rows when asked, so the
peak is the float32 split plus at most one uint8 copy of it.

Every format problem raises :class:`~cfjax.errors.InputError` naming the file, the key and what
was expected; a missing file raises :class:`~cfjax.errors.DataNotFoundError` naming the path.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from cfjax.errors import DataNotFoundError, InputError

BLOODMNIST_CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_SPLITS = ("train", "val", "test")
DEFAULT_DIR = "~/.medmnist"
_BLOCK = 1024


def medmnist_path(flag: str, size: int, data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir/<flag>.npz`` at 28 px, ``data_dir/<flag>_<size>.npz`` otherwise
    (``data_dir`` default ``~/.medmnist``, MedMNIST's own)."""
    d = Path(os.path.expanduser(str(data_dir if data_dir is not None else DEFAULT_DIR)))
    return d / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def _howto(flag: str, size: int) -> str:
    sz = "" if size == 28 else f", size={size}"
    return (
        f"Get it once with network access: pip install medmnist; python -c \"import medmnist; "
        f"medmnist.{flag.capitalize().replace('mnist', 'MNIST')}(split='train', download=True{sz}, root=DIR)\" "
        f"(MedMNIST+ sizes: {MEDMNIST_SIZES}), then pass --data-dir DIR. "
        "For a synthetic file in the same format: python -m cfjax.data.synthetic --out DIR --size S"
    )


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def read_member(path: Path, key: str) -> np.ndarray:
    """The array ``key`` of the ``.npz`` at ``path``: a read-only ``np.memmap`` when the member
    is stored uncompressed, else a streamed, decompressed array.

    Raises:
      InputError: the file is not a zip/npz, the key is missing, or the member is not a
        plain (non-object) ``.npy`` array.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{str(path)!r}: expected a MedMNIST .npz (zip of .npy arrays), got an unreadable file ({e})") from e
    with zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key not in names:
            raise InputError(f"{str(path)!r}: expected key {key!r}, got keys {sorted(names)}")
        info = zf.getinfo(key + ".npy")
        with zf.open(info) as m:
            try:
                shape, fortran, dtype = _npy_header(m)
                header_len = m.tell()
            except ValueError as e:
                raise InputError(f"{str(path)!r}: key {key!r}: expected a .npy array, got {e}") from e
            if dtype.hasobject:
                raise InputError(f"{str(path)!r}: key {key!r}: expected a numeric or string array, got dtype {dtype} (pickled objects)")
            if info.compress_type == zipfile.ZIP_STORED and not fortran:
                with open(path, "rb") as raw:  # the local file header precedes the member's bytes
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + name_len + extra_len + header_len
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")
            count = int(np.prod(shape, dtype=np.int64))
            out = np.empty(count, dtype)
            view = out.view(np.uint8)
            pos = 0
            while pos < view.size:  # stream: at most one uint8 copy of the member in memory
                chunk = m.read(min(1 << 24, view.size - pos))
                if not chunk:
                    raise InputError(f"{str(path)!r}: key {key!r}: expected {view.size} bytes for shape {shape}, got a truncated member")
                view[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                pos += len(chunk)
            return out.reshape(shape, order="F" if fortran else "C")


def read_split(path: Path, split: str, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    """Validated ``(images uint8 [N, S, S, C], labels int32 [N], class_names or None)`` of one
    split, images memory-mapped where the file allows (see :func:`read_member`)."""
    if not path.is_file():
        raise DataNotFoundError(f"{str(path)!r} does not exist")
    ik, lk = f"{split}_images", f"{split}_labels"
    x = read_member(path, ik)
    y = read_member(path, lk)
    if x.dtype != np.uint8:
        raise InputError(f"{str(path)!r}: key {ik!r}: expected dtype uint8, got {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(f"{str(path)!r}: key {ik!r}: expected shape [N, H, W] or [N, H, W, 3], got {tuple(x.shape)}")
    if x.shape[1:3] != (size, size):
        raise InputError(f"{str(path)!r}: key {ik!r}: expected {size}x{size} images (size={size}), got {x.shape[1]}x{x.shape[2]}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{str(path)!r}: key {lk!r}: expected integer labels, got dtype {y.dtype}")
    if not (y.ndim == 2 and y.shape[1] == 1) and y.ndim != 1:
        raise InputError(f"{str(path)!r}: key {lk!r}: expected shape [N, 1] (one class per image), got {tuple(y.shape)}")
    y = np.asarray(y).reshape(-1).astype(np.int32)
    if len(y) != len(x):
        raise InputError(f"{str(path)!r}: key {lk!r}: expected {len(x)} labels (one per image of {ik!r}), got {len(y)}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{str(path)!r}: key {lk!r}: expected class indices in 0..{num_classes - 1}, got range [{y.min()}, {y.max()}]")
    names = None
    with zipfile.ZipFile(path) as zf:
        has_names = "class_names.npy" in zf.namelist()
    if has_names:
        n = read_member(path, "class_names")
        if n.ndim != 1 or len(n) != num_classes or n.dtype.kind not in "US":
            raise InputError(f"{str(path)!r}: key 'class_names': expected {num_classes} strings, got dtype {n.dtype} shape {tuple(n.shape)}")
        names = tuple(str(s) for s in np.asarray(n))
    return x, y, names


def to_float(images: np.ndarray, limit: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] (e.g. a memmap) -> float32 [n, H, W, C] in [0, 1], converted in blocks
    of 1,024 images into one preallocated array (``n = min(N, limit)``)."""
    n = len(images) if limit is None else min(limit, len(images))
    out = np.empty((n, *images.shape[1:]), np.float32)
    scale = np.float32(1 / 255)
    for s in range(0, n, _BLOCK):
        np.multiply(images[s : min(s + _BLOCK, n)], scale, out=out[s : min(s + _BLOCK, n)], casting="unsafe")
    return out
