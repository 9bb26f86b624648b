"""The one validation layer of the Mirror-CFE entry points.

:func:`cfjax.mirror_cfe`, :class:`cfjax.MirrorCFE`, :func:`cfjax.reflect`,
:func:`cfjax.bind_mirror_decoder` and :func:`cfjax.train_mirror_decoder` call these checks
before any of their own work is traced. Every failure is a :class:`cfjax.InputError` whose
message names the argument, what was expected and what came (``ARG: expected ..., got ...``).

Two kinds of check:

* **shape/type checks** (callables, ranks, the head's ``[K, C]``/``[K]`` against each other and
  against the feature map's ``C``, the decoder's output shape, integer class dtypes) always
  run, also under ``jit``/``vmap``: they use static shapes and ``jax.eval_shape`` probes only;
* **value checks** (class indices in range and distinct, finite images in the decoder's
  range, an increasing ``ks`` in [0, 1], ``W GAP(F) + b`` equal to the classifier's logits on
  one example) run only on concrete values: a tracer has none, so inside a user's ``jit`` they
  are skipped (a non-finite image there ends with ``status`` 3, :data:`NON_FINITE`).

The ``others`` path setting is resolved here too (:func:`resolve_others`): a decoder bound by
:func:`cfjax.bind_mirror_decoder` carries the path it was trained on.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax.errors import InputError, bad_arg

OTHERS = ("keep", "mirror")
"""The reflection's treatment of third classes (:func:`cfjax.reflection_target`)."""

HEAD_RTOL = 1e-3
"""Relative tolerance of :func:`check_head_matches_logits`: ``max |W GAP(F) + b - logits(x)|``
must stay below ``HEAD_RTOL * max(1, max |logits(x)|)`` (float32 recomputation differs by
~1e-6 relative; a head that is not the classifier's is off by whole logits)."""


def is_concrete(v) -> bool:
    """``v`` has values on the host (not a tracer)."""
    return not isinstance(v, jax.core.Tracer)


def _describe(v) -> str:
    """A short description of a bad value for a message (never a huge repr)."""
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"{type(v).__name__} of shape {tuple(v.shape)} and dtype {v.dtype}"
    r = repr(v)
    return r if len(r) <= 80 else f"{type(v).__name__} ({r[:60]}...)"


# ------------------------------------------------------------------ callables


def check_callable(f, name: str, signature: str) -> None:
    """``f`` is callable (``None``, strings, arrays are refused).

    Args:
      f: the value.
      name: the argument name for the message.
      signature: what the callable must compute, e.g. ``"x [H, W, c] -> [S_1, ..., F]"``.
    """
    if not callable(f):
        raise bad_arg(name, _describe(f), f"a callable {signature}")


# ------------------------------------------------------------------ the head


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
            raise bad_arg(name, _describe(v), "an array (W [K, C], b [K]: logits = W @ GAP(F) + b)")
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
        raise bad_arg(name, _describe(v), f"an integer class index in [0, {K - 1}] (a Python int or an integer array)")
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
        raise bad_arg(name, _describe(v), what)
    try:
        return jnp.asarray(v)
    except (TypeError, ValueError):
        raise bad_arg(name, _describe(v), what) from None


