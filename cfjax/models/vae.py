"""Convolutional VAE: ``encode(x) -> (mu, logvar)``, ``decode(z) -> x`` in [0, 1].

Encoder (as in the Counterfactual Attacks reference): stride-2 3x3 convs with
LeakyReLU(0.2) (default widths 16/32/64), flattened, linear to ``mu`` and ``logvar``.
Decoder: linear to a ``ceil(H/2^L) x ceil(W/2^L) x widths[-1]`` grid, then ``L`` upsampling
stages and a final 3x3 conv with a sigmoid, centre-cropped to ``H x W``. Upsampling is either
``"resize"`` (nearest-neighbour x2 then a 3x3 conv; the default, see BUILD_NOTES.md for why)
or ``"transpose"`` (a stride-2 transposed conv, as in the reference code).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class VAE(nn.Module):
    """Convolutional VAE parameterised by image shape.

    Attributes:
      image_shape: ``(H, W, C)`` of the images, e.g. ``(28, 28, 1)`` or ``(64, 64, 3)``.
      latent_dim: D, the latent size.
      widths: encoder channels per stride-2 stage (decoder mirrors them).
      upsample: ``"resize"`` or ``"transpose"``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> m = VAE(image_shape=(28, 28, 1), latent_dim=16)
      >>> params = m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jax.random.key(1))
      >>> mu, logvar = m.apply(params, jnp.zeros((2, 28, 28, 1)), method=VAE.encode)
      >>> m.apply(params, mu, method=VAE.decode).shape
      (2, 28, 28, 1)
    """

    image_shape: Sequence[int] = (28, 28, 1)
    latent_dim: int = 16
    widths: Sequence[int] = (16, 32, 64)
    upsample: str = "resize"

    def setup(self):
        if self.upsample not in ("resize", "transpose"):
            raise ValueError(f"upsample: expected 'resize' or 'transpose', got {self.upsample!r}")
        h, w, _ = self.image_shape
        n = len(self.widths)
        self._grid = (math.ceil(h / 2**n), math.ceil(w / 2**n))
        self.enc = [nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME", name=f"enc{i}") for i, c in enumerate(self.widths)]
        self.to_mu = nn.Dense(self.latent_dim, name="mu")
        self.to_logvar = nn.Dense(self.latent_dim, name="logvar")
        self.from_z = nn.Dense(self._grid[0] * self._grid[1] * self.widths[-1], name="from_z")
        dec_widths = list(self.widths[::-1][1:]) + [self.widths[0]]
        if self.upsample == "resize":
            self.dec = [nn.Conv(c, (3, 3), padding="SAME", name=f"dec{i}") for i, c in enumerate(dec_widths)]
        else:
            self.dec = [
                nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding="SAME", name=f"dec{i}")
                for i, c in enumerate(dec_widths)
            ]
        self.out = nn.Conv(self.image_shape[-1], (3, 3), padding="SAME", name="out")

    def encode(self, x: Float[Array, "n h w c"]) -> tuple[Float[Array, "n d"], Float[Array, "n d"]]:
        """Posterior mean and log-variance of ``x`` (images in [0, 1])."""
        h = x * 2.0 - 1.0
        for conv in self.enc:
            h = nn.leaky_relu(conv(h), 0.2)
        h = h.reshape(h.shape[0], -1)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: Float[Array, "n d"]) -> Float[Array, "n h w c"]:
        """Images in [0, 1] from latents."""
        h = self.from_z(z).reshape(z.shape[0], *self._grid, self.widths[-1])
        h = nn.leaky_relu(h, 0.2)
        for layer in self.dec:
            if self.upsample == "resize":
                n, gh, gw, c = h.shape
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.leaky_relu(layer(h), 0.2)
        h = nn.sigmoid(self.out(h))
        H, W, _ = self.image_shape
        top, left = (h.shape[1] - H) // 2, (h.shape[2] - W) // 2
        return h[:, top : top + H, left : left + W, :]

    def __call__(self, x: Float[Array, "n h w c"], rng: jax.Array):
        """Reparameterised reconstruction: returns ``(x_hat, mu, logvar)``."""
        mu, logvar = self.encode(x)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mu.shape)
        return self.decode(z), mu, logvar
