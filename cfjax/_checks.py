"""Host-side argument checks shared by the public entry points.

These run on concrete (numpy or committed jax) arrays before anything is traced, so a
user gets a message naming the argument instead of an XLA shape error. Inside ``jit`` the
checks that need values are skipped (tracers have no values).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from cfjax.errors import bad_arg


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_images(
    x,
    name: str = "images",
    *,
    shape: Sequence[int] | None = None,
    batched: bool = True,
    check_range: bool = True,
) -> None:
    """Check an NHWC (or HWC when ``batched=False``) float image array in [0, 1].

    Args:
      x: the array.
      name: the argument name used in messages.
      shape: expected ``(H, W, C)``; ``None`` accepts any.
      batched: whether a leading batch axis is expected.
      check_range: check finiteness and the [0, 1] range (skipped for tracers).
    """
    rank = 4 if batched else 3
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise bad_arg(name, type(x).__name__, "an array")
    if x.ndim != rank:
        layout = "NHWC" if batched else "HWC"
        raise bad_arg(name, f"shape {tuple(x.shape)}", f"a rank-{rank} {layout} array")
    if shape is not None and tuple(x.shape[-3:]) != tuple(shape):
        raise bad_arg(name, f"image shape {tuple(x.shape[-3:])}", f"image shape {tuple(shape)} (H, W, C)")
    if batched and x.shape[0] == 0:
        raise bad_arg(name, "an empty batch (0 images)", "at least one image")
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise bad_arg(
            name,
            f"dtype {x.dtype}",
            "a floating dtype with values in [0, 1] (convert uint8 with x.astype('float32') / 255)",
        )
    if check_range and _is_concrete(x):
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise bad_arg(name, f"{int(np.size(a) - np.isfinite(a).sum())} non-finite values", "finite pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise bad_arg(name, f"values in [{lo:.3g}, {hi:.3g}]", "values in [0, 1] (divide 0..255 data by 255)")


def check_finite(x, name: str) -> None:
    """Raise if a concrete array holds NaN or Inf."""
    if _is_concrete(x):
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise bad_arg(name, f"{int(np.size(a) - np.isfinite(a).sum())} non-finite values", "finite values")


def check_labels(y, name: str, num_classes: int, n: int | None = None) -> None:
    """Integer labels in ``[0, num_classes)`` (and of length ``n`` when given)."""
    a = np.asarray(y)
    if not np.issubdtype(a.dtype, np.integer):
        raise bad_arg(name, f"dtype {a.dtype}", "integer class indices")
    if n is not None and a.shape != (n,):
        raise bad_arg(name, f"shape {a.shape}", f"shape ({n},)")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise bad_arg(name, f"values in [{a.min()}, {a.max()}]", f"class indices in [0, {num_classes - 1}]")


def check_class_index(v, name: str, num_classes: int) -> int:
    """A single Python/numpy int in ``[0, num_classes)``; returns it as ``int``."""
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise bad_arg(name, repr(v), f"an integer class index in [0, {num_classes - 1}]") from None
    if i != v or not 0 <= i < num_classes:
        raise bad_arg(name, repr(v), f"an integer class index in [0, {num_classes - 1}]")
    return i


def check_positive_int(v, name: str, *, allow_none: bool = False) -> int | None:
    """``v`` as an int when it is a positive integer (``None`` passes when ``allow_none``)."""
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise bad_arg(name, repr(v), "a positive integer" + (" or None" if allow_none else ""))
    return int(v)


def parse_pairs(spec, num_classes: int | None = None, *, name: str = "pairs"):
    """The one syntax for class pairs: ``"S,T;S,T;..."`` (e.g. ``"3,8;8,3"``), ``"all"``, or
    already a sequence of ``(source, target)``. Returns a tuple of int pairs (or ``"all"``).

    With ``num_classes`` every index is checked to lie in ``[0, num_classes)`` and every pair to
    have ``source != target``.

    Example:
      >>> parse_pairs("3,8;8,3")
      ((3, 8), (8, 3))
    """
    if spec is None or spec == "all":
        return spec
    if isinstance(spec, str):
        try:
            pairs = tuple(tuple(int(v) for v in part.split(",")) for part in spec.split(";") if part.strip())
        except ValueError:
            raise bad_arg(name, repr(spec), "'all' or 'S,T;S,T;...' with class indices") from None
    else:
        try:
            pairs = tuple(tuple(int(v) for v in p) for p in spec)
        except (TypeError, ValueError):
            raise bad_arg(name, repr(spec), "a sequence of (source, target) class indices") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise bad_arg(name, repr(spec), "'all' or 'S,T;S,T;...' with class indices")
    if num_classes is not None:
        for s, t in pairs:
            for v in (s, t):
                if not 0 <= v < num_classes:
                    raise bad_arg(name, f"class {v} in {spec!r}", f"class indices in [0, {num_classes - 1}]")
            if s == t:
                raise bad_arg(name, f"({s}, {t}) in {spec!r}", "source != target in every pair")
    return pairs

