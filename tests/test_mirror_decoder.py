"""Mirror-CFE decoder: module shapes, batch sampling, each loss term trains, checkpoints/resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax.methods import mirror as mr
from cfjax.training import loop as ct
from cfjax.training import mirror_decoder as md
from cfjax.errors import CheckpointError
from cfjax.models import Classifier, bind_classifier
from cfjax.models.mirror_decoder import MirrorDecoder, PatchDiscriminator

TINY = md.MirrorDecoderConfig(widths=(16, 8), editor_width=4, fk_channels=4, disc_widths=(8, 8), batch_size=16,
                              steps=12, log_every=4, checkpoint_every=6, eval_examples=32)


def _assert_same_params(a, b, exact: bool = False):
    """Two param trees have the same structure and leaves (bit-equal with ``exact``, else to
    rtol 1e-5 / atol 1e-6)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_clf(mnist_small):
    """A small GAP-CNN (F = 7x7x16, skips 28x28x8 and 14x14x16) trained for one epoch."""
    tr, te = mnist_small
    res = ct.train_classifier(tr, te, ct.ClassifierConfig(widths=(8, 16, 16)), ct.TrainConfig(epochs=1, batch_size=50, learning_rate=3e-3), progress=False)
    return res, bind_classifier(res.module, res.params)


@pytest.mark.parametrize("shape", [(28, 28, 1), (64, 64, 3)])
def test_decoder_and_discriminator_shapes(shape):
    clf = Classifier(num_classes=4, widths=(8, 16, 16, 16))
    x = jnp.asarray(np.random.default_rng(0).random((2, *shape), dtype=np.float32))
    cp = jax.jit(clf.init)(jax.random.key(0, impl="rbg"), x)
    maps = jax.jit(lambda p, x: clf.apply(p, x, method=Classifier.feature_maps))(cp, x)
    skips, F = maps[:-1], maps[-1]
    masks = [jax.vmap(lambda f: mr.csp_mask(f, cp["params"]["head"]["kernel"].T, 0, 1, 0.7, 0.1, 0.5, s.shape[1:3]))(F) for s in skips]
    g = MirrorDecoder(image_shape=shape, widths=(16, 8, 8), editor_width=4, fk_channels=4)
    gp = jax.jit(g.init)(jax.random.key(1, impl="rbg"), F, skips, masks)
    y = jax.jit(g.apply)(gp, F, skips, masks)
    assert y.shape == (2, *shape)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    d = PatchDiscriminator(widths=(8, 16))
    dp = jax.jit(d.init)(jax.random.key(2, impl="rbg"), y)
    assert jax.jit(d.apply)(dp, y).shape == (2, shape[0] // 4, shape[1] // 4, 1)
    with pytest.raises(ValueError, match="one per skip"):
        g.apply(gp, F, skips, masks[:1])


def test_sample_batch_references_and_determinism(mnist_small):
    tr, _ = mnist_small
    labels = np.asarray(tr.labels)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    cfg = dataclasses.replace(TINY, batch_size=64, rec_fraction=0.25)
    pairs = md._pair_table(cfg, labels, 10)
    assert len(pairs) == 90
    a = md.sample_batch(3, cfg, tr.images, labels, by_class, pairs)
    b = md.sample_batch(3, cfg, tr.images, labels, by_class, pairs)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # a pure function of (seed, step): resumable
    assert np.all(a["source"] != a["target"])
    assert np.sum(a["k"] == 0) == 16  # the k = 0 (reconstruction) share of the batch
    assert np.all((a["k"] >= 0) & (a["k"] <= 1))
    # x matches its source label; the reference is a real target image when k >= 0.5, another
    # source-class image when k < 0.5 (identified through the pixels)
    flat = tr.images.reshape(len(tr.images), -1)

    def which(img):
        return int(np.flatnonzero(np.all(flat == img.reshape(1, -1), axis=1))[0])

    for i in range(64):
        xi, ri = which(a["x"][i]), which(a["x_ref"][i])
        assert labels[xi] == a["source"][i]
        if a["k"][i] >= 0.5:
            assert labels[ri] == a["target"][i]
        else:
            assert labels[ri] == a["source"][i] and ri != xi
    restricted = md._pair_table(dataclasses.replace(cfg, pairs=((3, 8), (8, 3))), labels, 10)
    c = md.sample_batch(0, dataclasses.replace(cfg, pairs=((3, 8), (8, 3))), tr.images, labels, by_class, restricted)
    assert set(map(tuple, np.stack([c["source"], c["target"]], 1).tolist())) <= {(3, 8), (8, 3)}


TERMS = ("cls", "adv", "rec", "fea", "tri")


def test_each_loss_term_decreases_when_trained(tiny_clf, mnist_small):
    """Train G on each term alone (discriminator frozen, 4 batches cycled, 30 steps): every
    term falls, so each has a working gradient path into the decoder. The weights are traced,
    so the five runs share one compiled step."""
    _, clf = tiny_clf
    tr, _ = mnist_small
    labels = np.asarray(tr.labels)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    cfg = TINY
    pairs = md._pair_table(cfg, labels, 10)
    batches = [{k: jnp.asarray(v) for k, v in md.sample_batch(i, cfg, tr.images, labels, by_class, pairs).items()} for i in range(4)]
    g, d = md.build_decoder(cfg, tr.images.shape[1:])
    maps = jax.vmap(clf.feature_maps)(batches[0]["x"][:1])
    gp0 = jax.jit(g.init)(jax.random.key(0, impl="rbg"), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]])
    dp = jax.jit(d.init)(jax.random.key(1, impl="rbg"), batches[0]["x"][:1])
    tx = optax.adam(2e-3, b1=0.5, b2=0.999)

    @jax.jit
    def step(gp, opt, batch, w):
        def f(p):
            _, terms, _ = md.mirror_decoder_losses(p, dp, g, d, clf, batch, cfg)
            return sum(w[i] * terms[t] for i, t in enumerate(TERMS)), terms

        (_, terms), gr = jax.value_and_grad(f, has_aux=True)(gp)
        u, opt = tx.update(gr, opt, gp)
        return optax.apply_updates(gp, u), opt, terms

    for j, term in enumerate(TERMS):
        gp, opt = gp0, tx.init(gp0)
        w = jnp.zeros(len(TERMS)).at[j].set(1.0)
        hist = []
        for i in range(30):
            gp, opt, terms = step(gp, opt, batches[i % 4], w)
            hist.append(float(terms[term]))
        first, last = np.mean(hist[:4]), np.mean(hist[-4:])
        assert np.all(np.isfinite(hist)), term
        assert last < 0.9 * first, (term, first, last)


