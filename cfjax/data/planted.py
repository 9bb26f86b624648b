r"""Planted cues: image features set on the fly, with a known strength of association to the label.

A benchmark of explanations needs a ground truth. Here it is built in: every image carries six
**cues**, each set to one of two levels (``off`` / ``on``) by a pure function of the image, and a
cue is *planted* by making its level agree with the label for a share :math:`\rho` of the
training images. Whether a trained classifier then *uses* the cue is measured by intervention
(:mod:`cfjax.eval.reliance`), and explanations are scored against that.

Nothing is stored: a planted dataset is a pure function of the base images, the labels, the
planting spec and one PRNG key (:func:`plant`, :func:`randomize`).

The cues (for an ``h x w`` image; the corner regions scale with the size, ``u = max(1, h // 28)``):

=============  ===========  ==============================================================  ============  =====
name           kind         ``apply(images, value, key)``                                   off / on      tol
=============  ===========  ==============================================================  ============  =====
``patch``      local patch  the ``4u x 4u`` top-left square set to ``value``                0 / 1         0.01
``background`` global       every pixel raised to at least ``value`` (``max(x, L)``)        0 / 0.3       0.02
``thickness``  shape        stroke thickness set by grey erosion / dilation (the candidate  2 / 4 px      0.75
                            among 2x2/3x3 min/max filters whose Morpho thickness is
                            closest to ``value``)
``position``   position     the content moved horizontally so that its foreground centroid  -3 / +3 px    0.75
                            sits ``value`` pixels right of the centre (zero fill)
``stripe``     texture      a faint vertical stripe of period 4 px on the background:       0 / 0.2       0.05
                            ``max(x, L + value * s)`` (``s`` = 1 on columns ``c % 4 < 2``)
``tag``        tag          an ``X`` glyph in a ``5u x 5u`` box at the bottom right, its    0 / 0.6       0.02
                            pixels set ``value`` above the box's own level
=============  ===========  ==============================================================  ============  =====

Each ``measure(images) -> [n]`` returns the value back (the round trip is tested) and is a
descriptor next to the Morpho-style ones of :mod:`cfjax.data.descriptors`:

* ``patch``: the mean of the corner square;
* ``background``: the 25th percentile of the pixels outside the corner regions (the stripe lifts
  only half the background columns, so a quarter of the pixels stay at ``L``);
* ``thickness``: the Morpho thickness (``descriptors.compute_descriptors``) with the corner
  regions blanked, so that the patch and the tag never count as strokes;
* ``position``: the column centroid of the foreground (``I > 0.5``, corner regions blanked)
  minus ``(w - 1) / 2``;
* ``stripe``: the median over rows and 4-px column blocks of (mean of the two lifted columns -
  mean of the other two): the background blocks dominate the median;
* ``tag``: the mean of the glyph's pixels minus the median of the box's other pixels.

The cues are applied in a fixed order (:data:`CUE_ORDER`: shape, position, background, stripe,
patch, tag), so that each measurement survives the later cues. ``apply`` is deterministic: its
``key`` is accepted so every cue has the same signature, and is unused.

Planting (:func:`plant`) for a (source, target) class pair: a planted cue is ``on`` for a target
image and ``off`` for a source image with probability :math:`\rho` (independently per image and
per planted cue), and the other way round otherwise; every other cue, and every cue of an image
of another class, is ``on`` with probability 1/2. :math:`\rho = 0.5` is the null: no cue carries
any information about the label. Evaluation images come from :func:`randomize` (every cue
independent of the label).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from cfjax.data import descriptors as desc
from cfjax.errors import bad_arg

CUE_ORDER: tuple[str, ...] = ("thickness", "position", "background", "stripe", "patch", "tag")
"""The cue names, in the order :func:`render` applies them."""

CUE_KINDS = {"patch": "local patch", "background": "global intensity", "thickness": "shape", "position": "position",
             "stripe": "texture", "tag": "tag"}


class Cue(NamedTuple):
    """One planted cue for a given image size.

    Attributes:
      name: one of :data:`CUE_ORDER`.
      kind: what it changes (``CUE_KINDS``).
      off, on: the two levels used for planting (``off`` is source-typical, ``on`` target-typical).
      tol: the round-trip tolerance, ``|measure(apply(x, v)) - v| <= tol`` (well under half the
        gap between ``off`` and ``on``).
      region: ``[h, w]`` bool mask of the pixels the cue occupies (spatial cues: ``patch``,
        ``tag``) or ``None`` (global cues).
      apply: ``(images [n, h, w, c], value [n] or scalar, key) -> images``.
      measure: ``images [n, h, w, c] -> [n]`` the value.
    """

    name: str
    kind: str
    off: float
    on: float
    tol: float
    region: np.ndarray | None
    apply: Callable
    measure: Callable


def _grey(x: Float[Array, "n h w c"]) -> Float[Array, "n h w"]:
    if x.shape[-1] == 1:
        return x[..., 0]
    if x.shape[-1] == 3:
        return jnp.tensordot(x, jnp.asarray((0.299, 0.587, 0.114), x.dtype), axes=([-1], [0]))
    return jnp.mean(x, -1)


def _vals(value, n: int) -> Float[Array, "n"]:
    v = jnp.asarray(value, jnp.float32)
    return jnp.broadcast_to(v, (n,)) if v.ndim == 0 else v


def _regions(h: int, w: int) -> dict:
    u = max(1, h // 28)
    patch = np.zeros((h, w), bool)
    patch[: 4 * u, : 4 * u] = True
    box = np.zeros((h, w), bool)
    r0, c0 = h - 6 * u, w - 6 * u
    box[r0 : r0 + 5 * u, c0 : c0 + 5 * u] = True
    i = np.arange(5 * u)[:, None] // u
    j = np.arange(5 * u)[None, :] // u
    glyph = np.zeros((h, w), bool)
    glyph[r0 : r0 + 5 * u, c0 : c0 + 5 * u] = (i == j) | (i + j == 4)
    return {"patch": patch, "box": box, "glyph": glyph, "corners": patch | box}


def _filter(x, size: int, op: str):
    """Grey min/max filter of the ``[n, h, w, c]`` batch over ``size x size`` windows (SAME)."""
    init, fn = (-jnp.inf, jax.lax.max) if op == "max" else (jnp.inf, jax.lax.min)
    lo, hi = (size - 1) // 2, size // 2
    return jax.lax.reduce_window(x, init, fn, (1, size, size, 1), (1, 1, 1, 1), ((0, 0), (lo, hi), (lo, hi), (0, 0)))


def _intensity_cues(reg: dict, w: int) -> dict:
    """``{name: (apply, measure)}`` of the background, stripe, patch and tag cues."""
    patch = jnp.asarray(reg["patch"])[None, :, :, None]
    glyph = jnp.asarray(reg["glyph"])[None, :, :, None]
    rest = np.flatnonzero((reg["box"] & ~reg["glyph"]).ravel())
    glyph_idx = np.flatnonzero(reg["glyph"].ravel())
    outside = np.flatnonzero(~reg["corners"].ravel())
    s = jnp.asarray((np.arange(w) % 4) < 2, jnp.float32)[None, None, :, None]

    def m_background(x):
        g = _grey(jnp.asarray(x, jnp.float32)).reshape(x.shape[0], -1)[:, outside]
        return jnp.quantile(g, 0.25, axis=1)

    def a_background(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        return jnp.maximum(x, _vals(value, x.shape[0])[:, None, None, None])

    def m_stripe(x):
        g = _grey(jnp.asarray(x, jnp.float32))
        n, hh, ww = g.shape
        b = g[:, :, : ww - ww % 4].reshape(n, hh, -1, 4)
        d = (b[..., 0] + b[..., 1] - b[..., 2] - b[..., 3]) / 2.0
        return jnp.median(d.reshape(n, -1), axis=1)

    def a_stripe(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        lvl = m_background(x)[:, None, None, None]
        return jnp.maximum(x, jnp.clip(lvl + _vals(value, x.shape[0])[:, None, None, None] * s, 0.0, 1.0))

    def m_patch(x):
        g = _grey(jnp.asarray(x, jnp.float32))
        return jnp.sum(g * patch[..., 0], axis=(1, 2)) / float(reg["patch"].sum())

    def a_patch(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        return jnp.where(patch, _vals(value, x.shape[0])[:, None, None, None], x)

    def _box_level(g):
        return jnp.median(g.reshape(g.shape[0], -1)[:, rest], axis=1)

    def m_tag(x):
        g = _grey(jnp.asarray(x, jnp.float32))
        return jnp.mean(g.reshape(g.shape[0], -1)[:, glyph_idx], axis=1) - _box_level(g)

    def a_tag(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        lvl = _box_level(_grey(x)) + _vals(value, x.shape[0])
        return jnp.where(glyph, jnp.clip(lvl, 0.0, 1.0)[:, None, None, None], x)

    return {"background": (a_background, m_background), "stripe": (a_stripe, m_stripe), "patch": (a_patch, m_patch),
            "tag": (a_tag, m_tag)}


def _geometry_cues(reg: dict, w: int) -> dict:
    """``{name: (apply, measure)}`` of the thickness and position cues."""
    keep = jnp.asarray(~reg["corners"], jnp.float32)[None, :, :, None]
    centre = (w - 1) / 2.0

    def m_thickness(x):
        return jnp.asarray(desc.compute_descriptors(jnp.asarray(x, jnp.float32) * keep, "digits"))[:, 1]

    def a_thickness(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        cands = [_filter(x, 3, "min"), _filter(x, 2, "min"), x, _filter(x, 2, "max"), _filter(x, 3, "max"),
                 _filter(_filter(x, 3, "max"), 2, "max")]
        t = jnp.stack([m_thickness(c) for c in cands])  # [6, n]
        best = jnp.argmin(jnp.abs(t - _vals(value, x.shape[0])[None]), axis=0)
        return jnp.stack(cands)[best, jnp.arange(x.shape[0])]

    def m_position(x):
        m = (_grey(jnp.asarray(x, jnp.float32)) > 0.5) * keep[..., 0]
        cols = jnp.arange(w, dtype=jnp.float32)
        mass = jnp.maximum(jnp.sum(m, axis=(1, 2)), 1.0)
        return jnp.sum(m * cols[None, None, :], axis=(1, 2)) / mass - centre

    def a_position(x, value, key=None):
        x = jnp.asarray(x, jnp.float32)
        shift = jnp.round(_vals(value, x.shape[0]) - m_position(x)).astype(jnp.int32)

        def one(img, d):
            pad = jnp.pad(img, ((0, 0), (w, w), (0, 0)))
            return jax.lax.dynamic_slice(pad, (0, w - d, 0), img.shape)

        return jax.vmap(one)(x, shift)

    return {"thickness": (a_thickness, m_thickness), "position": (a_position, m_position)}


@functools.lru_cache(maxsize=None)
def make_cues(h: int = 28, w: int = 28) -> dict[str, Cue]:
    """The six cues for ``h x w`` images, keyed by name in :data:`CUE_ORDER` (cached).

    Example:
      >>> cues = make_cues()
      >>> x = np.zeros((2, 28, 28, 1), np.float32)
      >>> float(cues["patch"].measure(cues["patch"].apply(x, 1.0, None))[0])
      1.0
    """
    if isinstance(h, bool) or not isinstance(h, int) or h < 16 or isinstance(w, bool) or not isinstance(w, int) or w < 16:
        raise bad_arg("h, w", f"{h!r}, {w!r}", "image sides of at least 16 pixels")
    reg = _regions(h, w)
    fns = {**_geometry_cues(reg, w), **_intensity_cues(reg, w)}
    spec = {
        "thickness": (2.0, 4.0, 0.75, None),
        "position": (-3.0, 3.0, 0.75, None),
        "background": (0.0, 0.3, 0.02, None),
        "stripe": (0.0, 0.2, 0.05, None),
        "patch": (0.0, 1.0, 0.01, reg["patch"]),
        "tag": (0.0, 0.6, 0.02, reg["box"]),
    }
    return {n: Cue(n, CUE_KINDS[n], *spec[n], *fns[n]) for n in CUE_ORDER}


def check_cue_names(names: Sequence[str], arg: str = "cues") -> tuple[str, ...]:
    """``names`` as a tuple after checking each is a cue (no repeats)."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    bad = [n for n in names if n not in CUE_ORDER]
    if bad or len(set(names)) != len(names):
        raise bad_arg(arg, repr(names), f"distinct cue names among {', '.join(CUE_ORDER)}")
    return names


