"""Bring your own model: Flax NNX modules.

NNX modules are stateful Python objects; cfjax wants pure single-example callables.
``nnx.split`` separates a module into its static graph definition and its state (a pytree of
arrays); ``nnx.merge`` rebuilds it inside the traced function, so the callables are pure and
``make_attack`` can jit them.

Run: ``python examples/flax_nnx.py`` (seconds; tiny random models).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cfjax as cf


class Decoder(nnx.Module):
    """z [n, 8] -> images [n, 8, 8, 1] in [0, 1]."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(8, 4 * 4 * 8, rngs=rngs)
        self.up = nnx.ConvTranspose(8, 1, (3, 3), strides=(2, 2), rngs=rngs)

    def __call__(self, z):
        h = nnx.relu(self.fc(z)).reshape(-1, 4, 4, 8)
        return nnx.sigmoid(2.0 * self.up(h))


class CNN(nnx.Module):
    """images [n, 8, 8, 1] in [0, 1] -> logits [n, 3]."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), strides=(2, 2), rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 8, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv((x - 0.5) / 0.5))
        return 3.0 * self.head(h.reshape(h.shape[0], -1))


def pure(module: nnx.Module):
    """A pure single-example function of an NNX module: ``x -> module(x[None])[0]``."""
    graphdef, state = nnx.split(module)

    def f(x):
        return nnx.merge(graphdef, state)(x[None])[0]

    return f


def main() -> dict:
    decoder, clf = Decoder(nnx.Rngs(0)), CNN(nnx.Rngs(1))
    decode, logits = pure(decoder), pure(clf)
    z0 = jax.random.normal(jax.random.key(2), (8, 8))
    # the pure callables compute exactly what the modules compute
    np.testing.assert_allclose(jax.vmap(decode)(z0), decoder(z0), rtol=1e-6, atol=1e-6)

    run = cf.make_attack(decode, logits, steps=300, learning_rate=0.1, threshold=0.55)
    order = np.argsort(np.asarray(clf(decoder(z0))), -1)
    target = jnp.asarray(order[:, 0])  # the least likely class
    r = run(z0, target, source=jnp.asarray(order[:, -1]))
    p = jax.nn.softmax(clf(r.x))[jnp.arange(8), target]  # the stateful module agrees
    np.testing.assert_allclose(r.target_prob, p, rtol=1e-5, atol=1e-6)
    ok = np.asarray(r.success)
    assert ok.mean() >= 0.5, (ok, r.target_prob)
    assert np.all(np.argmax(np.asarray(clf(r.x)), -1)[ok] == np.asarray(target)[ok])
    return {"success_rate": float(ok.mean()), "mean_steps": float(np.mean(r.steps_taken))}


if __name__ == "__main__":
    print(main())
