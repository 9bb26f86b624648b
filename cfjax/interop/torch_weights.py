r"""PyTorch weights -> JAX arrays with JAX's layouts (numpy only; torch is never imported).

A model trained in PyTorch runs in cfjax once its ``state_dict`` is mapped to arrays in the
layouts ``jax.lax`` and Flax use (channels-last images, ``HWIO`` kernels). The mapping is
pure numpy: convert the ``state_dict`` first (:func:`to_numpy` calls ``.detach().cpu()
.numpy()`` on each tensor, or pass arrays already), then map each layer by its key prefix.

=====================  ===============================  ======================================
torch layer            torch layout                     JAX layout returned here
=====================  ===============================  ======================================
``Conv2d``             weight ``[O, I/g, kH, kW]``      ``kernel [kH, kW, I/g, O]`` (HWIO)
``ConvTranspose2d``    weight ``[I, O/g, kH, kW]``      ``kernel [kH, kW, I/g, O]`` of the
                                                        equivalent convolution on the
                                                        stride-dilated input (spatially
                                                        flipped, in/out swapped per group)
``Linear``             weight ``[out, in]``             ``kernel [in, out]``; the rows/columns
                                                        permuted when the layer reads/writes
                                                        an NCHW map flattened with ``view``
``BatchNorm2d``        weight, bias, running stats      ``scale, bias, mean, var`` (per channel)
=====================  ===============================  ======================================

How to run each mapped layer on NHWC arrays (``x [N, H, W, C]``; the keys match Flax's
``nn.Conv``/``nn.Dense``/``nn.BatchNorm`` parameter names, so the dicts also drop into a Flax
params tree):

* ``Conv2d(stride=s, padding=p, dilation=d, groups=g)``::

      lax.conv_general_dilated(x, k["kernel"], (s, s), conv_padding(p, kernel_size, d),
                               rhs_dilation=(d, d), feature_group_count=g,
                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + k["bias"]

  (Flax: ``nn.Conv(O, (kH, kW), strides=s, padding=conv_padding(...), kernel_dilation=d,
  feature_group_count=g)``.)
* ``ConvTranspose2d(stride=s, padding=p, output_padding=op, dilation=d, groups=g)`` is a
  stride-1 convolution of the input dilated by ``s``::

      lax.conv_general_dilated(x, k["kernel"], (1, 1),
                               conv_transpose_padding(kernel_size, stride=s, padding=p,
                                                      output_padding=op, dilation=d),
                               lhs_dilation=(s, s), rhs_dilation=(d, d), feature_group_count=g,
                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + k["bias"]

  (Flax: ``nn.Conv(O, (kH, kW), padding=conv_transpose_padding(...), input_dilation=s,
  kernel_dilation=d, feature_group_count=g)`` with this kernel.)
* ``Linear``: ``x @ k["kernel"] + k["bias"]``. torch flattens an NCHW map as
  ``x.view(n, -1)`` (index ``c*H*W + h*W + w``); JAX flattens NHWC as ``h*W*C + w*C + c``.
  :func:`linear` with ``input_chw=(C, H, W)`` permutes the kernel's rows so that
  ``x_nhwc.reshape(n, -1) @ kernel`` equals torch's output; ``output_chw=(C, H, W)`` permutes
  its columns for a layer whose output torch reshapes with ``.view(n, C, H, W)``, so
  ``(x @ kernel + bias).reshape(n, H, W, C)`` is torch's map in NHWC.
* ``BatchNorm2d`` (inference, running statistics):
  ``(x - mean) / sqrt(var + eps) * scale + bias`` with torch's ``eps`` (default 1e-5), or
  :func:`fold_batch_norm` for the per-channel affine map.

Only zero padding (``padding_mode="zeros"``) maps to these convolutions.

Example:
  >>> import numpy as np
  >>> sd = {"fc.weight": np.arange(6.0).reshape(2, 3), "fc.bias": np.zeros(2)}
  >>> linear(sd, "fc")["kernel"].shape
  (3, 2)
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from cfjax.errors import bad_arg


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A ``state_dict`` as numpy arrays: tensors go through ``.detach().cpu().numpy()`` (or
    ``.numpy()``), arrays are kept; integer buffers (``num_batches_tracked``) too.

    Args:
      state_dict: ``model.state_dict()`` or any mapping of names to tensors/arrays.

    Returns:
      a new dict of numpy arrays (float tensors keep their dtype).
    """
    out = {}
    for k, v in state_dict.items():
        if hasattr(v, "detach"):
            v = v.detach()
        if hasattr(v, "cpu"):
            v = v.cpu()
        out[k] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    return out


