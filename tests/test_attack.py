"""Counterfactual Attacks: the scan loop against a plain Python loop, masks, flags, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax import attack as atk
from cfjax.errors import InputError

D, K = 6, 4
_W1 = jax.random.normal(jax.random.key(0), (D, 12)) * 0.7
_W2 = jax.random.normal(jax.random.key(1), (12, K))


def decode(z):  # a tiny nonlinear "decoder" to a 3x4x1 image in [0, 1]
    return jax.nn.sigmoid(jnp.tanh(z @ _W1)).reshape(3, 4, 1)


def logits(x):
    return x.reshape(-1) @ _W2 * 3.0


def reference_attack(z0, target, steps, lr, threshold):
    """Obviously-correct Python loop: check, then step; stop when crossed."""
    tx = optax.adam(lr)
    z, s = jnp.asarray(z0), None
    s = tx.init(z)
    traj, n = [], 0
    for _ in range(steps):
        p = jax.nn.softmax(logits(decode(z)))[target]
        if p >= threshold:
            break
        g = jax.grad(lambda z: -jax.nn.softmax(logits(decode(z)))[target])(z)
        u, s = tx.update(g, s, z)
        z = optax.apply_updates(z, u)
        n += 1
        traj.append(z)
    p = jax.nn.softmax(logits(decode(z)))[target]
    return z, float(p), n, bool(p >= threshold)


@pytest.mark.parametrize("early", [0, 5])
def test_scan_matches_python_loop(early):
    z0 = jax.random.normal(jax.random.key(2), (D,))
    for target, thr in [(0, 0.6), (2, 0.5), (3, 0.97)]:
        r = atk.attack(decode, logits, z0, target, steps=40, learning_rate=0.1, threshold=thr, early_exit_every=early)
        z, p, n, ok = reference_attack(z0, target, 40, 0.1, thr)
        np.testing.assert_allclose(r.z, z, rtol=1e-5, atol=1e-6)
        assert int(r.steps_taken) == n and bool(r.success) == ok
        np.testing.assert_allclose(float(r.target_prob), p, rtol=1e-5)


def test_trajectory_recording():
    z0 = jax.random.normal(jax.random.key(3), (D,))
    r = atk.attack(decode, logits, z0, 1, steps=40, threshold=0.99, record_every=10)
    assert r.trajectory.shape == (5, 3, 4, 1) and r.trajectory_probs.shape == (5,)
    np.testing.assert_allclose(r.trajectory[0], decode(z0), rtol=1e-6)
    np.testing.assert_allclose(r.trajectory[-1], r.x, rtol=1e-6)
    # probabilities recorded are those of the recorded images
    np.testing.assert_allclose(r.trajectory_probs, jax.vmap(lambda x: jax.nn.softmax(logits(x))[1])(r.trajectory), rtol=1e-5)


def test_done_mask_freezes_an_example_past_the_threshold():
    z0 = jax.random.normal(jax.random.key(4), (D,))
    pred = int(jnp.argmax(logits(decode(z0))))
    p = float(jax.nn.softmax(logits(decode(z0)))[pred])
    r = atk.attack(decode, logits, z0, pred, steps=30, threshold=min(p, 0.99) - 1e-3)
    assert int(r.steps_taken) == 0 and bool(r.success) and int(r.status) == atk.SUCCESS
    np.testing.assert_array_equal(r.z, z0)


def test_unreachable_target_is_reported_unsuccessful():
    z0 = jax.random.normal(jax.random.key(5), (D,))
    r = atk.attack(decode, logits, z0, 1, steps=5, learning_rate=1e-4, threshold=0.999)
    assert not bool(r.success) and int(r.status) == atk.BUDGET and int(r.steps_taken) == 5


def test_zero_and_nonfinite_gradients_are_failures():
    z0 = jnp.ones(D)
    r = atk.attack(decode, lambda x: jnp.zeros(K), z0, 1, steps=10, threshold=0.6)
    assert not bool(r.success) and int(r.status) == atk.ZERO_GRAD and int(r.steps_taken) == 0
    r = atk.attack(decode, lambda x: logits(x) * jnp.nan, z0, 1, steps=10, threshold=0.6)
    assert not bool(r.success) and int(r.status) == atk.NON_FINITE


def test_success_on_the_very_last_step_counts():
    z0 = jax.random.normal(jax.random.key(6), (D,))
    t = 3  # starts at p=0.0007: needs dozens of steps
    full = atk.attack(decode, logits, z0, t, steps=100, threshold=0.7)
    n = int(full.steps_taken)
    assert bool(full.success) and n > 1
    r = atk.attack(decode, logits, z0, t, steps=n, threshold=0.7)  # crosses exactly after the last step
    assert bool(r.success) and int(r.steps_taken) == n and int(r.status) == atk.SUCCESS


def test_vmap_equals_per_example():
    z0 = jax.random.normal(jax.random.key(7), (6, D))
    t = jnp.array([0, 1, 2, 3, 1, 2])
    b = atk.attack_batch(decode, logits, z0, t, steps=30, threshold=0.8)
    for i in range(6):
        one = atk.attack(decode, logits, z0[i], int(t[i]), steps=30, threshold=0.8)
        np.testing.assert_allclose(b.z[i], one.z, rtol=1e-5, atol=1e-6)
        assert int(b.steps_taken[i]) == int(one.steps_taken) and bool(b.success[i]) == bool(one.success)


def test_sigmoid_objective_both_directions():
    def dec(z):
        return jax.nn.sigmoid(z).reshape(2, 3, 1)

    def lg(x):
        return (jnp.mean(x) - 0.5) * 10

    z0 = jnp.zeros(D)
    up = atk.attack(dec, lg, z0, 1, steps=100, threshold=0.75, objective="sigmoid")
    down = atk.attack(dec, lg, z0, 0, steps=100, threshold=0.75, objective="sigmoid")
    assert bool(up.success) and bool(down.success)
    assert float(jax.nn.sigmoid(lg(up.x))) >= 0.75 and float(jax.nn.sigmoid(lg(down.x))) <= 0.25
    assert 0 < int(up.steps_taken) < 100 and 0 < int(down.steps_taken) < 100


def test_normalized_sgd_option_and_pixel_clip():
    z0 = jax.random.normal(jax.random.key(8), (D,))
    r = atk.attack(decode, logits, z0, 3, steps=50, learning_rate=0.2, optimizer="sgd-normalized", threshold=0.6)
    assert r.z.shape == (D,)
    x0 = decode(z0)
    p = atk.attack_pixels(logits, x0, 3, steps=50, learning_rate=0.2, threshold=0.6)
    assert float(p.x.min()) >= 0 and float(p.x.max()) <= 1


def test_bad_arguments():
    z0 = jnp.zeros(D)
    with pytest.raises(InputError, match="target"):
        atk.attack(decode, logits, z0, 7)
    with pytest.raises(InputError, match="threshold"):
        atk.attack(decode, logits, z0, 1, threshold=1.5)
    with pytest.raises(InputError, match="steps"):
        atk.attack(decode, logits, z0, 1, steps=0)
    with pytest.raises(InputError, match="record_every"):
        atk.attack(decode, logits, z0, 1, steps=10, record_every=3)
    with pytest.raises(InputError, match="z0"):
        atk.attack(decode, logits, z0.at[0].set(jnp.nan), 1)
    with pytest.raises(InputError, match="optimizer"):
        atk.attack(decode, logits, z0, 1, optimizer="lbfgs")
    with pytest.raises(InputError, match="target == source"):
        atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 2]), source=jnp.array([1, 0]))
    with pytest.raises(InputError, match="target"):
        atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 2, 3]))
    with pytest.raises(InputError, match="z0"):
        atk.attack_batch(decode, logits, jnp.zeros((0, D)), jnp.zeros((0,), int))
