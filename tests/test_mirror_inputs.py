"""Mirror-CFE's validation layer (issue 26 item 1; issue 25 item 5): every bad input to
``mirror_cfe``, ``MirrorCFE``, ``reflect``, ``bind_mirror_decoder`` and ``train_mirror_decoder``
raises an ``InputError`` naming the argument before anything is traced; a decoder carries the
path it was trained on; ``ClassifierFns.from_gap``; ``MirrorCFE.compile_count``.

The models are tiny on purpose: the "image" is its own feature map (``feature_maps(x) = [x]``)
and the "decoder" returns ``F_k``, so every test runs in seconds.
"""

import dataclasses
from types import SimpleNamespace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax as cf
from cfjax.errors import InputError
from cfjax.methods import mirror as mr
from cfjax.methods import mirror_checks as mc
from cfjax.models import ClassifierFns

K, C = 3, 4


def fmaps(x):
    return [x]


def ident(F, skips, s, t, k):
    return F


def _head(seed=0):
    W = jax.random.normal(jax.random.key(seed), (K, C))
    return W, jnp.zeros(K)


def _x(seed=1):
    return jax.random.uniform(jax.random.key(seed), (2, 2, C))


def _pair(W, b, x):
    s = int(jnp.argmax(W @ x.mean((0, 1)) + b))
    return s, (s + 1) % K


def _run(**kw):
    """mirror_cfe on the tiny problem with one argument replaced."""
    W, b = _head()
    x = _x()
    s, t = _pair(W, b, x)
    args = dict(feature_maps=fmaps, W=W, b=b, decode=ident, x=x, source=s, target=t)
    opts = {"solver": "exact", **{k: kw.pop(k) for k in list(kw) if k not in args}}
    args.update(kw)
    return mr.mirror_cfe(args["feature_maps"], args["W"], args["b"], args["decode"], args["x"], args["source"], args["target"], **opts)


class _FakeModule:
    """A module-like decoder ``apply(params, F [1, h, w, C], skips, masks) -> F`` (the identity),
    so a real :class:`BoundMirrorDecoder` runs without training anything."""

    def apply(self, params, F, skips, masks):
        return F


class Trained(NamedTuple):
    """The fields of ``DecoderTrained`` that :func:`bind_mirror_decoder` reads."""

    module: Any
    params: Any
    config: dict


def _bound(reflect_others="keep", **kw):
    W, _ = _head()
    return mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, reflect_others=reflect_others, **kw)


# ------------------------------------------------------------------ callables


@pytest.mark.parametrize("bad", [None, "model.feature_maps", np.zeros(3)])
def test_feature_maps_not_callable(bad):
    with pytest.raises(InputError, match=r"^feature_maps: expected a callable"):
        _run(feature_maps=bad)


@pytest.mark.parametrize("bad", [None, "decoder.pt"])
def test_decode_not_callable(bad):
    with pytest.raises(InputError, match=r"^decode: expected a callable"):
        _run(decode=bad)


def test_feature_maps_that_fail_are_named_with_the_input_shape():
    def broken(x):
        return [x.reshape(3, 3, -1)]

    with pytest.raises(InputError, match=r"^feature_maps: .*called on inputs shape \(2, 2, 4\) float32"):
        _run(feature_maps=broken)


def test_feature_maps_returning_a_bare_array_or_a_batch_axis():
    with pytest.raises(InputError, match=r"^feature_maps: expected a non-empty list"):
        _run(feature_maps=lambda x: x)
    with pytest.raises(InputError, match=r"^feature_maps: expected single-example"):
        _run(feature_maps=lambda x: [x[None]])


# ------------------------------------------------------------------ classes


@pytest.mark.parametrize("bad", [1.0, [1], jnp.float32(1.0), np.array([1, 2]), True, "1"])
def test_source_must_be_an_integer_class(bad):
    with pytest.raises(InputError, match=r"^source: expected .*(integer|single class)"):
        _run(source=bad, target=0 if bad is not True else 2)


