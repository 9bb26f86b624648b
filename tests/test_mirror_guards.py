"""Mirror-CFE refuses what it used to walk silently (issue 37 item 2, issue 34's old bind signature):

* a head ``W``/``b`` that is not the classifier's, also without ``logits=``: the ``feature_maps``
  of :func:`cfjax.bind_classifier` / ``ClassifierFns.from_gap`` carry the classifier's logits,
  and a bound decoder carries the head it was bound with;
* a decoder bound with the old ``bind_mirror_decoder(module, params, W, rho_l, rho_u)`` form,
  whose path is not known, unless ``others=`` says which path to walk.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax as cf
from cfjax.errors import InputError
from cfjax.methods import mirror as mr
from cfjax.models import ClassifierFns


class _FakeModule:
    """``apply(params, F [1, h, w, C], skips, masks) -> F``: a bound decoder without training."""

    def apply(self, params, F, skips, masks):
        return F


@pytest.fixture(scope="module")
def tiny():
    from cfjax.models import Classifier

    m = Classifier(num_classes=10, widths=(8, 16, 16))
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
    clf = cf.bind_classifier(m, m.init(jax.random.key(1), x[:1]))
    return clf, x


def _grey(F, skips, s, t, k):  # a decoder of the right shape: a grey image that follows F's mean
    return jnp.clip(0.5 + 0.0 * jnp.mean(F) * k, 0.0, 1.0) * jnp.ones((28, 28, 1))


def _pair(clf, x):
    s = int(jnp.argmax(clf.logits(x)))
    return s, (s + 1) % 10


def _other_head(clf):
    """A right-shaped head of another classifier (the issue's case: it ran silently)."""
    return clf.W + jax.random.normal(jax.random.key(7), clf.W.shape), clf.b


def test_mirror_cfe_without_logits_refuses_a_head_that_is_not_the_classifiers(tiny):
    clf, x = tiny
    s, t = _pair(clf, x[0])
    W2, b2 = _other_head(clf)
    with pytest.raises(InputError, match=r"^W/b: .*off the classifier's logits"):
        mr.mirror_cfe(clf.feature_maps, W2, b2, _grey, x[0], s, t, solver="exact")
    with pytest.raises(InputError, match=r"^W/b: .*off the classifier's logits"):
        mr.mirror_cfe(clf.feature_maps, clf.W, clf.b + 3.0, _grey, x[0], s, t, solver="exact")
    r = mr.mirror_cfe(clf.feature_maps, clf.W, clf.b, _grey, x[0], s, t, solver="exact")  # its own head runs
    np.testing.assert_allclose(r.logits_features[0], clf.logits(x[0]), rtol=1e-4, atol=1e-4)
    # the batched object checks the first batch the same way, before its compiled call
    run = mr.MirrorCFE(clf.feature_maps, W2, b2, _grey, solver="exact")
    src = jnp.argmax(jax.vmap(clf.logits)(x), -1)
    with pytest.raises(InputError, match=r"^W/b: .*off the classifier's logits"):
        run(x, src, (src + 1) % 10)
    assert run.compile_count == 0


def test_from_gap_maps_carry_their_head_too(tiny):
    clf, x = tiny
    fns = ClassifierFns.from_gap(clf.feature_maps, clf.W, clf.b)
    s, t = _pair(clf, x[0])
    W2, b2 = _other_head(clf)
    with pytest.raises(InputError, match=r"^W/b: "):
        mr.mirror_cfe(fns.feature_maps, W2, b2, _grey, x[0], s, t, solver="exact")
    mr.mirror_cfe(fns.feature_maps, fns.W, fns.b, _grey, x[0], s, t, solver="exact")
    # under the user's jit nothing has values: the check is skipped, the program still runs
    out = jax.jit(lambda v: mr.mirror_cfe(fns.feature_maps, fns.W, fns.b, _grey, v, s, t, solver="exact"))(x[0])
    assert out.x_path.shape == (21, 28, 28, 1)


def test_a_bound_decoder_refuses_another_head():
    W = jax.random.normal(jax.random.key(0), (3, 4))
    b = jnp.zeros(3)
    x = jax.random.uniform(jax.random.key(1), (2, 2, 4))
    dec = mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, reflect_others="keep")
    s = int(jnp.argmax(W @ x.mean((0, 1)) + b))
    t = (s + 1) % 3
    W2 = W + 1.0  # same shape, another classifier's head; a bare feature_maps cannot tell
    with pytest.raises(InputError, match=r"^W: .*decode\.W"):
        mr.mirror_cfe(lambda v: [v], W2, b, dec, x, s, t, solver="exact")
    with pytest.raises(InputError, match=r"^W: .*decode\.W"):
        mr.MirrorCFE(lambda v: [v], W2, b, dec, solver="exact")
    with pytest.raises(InputError, match=r"^W: .*shape \(3, 5\).*decode\.W of shape \(3, 4\)"):
        mr.mirror_cfe(lambda v: [jnp.concatenate([v, v[..., :1]], -1)], jnp.ones((3, 5)), b, dec, x, s, t, solver="exact")
    assert bool(mr.mirror_cfe(lambda v: [v], W, b, dec, x, s, t, solver="exact").found)


def test_the_old_bind_signature_is_refused_unless_others_names_the_path():
    """``bind_mirror_decoder(module, params, W, rho_l, rho_u)`` cannot know the path the decoder
    was trained on; it used to walk ``keep`` silently, whatever that was."""
    W = jnp.eye(4)
    b = jnp.zeros(4)
    x = jnp.broadcast_to(jnp.array([0.9, 0.1, 0.8, 0.0]), (2, 2, 4))  # class 2 above the 0/1 midpoint: the paths differ
    old = mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5)
    assert old.reflect_others is None
    with pytest.raises(InputError, match=r"^decode: expected a decoder that carries the path it was trained on.*got a BoundMirrorDecoder whose path is not known"):
        mr.mirror_cfe(lambda v: [v], W, b, old, x, 0, 1, solver="exact")
    with pytest.raises(InputError, match=r"^decode: .*path is not known"):
        mr.MirrorCFE(lambda v: [v], W, b, old, solver="exact")
    with pytest.raises(InputError, match=r"^decode: .*path is not known"):  # under jit too: it is decided before tracing
        jax.jit(lambda v: mr.mirror_cfe(lambda u: [u], W, b, old, v, 0, 1, solver="exact"))(x)
    l0 = W @ x.mean((0, 1)) + b
    for path in ("keep", "mirror"):  # named explicitly, it walks that path
        r = mr.mirror_cfe(lambda v: [v], W, b, old, x, 0, 1, solver="exact", others=path)
        np.testing.assert_allclose(r.logits_features[-1], mr.reflection_target(l0, 0, 1, path), atol=1e-4)
    # the spellings that carry the path bind it
    assert mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, reflect_others="mirror").reflect_others == "mirror"
    # a plain callable without reflect_others is not a bound decoder: the paper's path
    assert mr.resolve_others(None, lambda F, sk, s, t, k: F) == "keep"
