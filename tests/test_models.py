import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax.models import VAE, Classifier, LatentHead, bind_classifier, bind_vae, head_weights


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3)])
def test_classifier_shapes_and_split(shape):
    m = Classifier(num_classes=7)
    p = m.init(jax.random.key(0), jnp.zeros((1, *shape)))
    x = jax.random.uniform(jax.random.key(1), (3, *shape))
    logits = m.apply(p, x)
    assert logits.shape == (3, 7)
    maps = m.apply(p, x, method=Classifier.feature_maps)
    h = shape[0]
    assert [mm.shape[1] for mm in maps] == [h, -(-h // 2), -(-h // 4), -(-h // 8)]
    F = maps[-1]
    z = m.apply(p, x, method=Classifier.features)
    np.testing.assert_allclose(z, F.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    W, b = head_weights(p)
    np.testing.assert_allclose(logits, z @ W.T + b, rtol=1e-5, atol=1e-5)
    fns = bind_classifier(m, p)
    np.testing.assert_allclose(fns.logits(x[1]), logits[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns.head(fns.features(x[1])), logits[1], rtol=1e-5, atol=1e-5)
    # single-example callables vmap to the batched module
    np.testing.assert_allclose(jax.vmap(fns.logits)(x), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3)])
@pytest.mark.parametrize("upsample", ["resize", "transpose"])
def test_vae_shapes(shape, upsample):
    m = VAE(image_shape=shape, latent_dim=16, upsample=upsample)
    p = m.init(jax.random.key(0), jnp.zeros((1, *shape)), jax.random.key(1))
    x = jax.random.uniform(jax.random.key(1), (2, *shape))
    mu, logvar = m.apply(p, x, method=VAE.encode)
    assert mu.shape == logvar.shape == (2, 16)
    xh = m.apply(p, mu, method=VAE.decode)
    assert xh.shape == (2, *shape)
    assert float(xh.min()) >= 0.0 and float(xh.max()) <= 1.0
    fns = bind_vae(m, p)
    np.testing.assert_allclose(fns.decode(fns.encode(x[0])), xh[0], rtol=1e-5, atol=1e-5)


def test_vae_rejects_unknown_upsample():
    with pytest.raises(ValueError, match="upsample"):
        VAE(upsample="bilinear").init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jax.random.key(1))


def test_latent_head_linear_is_matmul():
    h = LatentHead(num_outputs=5)
    p = h.init(jax.random.key(0), jnp.zeros((1, 16)))
    z = jax.random.normal(jax.random.key(1), (4, 16))
    k, b = p["params"]["out"]["kernel"], p["params"]["out"]["bias"]
    np.testing.assert_allclose(h.apply(p, z), z @ k + b, rtol=1e-5, atol=1e-6)
    mlp = LatentHead(num_outputs=5, hidden=(8,))
    pm = mlp.init(jax.random.key(0), jnp.zeros((1, 16)))
    assert mlp.apply(pm, z).shape == (4, 5)