def check_class_batch(source, target, K: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Batched ``source``/``target`` [n]: integer dtype, in ``[0, K)``, distinct row by row.

    Returns the concrete int32 numpy arrays, or ``None`` when either is traced.
    """
    out = []
    for name, v in (("source", source), ("target", target)):
        if isinstance(v, (str, bytes)) or v is None:
            raise bad_arg(name, _describe(v), f"an integer array [{n}] of class indices")
        if not hasattr(v, "dtype"):
            try:
                v = np.asarray(v)
            except Exception:  # noqa: BLE001 - ragged lists and the like
                raise bad_arg(name, _describe(v), f"an integer array [{n}] of class indices") from None
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


# ------------------------------------------------------------------ images, grid


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
        raise bad_arg(name, _describe(x), f"a float array [{'n, ' if batched else ''}H, W, c]")
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


def check_ks(ks, *, compose: str = "decoded") -> None:
    """The transition grid: 1-D, at least one point, strictly increasing, within [0, 1]
    (``compose="residual"``: starting at 0). Values only when concrete."""
    if not hasattr(ks, "shape"):
        try:
            ks = np.asarray(ks, np.float64)
        except (TypeError, ValueError):
            raise bad_arg("ks", _describe(ks), "an increasing 1-D grid of k in [0, 1]") from None
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


def check_options(*, solver=None, maxiter=None, tol=None, k_min=None, compose=None, threshold=None) -> None:
    """The scalar options of :func:`cfjax.mirror_cfe` (only those given)."""
    from cfjax.methods.mirror import COMPOSE_MODES, SOLVERS

    if solver is not None and solver not in SOLVERS:
        raise bad_arg("solver", repr(solver), f"one of {SOLVERS}")
    if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1):
        raise bad_arg("maxiter", repr(maxiter), "a positive integer")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)) or not np.isfinite(tol) or tol <= 0):
        raise bad_arg("tol", repr(tol), "a finite tolerance > 0")
    if k_min is not None and (isinstance(k_min, bool) or not isinstance(k_min, (int, float, np.floating, np.integer)) or not 0.0 <= k_min < 1.0):
        raise bad_arg("k_min", repr(k_min), "a number in [0, 1) (counterfactuals are searched at k > k_min)")
    if compose is not None and compose not in COMPOSE_MODES:
        raise bad_arg("compose", repr(compose), f"one of {COMPOSE_MODES}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0.0 < threshold < 1.0):
        raise bad_arg("threshold", repr(threshold), "None (argmax rule) or a probability in (0, 1)")


# ------------------------------------------------------------------ the decoder's path


def resolve_others(others, decode) -> str:
    """The path ``mirror_cfe`` walks: ``others`` when given, else the decoder's
    ``reflect_others`` (a decoder from :func:`cfjax.bind_mirror_decoder` carries it), else
    ``"keep"`` (the paper). An explicit ``others`` that contradicts the decoder is refused."""
    if others is not None and others not in OTHERS:
        raise bad_arg("others", repr(others), f"None (the decoder's path) or one of {OTHERS}")
    theirs = getattr(decode, "reflect_others", None)
    if theirs is not None and theirs not in OTHERS:
        raise bad_arg("decode.reflect_others", repr(theirs), f"one of {OTHERS}")
    if others is None:
        return theirs if theirs is not None else "keep"
    if theirs is not None and others != theirs:
        raise bad_arg("others", f"others={others!r} while the decoder was trained on decode.reflect_others={theirs!r}",
                      f"the decoder's own path (leave others out, or pass others={theirs!r})")
    return others


# ------------------------------------------------------------------ probes of the user's callables


def _probe(f, name: str, args, what: str):
    """``jax.eval_shape(f, *args)``; a failure is re-raised naming ``f``, its input and ``what``."""
    try:
        return jax.eval_shape(f, *args)
    except Exception as e:  # noqa: BLE001 - re-raised with the callable named
        if isinstance(e, InputError):  # a check of a nested cfjax call: already names its argument
            raise
        shapes = ", ".join(f"{tuple(a.shape)} {a.dtype}" if hasattr(a, "shape") else type(a).__name__ for a in jax.tree_util.tree_leaves(args))
        raise bad_arg(name, f"{type(e).__name__}: {e}", f"{what}; it failed on inputs {shapes}") from e


def probe_feature_maps(feature_maps: Callable, x_shape: Sequence[int], x_dtype, W_shape: Sequence[int], name: str = "feature_maps"):
    """Shapes of ``feature_maps(x)``: a non-empty list/tuple of [h, w, c] maps whose last has
    W's ``C``. Returns the list of ``jax.ShapeDtypeStruct``."""
    x_spec = jax.ShapeDtypeStruct(tuple(x_shape), x_dtype)
    out = _probe(feature_maps, name, (x_spec,), "x [H, W, c] -> a list [S_1, ..., S_L, F] of single-example maps")
    if not isinstance(out, (list, tuple)) or len(out) == 0:
        raise bad_arg(name, f"{type(out).__name__} {getattr(out, 'shape', '')}".strip(),
                      "a non-empty list [S_1, ..., S_L, F] of maps (wrap a single last map as [F])")
    for i, m in enumerate(out):
        if not hasattr(m, "shape") or len(m.shape) != 3:
            raise bad_arg(name, f"map {i} of shape {getattr(m, 'shape', type(m).__name__)}", "single-example [h, w, c] maps (no batch axis)")
    check_feature_map_channels(out[-1].shape, W_shape, name)
    return list(out)


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
    out = _probe(lambda F, sk, k: decode(F, sk, source, target, k), name, (F_spec, skips, f32),
                 "(F_k [h, w, C], skips, source, target, k) -> x [H, W, c]")
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != tuple(x_shape):
        raise bad_arg(name, f"an output of shape {shape if shape is not None else type(out).__name__}",
                      f"one decoded image of x's shape {tuple(x_shape)} (no batch axis)")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise bad_arg(name, f"an output of dtype {out.dtype}", "a floating image")


def probe_logits(logits: Callable, x_shape: Sequence[int], x_dtype, K: int, name: str = "logits") -> None:
    """``logits(x)`` is a [K] vector with W's number of rows."""
    out = _probe(logits, name, (jax.ShapeDtypeStruct(tuple(x_shape), x_dtype),), "x [H, W, c] -> logits [K]")
    if tuple(getattr(out, "shape", ())) != (K,):
        raise bad_arg(name, f"an output of shape {getattr(out, 'shape', None)}", f"logits of shape ({K},), one per row of W")


def check_head_matches_logits(feature_maps: Callable, logits: Callable, W, b, x, name: str = "W/b") -> None:
    """On one concrete image: ``W @ GAP(feature_maps(x)[-1]) + b`` equals ``logits(x)``
    (relative tolerance :data:`HEAD_RTOL`). Skipped when anything is traced."""
    if not all(is_concrete(v) for v in (W, b, x)):
        return
    from cfjax.methods.mirror import gap

    F = jnp.asarray(list(feature_maps(x))[-1])
    if not is_concrete(F):
        return
    mine = np.asarray(jnp.asarray(W) @ gap(F) + jnp.asarray(b), np.float64)
    theirs = np.asarray(logits(x), np.float64)
    if theirs.shape != mine.shape:
        raise bad_arg("logits", f"an output of shape {theirs.shape}", f"logits of shape {mine.shape}, one per row of W")
    err = float(np.max(np.abs(mine - theirs)))
    scale = max(1.0, float(np.max(np.abs(theirs))))
    if not err <= HEAD_RTOL * scale:
        hint = ""
        if W.shape[0] == W.shape[1]:
            mt = np.asarray(jnp.asarray(W).T @ gap(F) + jnp.asarray(b), np.float64)
            if float(np.max(np.abs(mt - theirs))) <= HEAD_RTOL * scale:
                hint = "; W.T matches: pass the Dense kernel transposed (W = kernel.T)"
        raise bad_arg(name, f"W @ GAP(F) + b off the classifier's logits by up to {err:.4g} on one image{hint}",
                      "the classifier's own GAP-linear head: W @ GAP(feature_maps(x)[-1]) + b == logits(x)")


# ------------------------------------------------------------------ the decoder trainer


def check_dataset(data, name: str = "train"):
    """A training split: an object with ``.images`` [N, H, W, c] float in [0, 1] and ``.labels``
    [N] (a :class:`cfjax.data.Dataset`) or an explicit ``(images, labels)`` tuple. Returns
    ``(images float32, labels int32, name)``; the labels' range is checked by the caller."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, dname = data.images, data.labels, getattr(data, "name", "?")
    elif isinstance(data, tuple) and len(data) == 2:
        images, labels, dname = data[0], data[1], "?"
    else:
        raise bad_arg(name, _describe(data),
                      "a cfjax.data.Dataset (cfjax.data.load(...)), an object with .images [N, H, W, c] and .labels [N], "
                      "or an (images, labels) tuple")
    try:
        images_a = np.asarray(images)
        labels_a = np.asarray(labels)
    except Exception:  # noqa: BLE001
        raise bad_arg(f"{name}.images", _describe(images), "an array [N, H, W, c]") from None
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
            raise bad_arg(name, _describe(clf),
                          f"a cfjax.models.ClassifierFns (missing .{attr}; build one with ClassifierFns.from_gap(feature_maps, W, b))")
    for attr, sig in (("feature_maps", "x -> [S_1, ..., F]"), ("features", "x -> GAP(F) [C]"), ("logits", "x -> [K]")):
        check_callable(getattr(clf, attr), f"{name}.{attr}", sig)
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    K, C = check_head(W, b, W_name=f"{name}.W", b_name=f"{name}.b")
    x = jnp.asarray(x_example)
    probe_feature_maps(clf.feature_maps, x.shape, x.dtype, W.shape, f"{name}.feature_maps")
    probe_logits(clf.logits, x.shape, x.dtype, K, f"{name}.logits")
    check_head_matches_logits(clf.feature_maps, clf.logits, W, b, x, f"{name}.W/{name}.b")
    from cfjax.methods.mirror import gap

    z_mine = np.asarray(gap(jnp.asarray(list(clf.feature_maps(x))[-1])))
    z_theirs = np.asarray(clf.features(x))
    if z_theirs.shape != z_mine.shape or not np.allclose(z_theirs, z_mine, rtol=HEAD_RTOL, atol=HEAD_RTOL * max(1.0, float(np.abs(z_mine).max()))):
        raise bad_arg(f"{name}.features", f"an output of shape {z_theirs.shape} that is not GAP(feature_maps(x)[-1])",
                      "features(x) == mean over h, w of the last feature map")
    return K, C


__all__ = [
    "HEAD_RTOL",
    "OTHERS",
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
    "check_options",
    "is_concrete",
    "probe_decoder",
    "probe_feature_maps",
    "probe_logits",
    "resolve_others",
]
