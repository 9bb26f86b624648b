"""Training of the Mirror-CFE decoder ``G`` (feature map -> image) against a frozen classifier.

The method itself (reflection, refinement, transitions, first counterfactual, the class
spatial prior) lives in :mod:`cfjax.methods.mirror`; the decoder architecture in
:mod:`cfjax.models.mirror_decoder`; its config (:class:`MirrorDecoderConfig`, re-exported here)
in :mod:`cfjax.training.mirror_decoder_config`. This module holds the decoder's losses, batch
sampler, training step and loop (orbax-checkpointed, resumable; built from the pieces of
:mod:`cfjax.training.loop`) and a quick held-out evaluation.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float
from tqdm.auto import tqdm

from cfjax import checkpoint as ckpt
from cfjax._checks import check_images, check_labels
from cfjax.errors import bad_arg
from cfjax.methods import mirror_checks as mc
from cfjax.methods.mirror import batched_decoder, gap, reflect, skip_masks
from cfjax.progress import progress_bar
from cfjax.training.loop import adam, eval_sums, restore_last, save_last, train_step

from cfjax.training.mirror_decoder_config import PRESETS, ROBUST_CHANGES, MirrorDecoderConfig  # noqa: F401  (re-exported)


class DecoderTrained(NamedTuple):
    """A trained Mirror-CFE decoder.

    Attributes:
      module, params: the :class:`~cfjax.models.mirror_decoder.MirrorDecoder` and the params
        the run kept (:func:`kept_params`: the weight average when ``ema_decay`` is on).
      disc_module, disc_params: the patch discriminator (``None`` params after a reload of
        ``best``, which stores G only).
      history: per ``log_every`` steps, the mean of every loss term (``cls, adv, rec, fea, tri,
        total, d``) over the interval.
      metrics: end-of-training evaluation (see :func:`evaluate_mirror_decoder`).
      config: the JSON config it was trained (and is checked) with.
    """

    module: Any
    params: Any
    disc_module: Any
    disc_params: Any
    history: list
    metrics: dict
    config: dict



def build_decoder(cfg: MirrorDecoderConfig, image_shape, num_classes: int = 0):
    """``(G, D)`` modules (``num_classes``: needed by a ``disc_conditional`` discriminator)."""
    from cfjax.models.mirror_decoder import MirrorDecoder, PatchDiscriminator

    if cfg.disc_conditional and num_classes < 2:
        raise bad_arg("num_classes", num_classes, "the number of classes (>= 2) for a class-conditional discriminator")
    g = MirrorDecoder(image_shape=tuple(image_shape), widths=tuple(cfg.widths), editor_width=cfg.editor_width, fk_channels=cfg.fk_channels,
                      skip_mode=cfg.skip_mode)
    return g, PatchDiscriminator(widths=tuple(cfg.disc_widths), num_classes=num_classes if cfg.disc_conditional else 0)


def fake_class(source, target, k):
    """The class ``F_k`` stands for: ``target`` where ``k > 0.5`` (past the boundary), else
    ``source`` (the label a conditional discriminator sees with ``G(F_k)``)."""
    return jnp.where(k > 0.5, target, source)



def mirror_decoder_losses(
    g_params,
    d_params,
    g_module,
    d_module,
    clf,
    batch: dict,
    cfg: MirrorDecoderConfig,
):
    """The five generator losses and the discriminator loss on one batch (pure).

    ``batch``: ``x`` [B, H, W, c] source images, ``source``/``target`` [B], ``k`` [B],
    ``x_ref`` [B, H, W, c] (a real target-class image where ``k >= 0.5``, another
    source-class image otherwise). ``clf`` is a :class:`cfjax.models.ClassifierFns`.

    Returns:
      ``(total, terms, x_k)``; ``terms`` holds ``cls, adv, rec, fea, tri`` (batch means).
    """
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)
    x, s, t, k, x_ref = batch["x"], batch["source"], batch["target"], batch["k"], batch["x_ref"]
    maps = jax.lax.stop_gradient(jax.vmap(clf.feature_maps)(x))
    skips, F_s = list(maps[:-1]), maps[-1]
    res = jax.vmap(lambda F, ss, tt: reflect(F, W, b, ss, tt, solver=cfg.train_solver, others=cfg.reflect_others))(F_s, s, t)
    F_k = jax.lax.stop_gradient(F_s + k[:, None, None, None] * (res.F_r - F_s))
    hws = [sk.shape[1:3] for sk in skips]
    masks = jax.vmap(lambda f, ss, tt, kk: skip_masks(f, W, ss, tt, kk, hws, cfg.rho_l, cfg.rho_u))(F_k, s, t, k)
    z_s, z_k = gap(F_s), gap(F_k)
    z_ref = jax.lax.stop_gradient(jax.vmap(clf.features)(x_ref))
    logp_k = jax.nn.log_softmax(cfg.cls_temperature * (z_k @ W.T + b))
    x_k = g_module.apply(g_params, F_k, skips, masks)
    z_g = jax.vmap(clf.features)(x_k)

    def kl_from_target(z):  # KL(softmax(T (W z_k + b)) || the classifier's softmax on features z), batch mean
        logp = jax.nn.log_softmax(z @ W.T + b)
        return jnp.mean(jnp.sum(jnp.exp(logp_k) * (logp_k - logp), -1))

    L_cls = kl_from_target(z_g)
    L_adv = jnp.mean(jax.nn.softplus(-d_module.apply(d_params, x_k, fake_class(s, t, k))))
    rec = (k == 0).astype(x.dtype)
    d_sk = jnp.mean(jnp.abs(x_k - x), axis=(1, 2, 3))
    L_rec = jnp.sum(rec * d_sk) / jnp.maximum(jnp.sum(rec), 1.0)
    fea = jnp.sqrt(jnp.sum((z_k - z_g) ** 2, -1) + 1e-12)
    if cfg.fea_normalized:
        fea = fea / (jax.lax.stop_gradient(jnp.linalg.norm(z_k, axis=-1)) + 1e-6)
    L_fea = jnp.mean(fea)
    d_kr = jnp.mean(jnp.abs(x_k - x_ref), axis=(1, 2, 3))
    # 1 / beta = ||z_s - z_k|| / ||z_k - z_ref||  (0 at k = 0: the term becomes d(x_s, x_k))
    inv_beta = jnp.linalg.norm(z_s - z_k, axis=-1) / (jnp.linalg.norm(z_k - z_ref, axis=-1) + 1e-6)
    a = cfg.tri_a
    L_tri = jnp.mean(jax.nn.relu((1 - a) * inv_beta * d_kr - d_sk) + jax.nn.relu(d_sk - (1 + a) * inv_beta * d_kr))
    terms = {"cls": L_cls, "adv": L_adv, "rec": L_rec, "fea": L_fea, "tri": L_tri}
    total = cfg.w_cls * L_cls + cfg.w_adv * L_adv + cfg.w_rec * L_rec + cfg.w_fea * L_fea + cfg.w_tri * L_tri
    if cfg.w_cls_blur:
        terms["cls_blur"] = kl_from_target(jax.vmap(clf.features)(_blur(x_k)))
        total = total + cfg.w_cls_blur * terms["cls_blur"]
    if cfg.w_cls_flip:
        terms["cls_flip"] = kl_from_target(jax.vmap(clf.features)(x_k[:, :, ::-1]))
        total = total + cfg.w_cls_flip * terms["cls_flip"]
    return total, terms, x_k


def discriminator_loss(d_params, d_module, real, fake, y_real=None, y_fake=None):
    """Non-saturating GAN discriminator loss ``softplus(-D(real)) + softplus(D(fake))`` (means;
    ``y_real``/``y_fake``: the labels a class-conditional discriminator sees)."""
    return (jnp.mean(jax.nn.softplus(-d_module.apply(d_params, real, y_real)))
            + jnp.mean(jax.nn.softplus(d_module.apply(d_params, fake, y_fake))))


def _pair_table(cfg: MirrorDecoderConfig, labels: np.ndarray, num_classes: int) -> np.ndarray:
    pairs = cfg.pairs
    if pairs is None:
        pairs = [(s, t) for s in range(num_classes) for t in range(num_classes) if s != t]
    pairs = np.asarray([(int(s), int(t)) for s, t in pairs], np.int32)
    if pairs.size == 0 or pairs.min() < 0 or pairs.max() >= num_classes or np.any(pairs[:, 0] == pairs[:, 1]):
        raise bad_arg("MirrorDecoderConfig.pairs", repr(cfg.pairs), f"(source, target) pairs of distinct classes in [0, {num_classes - 1}]")
    present = set(np.unique(labels).tolist())
    pairs = np.asarray([p for p in pairs if p[0] in present and p[1] in present], np.int32)
    if len(pairs) == 0:
        raise bad_arg("train data", "no images of the requested pairs' classes", "images of both classes of a pair")
    return pairs


def sample_batch(step: int, cfg: MirrorDecoderConfig, images: np.ndarray, labels: np.ndarray, by_class: list, pairs: np.ndarray) -> dict:
    """The host-side batch of training step ``step`` (a pure function of ``(seed, step)``: a
    resumed run sees the same batches)."""
    rng = np.random.default_rng([cfg.seed, step])
    B = cfg.batch_size
    pr = pairs[rng.integers(0, len(pairs), B)]
    s, t = pr[:, 0], pr[:, 1]
    idx = np.array([by_class[c][rng.integers(0, len(by_class[c]))] for c in s])
    k = rng.uniform(0.0, 1.0, B).astype(np.float32)
    if cfg.k_cf_fraction:  # bias towards the counterfactual side (drawn after k: same stream otherwise)
        cf_side = rng.uniform(size=B) < cfg.k_cf_fraction
        k = np.where(cf_side, 0.5 + (cfg.k_cf_max - 0.5) * (1.0 - k), k).astype(np.float32)
    k[: int(round(cfg.rec_fraction * B))] = 0.0
    ref = np.empty(B, np.int64)
    for i in range(B):
        if k[i] >= 0.5:
            pool = by_class[t[i]]
            ref[i] = pool[rng.integers(0, len(pool))]
        else:
            pool = by_class[s[i]]
            j = pool[rng.integers(0, len(pool))]
            if j == idx[i] and len(pool) > 1:  # another source-class image
                j = pool[(np.searchsorted(pool, j) + 1) % len(pool)]
            ref[i] = j
    return {"x": images[idx], "source": s, "target": t, "k": k, "x_ref": images[ref]}


def _blur(x, sigma: float = 1.0):
    from cfjax.eval.metrics import gaussian_blur

    return gaussian_blur(x, sigma)


_JIT_CACHE: dict = {}


def _cached_jit(key: tuple, hold, build: Callable) -> Callable:
    """A jitted function per ``key`` (classifier callables by identity, configs by value), so
    repeated training/evaluation calls in one process compile once. ``hold`` keeps the objects
    whose ``id`` is in the key alive."""
    if key not in _JIT_CACHE:
        if len(_JIT_CACHE) >= 8:
            _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
        _JIT_CACHE[key] = (hold, jax.jit(build()))
    return _JIT_CACHE[key][1]


def evaluate_mirror_decoder(
    clf,
    module,
    params,
    cfg: MirrorDecoderConfig,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    n: int = 256,
    seed: int = 0,
    solver: str = "exact",
) -> dict:
    """Quick held-out check of a decoder: flip rate at ``k = 1`` (decoded image classified as a
    random target, among the decoder's ``cfg.pairs`` when it has them) with and without a Gaussian blur (sigma 1), L1 of the ``k = 0``
    reconstruction, and feature faithfulness at ``k = 1``."""
    rng = np.random.default_rng(seed)
    if cfg.pairs is None:  # every pair: random images, random other class
        idx = rng.choice(len(images), min(n, len(images)), replace=False)
        t = (labels[idx] + rng.integers(1, num_classes, len(idx))) % num_classes
    else:  # only the decoder's pairs
        pairs = np.asarray(cfg.pairs, np.int64)
        pool = np.flatnonzero(np.isin(labels, pairs[:, 0]))
        idx = rng.choice(pool, min(n, len(pool)), replace=False)
        t = np.array([rng.choice(pairs[pairs[:, 0] == c, 1]) for c in labels[idx]])
    W, b = jnp.asarray(clf.W), jnp.asarray(clf.b)

    def build():
        def run(params, batch):
            x, s, t = batch
            decode_batch = batched_decoder(module, params, W, cfg.rho_l, cfg.rho_u)
            maps = jax.vmap(clf.feature_maps)(x)
            F_s = maps[-1]
            res = jax.vmap(lambda F, ss, tt: reflect(F, W, b, ss, tt, solver=solver, others=cfg.reflect_others))(F_s, s, t)
            x0 = decode_batch(F_s, maps[:-1], s, t, jnp.zeros_like(s, jnp.float32))
            x1 = decode_batch(res.F_r, maps[:-1], s, t, jnp.ones_like(s, jnp.float32))
            z1 = jax.vmap(clf.features)(x1)
            zb = jax.vmap(clf.features)(_blur(x1))
            return {
                "flip_rate_k1": jnp.mean(jnp.argmax(z1 @ W.T + b, -1) == t),
                "denoised_flip_rate_k1": jnp.mean(jnp.argmax(zb @ W.T + b, -1) == t),
                "rec_l1_k0": jnp.mean(jnp.abs(x0 - x)),
                "faithfulness_l1_k1": jnp.mean(jnp.sum(jnp.abs(gap(res.F_r) - z1), -1)),
            }

        return run

    run = _cached_jit(("eval", id(clf), cfg, solver, tuple(images.shape[1:])), clf, build)
    batch = (images[idx], np.asarray(labels[idx], np.int32), np.asarray(t, np.int32))
    return eval_sums(run, params, batch, max(len(idx), 1))  # one chunk: the means as floats



def ema_update(ema, params, decay: float):
    """One step of the weights' exponential moving average: ``decay * ema + (1 - decay) * params``
    (leaf-wise; ``ema`` starts at zeros, :func:`ema_debiased` corrects for that)."""
    return jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def ema_debiased(ema, step: int, decay: float):
    """The average :func:`ema_update` holds after ``step`` updates from zeros, divided by
    ``1 - decay ** step``: the weighted mean of the iterates alone (no weight on the zeros)."""
    if step <= 0:
        raise ValueError(f"step: expected >= 1 EMA updates, got {step}")
    c = 1.0 - float(decay) ** int(step)
    return jax.tree_util.tree_map(lambda e: e / c, ema)


def kept_params(state: dict, step: int, cfg: MirrorDecoderConfig):
    """The decoder weights a run keeps after ``step`` steps: the debiased EMA when
    ``cfg.ema_decay`` (and a step was taken), else the last iterate."""
    if cfg.ema_decay and step > 0:
        return ema_debiased(state["g_ema"], step, cfg.ema_decay)
    return state["g"]


def _decoder_config(cfg: MirrorDecoderConfig, image_shape, num_classes: int, data_name: str, classifier_digest: str) -> dict:
    return {
        "decoder": cfg.as_dict(),
        "image_shape": list(image_shape),
        "num_classes": int(num_classes),
        "data": data_name,
        "classifier_digest": classifier_digest,
    }


STATE_KIND = "mirror-decoder-train-state"


def _warm_start(src: Path, state, config: dict):
    """``(state, step, history)`` from ``src/last`` (same config but ``decoder.steps``, which must
    not exceed this run's)."""
    if not (src / "last").is_dir():
        raise bad_arg("warm_start", repr(str(src)), "a decoder workdir holding a 'last' checkpoint")
    theirs = ckpt.read_meta(src / "last").get("config", {})
    steps = theirs.get("decoder", {}).get("steps")
    if not isinstance(steps, int) or steps > config["decoder"]["steps"]:
        raise bad_arg("warm_start", repr(str(src)), f"a run of at most {config['decoder']['steps']} steps (it has {steps!r})")
    state, extra = restore_last(src, state, STATE_KIND, {**config, "decoder": {**config["decoder"], "steps": steps}})
    return state, int(extra["step"]), list(extra["history"])


def _resume(workdir: Path | None, warm_start, state, config: dict):
    """``(state, step, history)`` to start from: ``workdir/last`` (:func:`cfjax.training.loop.restore_last`),
    else ``warm_start``'s shorter run (:func:`_warm_start`), else step 0."""
    state, extra = restore_last(workdir, state, STATE_KIND, config)
    if extra is None and warm_start is not None:
        return _warm_start(Path(warm_start), state, config)
    extra = extra or {}
    return state, int(extra.get("step", 0)), list(extra.get("history", []))


def _check_training_inputs(clf, train, test, cfg: MirrorDecoderConfig):
    """Every check :func:`train_mirror_decoder` makes before any work:
    ``(images, labels, data_name, K, (eval_images, eval_labels))``."""
    cfg.validate()
    images, labels, data_name = mc.check_dataset(train, "train")
    K, _ = mc.check_classifier_fns(clf, images[0], "clf")
    check_labels(labels, "train.labels", K, len(images))
    if test is not None:
        ev_images, ev_labels, _ = mc.check_dataset(test, "test")
        check_images(ev_images, "test.images", shape=images.shape[1:], check_range=False)
        check_labels(ev_labels, "test.labels", K, len(ev_images))
    else:
        ev_images, ev_labels = images, labels
    if cfg.batch_size > len(images):
        raise bad_arg("MirrorDecoderConfig.batch_size", cfg.batch_size, f"at most the number of training images ({len(images)})")
    return images, labels, data_name, K, (ev_images, ev_labels)


def _init_state(clf, cfg: MirrorDecoderConfig, g_module, d_module, tx, x0: Float[np.ndarray, "1 h w c"]) -> dict:
    """The training state at step 0: G and D initialised from ``cfg.seed``, their Adam states,
    and G's weight average (zeros) when ``cfg.ema_decay``."""

    def build_init():
        def init(kg, kd, x0):
            maps = jax.vmap(clf.feature_maps)(x0)
            ones = [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]]
            return g_module.init(kg, maps[-1], list(maps[:-1]), ones), d_module.init(kd, x0, jnp.zeros(x0.shape[:1], jnp.int32))

        return init

    # "rbg" keys: XLA:CPU compiles threefry-based initialisers very slowly (~15 s for G)
    kg, kd = jax.random.split(jax.random.key(cfg.seed, impl="rbg"))
    g, d = _cached_jit(("init", id(clf), cfg, tuple(x0.shape[1:])), clf, build_init)(kg, kd, jnp.asarray(x0))
    state = {"g": g, "d": d, "opt_g": tx.init(g), "opt_d": tx.init(d)}
    if cfg.ema_decay:
        state["g_ema"] = jax.tree_util.tree_map(jnp.zeros_like, g)
    return state


def mirror_train_step(state: dict, batch: dict, *, clf, g_module, d_module, tx, cfg: MirrorDecoderConfig):
    """One step of the decoder's game, two :func:`cfjax.training.loop.train_step` calls: G on
    :func:`mirror_decoder_losses` against the current D, then D on :func:`discriminator_loss`
    against G's (stopped) output; G's weight average follows when ``cfg.ema_decay``.

    ``state``: ``{"g", "d", "opt_g", "opt_d"}`` (+ ``"g_ema"``); returns ``(state, terms)``
    with every loss term, ``total`` (G's loss) and ``d`` (D's loss). Pure; jitted once per
    classifier and config."""

    def g_loss(gp, batch, _key):
        total, terms, x_k = mirror_decoder_losses(gp, state["d"], g_module, d_module, clf, batch, cfg)
        return total, (terms, x_k)

    g, total, (terms, x_k) = train_step({"params": state["g"], "opt_state": state["opt_g"]}, batch, None, loss_fn=g_loss, tx=tx)
    fake, y_fake = jax.lax.stop_gradient(x_k), fake_class(batch["source"], batch["target"], batch["k"])

    def d_loss(dp, batch, _key):
        return discriminator_loss(dp, d_module, batch["x"], fake, batch["source"], y_fake), {}

    d, d_l, _ = train_step({"params": state["d"], "opt_state": state["opt_d"]}, batch, None, loss_fn=d_loss, tx=tx)
    new = {"g": g["params"], "d": d["params"], "opt_g": g["opt_state"], "opt_d": d["opt_state"]}
    if cfg.ema_decay:
        new["g_ema"] = ema_update(state["g_ema"], new["g"], cfg.ema_decay)
    return new, {**terms, "total": total, "d": d_l}


def _run_steps(step, state, start: int, history: list, cfg: MirrorDecoderConfig, data: tuple, *, workdir: Path | None,
               config: dict, progress: bool, stop_after: int | None):
    """Steps ``start..cfg.steps`` of :func:`mirror_train_step` on :func:`sample_batch`'s batches
    (``data``: its ``images, labels, by_class, pairs``): a history row (the terms' means) every
    ``log_every`` steps and at the end, ``workdir/last`` (:func:`cfjax.training.loop.save_last`)
    every ``checkpoint_every``. ``stop_after`` steps in: saves and stops. Returns ``(state,
    history, the step it stopped at or None when it ran to the end)``."""
    buf: list = []
    bar = progress_bar(range(start, cfg.steps), desc="mirror decoder", disable=not progress, leave=False, initial=start, total=cfg.steps)
    for i in bar:
        if stop_after is not None and i - start >= stop_after:
            save_last(workdir, state, STATE_KIND, config, {"step": i, "history": history})
            return state, history, i
        state, aux = step(state, {k: jnp.asarray(v) for k, v in sample_batch(i, cfg, *data).items()})
        buf.append(aux)
        if (i + 1) % cfg.log_every == 0 or i + 1 == cfg.steps:
            vals = jax.device_get(buf)
            history.append({"step": i + 1, **{k: float(np.mean([v[k] for v in vals])) for k in vals[0]}})
            buf = []
            bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items() if k != "step"})
        if (i + 1) % cfg.checkpoint_every == 0 and i + 1 < cfg.steps:
            save_last(workdir, state, STATE_KIND, config, {"step": i + 1, "history": history})
    return state, history, None