def render(images: Float[Array, "n h w c"], levels: dict, key=None) -> Float[Array, "n h w c"]:
    """Apply every cue in ``levels`` (``{name: [n] values}``) in :data:`CUE_ORDER`.

    Args:
      images: the base images, float in [0, 1].
      levels: the value of each cue per image (cues missing from it are left as they are).
      key: unused (the cues are deterministic); accepted for a uniform signature.

    Returns:
      The rendered images, float32 ``[n, h, w, c]`` in [0, 1].
    """
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4:
        raise bad_arg("images", f"shape {x.shape}", "[n, h, w, c] images")
    cues = make_cues(int(x.shape[1]), int(x.shape[2]))
    check_cue_names(tuple(levels), "levels")
    for name in CUE_ORDER:
        if name in levels:
            x = cues[name].apply(x, levels[name], key)
    return x


def measure_all(images: Float[Array, "n h w c"], names: Sequence[str] = CUE_ORDER) -> Float[Array, "n a"]:
    """Every cue's measurement of ``images``: ``[n, len(names)]``, columns in ``names`` order."""
    x = jnp.asarray(images, jnp.float32)
    cues = make_cues(int(x.shape[1]), int(x.shape[2]))
    return jnp.stack([cues[n].measure(x) for n in check_cue_names(names)], axis=1)