def test_classes_out_of_range():
    with pytest.raises(InputError, match=r"^source: expected a class index in \[0, 2\], got 3"):
        _run(source=3, target=0)
    with pytest.raises(InputError, match=r"^target: expected a class index in \[0, 2\], got -1"):
        _run(source=0, target=-1)


def test_source_equal_to_target():
    with pytest.raises(InputError, match=r"^target: .*different from the source"):
        _run(source=np.int32(1), target=jnp.asarray(1))


def test_traced_classes_still_need_an_integer_dtype():
    W, b = _head()
    x = _x()
    with pytest.raises(InputError, match=r"^source: .*dtype float32"):
        jax.vmap(lambda s: mr.mirror_cfe(fmaps, W, b, ident, x, s, 0, solver="exact"))(jnp.ones(2))


def test_reflect_refuses_a_float_class():
    W, b = _head()
    with pytest.raises(InputError, match=r"^target: expected an integer class index"):
        mr.reflect(_x(), W, b, 0, 2.0, solver="exact")


# ------------------------------------------------------------------ the head


def test_b_of_the_wrong_length():
    W, _ = _head()
    with pytest.raises(InputError, match=r"^b: expected shape \(3,\), one bias per row"):
        _run(b=jnp.zeros(K + 2))


def test_w_transposed_like_a_dense_kernel():
    W, b = _head()
    with pytest.raises(InputError, match=r"^W: .*pass the Dense kernel transposed \(W = kernel\.T\)"):
        _run(W=W.T)
    with pytest.raises(InputError, match=r"W = kernel\.T"):
        mr.reflect(_x(), W.T, b, 0, 1, solver="exact")


def test_w_columns_differ_from_the_feature_maps_channels():
    W = jax.random.normal(jax.random.key(0), (K, C + 1))
    with pytest.raises(InputError, match=r"^feature_maps: expected C = 5 channels, the columns of W"):
        _run(W=W)


def test_w_not_an_array():
    with pytest.raises(InputError, match=r"^W: expected an array"):
        _run(W="head.npy")


def test_a_head_that_is_not_the_classifiers_is_refused_with_logits():
    W, b = _head()
    x = _x()

    def true_logits(v):
        return W @ v.mean((0, 1)) + b

    _run(logits=true_logits)  # the classifier's own head passes
    other = W + 3.0 * jax.random.normal(jax.random.key(9), W.shape)
    with pytest.raises(InputError, match=r"^W/b: expected the classifier's own GAP-linear head.*off the classifier's logits by up to"):
        mr.mirror_cfe(fmaps, other, b, ident, x, *_pair(other, b, x), solver="exact", logits=true_logits)


def test_logits_of_the_wrong_shape():
    with pytest.raises(InputError, match=r"^logits: expected logits of shape \(3,\)"):
        _run(logits=lambda v: jnp.zeros((1, K)))


# ------------------------------------------------------------------ decoder, grid, image


def test_decoder_output_shape_must_equal_x():
    with pytest.raises(InputError, match=r"^decode: expected one decoded image of x's shape \(2, 2, 4\).*got an output of shape \(1, 2, 2, 4\)"):
        _run(decode=lambda F, skips, s, t, k: F[None])


@pytest.mark.parametrize("ks, match", [([0.0, 0.6, 0.4, 1.0], "strictly increasing"), ([0.0, 0.5, 1.5], r"k in \[0, 1\]"),
                                       ([], "at least one point"), ([[0.0, 1.0]], "at least one point")])
def test_ks_increasing_within_0_1(ks, match):
    with pytest.raises(InputError, match=rf"^ks: expected .*{match}"):
        _run(ks=ks)


def test_residual_compose_needs_ks_starting_at_0():
    with pytest.raises(InputError, match=r"^ks: expected ks\[0\] == 0 with compose='residual'"):
        _run(ks=[0.2, 0.6, 1.0], compose="residual")


