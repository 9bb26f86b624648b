"""Inputs with any sharding a user built (issue 37 item 1): an Explicit or Auto ``jax.make_mesh``
mesh on any axis name, committed single-device arrays beside sharded ones. ``cf.make_attack`` and
``cf.MirrorCFE`` run on them, give the unsharded result, and hand results back on the caller's mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import cfjax as cf
from cfjax.methods import mirror as mr
from cfjax.placement import align_batch

N_DEV = jax.device_count()
pytestmark = pytest.mark.skipif(N_DEV < 2, reason="needs several (simulated) devices")
D, K = 6, 10
N = 2 * N_DEV


def _models():
    Wd = jax.random.normal(jax.random.key(0), (D, 28 * 28)) * 0.3
    Wc = jax.random.normal(jax.random.key(1), (28 * 28, K)) * 0.3
    return (lambda z: jax.nn.sigmoid(z @ Wd).reshape(28, 28, 1)), (lambda x: x.reshape(-1) @ Wc)


def _mesh(kind):
    return jax.make_mesh((N_DEV,), ("batch",), axis_types=(kind,))


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_make_attack_runs_on_a_user_mesh_and_returns_on_it(kind):
    decode, logits = _models()
    z0 = jax.random.normal(jax.random.key(2), (N, D))
    t = jnp.arange(N) % K
    ref = cf.make_attack(decode, logits, steps=15, threshold=0.5)(z0, t)
    mesh = _mesh(kind)
    zs = jax.device_put(z0, NamedSharding(mesh, P("batch")))
    ts = jax.device_put(t, NamedSharding(mesh, P("batch")))
    res = cf.make_attack(decode, logits, steps=15, threshold=0.5)(zs, ts)
    np.testing.assert_array_equal(np.asarray(res.steps_taken), np.asarray(ref.steps_taken))
    np.testing.assert_allclose(np.asarray(res.z), np.asarray(ref.z), rtol=1e-5, atol=1e-6)
    assert res.z.sharding.mesh.axis_types == mesh.axis_types  # back on the caller's mesh type
    # a committed single-device target beside a sharded start
    t1 = jax.device_put(t, jax.devices()[1])
    res1 = cf.make_attack(decode, logits, steps=15, threshold=0.5)(zs, t1)
    np.testing.assert_array_equal(np.asarray(res1.steps_taken), np.asarray(ref.steps_taken))


@pytest.mark.parametrize("kind", [AxisType.Explicit, AxisType.Auto])
def test_mirror_cfe_runs_with_a_sharded_x_and_a_single_device_source(kind):
    C = 4
    W = jax.random.normal(jax.random.key(3), (3, C))
    b = jnp.zeros(3)
    x = jax.random.uniform(jax.random.key(4), (N, 2, 2, C))
    s = jnp.argmax(jnp.einsum("kc,nc->nk", W, x.mean((1, 2))) + b, -1)
    t = (s + 1) % 3
    run = mr.MirrorCFE(lambda v: [v], W, b, lambda F, skips, s_, t_, k: F, solver="exact", others="keep")
    ref = run(x, s, t)
    xs = jax.device_put(x, NamedSharding(_mesh(kind), P("batch")))
    got = run(xs, jax.device_put(s, jax.devices()[0]), t)
    np.testing.assert_allclose(np.asarray(got.k_cf), np.asarray(ref.k_cf))
    np.testing.assert_allclose(np.asarray(got.logits_features), np.asarray(ref.logits_features), rtol=1e-5, atol=1e-5)


def test_align_batch_moves_nothing_when_the_layout_fits():
    mesh = cf.data_mesh() if hasattr(cf, "data_mesh") else jax.make_mesh((N_DEV,), ("data",), axis_types=(AxisType.Auto,))
    x = jax.device_put(jnp.ones((N, 3)), NamedSharding(mesh, P(mesh.axis_names[0])))
    (y,), restore = align_batch(x)
    assert y.sharding == x.sharding and restore(y) is y
    # an Explicit twin keeps the same devices per shard: no data moved between devices
    em = jax.make_mesh((N_DEV,), ("b",), axis_types=(AxisType.Explicit,))
    xe = jax.device_put(jnp.arange(N * 3.0).reshape(N, 3), NamedSharding(em, P("b")))
    (ya,), restore = align_batch(xe)
    assert [s.device for s in ya.addressable_shards] == [s.device for s in xe.addressable_shards]
    assert all(ty == AxisType.Auto for ty in ya.sharding.mesh.axis_types)
    assert restore(ya).sharding.mesh.axis_types == em.axis_types
