"""A tiny decoder/classifier pair for the attack's option and hardening tests (seconds to compile):
``decode`` maps a D-dim latent to a 4x4 image, ``logits`` the image to K classes; ``Z0`` [6, D]
starts, ``SOURCE`` the class each start decodes to, ``TARGET`` the next class."""

import jax
import jax.numpy as jnp

D, K = 4, 3
WD = jax.random.normal(jax.random.key(0), (D, 16))
WC = jax.random.normal(jax.random.key(1), (16, K))


def decode(z):  # [D] -> [4, 4, 1]
    return jax.nn.sigmoid(z @ WD).reshape(4, 4, 1)


def logits(x):  # [4, 4, 1] -> [K]
    return 3.0 * ((x.reshape(-1) - 0.5) @ WC)


Z0 = jax.random.normal(jax.random.key(2), (6, D))
SOURCE = jnp.argmax(jax.vmap(lambda z: logits(decode(z)))(Z0), -1).astype(jnp.int32)
TARGET = ((SOURCE + 1) % K).astype(jnp.int32)