def test_nan_image_is_refused_up_front():
    x = _x().at[0, 0, 0].set(jnp.nan)
    with pytest.raises(InputError, match=r"^x: expected finite pixels, got 1 non-finite"):
        _run(x=x)


def test_nan_image_under_jit_ends_with_status_non_finite():
    W, b = _head()
    x = _x()
    s, t = _pair(W, b, x)
    r = jax.jit(lambda v: mr.mirror_cfe(fmaps, W, b, ident, v, s, t, solver="exact"))(x.at[0, 0, 0].set(jnp.nan))
    assert int(r.status) == mr.NON_FINITE and mr.STATUS_NAMES[int(r.status)] == "non_finite"
    assert not bool(r.found) and np.isnan(float(r.k_cf))
    ok = jax.jit(lambda v: mr.mirror_cfe(fmaps, W, b, ident, v, s, t, solver="exact"))(x)
    assert int(ok.status) == mr.FOUND


def test_0_255_image_refused_by_a_decoder_trained_on_0_1():
    dec = _bound()
    with pytest.raises(InputError, match=r"^x: expected values in \[0, 1\], the range the decoder was trained on \(divide 0\.\.255 data by 255\)"):
        _run(decode=dec, x=255.0 * _x())
    r = _run(decode=dec)  # the same image in [0, 1] runs
    assert r.x_path.shape == (21, 2, 2, C)


def test_integer_image_refused():
    with pytest.raises(InputError, match=r"^x: expected a floating image"):
        _run(x=(255 * _x()).astype(jnp.uint8))


def test_batch_given_to_the_single_example_function():
    with pytest.raises(InputError, match=r"^x: expected one image \[H, W, c\]"):
        _run(x=_x()[None])


def test_scalar_options():
    for kw, name in ((dict(solver="newton"), "solver"), (dict(maxiter=0), "maxiter"), (dict(tol=-1.0), "tol"),
                     (dict(k_min=1.0), "k_min"), (dict(threshold=1.0), "threshold"), (dict(compose="blend"), "compose")):
        with pytest.raises(InputError, match=rf"^{name}:"):
            _run(**kw)


# ------------------------------------------------------------------ the decoder carries its path (issue 25 item 5)


def test_others_contradicting_the_decoder_names_both():
    dec = _bound(reflect_others="mirror")
    with pytest.raises(InputError, match=r"^others: .*others='keep' while the decoder was trained on decode\.reflect_others='mirror'"):
        _run(decode=dec, others="keep")
    with pytest.raises(InputError, match=r"reflect_others='mirror'"):
        W, b = _head()
        mr.MirrorCFE(fmaps, W, b, dec, others="keep")


def test_without_others_the_decoders_path_is_walked():
    """4 classes, the third class above the s/t midpoint: the 'keep' and 'mirror' paths differ at k = 1."""
    W = jnp.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    b = jnp.zeros(4)
    x = jnp.broadcast_to(jnp.array([0.9, 0.1, 0.8, 0.0]), (2, 2, 4))  # logits 0.9, 0.1, 0.8, 0: s=0, t=1, class 2 above (0.9+0.1)/2
    l0 = W @ x.mean((0, 1)) + b
    keep, mirror = mr.reflection_target(l0, 0, 1, "keep"), mr.reflection_target(l0, 0, 1, "mirror")
    assert not np.allclose(keep, mirror)
    for path, q in (("mirror", mirror), ("keep", keep)):
        dec = mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, reflect_others=path)
        r = mr.mirror_cfe(fmaps, W, b, dec, x, 0, 1, solver="exact")
        np.testing.assert_allclose(r.logits_features[-1], q, atol=1e-4)
        np.testing.assert_allclose(r.logits_features[0], l0, atol=1e-5)
        batched = mr.MirrorCFE(fmaps, W, b, dec, solver="exact")(x[None], jnp.array([0]), jnp.array([1]))
        np.testing.assert_allclose(batched.logits_features[0, -1], q, atol=1e-4)
    # a decoder that does not say walks the paper's path
    r = mr.mirror_cfe(fmaps, W, b, ident, x, 0, 1, solver="exact")
    np.testing.assert_allclose(r.logits_features[-1], keep, atol=1e-4)


