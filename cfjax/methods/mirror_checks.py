"""The Mirror-CFE argument checks, on top of :mod:`cfjax._checks`.

:func:`cfjax.mirror_cfe`, :class:`cfjax.MirrorCFE`, :func:`cfjax.reflect` and
:func:`cfjax.bind_mirror_decoder` call these checks before any of their own work is traced.
Every failure is a :class:`cfjax.InputError` whose message names the argument, what was
expected and what came (``ARG: expected ..., got ...``).

The checks of the classifier (its head ``W`` [K, C] / ``b`` [K] against each other and the
feature map's ``C``, ``W GAP(F) + b`` against its logits on one example) and of a training split
live in :mod:`cfjax._checks` and are re-exported here. What is Mirror's own: the class pair
(integer, in range, distinct; batched or not), distinct head rows, the transition grid ``ks``,
the decoder's output shape (a ``jax.eval_shape`` probe) and the head a bound decoder carries.
Shape checks always run, also under ``jit``/``vmap``; value checks only on concrete values (a
non-finite image inside a user's ``jit`` ends with ``status`` 3, ``NON_FINITE``).

The options that need Mirror's vocabulary are checked in :mod:`cfjax.methods.mirror`, which
defines the solver names and imports the path vocabulary ``OTHERS`` from
:mod:`cfjax.methods.mirror_decode`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax._checks import (  # noqa: F401 - re-exported: the classifier and dataset checks Mirror's callers use
    HEAD_RTOL,
    check_callable,
    check_classifier_fns,
    check_dataset,
    check_feature_map_channels,
    check_head,
    check_head_matches_logits,
    check_image,
    describe,
    is_concrete,
    probe,
    probe_feature_maps,
    probe_logits,
)
from cfjax.errors import bad_arg


# ------------------------------------------------------------------ classes

def _check_class_scalar(v, name: str, K: int):
    """One class index: a Python int or an integer 0-d array (traced ones: dtype/shape only)."""
    if isinstance(v, (bool, np.bool_)):
        raise bad_arg(name, repr(v), f"an integer class index in [0, {K - 1}] (a Python int or an integer array)")
    if isinstance(v, (int, np.integer)):
        i = int(v)
    elif hasattr(v, "shape") and hasattr(v, "dtype"):
        if tuple(v.shape) != ():
            raise bad_arg(name, f"shape {tuple(v.shape)}", "a single class index (shape (); use MirrorCFE or jax.vmap for batches)")
        if not jnp.issubdtype(v.dtype, jnp.integer):
            raise bad_arg(name, f"dtype {v.dtype}", f"an integer class index in [0, {K - 1}] (cast with .astype(int))")
        if not is_concrete(v):
            return None
        i = int(np.asarray(v))
    else:
        raise bad_arg(name, describe(v), f"an integer class index in [0, {K - 1}] (a Python int or an integer array)")
    if not 0 <= i < K:
        raise bad_arg(name, repr(i), f"a class index in [0, {K - 1}]")
    return i


def check_class_pair(source, target, K: int) -> None:
    """Single-example ``source``/``target``: integer, in ``[0, K)``, distinct (values when concrete)."""
    s = _check_class_scalar(source, "source", K)
    t = _check_class_scalar(target, "target", K)
    if s is not None and t is not None and s == t:
        raise bad_arg("target", f"target == source == {s}", "a target class different from the source")


def check_distinct_rows(W, b, source, target) -> None:
    """Concrete head and classes: the source and target head rows differ (else there is no
    decision boundary between them to reflect across). Skipped when any of them is traced."""
    if not all(is_concrete(v) for v in (W, b, source, target)):
        return
    s, t = int(np.asarray(source)), int(np.asarray(target))
    Wn = np.asarray(W)
    if np.all(Wn[s] == Wn[t]):
        raise bad_arg("W", f"identical rows for source {s} and target {t}", "distinct head rows (no decision boundary between the classes)")


def as_array(v, name: str, what: str):
    """``v`` as a JAX array (tracers and arrays pass through); anything that is not array-like
    (None, a string, a callable) is refused naming ``name``."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return v if isinstance(v, jax.core.Tracer) else jnp.asarray(v)
    if v is None or isinstance(v, (str, bytes)) or callable(v):
        raise bad_arg(name, describe(v), what)
    try:
        return jnp.asarray(v)
    except (TypeError, ValueError):
        raise bad_arg(name, describe(v), what) from None