def test_train_history_checkpoints_resume_and_reuse(tiny_clf, mnist_small, tmp_path):
    res, clf = tiny_clf
    tr, te = mnist_small
    digest = "tiny"
    full = md.train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "a", classifier_digest=digest, progress=False)
    assert [h["step"] for h in full.history] == [4, 8, 12]
    assert set(full.history[0]) == {"step", "cls", "adv", "rec", "fea", "tri", "total", "d"} | ({"cls_blur"} if TINY.w_cls_blur else set())
    assert all(np.isfinite(v) for h in full.history for v in h.values())
    assert {"flip_rate_k1", "denoised_flip_rate_k1", "rec_l1_k0", "faithfulness_l1_k1", "train_s"} <= set(full.metrics)
    assert (tmp_path / "a" / "best").is_dir() and (tmp_path / "a" / "last").is_dir()
    # a crash after 6 steps, then a restart with the same arguments: the same decoder
    part = md.train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "b", classifier_digest=digest, progress=False, stop_after=6)
    assert part.metrics == {} and not (tmp_path / "b" / "best").exists()
    resumed = md.train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "b", classifier_digest=digest, progress=False)
    assert resumed.metrics["steps_run"] == 6
    _assert_same_params(full.params, resumed.params)
    # reuse: same config -> loaded from best (no training), bit-identical
    again = md.load_or_train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "a", classifier_digest=digest, progress=False)
    assert again.disc_params is None and again.history == full.history
    _assert_same_params(full.params, again.params, exact=True)
    # another classifier (digest) with the same workdir: the resume path refuses it
    with pytest.raises(CheckpointError, match="classifier_digest"):
        md.train_mirror_decoder(clf, tr, TINY, workdir=tmp_path / "a", classifier_digest="other", progress=False)
    # the single-example decode callable agrees with the batched one
    x = jnp.asarray(te.images[:2])
    maps = jax.vmap(clf.feature_maps)(x)
    r = jax.vmap(lambda F: mr.reflect(F, clf.W, clf.b, 1, 2, solver="exact"))(maps[-1])
    one = mr.bind_mirror_decoder(full.module, full.params, clf.W, TINY.rho_l, TINY.rho_u)
    bat = mr.batched_decoder(full.module, full.params, clf.W, TINY.rho_l, TINY.rho_u)
    k = jnp.array([0.3, 0.9])
    yb = bat(r.F_r, maps[:-1], jnp.array([1, 1]), jnp.array([2, 2]), k)
    y0 = one(r.F_r[0], [m[0] for m in maps[:-1]], 1, 2, k[0])
    np.testing.assert_allclose(yb[0], y0, atol=1e-5)