def test_bind_reads_the_path_from_the_config_or_the_trained_decoder():
    from cfjax.training.mirror_decoder import MirrorDecoderConfig

    W, _ = _head()
    cfg = MirrorDecoderConfig.smoke()
    for path in ("keep", "mirror"):
        c = dataclasses.replace(cfg, reflect_others=path, rho_u=0.4)
        d = mr.bind_mirror_decoder(_FakeModule(), {}, W, config=c)
        assert (d.reflect_others, d.rho_l, d.rho_u) == (path, c.rho_l, 0.4) and d.config == c.as_dict()
        d2 = mr.bind_mirror_decoder(Trained(_FakeModule(), {}, {"decoder": c.as_dict(), "image_shape": [2, 2, C]}), W)
        assert (d2.reflect_others, d2.rho_u) == (path, 0.4)
    assert callable(d2) and d2(jnp.ones((2, 2, C)), [], 0, 1, 0.5).shape == (2, 2, C)
    with pytest.raises(InputError, match=r"^rho_u: .*rho_u=0\.5 while config has 0\.4"):
        mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, config=c)
    with pytest.raises(InputError, match=r"^reflect_others:"):
        mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5, reflect_others="lower")
    old = mr.bind_mirror_decoder(_FakeModule(), {}, W, 0.1, 0.5)  # the old spelling: path not known
    assert old.reflect_others is None and mr.resolve_others("mirror", old) == "mirror"


# ------------------------------------------------------------------ MirrorCFE


def test_mirror_cfe_object_checks_each_batch_on_the_host():
    W, b = _head()
    run = mr.MirrorCFE(fmaps, W, b, ident, solver="exact", ks=jnp.linspace(0, 1, 5))
    x = jnp.stack([_x(1), _x(2)])
    s = jnp.argmax(x.mean((1, 2)) @ W.T + b, -1)
    t = (s + 1) % K
    with pytest.raises(InputError, match=r"^source: expected integer class indices \[2\]"):
        run(x, s.astype(jnp.float32), t)
    with pytest.raises(InputError, match=r"^x: expected finite pixels"):
        run(x.at[1, 0, 0, 0].set(jnp.inf), s, t)
    with pytest.raises(InputError, match=r"^x: expected a batch \[n, H, W, c\]"):
        run(x[0], s, t)
    with pytest.raises(InputError, match=r"^target: expected shape \(2,\)"):
        run(x, s, t[:1])
    with pytest.raises(InputError, match=r"^options: expected keyword options among"):
        mr.MirrorCFE(fmaps, W, b, ident, step=0.1)
    with pytest.raises(InputError, match=r"^ks: expected a strictly increasing grid"):
        mr.MirrorCFE(fmaps, W, b, ident, ks=[0.0, 1.0, 0.5])
    assert run.compile_count == 0  # nothing compiled by the refused calls


def test_mirror_cfe_object_checks_the_head_against_logits_once():
    W, b = _head()
    x = jnp.stack([_x(1), _x(2)])
    s = jnp.argmax(x.mean((1, 2)) @ W.T + b, -1)
    wrong = mr.MirrorCFE(fmaps, W, b + 5.0 * jnp.arange(K), ident, solver="exact", logits=lambda v: W @ v.mean((0, 1)) + b)
    with pytest.raises(InputError, match=r"^W/b: .*off the classifier's logits by up to 10"):
        wrong(x, s, (s + 1) % K)


