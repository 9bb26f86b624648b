r"""Inception-v3 pool3 features for the standard FID, in Flax; weights only from a file you supply.

The network is the **FID Inception** of pytorch-fid (``pytorch_fid.inception.fid_inception_v3``,
itself TensorFlow's ``inception-2015-12-05`` graph): torchvision's ``Inception3`` with
``FIDInceptionA`` (Mixed_5b/c/d) and ``FIDInceptionC`` (Mixed_6b..e) average-pooling without the
padded zeros (``count_include_pad=False``), ``FIDInceptionE_1`` (Mixed_7b) likewise, and
``FIDInceptionE_2`` (Mixed_7c) max-pooling in its pool branch; every conv is ``BasicConv2d`` (conv
without bias, BatchNorm with eps 1e-3 in inference mode, ReLU). Features are the 2048-d global
average pool after Mixed_7c ("pool3", pytorch-fid's block 3, ``dims=2048``).

Preprocessing, as pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``:
images ``[n, h, w, 1 or 3]`` in [0, 1]; grayscale is tiled to 3 channels; every image is resized
to 299x299 **bilinearly** (``F.interpolate(mode="bilinear", align_corners=False)``, no
antialiasing; ``jax.image.resize(..., "bilinear", antialias=False)`` computes the same, checked
against PyTorch in the tests); then ``2 x - 1``.

Weights (cfjax never downloads them):

* ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's release ``fid_weights``, 95,628,359
  bytes), a PyTorch state dict read with ``torch.load(weights_only=True)`` (torch imported lazily,
  only for ``.pth``). Its sha256 must equal :data:`PT_INCEPTION_SHA256` (the value public projects
  pin for this file; the file itself is not available here, so cfjax has not hashed it itself).
* an ``.npz`` **with the same keys and layout as that state dict** (PyTorch names and layouts:
  ``"Conv2d_1a_3x3.conv.weight"`` ``[out, in, kh, kw]``, ``"Mixed_5b.branch1x1.bn.weight"``
  (gamma), ``".bn.bias"`` (beta), ``".bn.running_mean"``, ``".bn.running_var"``; the ``fc.*`` and
  ``num_batches_tracked`` entries are ignored). Convert the ``.pth`` once on any machine with torch::

      python -c "import sys, torch, numpy as np; sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); np.savez(sys.argv[2], **{k: v.numpy() for k, v in sd.items()})" pt_inception-2015-12-05-6726825d.pth inception_fid.npz

  (or :func:`save_inception_npz` from a loaded model). An ``.npz`` has no canonical checksum: its
  sha256 is recorded in ``Inception.sha256`` (report it next to the FID) and checked when you
  pass ``sha256=``.

Usage::

    inc = load_inception("pt_inception-2015-12-05-6726825d.pth")
    f = inception_features(inc, images)         # [n, 2048] numpy, in batches
    score = inception_fid(inc, real, fake)      # = metrics.fid(f_real, f_fake)

Streaming over a dataset: ``metrics.fid_moments_update(m, inc.features(x), mask)`` per chunk.
Cost: ~5.7 GFLOP per image (the 299x299 forward); on 2 CPU cores roughly 0.1-0.2 s per image.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from cfjax.errors import DataNotFoundError, bad_arg
from cfjax.eval import metrics

__all__ = [
    "FEATURE_DIM",
    "INPUT_SIZE",
    "Inception",
    "InceptionV3FID",
    "PT_INCEPTION_BYTES",
    "PT_INCEPTION_FILE",
    "PT_INCEPTION_SHA256",
    "inception_features",
    "inception_fid",
    "inception_prepare",
    "init_inception",
    "load_inception",
    "save_inception_npz",
    "state_dict_from_variables",
    "variables_from_state_dict",
]

#: pytorch-fid's weight file name (its ``FID_WEIGHTS_URL`` basename).
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
#: sha256 of that file as pinned by several public projects; its first 8 digits are the
#: ``6726825d`` in the name (torch.hub's convention). Not hashed by cfjax (no copy here).
PT_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
#: its size in bytes, as pinned by the same projects.
PT_INCEPTION_BYTES = 95_628_359
#: the side every image is resized to.
INPUT_SIZE = 299
#: the pool3 feature dimension.
FEATURE_DIM = 2048

_HOW = (f"cfjax never downloads it: fetch {PT_INCEPTION_FILE} (pytorch-fid's GitHub release 'fid_weights') on a "
        "machine with internet, copy it here and pass --inception-weights PATH / load_inception(PATH); "
        "an .npz of its state dict also works (see cfjax.eval.inception)")


# ------------------------------------------------------------------------------ network


class BasicConv(nn.Module):
    """pytorch-fid's ``BasicConv2d``: conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Float[Array, "n h w c"]) -> Float[Array, "n h2 w2 f"]:
        (ph, pw), s = self.padding, self.stride
        x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_no_pad(x):  # F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride=2, pad=0):
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b/c/d): 64 + 64 + 96 + ``pool_features`` channels."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """InceptionB (Mixed_6a), stride 2: 384 + 96 + the input's channels."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b..e): 4 x 192 channels, factorised 7x7 convs of width ``c7``."""

    c7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.c7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_no_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """InceptionD (Mixed_7a), stride 2: 320 + 192 + the input's channels."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (Mixed_7b, average pool without pads) / _2 (Mixed_7c, ``max_pool=True``): 2048 channels."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_no_pad(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """The FID Inception-v3 up to pool3, NHWC, on inputs already in [-1, 1].

    Variables: ``{"params": {name: {... "conv": {"kernel"}, "bn": {"scale", "bias"}}},
    "batch_stats": {name: {... "bn": {"mean", "var"}}}}`` with the PyTorch module names
    (``Conv2d_1a_3x3``, ``Mixed_5b/branch1x1``, ...). Any side >= 75 works; FID uses 299.

    Example:
      >>> v = jax.eval_shape(lambda: InceptionV3FID().init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))
      >>> v["params"]["Conv2d_1a_3x3"]["conv"]["kernel"].shape
      (3, 3, 3, 32)
    """

    @nn.compact
    def __call__(self, x: Float[Array, "n h w 3"]) -> Float[Array, "n 2048"]:
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------ preprocessing


def inception_prepare(x: Float[Array, "n h w c"]) -> Float[Array, "n 299 299 3"]:
    """pytorch-fid's input pipeline: tile grayscale to RGB, bilinear resize to 299x299, ``2x - 1``.

    Args:
      x: ``[n, h, w, 1 or 3]`` images in [0, 1].

    Returns:
      ``[n, 299, 299, 3]`` float32 in [-1, 1].
    """
    if getattr(x, "ndim", None) != 4 or x.shape[-1] not in (1, 3):
        raise bad_arg("images", f"shape {tuple(getattr(x, 'shape', ()))}", "[n, h, w, 1 or 3] images in [0, 1]")
    x = jnp.asarray(x, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear", antialias=False)
    return 2.0 * x - 1.0


_prepare_jit = jax.jit(inception_prepare)
_forward_jit = jax.jit(lambda variables, x: InceptionV3FID().apply(variables, x))


# ------------------------------------------------------------------------------ weights


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """PyTorch key -> (Flax variable path, PyTorch shape), for every tensor the network needs."""
    shapes = jax.eval_shape(lambda: InceptionV3FID().init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        keys = tuple(str(k.key) for k in path)
        coll, mods, leaf_name = keys[0], keys[1:-1], keys[-1]
        torch_leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                      ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}[(coll, leaf_name)]
        shape = tuple(leaf.shape)
        if leaf_name == "kernel":  # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        out[".".join(mods + (torch_leaf,))] = (keys, shape)
    return out


def variables_from_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables from a pytorch-fid state dict (PyTorch names and layouts; numpy or torch arrays).

    Extra entries (``fc.*``, ``*.num_batches_tracked``) are ignored.

    Raises:
      InputError: a needed key is missing or has the wrong shape.
    """
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    missing = [k for k in _template() if k not in state]
    if missing:
        raise bad_arg("inception weights", f"a state dict without {len(missing)} needed keys, e.g. {missing[:3]}",
                      "pytorch-fid's FID Inception state dict (keys like 'Mixed_5b.branch1x1.conv.weight')")
    for key, (path, shape) in _template().items():
        v = state[key]
        v = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
        if v.shape != shape:
            raise bad_arg("inception weights", f"{key} of shape {v.shape}", f"shape {shape}")
        if path[-1] == "kernel":
            v = v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        node = variables
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = jnp.asarray(v)
    return variables