_measure_jit = jax.jit(measure_all, static_argnums=1)


def _pad(x: np.ndarray, batch: int) -> np.ndarray:
    return x if len(x) == batch else np.concatenate([x, np.repeat(x[:1], batch - len(x), 0)])


def measure_all_np(images: np.ndarray, names: Sequence[str] = CUE_ORDER, batch: int = 256) -> np.ndarray:
    """:func:`measure_all` over a host array in jitted chunks of ``batch`` (each padded to
    ``batch``, so one compilation per image shape serves every call): ``[n, len(names)]`` numpy."""
    images = np.asarray(images, np.float32)
    names = check_cue_names(names)
    out = [np.asarray(_measure_jit(_pad(images[s : s + batch], batch), names))[: len(images[s : s + batch])]
           for s in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, len(names)), np.float32)


class Planted(NamedTuple):
    """A planted image set.

    Attributes:
      images: ``[n, h, w, c]`` float32, every cue rendered.
      labels: ``[n]`` int32 (the base labels).
      on: ``{cue: [n] bool}`` which level each cue was set to (``True``: ``on``).
      levels: ``{cue: [n] float32}`` the values set.
    """

    images: np.ndarray
    labels: np.ndarray
    on: dict
    levels: dict


def _check_rho(rho) -> float:
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.5 <= float(rho) <= 1.0:
        raise bad_arg("rho", repr(rho), "a share in [0.5, 1] (0.5: the null, 1: the cue always agrees with the label)")
    return float(rho)