def test_mirror_cfe_compile_count():
    W, b = _head()
    run = mr.MirrorCFE(fmaps, W, b, ident, solver="exact", ks=jnp.linspace(0, 1, 5))
    x = jnp.stack([_x(1), _x(2)])
    s = jnp.argmax(x.mean((1, 2)) @ W.T + b, -1)
    assert run.compile_count == 0
    run(x, s, (s + 1) % K)
    run(0.5 * x, s, (s + 2) % K)  # new data and classes, same shapes: the same program
    run(x, s.astype(jnp.int64) if jax.config.jax_enable_x64 else np.asarray(s, np.int64), (s + 1) % K)  # int64 classes: cast on the host
    assert run.compile_count == 1
    run(jnp.concatenate([x, x]), jnp.concatenate([s, s]), jnp.concatenate([(s + 1) % K] * 2))  # a new batch size compiles again
    assert run.compile_count == 2
    with pytest.raises(AttributeError):
        run.compile_count = 0


# ------------------------------------------------------------------ ClassifierFns.from_gap


def test_classifier_fns_from_gap_against_the_hand_computation():
    rng = np.random.default_rng(0)
    k1 = rng.normal(size=(3, 5)).astype(np.float32)
    Wd = rng.normal(size=(5, 4)).astype(np.float32)  # a Dense kernel [C, K]
    bd = rng.normal(size=4).astype(np.float32)

    def maps(x):  # x [6, 6, 3] -> S [6, 6, 3], F [3, 3, 5]
        F = jnp.maximum(x @ k1, 0.0)[::2, ::2]
        return [x, F]

    fns = ClassifierFns.from_gap(maps, Wd.T, bd)
    x = rng.uniform(size=(6, 6, 3)).astype(np.float32)
    F = np.maximum(x @ k1, 0.0)[::2, ::2]
    z = F.reshape(-1, 5).mean(0)
    np.testing.assert_allclose(fns.features(x), z, rtol=1e-5)
    np.testing.assert_allclose(fns.logits(x), z @ Wd + bd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns.head(jnp.asarray(z)), z @ Wd + bd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fns.feature_map(x), F, rtol=1e-6)
    assert [m.shape for m in fns.feature_maps(x)] == [(6, 6, 3), (3, 3, 5)]
    assert fns.W.shape == (4, 5) and fns.b.shape == (4,)
    single = ClassifierFns.from_gap(lambda v: maps(v)[-1], Wd.T, bd)  # a bare F is taken as [F]
    np.testing.assert_allclose(single.logits(x), fns.logits(x), rtol=1e-6)
    mc.check_classifier_fns(fns, jnp.asarray(x))  # what the decoder trainer checks: passes
    with pytest.raises(InputError, match=r"^feature_maps: expected a callable"):
        ClassifierFns.from_gap(None, Wd.T, bd)
    with pytest.raises(InputError, match=r"clf\.W: .*W = kernel\.T"):
        mc.check_classifier_fns(ClassifierFns.from_gap(maps, Wd, bd), jnp.asarray(x))


# ------------------------------------------------------------------ train_mirror_decoder


def _train_parts(n=8):
    W, b = _head()
    clf = ClassifierFns.from_gap(fmaps, W, b)
    images = np.asarray(jax.random.uniform(jax.random.key(3), (n, 2, 2, C)))
    labels = np.arange(n, dtype=np.int32) % K
    return clf, images, labels


def _train(clf, data, **kw):
    from cfjax.training.mirror_decoder import MirrorDecoderConfig, train_mirror_decoder

    return train_mirror_decoder(clf, data, MirrorDecoderConfig.smoke(), progress=False, **kw)


@pytest.mark.parametrize("bad", [[1, 2], {"images": 1}, "mnist", None])
def test_train_refuses_what_is_not_a_dataset(bad):
    clf, _, _ = _train_parts()
    with pytest.raises(InputError, match=r"^train: expected a cfjax\.data\.Dataset .*or an \(images, labels\) tuple"):
        _train(clf, bad)


