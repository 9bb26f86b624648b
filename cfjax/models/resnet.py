"""ResNet-18-style GAP classifier for 3-channel 64-224 px images (issue 27).

Same contract as :class:`cfjax.models.classifier.Classifier`, so both methods, the jobs and
``cfjax.models.bind_classifier`` / ``head_weights`` take it unchanged:

* ``feature_maps(x)`` -> ``[S_1, ..., S_{L-1}, F]``: each stage's output (the skips), the
  last stage's output being ``F`` [h, w, C] (the stem's map is not returned);
* ``feature_map(x)``  -> ``F``;
* ``features(x)``     -> ``z = GAP(F)`` [C];
* ``head(z)``         -> ``W z + b`` (one ``nn.Dense`` named ``head``);
* ``__call__(x)``     -> ``head(features(x))``.

Architecture (ResNet-18 when ``blocks=(2, 2, 2, 2)``): a stem (3x3 conv, stride 1 below
96 px; 7x7 stride-2 conv + 3x3 max pool at 96 px and above, as ImageNet ResNets do), then four
stages of BasicBlocks (two 3x3 convs, identity or 1x1-projection shortcut, ReLU after the sum);
each stage after the first halves the resolution with a stride-2 first conv. Widths are
configurable (default ``(64, 128, 256, 512)``); tests use tiny widths at full resolution.
The stem is chosen by the input's height (``>= 96`` px: 7x7/2 conv + 3x3/2 max pool padded by
1 with -inf, PyTorch's ``MaxPool2d(3, 2, 1)``), so params initialised at 64 px serve 64-95 px
inputs and params initialised at 128 px serve 96 px and up. Convs have no bias (a norm
follows); explicit symmetric padding and GroupNorm ``epsilon=1e-5`` match PyTorch's layers.

**GroupNorm, not BatchNorm.** Normalisation layers are ``nn.GroupNorm(groups)``: the model is a
pure function of ``(params, x)`` with no mutable batch statistics, so ``module.apply(params,
x)`` is the same in training and explanation, per example (no dependence on the batch the
example is in), and ``jax.vmap`` / ``jax.grad`` over single examples need no ``mutable=``
plumbing. ``groups`` must divide every width (checked at construction).

The input is an image in [0, 1]; per-channel ``(x - mean) / std`` normalisation happens inside
the model, like ``Classifier``. ``num_classes=1`` gives the binary (one-logit) variant, whose
logit is ``log p(positive) - log p(negative)``; the methods' ``K``-logit code sees it through
:func:`binary_two_logit` if it needs two.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from cfjax.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EPS = 1e-5  # GroupNorm epsilon (PyTorch's default, so a torch twin matches)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm, a shortcut (1x1 conv + GroupNorm when the shape changes)
    and ReLU after the sum."""

    width: int
    stride: int = 1
    groups: int = 8
    dtype: object = None

    @nn.compact
    def __call__(self, x: Float[Array, "n h w c"]) -> Float[Array, "n ho wo width"]:
        s = (self.stride, self.stride)
        h = nn.Conv(self.width, (3, 3), strides=s, padding=1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        h = nn.relu(nn.GroupNorm(self.groups, epsilon=EPS, dtype=self.dtype, name="norm1")(h))
        h = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv2")(h)
        h = nn.GroupNorm(self.groups, epsilon=EPS, dtype=self.dtype, name="norm2")(h)
        if self.stride != 1 or x.shape[-1] != self.width:
            x = nn.Conv(self.width, (1, 1), strides=s, use_bias=False, dtype=self.dtype, name="proj")(x)
            x = nn.GroupNorm(self.groups, epsilon=EPS, dtype=self.dtype, name="proj_norm")(x)
        return nn.relu(h + x)


class ResNet(nn.Module):
    """ResNet-18-style CNN (GroupNorm, BasicBlocks) ending in GAP and one linear head.

    Attributes:
      num_classes: K, the number of logits (1 = binary one-logit classifier).
      widths: channels of each stage; the last one is the GAP feature size C.
      blocks: BasicBlocks per stage (``(2, 2, 2, 2)`` = ResNet-18).
      groups: GroupNorm groups; must divide every width.
      mean, std: per-channel input normalisation applied inside the model (ImageNet's by
        default; a 1-channel input uses the first entry).
      dtype: compute dtype (``None`` = float32; ``jnp.bfloat16`` computes in bf16 with float32
        params). Logits are returned as float32.
      remat: rematerialise each BasicBlock in the backward pass (same params, same outputs): a
        gradient through the classifier (the attack, the Mirror decoder's ``L_cls``) then keeps
        only the block outputs. This is where memory goes when training the Mirror decoder at
        high resolution (BUILD_NOTES, issue 27).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = ResNet(num_classes=8, widths=(8, 8, 16, 16), groups=4)
      >>> params = m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
      >>> m.apply(params, jnp.zeros((2, 64, 64, 3))).shape
      (2, 8)
    """

    num_classes: int
    widths: tuple = (64, 128, 256, 512)
    blocks: tuple = (2, 2, 2, 2)
    groups: int = 8
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: object = None
    remat: bool = False

    def setup(self):
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise InputError(f"ResNet: widths {tuple(self.widths)} and blocks {tuple(self.blocks)} must be non-empty and of equal length")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise InputError(f"ResNet: groups={self.groups} must divide every width; got widths {tuple(self.widths)}")
        if self.num_classes < 1:
            raise InputError(f"ResNet: num_classes must be >= 1, got {self.num_classes}")
        self.stem_small = nn.Conv(self.widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="stem_conv3")
        self.stem_large = nn.Conv(self.widths[0], (7, 7), strides=(2, 2), padding=3, use_bias=False, dtype=self.dtype, name="stem_conv7")
        self.stem_norm = nn.GroupNorm(self.groups, epsilon=EPS, dtype=self.dtype, name="stem_norm")
        block = nn.remat(BasicBlock) if self.remat else BasicBlock
        self.stages = [
            [block(w, stride=(2 if (s > 0 and i == 0) else 1), groups=self.groups, dtype=self.dtype, name=f"stage{s}_block{i}")
             for i in range(n)]
            for s, (w, n) in enumerate(zip(self.widths, self.blocks))
        ]
        self.linear = nn.Dense(self.num_classes, name="head")

    def _normalise(self, x):
        c = x.shape[-1]
        mean = jnp.asarray(self.mean, jnp.float32)[:c]
        std = jnp.asarray(self.std, jnp.float32)[:c]
        return (x - mean) / std

    def feature_maps(self, x: Float[Array, "n h w c"]) -> list[Float[Array, "n hb wb cb"]]:
        """Each stage's output (the skips); the last is ``F``.

        Maps are float32 whatever the compute dtype.
        """
        h = self._normalise(x)
        if self.dtype is not None:
            h = h.astype(self.dtype)
        # a module's params exist only if it is called: init at one resolution fixes the stem
        if x.shape[1] >= 96:
            h = nn.relu(self.stem_norm(self.stem_large(h)))
            h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            h = nn.relu(self.stem_norm(self.stem_small(h)))
        maps = []
        for stage in self.stages:
            for block in stage:
                h = block(h)
            maps.append(h.astype(jnp.float32))
        return maps

    def feature_map(self, x: Float[Array, "n h w c"]) -> Float[Array, "n fh fw C"]:
        """The last stage's map ``F``."""
        return self.feature_maps(x)[-1]

    def features(self, x: Float[Array, "n h w c"]) -> Float[Array, "n C"]:
        """``z = GAP(F)``, the vector the linear head reads."""
        return jnp.mean(self.feature_map(x), axis=(1, 2))

    def head(self, z: Float[Array, "n C"]) -> Float[Array, "n K"]:
        """The linear head ``W z + b`` (float32)."""
        return self.linear(z.astype(jnp.float32))

    def __call__(self, x: Float[Array, "n h w c"]) -> Float[Array, "n K"]:
        return self.head(self.features(x))


def binary_two_logit(W: Float[Array, "1 C"], b: Float[Array, "1"]) -> tuple[Float[Array, "2 C"], Float[Array, "2"]]:
    """Two-logit head equivalent to a one-logit binary head (``softmax([0, l]) = sigmoid(l)``).

    Class 0 is the negative class, class 1 the positive class: ``W2 = [0; W]``, ``b2 = [0; b]``.
    """
    if W.shape[0] != 1:
        raise InputError(f"binary_two_logit: W must have 1 row (a one-logit head), got shape {tuple(W.shape)}")
    return jnp.concatenate([jnp.zeros_like(W), W]), jnp.concatenate([jnp.zeros_like(b), b])