def draw_levels(labels: Int[Array, "n"], key, *, source: int, target: int, planted: Sequence[str] = (), rho: float = 0.5,
                h: int = 28, w: int = 28) -> tuple[dict, dict]:
    """Draw each image's cue levels: ``(on {cue: [n] bool}, levels {cue: [n] float32})``.

    Planted cues agree with the label with probability ``rho`` on source and target images
    (``on`` for the target, ``off`` for the source); every other cue, and every cue of another
    class's image, is ``on`` with probability 1/2. One subkey per cue (``fold_in`` of its index).
    """
    planted = check_cue_names(planted, "planted")
    rho = _check_rho(rho)
    if source == target:
        raise bad_arg("source, target", f"{source}, {target}", "two different classes")
    y = np.asarray(labels)
    cues = make_cues(h, w)
    on, levels = {}, {}
    for i, name in enumerate(CUE_ORDER):
        u = np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (len(y),)))
        coin = u < 0.5
        if name in planted:
            agree = u < rho
            coin = np.where(y == target, agree, np.where(y == source, ~agree, coin))
        on[name] = coin
        levels[name] = np.where(coin, cues[name].on, cues[name].off).astype(np.float32)
    return on, levels


_render_jit = jax.jit(render)


def render_np(images: np.ndarray, levels: dict, batch: int = 256) -> np.ndarray:
    """:func:`render` over a host array in jitted chunks of ``batch`` (each padded to ``batch``, so
    one compilation per image shape and set of cues serves every call)."""
    images = np.asarray(images, np.float32)
    n = len(images)
    out = []
    for s in range(0, n, batch):
        x = images[s : s + batch]
        lv = {k: np.asarray(v, np.float32)[s : s + batch] for k, v in levels.items()}
        k = len(x)
        x, lv = _pad(x, batch), {c: _pad(v, batch) for c, v in lv.items()}
        out.append(np.asarray(_render_jit(x, lv))[:k])
    return np.concatenate(out) if out else np.zeros_like(images)


