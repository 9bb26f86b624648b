"""Small heads on latent vectors (attribute predictors, probes)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
from jaxtyping import Array, Float


class LatentHead(nn.Module):
    """Linear (``hidden=()``) or MLP head mapping a latent ``[n, D]`` to ``[n, A]`` outputs.

    With ``hidden=()`` this is exactly ``z @ W + b`` with ``W`` of shape ``[D, A]``: the
    all-attributes-at-once logistic regression of the Counterfactual Attacks method.
    """

    num_outputs: int
    hidden: Sequence[int] = ()

    @nn.compact
    def __call__(self, z: Float[Array, "n d"]) -> Float[Array, "n a"]:
        h = z
        for i, w in enumerate(self.hidden):
            h = nn.relu(nn.Dense(w, name=f"hidden{i}")(h))
        return nn.Dense(self.num_outputs, name="out")(h)
