"""Synthetic shapes in the MedMNIST+ ``.npz`` format (tests and the high-resolution experiment).

Eight classes of procedurally drawn shapes and textures, one shape per RGB image, with random
position, scale, small rotation, shape colour, background colour and pixel noise, so that a
classifier must read the SHAPE (colour and position carry no class information) and a person
tells the classes apart at a glance:

====  ============  ==============================================
 0    circle        a filled disk
 1    square        a filled square (rotated up to +-30 degrees)
 2    triangle      a filled equilateral triangle, apex up (+-15)
 3    cross         a plus sign (+-20)
 4    ring          an annulus
 5    stripes       a square window of horizontal stripes (+-20)
 6    checkerboard  a square window of 4x4 checks (+-20)
 7    dots          a 3x3 grid of dots (+-15)
====  ============  ==============================================

Shapes are drawn from signed distance functions with a one-pixel soft edge, so they are
anti-aliased at every size (28 to 224 px and beyond). :func:`write_medmnist_npz` writes a file
exactly like MedMNIST+'s (``train_images``/``val_images``/``test_images`` uint8 [N, S, S, 3],
``*_labels`` uint8 [N, 1]), named ``<flag>.npz`` at 28 px and ``<flag>_<size>.npz`` otherwise,
plus an optional ``class_names`` key (MedMNIST's files have none; :func:`cfjax.data.load` uses
it when present). Nothing generated is ever committed: tests and experiments write to temporary
or ignored folders.

Command line::

    python -m cfjax.data.synthetic --out DIR --size 128 --train 3000 --val 300 --test 600
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from cfjax._checks import check_positive_int
from cfjax.errors import bad_arg

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes", "checkerboard", "dots")
_MAX_ROT = np.radians([0, 30, 15, 20, 0, 20, 20, 15])
_CHUNK = 256  # images drawn at a time (bounds memory at 224 px)


def _smooth(x: np.ndarray, width: np.ndarray) -> np.ndarray:
    """1 inside (x < 0), 0 outside, linear over ``width`` (one pixel) around the edge."""
    return np.clip(0.5 - x / width, 0.0, 1.0)


def _masks(labels: np.ndarray, u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Coverage [n, S, S] of each image's shape from local coordinates ``u, v`` (radius 1 = the
    shape's size, ``v`` up) and ``px``, one pixel in local units [n, 1, 1]."""
    out = np.zeros(u.shape, np.float32)
    r = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    window = _smooth(np.maximum(au, av) - 0.9, px)
    sd = {
        0: lambda: _smooth(r - 0.9, px),
        1: lambda: _smooth(np.maximum(au, av) - 0.8, px),
        2: lambda: _smooth(np.maximum(-v - 0.55, (np.sqrt(3.0) * au + v) / 2 - 0.55) * 1.3, px),
        3: lambda: _smooth(np.minimum(np.maximum(au - 0.28, av - 0.95), np.maximum(au - 0.95, av - 0.28)), px),
        4: lambda: _smooth(np.abs(r - 0.68) - 0.22, px),
        5: lambda: window * _smooth(np.sin(v * np.pi * 2.5) * 0.25, px),
        6: lambda: window * _smooth(np.sin(u * np.pi * 2.2) * np.sin(v * np.pi * 2.2) * 0.25, px),
        7: lambda: _smooth(np.hypot(u - 0.62 * np.round(np.clip(u / 0.62, -1, 1)), v - 0.62 * np.round(np.clip(v / 0.62, -1, 1))) - 0.2, px),
    }
    for c in range(len(SHAPE_CLASSES)):
        sel = labels == c
        if np.any(sel):
            out[sel] = sd[c]()[sel]
    return out