def test_train_accepts_an_images_labels_tuple():
    clf, images, labels = _train_parts()
    assert mc.check_dataset((images, labels))[2] == "?"
    ds = SimpleNamespace(images=images, labels=labels, name="mine")
    out = mc.check_dataset(ds)
    np.testing.assert_array_equal(out[0], images) and np.testing.assert_array_equal(out[1], labels)
    assert out[2] == "mine"
    # the tuple passes the data checks: what fails next is the classifier's (transposed) head
    bad_clf = clf._replace(W=clf.W.T)
    with pytest.raises(InputError, match=r"^clf\.W: .*kernel\.T"):
        _train(bad_clf, (images, labels))


def test_train_refuses_0_255_and_nan_images():
    clf, images, labels = _train_parts()
    with pytest.raises(InputError, match=r"^train\.images: expected values in \[0, 1\].*divide 0\.\.255"):
        _train(clf, (255.0 * images, labels))
    with pytest.raises(InputError, match=r"^train\.images: expected finite pixels"):
        _train(clf, (np.where(images > 0.5, np.nan, images), labels))
    with pytest.raises(InputError, match=r"^test\.images: expected values in \[0, 1\]"):
        _train(clf, (images, labels), test=(255.0 * images, labels))


def test_train_refuses_bad_labels():
    clf, images, labels = _train_parts()
    with pytest.raises(InputError, match=r"^train\.labels: expected class indices in \[0, 2\]"):
        _train(clf, (images, labels + 5))
    with pytest.raises(InputError, match=r"^train\.labels: expected integer"):
        _train(clf, (images, labels.astype(np.float32)))


def test_train_refuses_a_classifier_that_is_not_classifier_fns():
    _, images, labels = _train_parts()
    with pytest.raises(InputError, match=r"^clf: expected a cfjax\.models\.ClassifierFns .*from_gap"):
        _train(lambda x: x, (images, labels))
    clf, _, _ = _train_parts()
    with pytest.raises(InputError, match=r"^clf\.feature_maps: expected a callable"):
        _train(clf._replace(feature_maps="maps"), (images, labels))


def test_train_refuses_a_head_that_is_not_the_classifiers():
    clf, images, labels = _train_parts()
    with pytest.raises(InputError, match=r"^clf\.W/clf\.b: .*off the classifier's logits"):
        _train(clf._replace(b=clf.b + 4.0), (images, labels))
    with pytest.raises(InputError, match=r"^clf\.b: expected shape \(3,\)"):
        _train(clf._replace(b=jnp.zeros(7)), (images, labels))
    with pytest.raises(InputError, match=r"^clf\.features: .*GAP"):
        _train(clf._replace(features=lambda x: 2.0 * x.mean((0, 1))), (images, labels))


def test_blur_trained_classifier_gets_its_own_model_folder(tmp_path, monkeypatch):
    """--classifier-blur B caches the classifier (and what sits beside it) under
    <models>/<data>/blur-B, so the plain classifier's cache keeps its name and is not refused."""
    from cfjax.jobs.mirror import models as mm
    from cfjax.jobs.mirror.config import MirrorJobConfig

    seen = []

    def fake(train, test, model_cfg, train_cfg, workdir, progress=True):
        seen.append((workdir, train_cfg.augment_blur))
        raise RuntimeError("stop")

    monkeypatch.setattr(mm.ct, "load_or_train_classifier", fake)
    for blur, sub in ((0.0, "mnist5k"), (0.5, "mnist5k/blur-0.5")):
        cfg = dataclasses.replace(MirrorJobConfig.paper(), classifier_augment_blur=blur, data_limit=50)
        with pytest.raises(RuntimeError, match="stop"):
            mm.load_models("mnist5k", tmp_path, cfg, progress=False)
        assert seen[-1] == (tmp_path / sub / "classifier", blur)