def test_warm_start_extends_a_finished_run(tiny_clf, mnist_small, tmp_path):
    """A finished 6-step run continued to 12 steps equals an uninterrupted 12-step run (batches
    are drawn by step index); any other config difference, or a longer source run, is refused."""
    from cfjax.errors import InputError

    _, clf = tiny_clf
    tr, te = mnist_small
    short = dataclasses.replace(TINY, steps=6)
    md.train_mirror_decoder(clf, tr, short, test=te, workdir=tmp_path / "short", classifier_digest="tiny", progress=False)
    full = md.train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "full", classifier_digest="tiny", progress=False)
    ext = md.load_or_train_mirror_decoder(clf, tr, TINY, test=te, workdir=tmp_path / "ext", classifier_digest="tiny", progress=False,
                                          warm_start=tmp_path / "short")
    assert ext.metrics["steps_run"] == 6 and [h["step"] for h in ext.history] == [4, 6, 8, 12]  # the short run logged its end
    _assert_same_params(full.params, ext.params)
    with pytest.raises(CheckpointError, match="w_cls"):
        md.train_mirror_decoder(clf, tr, dataclasses.replace(TINY, w_cls=2.0), workdir=tmp_path / "x", classifier_digest="tiny",
                                progress=False, warm_start=tmp_path / "short")
    with pytest.raises(InputError, match="warm_start"):
        md.train_mirror_decoder(clf, tr, dataclasses.replace(TINY, steps=4), workdir=tmp_path / "y", classifier_digest="tiny",
                                progress=False, warm_start=tmp_path / "short")
    with pytest.raises(InputError, match="warm_start"):
        md.train_mirror_decoder(clf, tr, TINY, workdir=tmp_path / "z", classifier_digest="tiny", progress=False, warm_start=tmp_path / "none")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_eq12_editor_shapes_and_k_sampling_bias(tiny_clf, mnist_small):
    """skip_mode='eq12' builds and decodes at every skip resolution; k_cf_fraction moves that
    share of the non-reconstruction rows to (0.5, 1]; the new loss terms are finite and
    L_cls_blur has a working gradient path."""
    _, clf = tiny_clf
    tr, _ = mnist_small
    labels = np.asarray(tr.labels)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    cfg = dataclasses.replace(TINY, batch_size=256, skip_mode="eq12", fea_normalized=True, w_fea=1.0, w_cls_blur=1.0, k_cf_fraction=0.8)
    pairs = md._pair_table(cfg, labels, 10)
    bt = md.sample_batch(0, cfg, tr.images, labels, by_class, pairs)
    rec = int(round(cfg.rec_fraction * cfg.batch_size))
    k = bt["k"][rec:]
    assert 0.85 < np.mean(k > 0.5) < 0.95  # 0.8 + 0.2 * 0.5 expected
    base = md.sample_batch(0, dataclasses.replace(cfg, k_cf_fraction=0.0), tr.images, labels, by_class, pairs)
    assert 0.4 < np.mean(base["k"][rec:] > 0.5) < 0.6
    # k_cf_max: the counterfactual-side draw narrows to (0.5, k_cf_max]; the same stream otherwise
    near = md.sample_batch(0, dataclasses.replace(cfg, k_cf_max=0.75), tr.images, labels, by_class, pairs)
    moved = bt["k"] != near["k"]
    assert moved.sum() > 100 and np.all((near["k"][moved] > 0.5) & (near["k"][moved] <= 0.75))
    np.testing.assert_allclose(near["k"][moved] - 0.5, (bt["k"][moved] - 0.5) / 2, atol=1e-6)  # the same draw, scaled (float32)
    assert np.array_equal(near["x"], bt["x"]) and np.array_equal(near["k"][~moved], bt["k"][~moved])
    assert "k_cf_max" not in cfg.as_dict() and dataclasses.replace(cfg, k_cf_max=0.75).as_dict()["k_cf_max"] == 0.75
    batch = {k_: jnp.asarray(v[:16]) for k_, v in bt.items()}
    g, d = md.build_decoder(cfg, tr.images.shape[1:])
    maps = jax.vmap(clf.feature_maps)(batch["x"][:1])
    gp = jax.jit(g.init)(jax.random.key(0, impl="rbg"), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]])
    assert any("editor" in n and "B" in gp["params"][n] for n in gp["params"])  # Eq. 12's B_i exists
    dp = jax.jit(d.init)(jax.random.key(1, impl="rbg"), batch["x"][:1])
    (total, (terms, x_k)), gr = jax.jit(jax.value_and_grad(lambda p: (lambda t: (t[0], t[1:]))(md.mirror_decoder_losses(p, dp, g, d, clf, batch, cfg)),
                                                             has_aux=True))(gp)
    assert x_k.shape == batch["x"].shape and set(terms) == {"cls", "adv", "rec", "fea", "tri", "cls_blur"}
    assert all(np.isfinite(float(v)) for v in terms.values()) and float(terms["fea"]) < 5.0  # normalised: a relative error
    gnorm = sum(float(jnp.sum(v**2)) for v in jax.tree_util.tree_leaves(gr))
    assert np.isfinite(gnorm) and gnorm > 0


