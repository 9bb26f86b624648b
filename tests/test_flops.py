"""The jaxpr FLOP counter against hand counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cfjax.flops import count_flops


def test_conv_dense_grouped_scan_and_grad_match_hand_counts():
    x = jnp.ones((2, 8, 8, 3))
    conv = nn.Conv(5, (3, 3))
    p = conv.init(jax.random.key(0), x)
    fwd = 2 * 2 * 8 * 8 * 5 * 3 * 9  # 2 * outputs * C_in * window
    assert count_flops(lambda x: conv.apply(p, x), x) == fwd
    g = nn.Conv(6, (3, 3), feature_group_count=3)
    pg = g.init(jax.random.key(0), x)
    assert count_flops(lambda x: g.apply(pg, x), x) == 2 * 2 * 8 * 8 * 6 * 1 * 9
    s = nn.Conv(4, (3, 3), strides=(2, 2))
    ps = s.init(jax.random.key(0), x)
    assert count_flops(lambda x: s.apply(ps, x), x) == 2 * 2 * 4 * 4 * 4 * 3 * 9
    a = jnp.ones((4, 6))
    assert count_flops(lambda a: a @ a.T, a) == 2 * 4 * 4 * 6
    assert count_flops(lambda a: jax.lax.scan(lambda c, _: (c @ a.T @ a, None), a, None, length=3)[0], a) == 3 * (2 * 4 * 4 * 6 + 2 * 4 * 6 * 4)
    # the input gradient of a conv is another conv of the same size: 2x the forward
    assert count_flops(jax.grad(lambda x: conv.apply(p, x).sum()), x) == 2 * fwd
    # and the vmapped, jitted version counts the same per example
    assert count_flops(jax.jit(jax.vmap(lambda x: conv.apply(p, x[None]))), x) == fwd


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_attack_step_flops_scale_with_batch(upsample):
    from cfjax.models import VAE, Classifier, bind_classifier, bind_vae

    clf_m, vae_m = Classifier(), VAE(image_shape=(28, 28, 1), latent_dim=16, upsample=upsample)
    cp = clf_m.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    vp = vae_m.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), jax.random.key(2))
    clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
    step = lambda z, t: jax.vmap(jax.grad(lambda zz, tt: -jax.nn.softmax(clf.logits(vae.decode(zz)))[tt]))(z, t)  # noqa: E731
    f1 = count_flops(step, jnp.zeros((1, 16)), jnp.zeros(1, jnp.int32))
    f8 = count_flops(step, jnp.zeros((8, 16)), jnp.zeros(8, jnp.int32))
    assert f8 == 8 * f1
    # forward alone: the classifier's first conv on 28x28 (32 channels, 3x3, 1 input channel)
    assert f1 > 2 * 28 * 28 * 32 * 9 * 2