def _get(sd: Mapping[str, Any], prefix: str, name: str, ndim: int | None, required: bool = True) -> np.ndarray | None:
    key = f"{prefix}.{name}" if prefix else name
    if key not in sd:
        if required:
            near = sorted(k for k in sd if k.startswith(prefix))[:6]
            raise bad_arg("state_dict", f"no key {key!r} (keys under {prefix!r}: {near})", f"a {name} for layer {prefix!r}")
        return None
    a = np.asarray(sd[key])
    if ndim is not None and a.ndim != ndim:
        raise bad_arg(key, f"shape {a.shape}", f"a rank-{ndim} array")
    return a


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, (int, np.integer)) for i in v):
        return int(v[0]), int(v[1])
    raise bad_arg(name, repr(v), "an int or a pair of ints")


def _with_bias(out: dict, sd, prefix: str) -> dict:
    b = _get(sd, prefix, "bias", 1, required=False)
    if b is not None:
        out["bias"] = b
    return out


def conv2d(sd: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """A ``Conv2d`` layer: ``weight [O, I/g, kH, kW]`` -> ``kernel [kH, kW, I/g, O]`` (HWIO).

    Grouped convolutions map unchanged (``feature_group_count=g`` expects exactly this
    layout).

    Args:
      sd: the numpy ``state_dict``.
      prefix: the layer's key prefix (``"features.0"`` for ``features.0.weight``).

    Returns:
      ``{"kernel": [kH, kW, I/g, O]}`` plus ``"bias": [O]`` when the layer has one.
    """
    w = _get(sd, prefix, "weight", 4)
    return _with_bias({"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0))}, sd, prefix)


def conv_transpose2d(sd: Mapping[str, Any], prefix: str, *, groups: int = 1) -> dict[str, np.ndarray]:
    """A ``ConvTranspose2d`` layer as the kernel of the equivalent stride-1 convolution of
    the stride-dilated input (see the module docstring for the call).

    torch's transposed convolution scatters each input pixel through the kernel; the same map
    is a convolution of the input dilated by the stride with the kernel flipped in both
    spatial axes and its in/out axes swapped (per group):
    ``kernel[a, b, i, j*O/g + o] = weight[j*I/g + i, o, kH-1-a, kW-1-b]``.

    Args:
      sd: the numpy ``state_dict``.
      prefix: the layer's key prefix.
      groups: the layer's ``groups``.

    Returns:
      ``{"kernel": [kH, kW, I/g, O]}`` plus ``"bias": [O]`` when the layer has one; use it with
      :func:`conv_transpose_padding`, ``lhs_dilation=stride`` and ``feature_group_count=groups``.
    """
    w = _get(sd, prefix, "weight", 4)
    if not isinstance(groups, (int, np.integer)) or groups < 1 or w.shape[0] % groups:
        raise bad_arg("groups", repr(groups), f"a positive divisor of the input channels {w.shape[0]}")
    flipped = w[:, :, ::-1, ::-1]
    parts = np.split(flipped, groups, axis=0)  # each [I/g, O/g, kH, kW]
    kernel = np.concatenate([p.transpose(2, 3, 0, 1) for p in parts], axis=-1)
    return _with_bias({"kernel": np.ascontiguousarray(kernel)}, sd, prefix)


def conv_padding(padding, kernel_size=None, dilation=1) -> list[tuple[int, int]]:
    """torch ``Conv2d`` padding as ``lax`` pairs ``[(top, bottom), (left, right)]``.

    Args:
      padding: an int, a pair, ``"valid"`` or ``"same"`` (torch's ``"same"`` puts the odd
        extra pixel at the end, as XLA's ``SAME``; it needs ``kernel_size``).
      kernel_size: int or pair, only for ``"same"``.
      dilation: int or pair, only for ``"same"``.

    Returns:
      two ``(low, high)`` pairs.
    """
    if padding == "valid":
        return [(0, 0), (0, 0)]
    if padding == "same":
        if kernel_size is None:
            raise bad_arg("kernel_size", "None", "the kernel size, needed for padding='same'")
        k, d = _pair(kernel_size, "kernel_size"), _pair(dilation, "dilation")
        out = []
        for ki, di in zip(k, d):
            total = di * (ki - 1)
            out.append((total // 2, total - total // 2))
        return out
    ph, pw = _pair(padding, "padding")
    return [(ph, ph), (pw, pw)]


def conv_transpose_padding(kernel_size, *, stride=1, padding=0, output_padding=0, dilation=1) -> list[tuple[int, int]]:
    """The ``lax`` padding of the convolution equivalent to a torch ``ConvTranspose2d``.

    On the input dilated by ``stride``, torch's output (size ``(n-1)*s - 2p + d*(k-1) + op +
    1``) is a stride-1 convolution with ``d*(k-1) - p`` zeros before and
    ``d*(k-1) - p + output_padding`` after each spatial axis (negative values crop).

    Args:
      kernel_size, stride, padding, output_padding, dilation: the torch layer's (ints or pairs).

    Returns:
      two ``(low, high)`` pairs.
    """
    k, s, p = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding")
    op, d = _pair(output_padding, "output_padding"), _pair(dilation, "dilation")
    for oi, si, di in zip(op, s, d):
        if oi >= max(si, di):
            raise bad_arg("output_padding", repr(output_padding), "smaller than the stride or the dilation (as torch requires)")
    return [(di * (ki - 1) - pi, di * (ki - 1) - pi + oi) for ki, pi, oi, di in zip(k, p, op, d)]


def linear(sd: Mapping[str, Any], prefix: str, *, input_chw: Sequence[int] | None = None,
           output_chw: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """A ``Linear`` layer: ``weight [out, in]`` -> ``kernel [in, out]``, optionally with the
    NCHW flatten order of its input or output turned into JAX's NHWC order.

    Args:
      sd: the numpy ``state_dict``.
      prefix: the layer's key prefix.
      input_chw: ``(C, H, W)`` when the layer reads ``x.view(n, -1)`` of an NCHW map: the
        kernel's rows are permuted so that it reads the NHWC map flattened the JAX way.
      output_chw: ``(C, H, W)`` when torch reshapes the layer's output with
        ``.view(n, C, H, W)``: the kernel's columns (and the bias) are permuted so that
        ``out.reshape(n, H, W, C)`` is that map in NHWC.

    Returns:
      ``{"kernel": [in, out]}`` plus ``"bias": [out]`` when the layer has one.
    """
    w = _get(sd, prefix, "weight", 2)
    b = _get(sd, prefix, "bias", 1, required=False)
    n_out, n_in = w.shape
    if input_chw is not None:
        c, h, wd = (int(v) for v in input_chw)
        if c * h * wd != n_in:
            raise bad_arg("input_chw", repr(tuple(input_chw)), f"(C, H, W) with C*H*W = {n_in}, the layer's in_features")
        w = w.reshape(n_out, c, h, wd).transpose(0, 2, 3, 1).reshape(n_out, n_in)
    if output_chw is not None:
        c, h, wd = (int(v) for v in output_chw)
        if c * h * wd != n_out:
            raise bad_arg("output_chw", repr(tuple(output_chw)), f"(C, H, W) with C*H*W = {n_out}, the layer's out_features")
        w = w.reshape(c, h, wd, n_in).transpose(1, 2, 0, 3).reshape(n_out, n_in)
        if b is not None:
            b = b.reshape(c, h, wd).transpose(1, 2, 0).reshape(n_out)
    out = {"kernel": np.ascontiguousarray(w.T)}
    if b is not None:
        out["bias"] = np.ascontiguousarray(b)
    return out


def batch_norm2d(sd: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    """A ``BatchNorm2d`` layer (inference: running statistics), per channel.

    Args:
      sd: the numpy ``state_dict``.
      prefix: the layer's key prefix.

    Returns:
      ``{"scale", "bias", "mean", "var"}`` each ``[C]`` (``scale``/``bias`` are 1/0 for
      ``affine=False``). In Flax: ``{"params": {"scale", "bias"}, "batch_stats": {"mean",
      "var"}}`` of ``nn.BatchNorm(use_running_average=True, epsilon=<torch eps>)``.
    """
    mean = _get(sd, prefix, "running_mean", 1)
    var = _get(sd, prefix, "running_var", 1)
    scale = _get(sd, prefix, "weight", 1, required=False)
    bias = _get(sd, prefix, "bias", 1, required=False)
    return {
        "scale": np.ones_like(mean) if scale is None else scale,
        "bias": np.zeros_like(mean) if bias is None else bias,
        "mean": mean,
        "var": var,
    }


def fold_batch_norm(bn: Mapping[str, np.ndarray], eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel affine map of an inference batch norm: ``y = a * x + c``.

    Args:
      bn: :func:`batch_norm2d`'s dict.
      eps: torch's ``eps`` (default 1e-5).

    Returns:
      ``(a, c)`` each ``[C]``.
    """
    a = np.asarray(bn["scale"]) / np.sqrt(np.asarray(bn["var"]) + eps)
    return a, np.asarray(bn["bias"]) - a * np.asarray(bn["mean"])


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """Images ``[N, C, H, W]`` (torch) -> ``[N, H, W, C]`` (cfjax), a new writable array."""
    return np.array(np.asarray(x).transpose(0, 2, 3, 1), order="C")


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """Images ``[N, H, W, C]`` (cfjax) -> ``[N, C, H, W]`` (torch), a new writable array
    (``torch.from_numpy`` warns about read-only views of JAX arrays)."""
    return np.array(np.asarray(x).transpose(0, 3, 1, 2), order="C")


__all__ = [
    "batch_norm2d",
    "conv2d",
    "conv_padding",
    "conv_transpose2d",
    "conv_transpose_padding",
    "fold_batch_norm",
    "linear",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "to_numpy",
]