def train_mirror_decoder(
    clf,
    train,
    cfg: MirrorDecoderConfig | None = None,
    *,
    test=None,
    workdir: str | Path | None = None,
    classifier_digest: str = "?",
    progress: bool = True,
    stop_after: int | None = None,
    warm_start: str | Path | None = None,
) -> DecoderTrained:
    """Train the Mirror-CFE decoder against a frozen classifier.

    Every argument is checked before any work (a :class:`cfjax.InputError` naming it): the
    config's fields (:meth:`MirrorDecoderConfig.validate`: learning rate, steps, batch size,
    ...; a batch no larger than the training set), the dataset type, finite images in [0, 1],
    labels in ``[0, K)``, ``clf``'s callables and head shapes, and on one training image that
    ``W @ GAP(F) + b`` equals ``clf.logits`` and ``clf.features`` is ``GAP(F)``
    (:mod:`cfjax.methods.mirror_checks`).

    Args:
      clf: :class:`cfjax.models.ClassifierFns` of the frozen classifier (for a classifier
        cfjax did not train: ``ClassifierFns.from_gap(feature_maps, W, b)``).
      train: a :class:`cfjax.data.Dataset` (images [N, H, W, c] float in [0, 1], labels [N]
        int), any object with those ``.images``/``.labels``, or an ``(images, labels)`` tuple.
      cfg: :class:`MirrorDecoderConfig`.
      test: optional held-out split for the end-of-training check (default: ``train``), of
        the same kinds as ``train``.
      workdir: ``last`` (G, D, both optimiser states, step, history) every
        ``checkpoint_every`` steps and at the end, ``best`` (G only) at the end; an existing
        ``last`` with the same config is resumed, one with another config refused.
      classifier_digest: identifies the classifier in the checkpoint config
        (:func:`cfjax.checkpoint.tree_digest` of its params) so a decoder trained against
        another classifier is never reused silently.
      stop_after: run at most this many steps in this call and return without the final
        evaluation/``best`` (tests use it to simulate a crash; ``last`` is written).
      warm_start: another run's workdir whose ``last`` was written with the same config except
        a smaller (or equal) ``steps``: training continues from its step (weights, both optimiser
        states, history) up to ``cfg.steps`` -- extending a finished 3,000-step decoder to 10,000
        costs 7,000 steps. Used only when ``workdir`` has no ``last`` of its own; any other
        config difference is refused.

    Returns:
      :class:`DecoderTrained` with the per-term loss history.
    """
    cfg = cfg or MirrorDecoderConfig()
    images, labels, data_name, K, (ev_images, ev_labels) = _check_training_inputs(clf, train, test, cfg)
    data = (images, labels, [np.flatnonzero(labels == c) for c in range(K)], _pair_table(cfg, labels, K))
    shape, workdir = tuple(images.shape[1:]), Path(workdir) if workdir is not None else None
    g_module, d_module = build_decoder(cfg, shape, K)
    tx = adam(cfg.learning_rate, cfg.lr_schedule, cfg.steps, b1=cfg.b1, b2=cfg.b2, name="MirrorDecoderConfig.lr_schedule")
    config = _decoder_config(cfg, shape, K, data_name, classifier_digest)
    state, start, history = _resume(workdir, warm_start, _init_state(clf, cfg, g_module, d_module, tx, images[:1]), config)
    step = _cached_jit(("train", id(clf), cfg, shape), clf,
                       lambda: functools.partial(mirror_train_step, clf=clf, g_module=g_module, d_module=d_module, tx=tx, cfg=cfg))
    t0 = time.perf_counter()
    state, history, stopped = _run_steps(step, state, start, history, cfg, data, workdir=workdir, config=config, progress=progress,
                                         stop_after=stop_after)
    if stopped is not None:
        return DecoderTrained(g_module, jax.device_get(kept_params(state, stopped, cfg)), d_module, jax.device_get(state["d"]), history, {}, config)
    train_s, g_kept = time.perf_counter() - t0, kept_params(state, cfg.steps, cfg)
    metrics = evaluate_mirror_decoder(clf, g_module, g_kept, cfg, ev_images, ev_labels, K, n=cfg.eval_examples, seed=cfg.seed)
    metrics.update(train_s=train_s, steps_run=cfg.steps - start)
    if workdir is not None:
        save_last(workdir, state, STATE_KIND, config, {"step": cfg.steps, "history": history})
        ckpt.save(workdir / "best", g_kept, kind="mirror-decoder", config=config, extra={"metrics": metrics, "history": history})
    if progress:
        tqdm.write("mirror decoder: " + ", ".join(f"{k_}={v:.4g}" for k_, v in metrics.items()))
    return DecoderTrained(g_module, jax.device_get(g_kept), d_module, jax.device_get(state["d"]), history, metrics, config)


