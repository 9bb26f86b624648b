"""Mirror-CFE with your own classifier (not trained by cfjax).

Mirror-CFE needs a classifier of a specific shape: a CNN whose last convolutional feature
map ``F [h, w, C]`` is globally average-pooled and read by ONE linear head,
``logits(x) = W @ mean_{h,w} F(x) + b``. cfjax takes it as a
:class:`cfjax.models.ClassifierFns` of single-example callables:

built by ``ClassifierFns.from_gap(feature_maps, W, b)`` from

* ``feature_maps(x) -> [S_1, ..., S_L, F]``: the earlier block maps (the decoder's *skips*,
  shallow to deep) and ``F`` last;
* the head's ``W [K, C]`` (a Dense kernel is [C, K]: pass ``kernel.T``) and ``b [K]``.

Here the classifier is a plain ``jax.numpy`` GAP-CNN trained for a few seconds with a
hand-written optax loop on the bundled MNIST sample; the Mirror decoder is then trained
against it with :func:`cfjax.training.mirror_decoder.train_mirror_decoder` (the function
behind ``cfjax train mirror-decoder``) for a few hundred steps, bound with
:func:`cfjax.bind_mirror_decoder` (which carries the path it was trained on), and
:func:`cfjax.mirror_cfe` explains one image. docs/byom.md runs the same recipe.

Run: ``python examples/mirror_user_classifier.py`` (about 45 s of CPU on 2 cores).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

import cfjax as cf
from cfjax import data as cdata
from cfjax.models import ClassifierFns
from cfjax.training.mirror_decoder import MirrorDecoderConfig, train_mirror_decoder

WIDTHS = (8, 16, 32)


def init(key) -> dict:
    ks = jax.random.split(key, len(WIDTHS) + 1)
    convs, c_in = [], 1
    for k, c in zip(ks, WIDTHS):
        convs.append((jax.random.normal(k, (3, 3, c_in, c)) * np.sqrt(2.0 / (9 * c_in)), jnp.zeros(c)))
        c_in = c
    return {"convs": convs, "W": jax.random.normal(ks[-1], (10, WIDTHS[-1])) * 0.1, "b": jnp.zeros(10)}


def feature_maps(params, x):
    """x [28, 28, 1] in [0, 1] -> [S_1 (28x28x8), S_2 (14x14x16), F (7x7x32)]."""
    h, maps = ((x - 0.5) / 0.5)[None], []
    for i, (k, b) in enumerate(params["convs"]):
        if i:
            h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = jax.nn.relu(jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b)
        maps.append(h[0])
    return maps


def logits(params, x):
    return params["W"] @ feature_maps(params, x)[-1].mean(axis=(0, 1)) + params["b"]


def train_classifier(train, steps: int = 300, batch: int = 64) -> dict:
    """A plain optax loop (no cfjax trainer)."""
    params = init(jax.random.key(0))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(lambda xi: logits(p, xi))(x), y).mean()

        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    rng = np.random.default_rng(0)
    for _ in range(steps):
        i = rng.integers(0, len(train.images), batch)
        params, opt = step(params, opt, jnp.asarray(train.images[i]), jnp.asarray(train.labels[i]))
    return params


def classifier_fns(params) -> ClassifierFns:
    """The Mirror-CFE contract for this classifier: its maps and its GAP-linear head."""
    return ClassifierFns.from_gap(lambda x: feature_maps(params, x), params["W"], params["b"])


def main(classifier_steps: int = 300, decoder_steps: int = 300, learning_rate: float = 1e-3) -> dict:
    train, test = cdata.load("mnist5k", "train"), cdata.load("mnist5k", "test")
    params = train_classifier(train, classifier_steps)
    clf = classifier_fns(params)
    x_te = jnp.asarray(test.images[:200])
    pred = np.argmax(np.asarray(jax.jit(jax.vmap(lambda x: logits(params, x)))(x_te)), -1)
    acc = float(np.mean(pred == test.labels[:200]))
    assert acc > 0.5, acc  # a working classifier after a few seconds of training
    # the contract: the classifier's own logits == W GAP(F) + b (train_mirror_decoder checks it too)
    np.testing.assert_allclose(jax.vmap(lambda x: logits(params, x))(x_te[:4]), jax.vmap(clf.logits)(x_te[:4]), rtol=1e-5, atol=1e-5)

    cfg = dataclasses.replace(MirrorDecoderConfig.smoke(), steps=decoder_steps, learning_rate=learning_rate, pairs=((3, 8), (8, 3)),
                              reflect_others="mirror", log_every=max(1, decoder_steps // 4), checkpoint_every=10_000, eval_examples=16)
    g = train_mirror_decoder(clf, train, cfg, test=test, progress=False)
    assert all(np.isfinite(v) for rec in g.history for k, v in rec.items() if k != "step")
    decode = cf.bind_mirror_decoder(g, clf.W)  # carries the path it was trained on (reflect_others="mirror")
    assert decode.reflect_others == cfg.reflect_others

    i = int(np.flatnonzero((test.labels[:200] == 3) & (pred == 3))[0])  # a correctly classified 3
    r = cf.mirror_cfe(clf.feature_maps, clf.W, clf.b, decode, x_te[i], 3, 8, solver="exact", logits=lambda x: logits(params, x))
    # k = 0 is the image's own feature map: the feature-space logits are the classifier's
    np.testing.assert_allclose(r.logits_features[0], clf.logits(x_te[i]), rtol=1e-4, atol=1e-4)
    # k = 1 is the reflection on the decoder's path: the source and target logits swap; classes
    # above the 3/8 midpoint are mirrored below it (reflect_others="mirror"), the others keep theirs
    l0, l1 = np.asarray(r.logits_features[0]), np.asarray(r.logits_features[-1])
    np.testing.assert_allclose(l1[[3, 8]], l0[[8, 3]], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(l1, np.asarray(cf.reflection_target(l0, 3, 8, cfg.reflect_others)), rtol=1e-3, atol=1e-3)
    assert int(np.argmax(l1)) == 8
    assert r.x_path.shape == (len(r.ks), 28, 28, 1) and float(r.x_path.min()) >= 0.0 and float(r.x_path.max()) <= 1.0
    rec_l1 = float(jnp.abs(r.x_path[0] - x_te[i]).mean())
    if bool(r.found):  # after a few hundred decoder steps a flip is possible, not promised
        assert int(np.argmax(np.asarray(r.logits_path[int(r.index)]))) == 8
    return {"classifier_accuracy": acc, "found": bool(r.found), "status": cf.methods.mirror.STATUS_NAMES[int(r.status)], "k_cf": float(r.k_cf),
            "rec_l1_k0": rec_l1, "blank_l1": float(jnp.abs(x_te[i]).mean()), "decoder_flip_rate_k1": g.metrics.get("flip_rate_k1")}


if __name__ == "__main__":
    print(main())
