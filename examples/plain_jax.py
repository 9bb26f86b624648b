"""Bring your own model: plain ``jax.numpy`` functions with a params pytree.

No framework: ``decode(params, z)`` and ``logits(params, x)`` are functions of a dict of
arrays. ``functools.partial`` binds the params. Two ways to compile once:

* :func:`cfjax.make_attack` with the params bound: the params are constants of the compiled
  program (a new params pytree means a new ``Attack`` and a new compilation);
* ``jax.jit`` over a function that takes the params as an argument: the params are *data*,
  so fine-tuned or re-trained weights of the same shapes reuse the compiled program.

Run: ``python examples/plain_jax.py`` (seconds; tiny random models).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import cfjax as cf


def init_params(key) -> dict:
    k = jax.random.split(key, 4)
    return {
        "dec_w": jax.random.normal(k[0], (8, 64)) * 0.5,
        "dec_b": jnp.zeros(64),
        "conv": jax.random.normal(k[1], (3, 3, 1, 8)) * 0.3,  # HWIO
        "head_w": jax.random.normal(k[2], (4 * 4 * 8, 3)) * 0.2,
        "head_b": jnp.zeros(3),
    }


def decode(params, z):
    """z [8] -> image [8, 8, 1] in [0, 1]."""
    return jax.nn.sigmoid(z @ params["dec_w"] + params["dec_b"]).reshape(8, 8, 1)


def logits(params, x):
    """image [8, 8, 1] -> logits [3]: a stride-2 conv, ReLU, a linear head."""
    h = jax.lax.conv_general_dilated(((x - 0.5) / 0.5)[None], params["conv"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return 3.0 * (jax.nn.relu(h).reshape(-1) @ params["head_w"] + params["head_b"])


OPTIONS = dict(steps=300, learning_rate=0.1, threshold=0.55)


def main() -> dict:
    params = init_params(jax.random.key(0))
    z0 = jax.random.normal(jax.random.key(2), (8, 8))
    order = np.argsort(np.asarray(jax.vmap(lambda z: logits(params, decode(params, z)))(z0)), -1)
    target = jnp.asarray(order[:, 0])

    # 1. params bound once
    run = cf.make_attack(functools.partial(decode, params), functools.partial(logits, params), **OPTIONS)
    r = run(z0, target)

    # 2. params as data: one compiled program for any params of these shapes
    traces = {"n": 0}

    @jax.jit
    def attack_with(params, z0, target):
        traces["n"] += 1
        return cf.attack_batch(functools.partial(decode, params), functools.partial(logits, params), z0, target, **OPTIONS)

    a = attack_with(params, z0, target)
    np.testing.assert_array_equal(a.steps_taken, r.steps_taken)
    np.testing.assert_allclose(a.z, r.z, rtol=1e-5, atol=1e-5)
    other = jax.tree_util.tree_map(lambda p: p * 1.1, params)  # e.g. fine-tuned weights
    b = attack_with(other, z0, target)
    assert traces["n"] == 1, "new params of the same shapes must reuse the compiled program"
    assert not np.array_equal(np.asarray(a.z), np.asarray(b.z))

    p = jax.vmap(lambda x, t: jax.nn.softmax(logits(params, x))[t])(r.x, target)
    np.testing.assert_allclose(r.target_prob, p, rtol=1e-5, atol=1e-6)
    ok = np.asarray(r.success)
    assert ok.mean() >= 0.5, (ok, r.target_prob)
    return {"success_rate": float(ok.mean()), "mean_steps": float(np.mean(r.steps_taken))}


if __name__ == "__main__":
    print(main())
