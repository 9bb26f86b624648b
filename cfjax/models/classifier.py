"""GAP-CNN classifier shared by both methods.

The network is ``[conv3x3 -> ReLU] x convs_per_block -> maxpool`` per block (no pool after
the last block), then **global average pooling** over the last feature map ``F`` and one
linear head. Mirror-CFE needs the pieces separately, so the module exposes them as methods:

* ``feature_maps(x)`` -> every block's output, the last one being ``F`` [h, w, C];
* ``features(x)``     -> ``z = GAP(F)`` [C];
* ``head(z)``         -> ``W z + b`` [K];
* ``__call__(x)``     -> ``head(features(x))``.

The input is an image in [0, 1]; normalisation (``(x - mean) / std``) happens **inside**
the model, so whatever calls the classifier (an attack on decoder outputs, a metric) feeds
it exactly the preprocessing it was trained with (a pitfall of the reference code).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float


class Classifier(nn.Module):
    """CNN ending in global average pooling and a linear head.

    Attributes:
      num_classes: K, the number of logits.
      widths: channels of each conv block; the last one is the GAP feature size C.
      convs_per_block: 3x3 convs per block.
      mean, std: input normalisation applied inside the model.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = Classifier(num_classes=10)
      >>> params = m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
      >>> m.apply(params, jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128, 128)
    convs_per_block: int = 1
    mean: float = 0.5
    std: float = 0.5

    def setup(self):
        self.convs = [
            [nn.Conv(w, (3, 3), padding="SAME", name=f"block{b}_conv{i}") for i in range(self.convs_per_block)]
            for b, w in enumerate(self.widths)
        ]
        self.linear = nn.Dense(self.num_classes, name="head")

    def feature_maps(self, x: Float[Array, "n h w c"]) -> list[Float[Array, "n hb wb cb"]]:
        """Each block's activation (before its pooling); the last is ``F``."""
        h = (x - self.mean) / self.std
        maps = []
        for b, block in enumerate(self.convs):
            if b > 0:
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
            for conv in block:
                h = nn.relu(conv(h))
            maps.append(h)
        return maps

    def feature_map(self, x: Float[Array, "n h w c"]) -> Float[Array, "n fh fw C"]:
        """The last conv feature map ``F``."""
        return self.feature_maps(x)[-1]

    def features(self, x: Float[Array, "n h w c"]) -> Float[Array, "n C"]:
        """``z = GAP(F)``, the vector the linear head reads."""
        return jnp.mean(self.feature_map(x), axis=(1, 2))

    def head(self, z: Float[Array, "n C"]) -> Float[Array, "n K"]:
        """The linear head ``W z + b``."""
        return self.linear(z)

    def __call__(self, x: Float[Array, "n h w c"]) -> Float[Array, "n K"]:
        return self.head(self.features(x))


def head_weights(params) -> tuple[Float[Array, "K C"], Float[Array, "K"]]:
    """``(W, b)`` of the linear head in the ``logits = W z + b`` convention."""
    p = params["params"]["head"]
    return p["kernel"].T, p["bias"]