def load_or_train_mirror_decoder(
    clf,
    train,
    cfg: MirrorDecoderConfig | None = None,
    *,
    test=None,
    workdir: str | Path,
    classifier_digest: str = "?",
    progress: bool = True,
    warm_start: str | Path | None = None,
) -> DecoderTrained:
    """Reuse ``workdir/best`` when it was written with the same config (decoder config, image
    shape, data, classifier digest: :func:`cfjax.checkpoint.matches`), else train (resuming from
    ``workdir/last``, or continuing ``warm_start``'s shorter run: :func:`train_mirror_decoder`)."""
    cfg = cfg or MirrorDecoderConfig()
    workdir = Path(workdir)
    config = _decoder_config(cfg, np.asarray(train.images).shape[1:], int(np.asarray(clf.W).shape[0]), getattr(train, "name", "?"), classifier_digest)
    if ckpt.matches(workdir / "best", "mirror-decoder", config):
        g_module, d_module = build_decoder(cfg, config["image_shape"], config["num_classes"])
        x0 = jnp.zeros((1, *config["image_shape"]), jnp.float32)
        maps = jax.vmap(clf.feature_maps)(x0)
        shapes = jax.eval_shape(lambda: g_module.init(jax.random.key(0), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]]))
        like = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes)
        params, meta = ckpt.restore(workdir / "best", like, kind="mirror-decoder", config=config)
        return DecoderTrained(g_module, params, d_module, None, meta["extra"].get("history", []), meta["extra"].get("metrics", {}), config)
    return train_mirror_decoder(clf, train, cfg, test=test, workdir=workdir, classifier_digest=classifier_digest, progress=progress,
                                warm_start=warm_start)


__all__ = [
    "PRESETS",
    "ROBUST_CHANGES",
    "DecoderTrained",
    "MirrorDecoderConfig",
    "build_decoder",
    "discriminator_loss",
    "ema_debiased",
    "ema_update",
    "evaluate_mirror_decoder",
    "fake_class",
    "kept_params",
    "load_or_train_mirror_decoder",
    "mirror_decoder_losses",
    "mirror_train_step",
    "sample_batch",
    "train_mirror_decoder",
]