def draw_shapes(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Draw one image per label.

    Args:
      labels: int [n] class indices in 0..7 (see :data:`SHAPE_CLASSES`).
      size: the image side S in pixels (>= 16).
      seed: images are a pure function of ``(labels, size, seed)``.

    Returns:
      uint8 [n, S, S, 3].
    """
    labels = np.asarray(labels)
    size = check_positive_int(size, "size")
    if size < 16:
        raise bad_arg("size", size, "an image side of at least 16 px")
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= len(SHAPE_CLASSES))):
        raise bad_arg("labels", f"shape {labels.shape}, range [{labels.min() if labels.size else '-'}, {labels.max() if labels.size else '-'}]",
                      f"a 1-d array of class indices in 0..{len(SHAPE_CLASSES) - 1}")
    n = len(labels)
    rng = np.random.default_rng([seed, size, n])
    out = np.empty((n, size, size, 3), np.uint8)
    g = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    for s in range(0, n, _CHUNK):
        lab = labels[s : s + _CHUNK]
        m = len(lab)
        cx, cy = rng.uniform(-0.25, 0.25, (2, m, 1, 1)).astype(np.float32)
        rad = rng.uniform(0.45, 0.65, (m, 1, 1)).astype(np.float32)
        th = (rng.uniform(-1, 1, m) * _MAX_ROT[lab]).astype(np.float32)[:, None, None]
        x, y = g[None, None, :] - cx, -(g[None, :, None] - cy)  # y up
        cos, sin = np.cos(th), np.sin(th)
        u, v = (cos * x + sin * y) / rad, (-sin * x + cos * y) / rad
        px = (2.0 / size) / rad
        cover = _masks(lab, u, v, px)[..., None]
        bg = rng.uniform(0.65, 0.95, (m, 1, 1, 3)).astype(np.float32)
        hue = rng.uniform(0, 1, m)
        fg = np.stack([0.5 + 0.4 * np.cos(2 * np.pi * (hue + k / 3)) for k in range(3)], -1).astype(np.float32)
        fg = fg * rng.uniform(0.4, 0.8, (m, 1)).astype(np.float32)  # darker than the background
        img = bg * (1 - cover) + fg[:, None, None, :] * cover
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        out[s : s + m] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out


def medmnist_filename(flag: str, size: int) -> str:
    """MedMNIST+'s file name: ``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def write_medmnist_npz(
    data_dir: str | os.PathLike,
    size: int,
    *,
    n_train: int = 2400,
    n_val: int = 240,
    n_test: int = 480,
    seed: int = 0,
    flag: str = "bloodmnist",
    class_names: bool = True,
    compressed: bool = False,
) -> Path:
    """Write a synthetic-shapes dataset as a MedMNIST+ ``.npz`` (atomically).

    Labels are balanced (cycling 0..7) and shuffled; the three splits use disjoint seeds.

    Args:
      data_dir: the folder (created if missing).
      size: image side in pixels.
      n_train, n_val, n_test: examples per split.
      seed: the dataset is a pure function of its arguments.
      flag: the MedMNIST flag the file is named after (``"bloodmnist"``: 8 classes, like the shapes).
      class_names: also store the shape names under ``class_names``.
      compressed: ``np.savez_compressed`` (as MedMNIST's own files) instead of ``np.savez``
        (stored members, which :func:`cfjax.data.load` memory-maps).

    Returns:
      The file's path.
    """
    size = check_positive_int(size, "size")
    counts = {k: check_positive_int(v, k) for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test))}
    arrays = {}
    for i, (split, n) in enumerate(zip(("train", "val", "test"), counts.values())):
        rng = np.random.default_rng([seed, i])
        labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES))
        arrays[f"{split}_images"] = draw_shapes(labels, size, seed=seed * 7919 + i)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]
    if class_names:
        arrays["class_names"] = np.asarray(SHAPE_CLASSES)
    from cfjax.io import atomic_write_with

    path = Path(data_dir) / medmnist_filename(flag, size)
    return atomic_write_with(path, lambda f: (np.savez_compressed if compressed else np.savez)(f, **arrays))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m cfjax.data.synthetic", description="write synthetic shapes as a MedMNIST+ .npz")
    p.add_argument("--out", required=True, help="data directory")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--val", type=int, default=240)
    p.add_argument("--test", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flag", default="bloodmnist")
    p.add_argument("--compressed", action="store_true")
    a = p.parse_args(argv)
    print(write_medmnist_npz(a.out, a.size, n_train=a.train, n_val=a.val, n_test=a.test, seed=a.seed, flag=a.flag, compressed=a.compressed))


if __name__ == "__main__":
    main()
