"""Applying a trained Mirror decoder: the class spatial prior that tells it where it may edit,
and the decoder bound to its params, the classifier's head and the path it was trained on.

* :func:`class_activation_maps` / :func:`normalized_cam` / :func:`csp_rho` / :func:`csp_mask`:
  the class spatial prior (CSP), a {0, 1} mask per skip resolution of where the decoder may edit
  the source's skip features; :func:`skip_masks` gives one per skip.
* :func:`bind_mirror_decoder` -> :class:`BoundMirrorDecoder`: a single-example
  ``decode(F_k, skips, source, target, k) -> x`` that computes its CSP masks itself and carries
  its path (``reflect_others``, one of :data:`OTHERS`); :func:`batched_decoder` is the batched
  form training uses.
* :func:`resolve_others`: the path :func:`~cfjax.methods.mirror.mirror_cfe` walks, given its
  ``others`` option and the decoder.

Everything here works on ONE example unless named batched. :mod:`cfjax.methods.mirror`
re-exports every public name defined here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from cfjax.errors import bad_arg

OTHERS = ("keep", "mirror")
"""What the reflection does to the logits of the classes other than s and t
(:func:`~cfjax.methods.mirror.reflection_target`)."""


def class_activation_maps(F: Float[Array, "h w C"], W: Float[Array, "K C"]) -> Float[Array, "h w K"]:
    """CAMs ``U[i, j, c] = W_c . F[i, j]`` (no bias)."""
    return F @ jnp.asarray(W).T


def normalized_cam(F: Float[Array, "h w C"], w_c: Float[Array, "C"]) -> Float[Array, "h w"]:
    """``ReLU(U_c) / max ReLU(U_c)`` in [0, 1] (all zeros when the class has no positive evidence)."""
    u = jax.nn.relu(F @ w_c)
    return u / jnp.maximum(jnp.max(u), 1e-8)


def csp_rho(k, rho_l: float, rho_u: float):
    """The CSP threshold ``clip(1 - k, rho_l, rho_u)``: a large ``k`` opens a wider region."""
    return jnp.clip(1.0 - jnp.asarray(k, jnp.float32), rho_l, rho_u)


def csp_mask(
    F_k: Float[Array, "h w C"],
    W: Float[Array, "K C"],
    source,
    target,
    k,
    rho_l: float = 0.1,
    rho_u: float = 0.5,
    out_hw: tuple[int, int] | None = None,
) -> Float[Array, "H W 1"]:
    """Class spatial prior: where the decoder may edit the source's skip features.

    The normalised CAMs of ``source`` and ``target`` on ``F_k`` are resized (bilinear) to
    ``out_hw`` and thresholded at ``rho = clip(1 - k, rho_l, rho_u)``:
    ``M = (CAM_s > rho) OR (CAM_t > rho)``, a {0, 1} float mask [H, W, 1].
    """
    W = jnp.asarray(W)
    out_hw = tuple(F_k.shape[:2]) if out_hw is None else tuple(out_hw)
    cams = jnp.stack([normalized_cam(F_k, W[source]), normalized_cam(F_k, W[target])], -1)
    if cams.shape[:2] != out_hw:
        cams = jax.image.resize(cams, (*out_hw, 2), "bilinear")
    rho = csp_rho(k, rho_l, rho_u)
    return jnp.any(cams > rho, axis=-1, keepdims=True).astype(F_k.dtype)


def skip_masks(
    F_k: Float[Array, "h w C"],
    W: Float[Array, "K C"],
    source,
    target,
    k,
    skip_hws: Sequence[tuple[int, int]],
    rho_l: float,
    rho_u: float,
) -> list:
    """One :func:`csp_mask` per skip resolution (one example)."""
    return [csp_mask(F_k, W, source, target, k, rho_l, rho_u, hw) for hw in skip_hws]


def _decoder_settings(config) -> dict:
    """``rho_l``, ``rho_u``, ``reflect_others`` from a decoder config: a ``MirrorDecoderConfig``
    (attributes), its ``as_dict()`` (a missing ``reflect_others`` is ``"keep"``, the value
    ``as_dict`` leaves out) or a ``DecoderTrained.config`` (``{"decoder": as_dict(), ...}``)."""
    if isinstance(config, dict):
        d = config.get("decoder", config)
        if not isinstance(d, dict) or "rho_l" not in d or "rho_u" not in d:
            raise bad_arg("config", f"a dict with keys {sorted(config)[:8]}", "a MirrorDecoderConfig, its as_dict() or a DecoderTrained.config")
        return {"rho_l": float(d["rho_l"]), "rho_u": float(d["rho_u"]), "reflect_others": d.get("reflect_others", "keep"), "config": dict(d)}
    if all(hasattr(config, a) for a in ("rho_l", "rho_u", "reflect_others")):
        as_dict = getattr(config, "as_dict", None)
        return {"rho_l": float(config.rho_l), "rho_u": float(config.rho_u), "reflect_others": config.reflect_others,
                "config": as_dict() if callable(as_dict) else None}
    raise bad_arg("config", type(config).__name__, "a MirrorDecoderConfig, its as_dict() or a DecoderTrained.config")


class BoundMirrorDecoder:
    """A trained Mirror decoder bound to its params and the classifier's head: a single-example
    ``decode(F_k, skips, source, target, k) -> x`` [H, W, c] (computing the CSP masks itself)
    that also carries the settings that shape the path it was trained on.

    :func:`~cfjax.methods.mirror.mirror_cfe` and :class:`~cfjax.methods.mirror.MirrorCFE` read
    ``reflect_others`` (their ``others=None`` default walks it; a contradicting ``others`` is
    refused, and so is ``others=None`` when the path is not known), ``W`` (the head they are
    given must be this one) and ``x_range`` (images outside it are refused). Build with
    :func:`bind_mirror_decoder`.

    Attributes:
      module, params: the :class:`~cfjax.models.mirror_decoder.MirrorDecoder` and its params.
      W: [K, C] the classifier's head (the CSP's class activation maps).
      rho_l, rho_u: the CSP threshold bounds.
      reflect_others: the path the decoder learnt (``"keep"``/``"mirror"``), or ``None`` when
        not known (then ``mirror_cfe`` needs an explicit ``others=``).
      config: the decoder's recorded config dict (``MirrorDecoderConfig.as_dict()``), or None.
      x_range: the image range the decoder was trained on and produces (a sigmoid output).
    """

    __slots__ = ("module", "params", "W", "rho_l", "rho_u", "reflect_others", "config", "x_range", "__weakref__")

    def __init__(self, module, params, W, rho_l: float, rho_u: float, reflect_others: str | None = None, config: dict | None = None,
                 x_range: tuple[float, float] = (0.0, 1.0)):
        if not hasattr(module, "apply"):
            raise bad_arg("module", type(module).__name__, "a Flax MirrorDecoder module (with .apply)")
        if not 0.0 <= rho_l <= rho_u <= 1.0:  # also NaN
            raise bad_arg("rho_l/rho_u", (rho_l, rho_u), "CSP threshold bounds with 0 <= rho_l <= rho_u <= 1")
        if reflect_others is not None and reflect_others not in OTHERS:
            raise bad_arg("reflect_others", repr(reflect_others), f"None (not known) or one of {OTHERS}")
        self.module, self.params, self.W = module, params, jnp.asarray(W)
        self.rho_l, self.rho_u, self.reflect_others, self.config = float(rho_l), float(rho_u), reflect_others, config
        self.x_range = tuple(x_range)

    def __call__(self, F_k, skips, source, target, k):
        masks = skip_masks(F_k, self.W, source, target, k, [s.shape[:2] for s in skips], self.rho_l, self.rho_u)
        return self.module.apply(self.params, F_k[None], [s[None] for s in skips], [m[None] for m in masks])[0]

    def __repr__(self) -> str:
        return (f"BoundMirrorDecoder(W {tuple(self.W.shape)}, rho_l={self.rho_l}, rho_u={self.rho_u}, "
                f"reflect_others={self.reflect_others!r}, x_range={self.x_range})")


def bind_mirror_decoder(
    module,
    params=None,
    W=None,
    rho_l: float | None = None,
    rho_u: float | None = None,
    *,
    reflect_others: str | None = None,
    config=None,
) -> BoundMirrorDecoder:
    """Single-example ``decode(F_k, skips, source, target, k) -> x`` [H, W, c] that computes the
    CSP masks itself (``skips``: the source image's earlier block maps, unbatched) and carries
    the decoder's path.

    Three spellings:

    * ``bind_mirror_decoder(trained, W)``: ``trained`` a
      :class:`~cfjax.training.mirror_decoder.DecoderTrained` (what ``train_mirror_decoder``
      returns); every setting comes from ``trained.config``;
    * ``bind_mirror_decoder(module, params, W, config=cfg)``: ``cfg`` the
      ``MirrorDecoderConfig`` (or its ``as_dict()``) the decoder was trained with;
    * ``bind_mirror_decoder(module, params, W, rho_l, rho_u, reflect_others=path)``: the
      settings given one by one. Without ``reflect_others=`` (or ``config=``) the path is not
      known (``reflect_others`` is ``None``): :func:`~cfjax.methods.mirror.mirror_cfe` and
      :class:`~cfjax.methods.mirror.MirrorCFE` then refuse the decoder unless they are given
      ``others=`` explicitly.

    Args:
      module: the decoder module, or a ``DecoderTrained``.
      params: its params (with a ``DecoderTrained``: the head ``W``).
      W: [K, C] the classifier's head.
      rho_l, rho_u: CSP bounds (default: the config's, else 0.1 and 0.5); given together with
        ``config`` they must agree with it.
      reflect_others: the path the decoder was trained on (default: the config's, else None).
      config: the decoder's ``MirrorDecoderConfig``, its ``as_dict()`` or a
        ``DecoderTrained.config``.

    Returns:
      :class:`BoundMirrorDecoder` (callable like the plain function it replaces).
    """
    if isinstance(module, tuple) and hasattr(module, "module") and hasattr(module, "params") and hasattr(module, "config"):
        if W is not None or params is None:
            raise bad_arg("W", "W given twice or not at all", "bind_mirror_decoder(trained, W) with the classifier's head W [K, C]")
        trained, W = module, params
        module, params = trained.module, trained.params
        config = trained.config if config is None else config
    if W is None:
        raise bad_arg("W", "None", "the classifier's head W [K, C]")
    settings = _decoder_settings(config) if config is not None else {}
    for name, given in (("rho_l", rho_l), ("rho_u", rho_u), ("reflect_others", reflect_others)):
        theirs = settings.get(name)
        if given is not None and theirs is not None and given != theirs:
            raise bad_arg(name, f"{name}={given!r} while config has {theirs!r}", "the value the decoder was trained with (leave it out)")
    rho_l = rho_l if rho_l is not None else settings.get("rho_l", 0.1)
    rho_u = rho_u if rho_u is not None else settings.get("rho_u", 0.5)
    reflect_others = reflect_others if reflect_others is not None else settings.get("reflect_others")
    return BoundMirrorDecoder(module, params, W, rho_l, rho_u, reflect_others, settings.get("config"))


def batched_decoder(module, params, W, rho_l: float = 0.1, rho_u: float = 0.5) -> Callable:
    """Batched ``decode(F_k [n,h,w,C], skips [list of n,hi,wi,ci], source [n], target [n], k [n])
    -> x [n, H, W, c]`` computing the CSP masks (``rho_l``/``rho_u``) itself."""
    W = jnp.asarray(W)

    def decode_batch(F_k, skips, s, t, k):
        hws = [sk.shape[1:3] for sk in skips]
        masks = jax.vmap(lambda f, ss, tt, kk: skip_masks(f, W, ss, tt, kk, hws, rho_l, rho_u))(F_k, s, t, k)
        return module.apply(params, F_k, list(skips), masks)

    return decode_batch


def resolve_others(others, decode) -> str:
    """The path ``mirror_cfe`` walks (:func:`~cfjax.methods.mirror.reflection_target`).

    ``others`` when given, else the decoder's ``reflect_others`` (a decoder from
    :func:`bind_mirror_decoder` carries it), else ``"keep"`` (the paper) for a plain callable
    that has no ``reflect_others``. Refused: an ``others`` outside :data:`OTHERS`; an explicit
    ``others`` that contradicts the decoder's path; and, with ``others=None``, a decoder whose
    ``reflect_others`` is ``None`` (its path is not known: bound from a module and params without
    ``config=`` or ``reflect_others=``), which would otherwise walk ``"keep"`` whatever it was
    trained on."""
    if others is not None and others not in OTHERS:
        raise bad_arg("others", repr(others), f"None (the decoder's path) or one of {OTHERS}")
    theirs = getattr(decode, "reflect_others", None)
    if theirs is not None and theirs not in OTHERS:
        raise bad_arg("decode.reflect_others", repr(theirs), f"one of {OTHERS}")
    if others is None:
        if theirs is None and hasattr(decode, "reflect_others"):
            raise bad_arg("decode", f"a {type(decode).__name__} whose path is not known (decode.reflect_others=None: bound with "
                                    "bind_mirror_decoder(module, params, W, rho_l, rho_u) without config= or reflect_others=)",
                          "a decoder that carries the path it was trained on: bind_mirror_decoder(trained, W), or "
                          "bind_mirror_decoder(module, params, W, config=cfg); or pass others='keep' or 'mirror' explicitly")
        return theirs if theirs is not None else "keep"
    if theirs is not None and others != theirs:
        raise bad_arg("others", f"others={others!r} while the decoder was trained on decode.reflect_others={theirs!r}",
                      f"the decoder's own path (leave others out, or pass others={theirs!r})")
    return others


__all__ = [
    "OTHERS",
    "BoundMirrorDecoder",
    "batched_decoder",
    "bind_mirror_decoder",
    "class_activation_maps",
    "csp_mask",
    "csp_rho",
    "normalized_cam",
    "resolve_others",
    "skip_masks",
]
