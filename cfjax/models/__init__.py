"""Flax model zoo and the plain callables the methods consume.

The methods (``cfjax.attack``, ``cfjax.reflect``) never see Flax modules: they take plain
single-example JAX callables. :func:`bind_classifier` and :func:`bind_vae` build those from
a module and its params, so any other JAX model (Equinox, haiku, a user's StyleGAN) plugs in
by providing the same callables.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from cfjax.models.classifier import Classifier, head_weights
from cfjax.models.heads import LatentHead
from cfjax.models.resnet import ResNet
from cfjax.models.vae import VAE


class ClassifierFns(NamedTuple):
    """Single-example callables of a GAP-CNN (``x``: [H, W, C] in [0, 1]).

    Attributes:
      logits: ``x -> [K]``.
      features: ``x -> z`` [C] (the GAP vector).
      feature_map: ``x -> F`` [h, w, C].
      feature_maps: ``x -> [F_1, ..., F]`` every block's map (skips + F).
      head: ``z -> [K]`` (also works on ``F`` positions: it is linear).
      W, b: head weights, ``logits = W @ z + b`` with ``W`` [K, C].
    """

    logits: Callable
    features: Callable
    feature_map: Callable
    feature_maps: Callable
    head: Callable
    W: jnp.ndarray
    b: jnp.ndarray


class VAEFns(NamedTuple):
    """Single-example callables of a VAE: ``encode(x) -> mu`` [D], ``decode(z) -> x`` [H, W, C]."""

    encode: Callable
    decode: Callable
    encode_logvar: Callable


def _single(module, params, method):
    def f(x):
        return module.apply(params, x[None], method=method)[0]

    return f


def bind_classifier(module: Classifier | ResNet, params) -> ClassifierFns:
    """Plain callables for one example from a GAP classifier module and its params.

    Any Flax module with the :class:`Classifier` methods (``feature_maps``, ``feature_map``,
    ``features``, ``head``, ``__call__``) and a ``Dense`` named ``head`` works: ``Classifier``,
    :class:`ResNet`, a user's module. The methods are looked up on the module's own class.
    """
    W, b = head_weights(params)
    cls = type(module)

    def feature_maps(x):
        return [m[0] for m in module.apply(params, x[None], method=cls.feature_maps)]

    return ClassifierFns(
        logits=_single(module, params, cls.__call__),
        features=_single(module, params, cls.features),
        feature_map=_single(module, params, cls.feature_map),
        feature_maps=feature_maps,
        head=lambda z: W @ z + b,
        W=W,
        b=b,
    )


def bind_vae(module: VAE, params) -> VAEFns:
    """Plain callables for one example from a :class:`VAE` and its params."""

    def encode(x):
        return module.apply(params, x[None], method=VAE.encode)[0][0]

    def encode_logvar(x):
        return module.apply(params, x[None], method=VAE.encode)[1][0]

    return VAEFns(encode=encode, decode=_single(module, params, VAE.decode), encode_logvar=encode_logvar)


__all__ = ["Classifier", "ResNet", "VAE", "LatentHead", "ClassifierFns", "VAEFns", "bind_classifier", "bind_vae", "head_weights"]
