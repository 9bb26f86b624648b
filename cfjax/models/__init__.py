"""Flax model zoo and the plain callables the methods consume.

The methods (``cfjax.attack``, ``cfjax.reflect``) never see Flax modules: they take plain
single-example JAX callables. :func:`bind_classifier` and :func:`bind_vae` build those from
a module and its params, so any other JAX model (Equinox, haiku, a user's StyleGAN) plugs in
by providing the same callables.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

from cfjax.errors import bad_arg
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
      feature_maps: ``x -> [F_1, ..., F]`` every block's map (skips + F); it carries the
        classifier's ``logits`` as ``feature_maps.classifier_logits``, so
        :func:`cfjax.mirror_cfe` can check the head it is given against the classifier.
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

    @classmethod
    def from_gap(cls, feature_maps: Callable, W, b) -> "ClassifierFns":
        """The callables of a GAP-linear classifier from its feature maps and head.

        ``features(x) = mean_{h,w} F(x)`` (GAP of the last map) and
        ``logits(x) = W @ features(x) + b``: what Mirror-CFE and its decoder trainer need from
        a classifier cfjax did not train. The head must be the classifier's own, with ``W``
        [K, C] (a Flax/Keras ``Dense`` kernel is [C, K]: pass ``kernel.T``); the consumers
        (:func:`cfjax.train_mirror_decoder`, :func:`cfjax.mirror_cfe` with ``logits=``) check
        the shapes, and that these logits equal the classifier's own, before they trace.

        Args:
          feature_maps: single-example ``x [H, W, c] -> [S_1, ..., S_L, F]`` (the earlier block
            maps the decoder takes as skips, shallow to deep, then the last map ``F`` [h, w, C]);
            a callable returning ``F`` alone is taken as ``[F]``.
          W: [K, C] head weights.
          b: [K] head bias.

        Returns:
          :class:`ClassifierFns` whose ``logits`` is computed from ``feature_maps``, ``W``, ``b``.

        Example:
          >>> import jax.numpy as jnp
          >>> fns = ClassifierFns.from_gap(lambda x: [x, 2.0 * x], jnp.eye(3)[:2], jnp.array([1.0, 0.0]))
          >>> fns.logits(jnp.ones((4, 4, 3))).tolist(), fns.features(jnp.ones((4, 4, 3))).tolist()
          ([3.0, 2.0], [2.0, 2.0, 2.0])
        """
        if not callable(feature_maps):
            raise bad_arg("feature_maps", repr(feature_maps)[:80], "a callable x [H, W, c] -> [S_1, ..., S_L, F]")
        arrays = []
        for name, v in (("W", W), ("b", b)):
            if v is None or isinstance(v, (str, bytes)) or callable(v):
                raise bad_arg(name, repr(v)[:80], "an array (W [K, C], b [K]: logits = W @ GAP(F) + b)")
            arrays.append(jnp.asarray(v))
        W, b = arrays

        def maps(x):
            out = feature_maps(x)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        def feature_map(x):
            return maps(x)[-1]

        def features(x):
            return jnp.mean(feature_map(x), axis=(-3, -2))

        def head(z):
            return W @ z + b

        def logits(x):
            return head(features(x))

        maps.classifier_logits = logits  # the head travels with the maps: cfjax.mirror_cfe checks W, b against it
        return cls(logits=logits, features=features, feature_map=feature_map, feature_maps=maps, head=head, W=W, b=b)


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

    logits = _single(module, params, cls.__call__)
    feature_maps.classifier_logits = logits  # the head travels with the maps: cfjax.mirror_cfe checks W, b against it
    return ClassifierFns(
        logits=logits,
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