def test_conditional_discriminator_is_the_patch_gan_plus_a_class_projection(tiny_clf, mnist_small, tmp_path):
    x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1))
    y = jnp.array([0, 4, 9])
    dc = PatchDiscriminator(widths=(8, 16), num_classes=10)
    dp = dc.init(jax.random.key(1), x, y)
    out = dc.apply(dp, x, y)
    assert out.shape == (3, 7, 7, 1)
    # reference: with the class embedding zeroed, the conditional D is the unconditional one
    # with the same conv weights; another label shifts every patch of an image by one scalar
    du = PatchDiscriminator(widths=(8, 16))
    shared = {"params": {k: v for k, v in dp["params"].items() if k != "class_embed"}}
    zeroed = {"params": {**dp["params"], "class_embed": jax.tree_util.tree_map(jnp.zeros_like, dp["params"]["class_embed"])}}
    np.testing.assert_allclose(np.asarray(dc.apply(zeroed, x, y)), np.asarray(du.apply(shared, x)), atol=1e-6)
    diff = np.asarray(dc.apply(dp, x, (y + 1) % 10) - out)
    np.testing.assert_allclose(diff, np.broadcast_to(diff[:, :1, :1], diff.shape), atol=1e-5)
    assert np.all(np.abs(diff[:, 0, 0, 0]) > 0)
    with pytest.raises(ValueError, match="labels"):
        dc.apply(dp, x)
    # the label a decoded image is shown with: the target past the boundary, else the source
    np.testing.assert_array_equal(np.asarray(md.fake_class(jnp.array([1, 1, 1]), jnp.array([7, 7, 7]), jnp.array([0.2, 0.5, 0.6]))), [1, 1, 7])
    # trains end to end; recorded in the checkpoint config only when on (old decoders still match)
    _, clf = tiny_clf
    tr, te = mnist_small
    assert "disc_conditional" not in TINY.as_dict()
    cfg = dataclasses.replace(TINY, disc_conditional=True)
    out = md.train_mirror_decoder(clf, tr, cfg, test=te, workdir=tmp_path / "c", progress=False)
    assert out.config["decoder"]["disc_conditional"] is True
    assert all(np.isfinite(h["adv"]) and np.isfinite(h["d"]) for h in out.history)
    assert "class_embed" in out.disc_params["params"]


