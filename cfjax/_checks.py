"""The one layer of host-side argument checks.

Every public entry point checks its arguments here before anything is traced, so a user gets
an :class:`cfjax.InputError` naming the argument (``ARG: expected ..., got ...``) instead of an
XLA shape error. Two kinds of check:

* **shape/type checks** always run, also under ``jit``/``vmap``: static shapes and
  ``jax.eval_shape`` probes only (:func:`probe`);
* **value checks** (ranges, finiteness, a head against its classifier's logits) run only on
  concrete values (:func:`is_concrete`): inside a user's ``jit`` a tracer has none, so they are
  skipped.

What lives here: the shared helpers (:func:`describe`, :func:`error_text`, :func:`probe`), the
image/label/integer checks, the class-pair syntax (:func:`parse_pairs`), and the checks of a
GAP-linear classifier (its head ``W`` [K, C] / ``b`` [K], its feature maps and logits) and of a
training split. The method-specific checks build on these: :mod:`cfjax.methods.mirror_checks`
and the attack's option checks.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.errors import InputError, bad_arg

HEAD_RTOL = 1e-3
"""Relative tolerance of :func:`check_head_matches_logits`: ``max |W GAP(F) + b - logits(x)|``
must stay below ``HEAD_RTOL * max(1, max |logits(x)|)`` (float32 recomputation differs by
~1e-6 relative; a head that is not the classifier's is off by whole logits)."""


def is_concrete(v) -> bool:
    """``v`` has values on the host (not a tracer)."""
    return not isinstance(v, jax.core.Tracer)


def _gap(F):
    """Global average pooling of a map [..., h, w, C] (what the head reads)."""
    return jnp.mean(F, axis=(-3, -2))


# ------------------------------------------------------------------ shared helpers


def describe(v) -> str:
    """A short description of a value for a message (never a huge repr): ``"shape (8,) float32"``
    for an array or abstract value, the arrays of a tuple/list/dict of arrays, else a short repr."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"shape {tuple(v.shape)} {v.dtype}"
    if isinstance(v, (tuple, list, dict)):
        leaves = jax.tree_util.tree_leaves(v)
        if leaves and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in leaves):
            inner = ", ".join(describe(a) for a in leaves[:3]) + (", ..." if len(leaves) > 3 else "")
            return f"a {type(v).__name__} of {len(leaves)} arrays ({inner})"
    r = repr(v)
    return r if len(r) <= 80 else f"{type(v).__name__} ({r[:60]}...)"


def error_text(e: BaseException, limit: int = 400) -> str:
    """The exception's type and first lines, short enough for one message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = f"{type(e).__name__}: {' '.join(lines[:2])}" if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe(name: str, fn: Callable, args: tuple, expected: str, on: str | None = None):
    """``jax.eval_shape(fn, *args)``; a failure becomes an :class:`InputError` naming ``fn``'s
    argument ``name``, the underlying error, the inputs it was called on (``on``, default their
    shapes) and ``expected``. An :class:`InputError` from a nested cfjax call passes unchanged
    (it already names its argument)."""
    try:
        return jax.eval_shape(fn, *args)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised naming the callable
        if on is None:
            on = "inputs " + ", ".join(describe(a) for a in jax.tree_util.tree_leaves(args))
        raise bad_arg(name, f"{error_text(e)} (called on {on})", expected) from e


def check_callable(f, name: str, signature: str) -> None:
    """``f`` is callable (``None``, strings, arrays are refused).

    Args:
      f: the value.
      name: the argument name for the message.
      signature: what the callable must compute, e.g. ``"x [H, W, c] -> [S_1, ..., F]"``.
    """
    if not callable(f):
        raise bad_arg(name, describe(f), f"a callable {signature}")


# ------------------------------------------------------------------ images, labels, integers


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
    if check_range and is_concrete(x):
        a = np.asarray(x)
        if not np.all(np.isfinite(a)):
            raise bad_arg(name, f"{int(np.size(a) - np.isfinite(a).sum())} non-finite values", "finite pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise bad_arg(name, f"values in [{lo:.3g}, {hi:.3g}]", "values in [0, 1] (divide 0..255 data by 255)")


def check_finite(x, name: str) -> None:
    """Raise if a concrete array holds NaN or Inf."""
    if is_concrete(x):
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


def check_image(x, name: str = "x", *, batched: bool = False, x_range: tuple[float, float] | None = None,
                range_note: str = "the range the decoder was trained on") -> None:
    """A float image [H, W, c] (``batched``: [n, H, W, c]); concrete ones finite and, with
    ``x_range``, within it.

    Args:
      x: the image(s).
      name: the argument name for messages.
      batched: a leading batch axis is expected.
      x_range: ``(lo, hi)`` the values must lie in (None: no range check).
      range_note: what the range is, for the message.
    """
    rank = 4 if batched else 3
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise bad_arg(name, describe(x), f"a float array [{'n, ' if batched else ''}H, W, c]")
    if x.ndim != rank:
        hint = "a batch [n, H, W, c] (one image: cfjax.mirror_cfe)" if batched else "one image [H, W, c] (batches: cfjax.MirrorCFE or jax.vmap)"
        raise bad_arg(name, f"shape {tuple(x.shape)}", hint)
    if batched and x.shape[0] == 0:
        raise bad_arg(name, "an empty batch (0 images)", "at least one image")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise bad_arg(name, f"dtype {x.dtype}", "a floating image (convert uint8 with x.astype('float32') / 255)")
    if not is_concrete(x):
        return
    a = np.asarray(x)
    finite = np.isfinite(a)
    if not finite.all():
        raise bad_arg(name, f"{int(a.size - finite.sum())} non-finite values (NaN/Inf)", "finite pixels")
    if x_range is not None:
        lo, hi = float(a.min()), float(a.max())
        if lo < x_range[0] - 1e-6 or hi > x_range[1] + 1e-6:
            hint = " (divide 0..255 data by 255)" if hi > 1.5 and x_range[1] <= 1.0 else ""
            raise bad_arg(name, f"values in [{lo:.4g}, {hi:.4g}]",
                          f"values in [{x_range[0]:g}, {x_range[1]:g}], {range_note}{hint}")


# ------------------------------------------------------------------ a GAP-linear classifier


def check_head(W, b, *, W_name: str = "W", b_name: str = "b") -> tuple[int, int]:
    """``W`` [K, C] and ``b`` [K] of the GAP-linear head; returns ``(K, C)``.

    A ``W`` whose second axis matches ``b`` instead of the first is a Dense kernel ([C, K],
    Flax/Keras layout): the message says to pass ``kernel.T``. Concrete ``W``/``b`` must be
    finite.

    Args:
      W, b: the head (``logits = W @ GAP(F) + b``).
      W_name, b_name: the argument names used in messages.

    Returns:
      ``(K, C)``.
    """
    for name, v in ((W_name, W), (b_name, b)):
        if not hasattr(v, "shape") or not hasattr(v, "dtype"):
            raise bad_arg(name, describe(v), "an array (W [K, C], b [K]: logits = W @ GAP(F) + b)")
        if not jnp.issubdtype(v.dtype, jnp.floating):
            raise bad_arg(name, f"dtype {v.dtype}", "a floating array (the classifier's head weights)")
    if W.ndim != 2:
        raise bad_arg(W_name, f"shape {tuple(W.shape)}", "a [K, C] head matrix (logits = W @ GAP(F) + b)")
    if b.ndim != 1:
        raise bad_arg(b_name, f"shape {tuple(b.shape)}", f"a [K] bias vector (K = {W.shape[0]} rows of W)")
    K, C = int(W.shape[0]), int(W.shape[1])
    if b.shape[0] != K:
        if b.shape[0] == C:
            raise bad_arg(W_name, f"shape {tuple(W.shape)} with b of shape {tuple(b.shape)}",
                          "W [K, C] with one row per class: pass the Dense kernel transposed (W = kernel.T)")
        raise bad_arg(b_name, f"shape {tuple(b.shape)}", f"shape ({K},), one bias per row of W [K, C] = {tuple(W.shape)}")
    if K < 2:
        raise bad_arg(W_name, f"shape {tuple(W.shape)}", "at least 2 classes (rows)")
    for name, v in ((W_name, W), (b_name, b)):
        if is_concrete(v) and not bool(np.all(np.isfinite(np.asarray(v)))):
            raise bad_arg(name, "non-finite values", "finite head weights")
    return K, C


def check_feature_map_channels(F_shape: Sequence[int], W_shape: Sequence[int], name: str = "feature_maps") -> None:
    """The last map ``F`` [h, w, C] matches ``W`` [K, C] (a ``W`` shaped [C, K] is named as transposed)."""
    F_shape, W_shape = tuple(F_shape), tuple(W_shape)
    if len(F_shape) != 3:
        raise bad_arg(name, f"a last map of shape {F_shape}", "a single-example last map F [h, w, C] (no batch axis)")
    C = F_shape[-1]
    if C == W_shape[1]:
        return
    if C == W_shape[0]:
        raise bad_arg("W", f"shape {W_shape} against a feature map with C = {C} channels",
                      f"W [K, {C}]: pass the Dense kernel transposed (W = kernel.T)")
    raise bad_arg(name, f"a last map of shape {F_shape} (C = {C})", f"C = {W_shape[1]} channels, the columns of W {W_shape}")


def probe_feature_maps(feature_maps: Callable, x_shape: Sequence[int], x_dtype, W_shape: Sequence[int], name: str = "feature_maps"):
    """Shapes of ``feature_maps(x)``: a non-empty list/tuple of [h, w, c] maps whose last has
    W's ``C``. Returns the list of ``jax.ShapeDtypeStruct``."""
    x_spec = jax.ShapeDtypeStruct(tuple(x_shape), x_dtype)
    out = probe(name, feature_maps, (x_spec,), "a callable x [H, W, c] -> a list [S_1, ..., S_L, F] of single-example maps")
    if not isinstance(out, (list, tuple)) or len(out) == 0:
        raise bad_arg(name, f"{type(out).__name__} {getattr(out, 'shape', '')}".strip(),
                      "a non-empty list [S_1, ..., S_L, F] of maps (wrap a single last map as [F])")
    for i, m in enumerate(out):
        if not hasattr(m, "shape") or len(m.shape) != 3:
            raise bad_arg(name, f"map {i} of shape {getattr(m, 'shape', type(m).__name__)}", "single-example [h, w, c] maps (no batch axis)")
    check_feature_map_channels(out[-1].shape, W_shape, name)
    return list(out)


def probe_logits(logits: Callable, x_shape: Sequence[int], x_dtype, K: int, name: str = "logits") -> None:
    """``logits(x)`` is a [K] vector with W's number of rows."""
    out = probe(name, logits, (jax.ShapeDtypeStruct(tuple(x_shape), x_dtype),), "a callable x [H, W, c] -> logits [K]")
    if tuple(getattr(out, "shape", ())) != (K,):
        raise bad_arg(name, f"an output of shape {getattr(out, 'shape', None)}", f"logits of shape ({K},), one per row of W")


def check_head_matches_logits(feature_maps: Callable, logits: Callable, W, b, x, name: str = "W/b") -> None:
    """On one concrete image: ``W @ GAP(feature_maps(x)[-1]) + b`` equals ``logits(x)``
    (relative tolerance :data:`HEAD_RTOL`). Skipped when anything is traced."""
    if not all(is_concrete(v) for v in (W, b, x)):
        return
    F = jnp.asarray(list(feature_maps(x))[-1])
    if not is_concrete(F):
        return
    mine = np.asarray(jnp.asarray(W) @ _gap(F) + jnp.asarray(b), np.float64)
    theirs = np.asarray(logits(x), np.float64)
    if theirs.shape != mine.shape:
        raise bad_arg("logits", f"an output of shape {theirs.shape}", f"logits of shape {mine.shape}, one per row of W")
    err = float(np.max(np.abs(mine - theirs)))
    scale = max(1.0, float(np.max(np.abs(theirs))))
    if not err <= HEAD_RTOL * scale:
        hint = ""
        if W.shape[0] == W.shape[1]:
            mt = np.asarray(jnp.asarray(W).T @ _gap(F) + jnp.asarray(b), np.float64)
            if float(np.max(np.abs(mt - theirs))) <= HEAD_RTOL * scale:
                hint = "; W.T matches: pass the Dense kernel transposed (W = kernel.T)"
        raise bad_arg(name, f"W @ GAP(F) + b off the classifier's logits by up to {err:.4g} on one image{hint}",
                      "the classifier's own GAP-linear head: W @ GAP(feature_maps(x)[-1]) + b == logits(x)")


# ------------------------------------------------------------------ a training split and its classifier


def check_dataset(data, name: str = "train"):
    """A training split: an object with ``.images`` [N, H, W, c] float in [0, 1] and ``.labels``
    [N] (a :class:`cfjax.data.Dataset`) or an explicit ``(images, labels)`` tuple. Returns
    ``(images float32, labels int32, name)``; the labels' range is checked by the caller."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, dname = data.images, data.labels, getattr(data, "name", "?")
    elif isinstance(data, tuple) and len(data) == 2:
        images, labels, dname = data[0], data[1], "?"
    else:
        raise bad_arg(name, describe(data),
                      "a cfjax.data.Dataset (cfjax.data.load(...)), an object with .images [N, H, W, c] and .labels [N], "
                      "or an (images, labels) tuple")
    try:
        images_a = np.asarray(images)
        labels_a = np.asarray(labels)
    except Exception:  # noqa: BLE001
        raise bad_arg(f"{name}.images", describe(images), "an array [N, H, W, c]") from None
    check_image(images_a, f"{name}.images", batched=True, x_range=(0.0, 1.0), range_note="the range cfjax's decoders train on and produce")
    if not np.issubdtype(labels_a.dtype, np.integer):
        raise bad_arg(f"{name}.labels", f"dtype {labels_a.dtype}", "integer class indices")
    if labels_a.shape != (images_a.shape[0],):
        raise bad_arg(f"{name}.labels", f"shape {labels_a.shape}", f"shape ({images_a.shape[0]},), one label per image")
    return images_a.astype(np.float32, copy=False), labels_a.astype(np.int32), dname


def check_classifier_fns(clf, x_example, name: str = "clf") -> tuple[int, int]:
    """The :class:`cfjax.models.ClassifierFns` the decoder trainer needs: callables
    ``feature_maps``, ``features`` and ``logits``, a head ``W`` [K, C] / ``b`` [K] matching the
    last map, and (on one concrete example) ``W @ GAP(F) + b == logits(x)`` and
    ``features(x) == GAP(F)``. Returns ``(K, C)``."""
    for attr in ("feature_maps", "features", "logits", "W", "b"):
        if not hasattr(clf, attr):
            raise bad_arg(name, describe(clf),
                          f"a cfjax.models.ClassifierFns (missing .{attr}; build one with ClassifierFns.from_gap(feature_maps, W, b))")
    for attr, sig in (("feature_maps", "x -> [S_1, ..., F]"), ("features", "x -> GAP(F) [C]"), ("logits", "x -> [K]")):
        check_callable(getattr(clf, attr), f"{name}.{attr}", sig)
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    K, C = check_head(W, b, W_name=f"{name}.W", b_name=f"{name}.b")
    x = jnp.asarray(x_example)
    probe_feature_maps(clf.feature_maps, x.shape, x.dtype, W.shape, f"{name}.feature_maps")
    probe_logits(clf.logits, x.shape, x.dtype, K, f"{name}.logits")
    check_head_matches_logits(clf.feature_maps, clf.logits, W, b, x, f"{name}.W/{name}.b")
    z_mine = np.asarray(_gap(jnp.asarray(list(clf.feature_maps(x))[-1])))
    z_theirs = np.asarray(clf.features(x))
    if z_theirs.shape != z_mine.shape or not np.allclose(z_theirs, z_mine, rtol=HEAD_RTOL, atol=HEAD_RTOL * max(1.0, float(np.abs(z_mine).max()))):
        raise bad_arg(f"{name}.features", f"an output of shape {z_theirs.shape} that is not GAP(feature_maps(x)[-1])",
                      "features(x) == mean over h, w of the last feature map")
    return K, C