def check_class_batch(source, target, K: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Batched ``source``/``target`` [n]: integer dtype, in ``[0, K)``, distinct row by row.

    Returns the concrete int32 numpy arrays, or ``None`` when either is traced.
    """
    out = []
    for name, v in (("source", source), ("target", target)):
        if isinstance(v, (str, bytes)) or v is None:
            raise bad_arg(name, describe(v), f"an integer array [{n}] of class indices")
        if not hasattr(v, "dtype"):
            try:
                v = np.asarray(v)
            except Exception:  # noqa: BLE001 - ragged lists and the like
                raise bad_arg(name, describe(v), f"an integer array [{n}] of class indices") from None
        if not jnp.issubdtype(v.dtype, jnp.integer) or jnp.issubdtype(v.dtype, jnp.bool_):
            raise bad_arg(name, f"dtype {v.dtype}", f"integer class indices [{n}] (cast with .astype(int))")
        if tuple(v.shape) != (n,):
            raise bad_arg(name, f"shape {tuple(v.shape)}", f"shape ({n},), one class per image of x")
        out.append(v)
    if not (is_concrete(out[0]) and is_concrete(out[1])):
        return None
    s, t = (np.asarray(v).astype(np.int64) for v in out)
    for name, a in (("source", s), ("target", t)):
        if a.size and (a.min() < 0 or a.max() >= K):
            raise bad_arg(name, f"values in [{a.min()}, {a.max()}]", f"class indices in [0, {K - 1}]")
    if np.any(s == t):
        raise bad_arg("target", f"target == source at rows {np.flatnonzero(s == t)[:5].tolist()}", "a target different from the source")
    return s.astype(np.int32), t.astype(np.int32)


# ------------------------------------------------------------------ the grid


def check_ks(ks, *, compose: str = "decoded") -> None:
    """The transition grid: 1-D, at least one point, strictly increasing, within [0, 1]
    (``compose="residual"``: starting at 0). Values only when concrete."""
    if not hasattr(ks, "shape"):
        try:
            ks = np.asarray(ks, np.float64)
        except (TypeError, ValueError):
            raise bad_arg("ks", describe(ks), "an increasing 1-D grid of k in [0, 1]") from None
    if ks.ndim != 1 or ks.shape[0] == 0:
        raise bad_arg("ks", f"shape {tuple(ks.shape)}", "an increasing 1-D grid of k in [0, 1] with at least one point")
    if not is_concrete(ks):
        return
    a = np.asarray(ks, np.float64)
    if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
        raise bad_arg("ks", f"values in [{a.min():.4g}, {a.max():.4g}]", "k in [0, 1] (0 = the source, 1 = the refined mirror)")
    if a.size > 1 and not np.all(np.diff(a) > 0):
        i = int(np.flatnonzero(np.diff(a) <= 0)[0])
        raise bad_arg("ks", f"ks[{i}] = {a[i]:.4g} >= ks[{i + 1}] = {a[i + 1]:.4g}", "a strictly increasing grid (the first counterfactual is the smallest k)")
    if compose == "residual" and a[0] != 0.0:
        raise bad_arg("ks", f"ks[0] = {a[0]:.4g}", "ks[0] == 0 with compose='residual' (the path is measured from the k = 0 decode)")


# ------------------------------------------------------------------ the decoder


def probe_decoder(decode: Callable, maps, x_shape: Sequence[int], source=0, target=1, name: str = "decode") -> None:
    """``decode(F_k, skips, source, target, k)`` returns one image of ``x``'s shape.

    Args:
      decode: the user's decoder.
      maps: the shapes of ``feature_maps(x)`` (:func:`probe_feature_maps`).
      x_shape: the image's shape.
      source, target: passed as given (Python ints stay ints, as in the real call).
      name: the argument name for messages.
    """
    F_spec = jax.ShapeDtypeStruct(tuple(maps[-1].shape), maps[-1].dtype)
    skips = [jax.ShapeDtypeStruct(tuple(m.shape), m.dtype) for m in maps[:-1]]
    f32 = jax.ShapeDtypeStruct((), jnp.float32)
    out = probe(name, lambda F, sk, k: decode(F, sk, source, target, k), (F_spec, skips, f32),
                "a callable (F_k [h, w, C], skips, source, target, k) -> x [H, W, c]")
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != tuple(x_shape):
        raise bad_arg(name, f"an output of shape {shape if shape is not None else type(out).__name__}",
                      f"one decoded image of x's shape {tuple(x_shape)} (no batch axis)")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise bad_arg(name, f"an output of dtype {out.dtype}", "a floating image")


def check_same_head(W, decoder_W, name: str = "W") -> None:
    """A decoder bound to a head (``decode.W``, the classifier's head its class spatial prior
    reads) gets the same head: the same shape and, when both are concrete, the same values
    (relative tolerance :data:`HEAD_RTOL`). A right-shaped ``W`` of another classifier would
    otherwise reflect across one head while the decoder masks by another."""
    if tuple(W.shape) != tuple(decoder_W.shape):
        raise bad_arg(name, f"shape {tuple(W.shape)} while the decoder was bound with decode.W of shape {tuple(decoder_W.shape)}",
                      "the classifier's head the decoder was bound with (W == decode.W)")
    if not (is_concrete(W) and is_concrete(decoder_W)):
        return
    a, d = np.asarray(W, np.float64), np.asarray(decoder_W, np.float64)
    err = float(np.max(np.abs(a - d)))
    if not err <= HEAD_RTOL * max(1.0, float(np.max(np.abs(d)))):
        raise bad_arg(name, f"a head off the decoder's own (decode.W, the head it was bound with) by up to {err:.4g}",
                      "the classifier's head the decoder was bound with (W == decode.W)")


__all__ = [
    "HEAD_RTOL",
    "as_array",
    "check_callable",
    "check_class_batch",
    "check_class_pair",
    "check_classifier_fns",
    "check_dataset",
    "check_distinct_rows",
    "check_feature_map_channels",
    "check_head",
    "check_head_matches_logits",
    "check_image",
    "check_ks",
    "check_same_head",
    "is_concrete",
    "probe_decoder",
    "probe_feature_maps",
    "probe_logits",
]