def state_dict_from_variables(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`variables_from_state_dict`: PyTorch names and layouts, float32 numpy."""
    out = {}
    for key, (path, _) in _template().items():
        v = variables
        for k in path:
            v = v[k]
        v = np.asarray(v, np.float32)
        out[key] = v.transpose(3, 2, 0, 1) if path[-1] == "kernel" else v
    return out


class Inception(NamedTuple):
    """A loaded FID Inception-v3.

    Attributes:
      variables: Flax variables of :class:`InceptionV3FID`.
      path: the weight file read (``None`` for random weights).
      sha256: its sha256 (``None`` for random weights).
      features: ``images [n, h, w, 1|3] in [0, 1] -> [n, 2048]`` pool3 features (jit-compiled; the
        network compiles once per batch size, whatever the image size).
    """

    variables: dict[str, Any]
    path: str | None
    sha256: str | None
    features: Callable[[Float[Array, "n h w c"]], Float[Array, "n 2048"]]


def _features(variables, x):
    return _forward_jit(variables, _prepare_jit(x))


def _make(variables, path, digest) -> Inception:
    return Inception(variables, path, digest, functools.partial(_features, variables))


def init_inception(seed: int = 0) -> Inception:
    """Random weights, for tests and shape checks only (never for FID).

    Conv weights are LeCun-normal (std ``1 / sqrt(fan_in)``), drawn with numpy (Flax's own
    ``init`` of the 21.8M parameters takes about a minute on 2 CPU cores, this under a second);
    BatchNorm is the identity up to eps (gamma 1, beta 0, mean 0, var 1).
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, (_, shape) in _template().items():
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = (rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)).astype(np.float32)
        else:
            fill = 1.0 if key.endswith((".bn.weight", ".bn.running_var")) else 0.0
            state[key] = np.full(shape, fill, np.float32)
    return _make(variables_from_state_dict(state), None, None)