def _batch_at_k_and_fresh_decoder(clf, tr, k: float):
    """Step 0's training batch with every row at ``k``, and a freshly initialised decoder and
    discriminator (``batch, g, d, gp, dp``)."""
    labels = np.asarray(tr.labels)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    batch = {k_: jnp.asarray(v) for k_, v in md.sample_batch(0, TINY, tr.images, labels, by_class, md._pair_table(TINY, labels, 10)).items()}
    batch["k"] = jnp.full_like(batch["k"], k)
    g, d = md.build_decoder(TINY, tr.images.shape[1:])
    maps = jax.vmap(clf.feature_maps)(batch["x"][:1])
    gp = g.init(jax.random.key(0), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]])
    dp = d.init(jax.random.key(1), batch["x"][:1])
    return batch, g, d, gp, dp


def _logits64(clf, x):
    """The classifier's head logits on images ``x`` [B, H, W, c], in float64."""
    return np.asarray(jax.vmap(clf.features)(x), np.float64) @ np.asarray(clf.W, np.float64).T + np.asarray(clf.b, np.float64)


def _kl64(target_logits, logits):
    """Slow reference: batch mean of KL(softmax(target_logits) || softmax(logits)), float64."""
    lk = target_logits - target_logits.max(-1, keepdims=True)
    lg = logits - logits.max(-1, keepdims=True)
    pk = np.exp(lk) / np.exp(lk).sum(-1, keepdims=True)
    logq = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    return np.mean(np.sum(pk * (np.log(pk + 1e-300) - logq), -1))


