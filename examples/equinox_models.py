"""Bring your own model: Equinox modules.

Equinox models are pytrees (arrays + static structure) and take unbatched inputs; their
convolutions are channels-first (``[C, H, W]``). cfjax's contract is channels-last
single-example callables, so the wrappers transpose. ``eqx.partition`` splits the model into
its arrays and its static part and ``eqx.combine`` rebuilds it inside the traced function
(calling the module directly also works: its arrays are then closed-over constants).

Run: ``python examples/equinox_models.py`` (seconds; tiny random models; ``pip install equinox``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import cfjax as cf


class Decoder(eqx.Module):
    """z [8] -> image [1, 8, 8] (CHW) in [0, 1]."""

    fc: eqx.nn.Linear
    up: eqx.nn.ConvTranspose2d

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.fc = eqx.nn.Linear(8, 8 * 4 * 4, key=k1)
        self.up = eqx.nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1, key=k2)

    def __call__(self, z):
        h = jax.nn.relu(self.fc(z)).reshape(8, 4, 4)
        return jax.nn.sigmoid(2.0 * self.up(h))


class CNN(eqx.Module):
    """image [1, 8, 8] (CHW) in [0, 1] -> logits [3]."""

    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 8, 3, stride=2, padding=1, key=k1)
        self.head = eqx.nn.Linear(8 * 4 * 4, 3, key=k2)

    def __call__(self, x):
        h = jax.nn.relu(self.conv((x - 0.5) / 0.5))
        return 3.0 * self.head(h.reshape(-1))


def pure(model: eqx.Module, *, chw_in: bool = False, chw_out: bool = False):
    """A pure single-example callable of an Equinox model, channels-last at its boundary."""
    params, static = eqx.partition(model, eqx.is_array)

    def f(x):
        m = eqx.combine(params, static)
        y = m(jnp.transpose(x, (2, 0, 1)) if chw_in else x)
        return jnp.transpose(y, (1, 2, 0)) if chw_out else y

    return f


def main() -> dict:
    decoder, clf = Decoder(jax.random.key(0)), CNN(jax.random.key(1))
    decode = pure(decoder, chw_out=True)  # z -> [8, 8, 1]
    logits = pure(clf, chw_in=True)  # [8, 8, 1] -> [3]
    z0 = jax.random.normal(jax.random.key(2), (8, 8))
    x0 = jax.vmap(decode)(z0)
    assert x0.shape == (8, 8, 8, 1)
    l0 = jax.vmap(logits)(x0)
    np.testing.assert_allclose(l0, jax.vmap(clf)(jax.vmap(decoder)(z0)), rtol=1e-6, atol=1e-6)

    run = cf.make_attack(decode, logits, steps=300, learning_rate=0.1, threshold=0.55)
    order = np.argsort(np.asarray(l0), -1)
    target = jnp.asarray(order[:, 0])
    r = run(z0, target, source=jnp.asarray(order[:, -1]))
    p = jax.nn.softmax(jax.vmap(clf)(jnp.transpose(r.x, (0, 3, 1, 2))))[jnp.arange(8), target]
    np.testing.assert_allclose(r.target_prob, p, rtol=1e-5, atol=1e-6)
    ok = np.asarray(r.success)
    assert ok.mean() >= 0.5, (ok, r.target_prob)
    # the same attack under eqx.filter_jit on the model objects themselves
    @eqx.filter_jit
    def attack_models(decoder, clf, z0, target):
        return cf.attack_batch(lambda z: jnp.transpose(decoder(z), (1, 2, 0)), lambda x: clf(jnp.transpose(x, (2, 0, 1))), z0, target,
                               steps=300, learning_rate=0.1, threshold=0.55)

    r2 = attack_models(decoder, clf, z0, target)
    np.testing.assert_array_equal(r2.steps_taken, r.steps_taken)
    return {"success_rate": float(ok.mean()), "mean_steps": float(np.mean(r.steps_taken))}


if __name__ == "__main__":
    print(main())