def load_inception(path: str | os.PathLike, *, sha256: str | None = None) -> Inception:
    """Load FID Inception-v3 weights from pytorch-fid's ``.pth`` or an ``.npz`` of its state dict.

    Args:
      path: ``pt_inception-2015-12-05-6726825d.pth`` (needs torch, imported lazily) or an
        ``.npz`` with the same keys (module docstring). Never downloaded.
      sha256: expected sha256 of the file. Default: :data:`PT_INCEPTION_SHA256` for a ``.pth``;
        none for an ``.npz`` (its digest is recorded in ``Inception.sha256``).

    Returns:
      An :class:`Inception`; ``inc.features(images) -> [n, 2048]``.

    Raises:
      DataNotFoundError: the file does not exist.
      InputError: wrong suffix, sha256 mismatch, torch missing for a ``.pth``, or a bad state dict.
    """
    if path is None or str(path) == "":
        raise DataNotFoundError(f"no Inception-v3 weight file given; {_HOW}")
    p = Path(path)
    if not p.is_file():
        raise DataNotFoundError(f"Inception-v3 weight file {str(p)!r} does not exist; {_HOW}")
    suffix = p.suffix.lower()
    if suffix not in (".pth", ".pt", ".npz"):
        raise bad_arg("inception weights", f"{str(p)!r}", f"a .pth ({PT_INCEPTION_FILE}) or an .npz of its state dict")
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    want = sha256 if sha256 is not None else (PT_INCEPTION_SHA256 if suffix != ".npz" else None)
    if want is not None and digest != want:
        raise bad_arg("inception weights", f"{str(p)!r} with sha256 {digest} ({len(raw):,} bytes)",
                      f"sha256 {want}" + (f" (pytorch-fid's {PT_INCEPTION_FILE}, {PT_INCEPTION_BYTES:,} bytes)"
                                          if want == PT_INCEPTION_SHA256 else ""))
    if suffix == ".npz":
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001 - any read failure is a bad file
            raise bad_arg("inception weights", f"{str(p)!r}: {type(e).__name__}: {e}", "a readable .npz without pickles") from e
    else:
        try:
            import torch
        except ImportError as e:
            raise bad_arg("inception weights", f"the .pth {str(p)!r} but torch is not installed",
                          "torch installed to read a .pth, or an .npz of the state dict (see cfjax.eval.inception)") from e
        try:
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise bad_arg("inception weights", f"{str(p)!r}: {type(e).__name__}: {e}", "a PyTorch state dict") from e
        if not isinstance(state, Mapping):
            raise bad_arg("inception weights", f"a {type(state).__name__}", "a PyTorch state dict (a mapping)")
    return _make(variables_from_state_dict(state), str(p), digest)


def save_inception_npz(model: Inception | Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write weights as the ``.npz`` :func:`load_inception` reads (PyTorch names/layouts); returns its sha256."""
    variables = model.variables if isinstance(model, Inception) else model
    buf = io.BytesIO()
    np.savez(buf, **state_dict_from_variables(variables))
    raw = buf.getvalue()
    Path(path).write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


# ------------------------------------------------------------------------------ FID


def inception_features(model: Inception, images: Float[Array, "n h w c"] | np.ndarray, batch_size: int = 50) -> np.ndarray:
    """pool3 features of many images, in batches of ``batch_size`` (the last one padded, so one compile).

    Args:
      model: an :class:`Inception`.
      images: ``[n, h, w, 1 or 3]`` in [0, 1] (host or device array).
      batch_size: images per forward pass.

    Returns:
      ``[n, 2048]`` float32 numpy.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad_arg("batch_size", repr(batch_size), "a positive integer")
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] < 1:
        raise bad_arg("images", f"shape {images.shape}", "[n >= 1, h, w, 1 or 3] images in [0, 1]")
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        k = len(chunk)
        if k < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - k, axis=0)])
        out.append(np.asarray(model.features(jnp.asarray(chunk)))[:k])
    return np.concatenate(out).astype(np.float32)


def inception_fid(
    model: Inception, images1: Float[Array, "n h w c"], images2: Float[Array, "m h2 w2 c2"], batch_size: int = 50
) -> float:
    """FID between two image sets: :func:`cfjax.eval.metrics.fid` of their pool3 features (n, m >= 2).

    Comparable with the papers' FID only with pytorch-fid's weights (``model.sha256 ==
    PT_INCEPTION_SHA256``) and enough images (FID is biased upwards for small n).
    """
    return metrics.fid(inception_features(model, images1, batch_size), inception_features(model, images2, batch_size))