def test_cls_temperature_sharpens_the_l_cls_target(tiny_clf, mnist_small):
    """``cls_temperature=T``: L_cls (and its blurred twin) is the KL from ``softmax(T (W z_k + b))``
    to the decoded image's class distribution. Reference at k = 0 (``z_k`` is the source's own
    feature vector), computed here from the returned decoded images."""
    _, clf = tiny_clf
    tr, _ = mnist_small
    batch, g, d, gp, dp = _batch_at_k_and_fresh_decoder(clf, tr, 0.0)
    l_src = _logits64(clf, batch["x"])

    def kl_ref(T, x_k, blur=False, flip=False):
        xg = md._blur(x_k) if blur else x_k
        xg = np.asarray(xg)[:, :, ::-1] if flip else xg  # [B, H, W, c]: mirror the width axis
        return _kl64(T * l_src, _logits64(clf, xg))

    seen = []
    for T in (1.0, 3.0):
        _, terms, x_k = md.mirror_decoder_losses(gp, dp, g, d, clf, batch, dataclasses.replace(TINY, cls_temperature=T, w_cls_blur=1.0))
        np.testing.assert_allclose(float(terms["cls"]), kl_ref(T, x_k), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(float(terms["cls_blur"]), kl_ref(T, x_k, blur=True), rtol=1e-3, atol=1e-6)
        seen.append(float(terms["cls"]))
        assert "cls_flip" not in terms  # off by default
    assert abs(seen[0] - seen[1]) > 1e-4
    # w_cls_flip: the same KL on the left-right mirrored decoded image, added to the total with its
    # weight. A stand-in generator that "decodes" the real source digits makes the decoded images
    # asymmetric (an untrained decoder's near-constant output is not), so flipping them matters.
    class Copy:
        apply = staticmethod(lambda params, F_k, skips, masks: batch["x"])

    base_total, _, _ = md.mirror_decoder_losses(gp, dp, Copy, d, clf, batch, dataclasses.replace(TINY, cls_temperature=3.0))
    total, terms, x_k = md.mirror_decoder_losses(gp, dp, Copy, d, clf, batch, dataclasses.replace(TINY, cls_temperature=3.0, w_cls_flip=2.0))
    flip_ref = kl_ref(3.0, x_k, flip=True)
    np.testing.assert_allclose(float(terms["cls_flip"]), flip_ref, rtol=1e-3, atol=1e-6)
    assert abs(flip_ref - kl_ref(3.0, x_k)) > 0.02 * flip_ref  # 20x the tolerance above: the images were mirrored
    np.testing.assert_allclose(float(total), float(base_total) + 2.0 * flip_ref, rtol=1e-4)
    assert "w_cls_flip" not in TINY.as_dict() and dataclasses.replace(TINY, w_cls_flip=1.0).as_dict()["w_cls_flip"] == 1.0
    # off value absent from the recorded config (cached decoders keep their names); bad values refused
    # (the paper's T = 1, both presets' value: decoders trained before the option existed keep their cache names)
    assert "cls_temperature" not in TINY.as_dict() and dataclasses.replace(TINY, cls_temperature=5.0).as_dict()["cls_temperature"] == 5.0
    assert md.MirrorDecoderConfig().cls_temperature == 1.0 and md.MirrorDecoderConfig.robust().cls_temperature == 1.0
    from cfjax.jobs.mirror import MirrorJobConfig
    from cfjax.errors import InputError
    with pytest.raises(InputError, match="decoder.cls_temperature"):
        MirrorJobConfig(decoder=dataclasses.replace(TINY, cls_temperature=0.0)).validate()
    with pytest.raises(InputError, match="MirrorDecoderConfig.cls_temperature"):  # a direct call too, before any training
        md.train_mirror_decoder(clf, tr, dataclasses.replace(TINY, cls_temperature=float("nan")), progress=False)
    for lo, hi in ((0.5, 0.1), (-0.1, 0.5), (0.1, 1.5), (float("nan"), 0.5)):
        with pytest.raises(InputError, match="decoder.rho_l/rho_u"):
            MirrorJobConfig(decoder=dataclasses.replace(TINY, rho_l=lo, rho_u=hi)).validate()
    MirrorJobConfig(decoder=dataclasses.replace(TINY, rho_l=0.0, rho_u=0.0)).validate()  # the mask = where a CAM is positive
    for bad in (-1.0, float("nan")):
        with pytest.raises(InputError, match="decoder.w_cls_flip"):
            MirrorJobConfig(decoder=dataclasses.replace(TINY, w_cls_flip=bad)).validate()
    for bad in (0.5, 1.01, float("nan")):
        with pytest.raises(InputError, match="decoder.k_cf_max"):
            MirrorJobConfig(decoder=dataclasses.replace(TINY, k_cf_max=bad)).validate()
    with pytest.raises(InputError, match="decoder.reflect_others"):
        MirrorJobConfig(decoder=dataclasses.replace(TINY, reflect_others="lower")).validate()
    # the path option is recorded when not the paper's, and the job walks the decoder's path
    # (the paper's "keep" is left out of the recorded config, so decoders trained before the option keep their names)
    from cfjax.jobs.mirror import _rows_options
    assert md.MirrorDecoderConfig().reflect_others == "keep" and md.MirrorDecoderConfig.robust().reflect_others == "mirror"
    cfg_k = MirrorJobConfig(decoder=TINY)
    assert "reflect_others" not in cfg_k.decoder.as_dict() and _rows_options(cfg_k)["others"] == "keep"
    cfg_m = MirrorJobConfig(decoder=dataclasses.replace(TINY, reflect_others="mirror"))
    assert cfg_m.decoder.as_dict()["reflect_others"] == "mirror" and _rows_options(cfg_m)["others"] == "mirror"


def test_reflect_others_sets_the_training_path(tiny_clf, mnist_small):
    """``reflect_others="mirror"``: at k = 1 the L_cls target is ``softmax(T q)`` with q the source
    logits, s and t swapped and every class above their midpoint mirrored across it (reference
    computed here in float64 from the classifier's logits), not the paper's swapped logits."""
    _, clf = tiny_clf
    tr, _ = mnist_small
    batch, g, d, gp, dp = _batch_at_k_and_fresh_decoder(clf, tr, 1.0)
    l = _logits64(clf, batch["x"])
    s, t = np.asarray(batch["source"]), np.asarray(batch["target"])

    def kl_ref(x_k, others):
        q = l.copy()
        for i in range(len(q)):
            q[i, s[i]], q[i, t[i]] = l[i, t[i]], l[i, s[i]]
            m = (l[i, s[i]] + l[i, t[i]]) / 2
            for j in range(q.shape[1]):
                if others == "mirror" and j not in (s[i], t[i]) and l[i, j] > m:
                    q[i, j] = 2 * m - l[i, j]
        return _kl64(TINY.cls_temperature * q, _logits64(clf, x_k))

    vals = {}
    for others in ("keep", "mirror"):
        _, terms, x_k = md.mirror_decoder_losses(gp, dp, g, d, clf, batch, dataclasses.replace(TINY, reflect_others=others))
        np.testing.assert_allclose(float(terms["cls"]), kl_ref(x_k, others), rtol=2e-3, atol=1e-5)
        vals[others] = float(terms["cls"])
    assert abs(vals["keep"] - vals["mirror"]) > 1e-3


def test_ema_debiased_is_the_weighted_mean_of_the_iterates():
    """Slow reference: after T updates from zeros, the debiased EMA is sum_t d^(T-t) p_t / sum_t d^(T-t)."""
    rng = np.random.default_rng(0)
    seq = [{"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)} for _ in range(7)]
    d = 0.8
    ema = jax.tree_util.tree_map(jnp.zeros_like, seq[0])
    for p in seq:
        ema = md.ema_update(ema, p, d)
    got = md.ema_debiased(ema, len(seq), d)
    wts = np.array([d ** (len(seq) - 1 - i) for i in range(len(seq))], np.float64)
    for key in ("w", "b"):
        ref = sum(w * p[key].astype(np.float64) for w, p in zip(wts, seq)) / wts.sum()
        np.testing.assert_allclose(np.asarray(got[key]), ref, rtol=1e-5, atol=1e-6)
    const = md.ema_debiased(md.ema_update(md.ema_update(jax.tree_util.tree_map(jnp.zeros_like, seq[0]), seq[0], d), seq[0], d), 2, d)
    np.testing.assert_allclose(np.asarray(const["w"]), seq[0]["w"], rtol=1e-6)  # a constant sequence averages to itself
    with pytest.raises(ValueError, match="step"):
        md.ema_debiased(ema, 0, d)


def test_ema_and_cosine_schedule_train_resume_and_keep_the_average(tiny_clf, mnist_small, tmp_path):
    """``ema_decay``: the kept decoder (returned, ``best``, evaluated) is the debiased weight average,
    not the last iterate; a crash and resume gives the same average; ``lr_schedule="cosine"``
    trains; both are recorded in the config only when on; bad values are refused before training."""
    from cfjax.errors import InputError

    _, clf = tiny_clf
    tr, te = mnist_small
    ema_cfg = dataclasses.replace(TINY, ema_decay=0.9, lr_schedule="cosine")
    full = md.train_mirror_decoder(clf, tr, ema_cfg, test=te, workdir=tmp_path / "a", classifier_digest="tiny", progress=False)
    raw = md.train_mirror_decoder(clf, tr, dataclasses.replace(TINY, lr_schedule="cosine", ema_decay=0.0), test=te, workdir=tmp_path / "r",
                                  classifier_digest="tiny", progress=False)
    from cfjax import checkpoint as ckpt
    last = ckpt.read_meta(tmp_path / "a" / "last")
    assert last["extra"]["step"] == TINY.steps and last["config"]["decoder"]["ema_decay"] == 0.9
    # the kept EMA weights are not the last iterate ...
    diffs = [float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(raw.params))]
    assert max(diffs) > 1e-4
    # ... while training itself is unchanged: the discriminator played the same raw weights as without EMA
    _assert_same_params(full.disc_params, raw.disc_params)
    reloaded = md.load_or_train_mirror_decoder(clf, tr, ema_cfg, test=te, workdir=tmp_path / "a", classifier_digest="tiny", progress=False)
    _assert_same_params(full.params, reloaded.params, exact=True)
    md.train_mirror_decoder(clf, tr, ema_cfg, test=te, workdir=tmp_path / "b", classifier_digest="tiny", progress=False, stop_after=6)
    resumed = md.train_mirror_decoder(clf, tr, ema_cfg, test=te, workdir=tmp_path / "b", classifier_digest="tiny", progress=False)
    _assert_same_params(full.params, resumed.params)
    # the off values are left out of the recorded config (decoders trained before the options keep their cache names)
    assert "ema_decay" not in dataclasses.replace(TINY, ema_decay=0.0).as_dict() and "lr_schedule" not in TINY.as_dict()
    assert md.MirrorDecoderConfig().ema_decay == 0.0 and md.MirrorDecoderConfig.robust().ema_decay == 0.999
    assert ema_cfg.as_dict()["lr_schedule"] == "cosine"
    for bad, field in ((dict(ema_decay=1.0), "ema_decay"), (dict(ema_decay=float("nan")), "ema_decay"), (dict(lr_schedule="linear"), "lr_schedule")):
        with pytest.raises(InputError, match=f"MirrorDecoderConfig.{field}"):
            md.train_mirror_decoder(clf, tr, dataclasses.replace(TINY, **bad), workdir=tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_presets_paper_is_the_default_and_robust_changes_only_what_it_names():
    """``paper()`` is the field defaults (the method as published); ``robust()`` differs from it in
    exactly :data:`ROBUST_CHANGES`, never sharpens L_cls, never trains on D.Val's blur; the job
    presets carry the name (recorded in summaries), an ordinary classifier, and validate it."""
    from cfjax.errors import InputError
    from cfjax.jobs.mirror import MirrorJobConfig, decoder_dir

    paper, robust = md.MirrorDecoderConfig.paper(), md.MirrorDecoderConfig.robust()
    assert paper == md.MirrorDecoderConfig()
    assert (paper.reflect_others, paper.cls_temperature, paper.ema_decay, paper.w_cls_blur, paper.fea_normalized, paper.k_cf_fraction) == (
        "keep", 1.0, 0.0, 0.0, False, 0.0)
    changed = {f.name for f in dataclasses.fields(paper) if getattr(paper, f.name) != getattr(robust, f.name)}
    assert changed == set(md.ROBUST_CHANGES)
    assert robust.cls_temperature == 1.0 and robust.w_cls_blur == 0.0
    # the paper preset's decoder has the cache name of an explicitly spelled paper config
    spelled = dataclasses.replace(TINY, reflect_others="keep", cls_temperature=1.0, ema_decay=0.0, w_cls_blur=0.0, fea_normalized=False, k_cf_fraction=0.0)
    assert decoder_dir(tmp := __import__("pathlib").Path("m"), TINY) == decoder_dir(tmp, spelled)
    for name in md.PRESETS:
        job = MirrorJobConfig.from_preset(name)
        assert job.preset == name and job.classifier_augment_blur == 0.0 and job.decoder == md.MirrorDecoderConfig.preset(name)
        small = MirrorJobConfig.from_preset(name, smoke=True)
        assert small.preset == name and small.decoder.reflect_others == job.decoder.reflect_others and small.decoder.steps < 100
    assert MirrorJobConfig() == MirrorJobConfig.paper()
    with pytest.raises(InputError, match="preset"):
        MirrorJobConfig.from_preset("best")
    with pytest.raises(InputError, match="preset"):
        MirrorJobConfig(preset="best").validate()
    for bad in (0.0, 0.05, 0.2, float("nan")):  # a tolerance in (0, k_step)
        with pytest.raises(InputError, match="locate_tol"):
            MirrorJobConfig(locate_tol=bad).validate()
    MirrorJobConfig(locate_tol=None).validate()