def plant(images: np.ndarray, labels: np.ndarray, key, *, source: int, target: int, planted: Sequence[str] = (),
          rho: float = 0.5) -> Planted:
    """Training images with ``planted`` cues agreeing with the label at strength ``rho``.

    Args:
      images: ``[n, h, w, c]`` base images in [0, 1] (host array).
      labels: ``[n]`` class labels.
      key: the one PRNG key of this planting.
      source, target: the class pair; ``on`` is the target-typical level.
      planted: the planted cue names (one, two, or none).
      rho: share of source/target images whose planted cues agree with the label.

    Returns:
      :class:`Planted`.

    Example:
      >>> x = np.zeros((4, 28, 28, 1), np.float32); y = np.array([3, 8, 3, 8])
      >>> p = plant(x, y, jax.random.key(0), source=3, target=8, planted=("patch",), rho=1.0)
      >>> p.on["patch"].tolist()
      [False, True, False, True]
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) != len(labels):
        raise bad_arg("images, labels", f"shapes {images.shape}, {np.shape(labels)}", "[n, h, w, c] images and [n] labels")
    on, levels = draw_levels(labels, key, source=source, target=target, planted=planted, rho=rho,
                             h=images.shape[1], w=images.shape[2])
    return Planted(render_np(images, levels), np.asarray(labels, np.int32), on, levels)


def randomize(images: np.ndarray, labels: np.ndarray, key) -> Planted:
    """Evaluation (or VAE-training) images: every cue ``on`` with probability 1/2, independent
    of the label (:func:`plant` with nothing planted)."""
    return plant(images, labels, key, source=0, target=1, planted=(), rho=0.5)


def switch(images: np.ndarray, levels: dict, cue: str, on: bool) -> np.ndarray:
    """Re-render base ``images`` with their ``levels`` but ``cue`` forced to ``on`` (or ``off``):
    the intervention of :mod:`cfjax.eval.reliance`."""
    check_cue_names((cue,), "cue")
    c = make_cues(images.shape[1], images.shape[2])[cue]
    lv = dict(levels)
    lv[cue] = np.full(len(images), c.on if on else c.off, np.float32)
    return render_np(np.asarray(images, np.float32), lv)


__all__ = ["CUE_KINDS", "CUE_ORDER", "Cue", "Planted", "check_cue_names", "draw_levels", "make_cues", "measure_all",
           "measure_all_np", "plant", "render_np", "randomize", "render", "switch"]
