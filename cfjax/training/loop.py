"""One optax training loop for every cfjax model, with orbax checkpoints.

``fit`` is the loop: jitted step, deterministic shuffling from the seed, evaluation each
epoch, ``best``/``last`` checkpoints (atomic), resume from ``last`` after a crash, and a
progress bar. It is composed of short top-level pieces that the Mirror decoder's trainer
(:mod:`cfjax.training.mirror_decoder`) uses too: :func:`adam` (the optimiser and its schedule),
:func:`train_step` (one optax update), :func:`eval_sums` (chunked evaluation),
:func:`restore_last`/:func:`save_last` (resume); :func:`train_epoch` is ``fit``'s epoch.
``train_classifier``/``train_vae`` supply the losses; ``load_or_train_*`` reuse a cached
checkpoint when its config matches (:func:`cfjax.checkpoint.matches`) and refuse one that does not.

Example (seconds on a CPU)::

    import cfjax.data as cd, cfjax.train as ct
    tr, te = cd.load("mnist5k", "train"), cd.load("mnist5k", "test")
    clf = ct.train_classifier(tr, te, train_cfg=ct.TrainConfig(epochs=1))
    print(clf.metrics["accuracy"])
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from cfjax import checkpoint as ckpt
from cfjax._checks import check_images, check_labels
from cfjax.errors import bad_arg
from cfjax.progress import progress_bar
from cfjax.models import VAE, Classifier, ResNet


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """GAP classifier hyper-parameters: ``arch="cnn"`` is :class:`cfjax.models.Classifier`,
    ``arch="resnet"`` :class:`cfjax.models.ResNet` (``widths`` per stage, ``blocks``, ``groups``)."""

    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128, 128)
    convs_per_block: int = 1
    arch: str = "cnn"
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    groups: int = 8

    def as_dict(self) -> dict:
        """As recorded in checkpoints (the ResNet fields left out for ``arch="cnn"``, so CNN
        checkpoints written before they existed still match)."""
        d = dataclasses.asdict(self)
        if self.arch == "cnn":
            for k in ("arch", "blocks", "groups"):
                d.pop(k)
        return d


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Conv VAE hyper-parameters; ``beta`` weighs the KL term."""

    latent_dim: int = 16
    widths: tuple[int, ...] = (16, 32, 64)
    upsample: str = "resize"
    beta: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every model."""

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 1000
    augment_shift: int = 0
    """Random translations of up to this many pixels (classifier training only)."""
    schedule: str = "cosine"
    """``"cosine"`` (decay to 0 over all steps) or ``"constant"``."""
    augment_blur: float = 0.0
    """Fraction of training images Gaussian-blurred (sigma 0.5, 1 or 1.5, uniformly; classifier
    training only): makes the classifier blur-robust, so that denoised validity (sigma-1 blur)
    measures the counterfactual rather than the classifier's fragility."""
    augment_flip: bool = False
    """Mirror half of the training images left-right (classifier training only; for data whose
    classes are left-right symmetric, e.g. garments): the classifier's evidence (its CAMs) then
    cannot sit on one side only."""
    patience: int = 0
    """Early stopping: end training once the selection metric (measured on the evaluation split,
    a validation split for the reference models) has not improved for this many epochs; the
    ``best`` checkpoint is kept. 0: off, train all ``epochs``."""

    def as_dict(self) -> dict:
        """The config as recorded in checkpoints (options at their off value are left out, so
        checkpoints written before an option existed still match)."""
        return ckpt.recorded_config(self, {"augment_blur": 0.0, "augment_flip": False, "patience": 0})

    @classmethod
    def smoke(cls) -> "TrainConfig":
        """A configuration that runs in seconds (tests, CI smoke runs)."""
        return cls(epochs=1, batch_size=64)


class Trained(NamedTuple):
    """A trained model: the Flax module, its params, per-epoch history and final eval metrics."""

    module: nn.Module
    params: Any
    history: list
    metrics: dict
    config: dict


def build_classifier(cfg: ClassifierConfig) -> Classifier | ResNet:
    if cfg.arch == "resnet":
        return ResNet(num_classes=cfg.num_classes, widths=tuple(cfg.widths), blocks=tuple(cfg.blocks), groups=cfg.groups)
    if cfg.arch != "cnn":
        raise bad_arg("ClassifierConfig.arch", repr(cfg.arch), "'cnn' or 'resnet'")
    return Classifier(num_classes=cfg.num_classes, widths=tuple(cfg.widths), convs_per_block=cfg.convs_per_block)


def build_vae(cfg: VAEConfig, image_shape) -> VAE:
    return VAE(image_shape=tuple(image_shape), latent_dim=cfg.latent_dim, widths=tuple(cfg.widths), upsample=cfg.upsample)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n - batch_size + 1 if rng is not None else n, batch_size):
        yield idx[s : s + batch_size]


# ------------------------------------------------------------------ the pieces every trainer composes


def adam(learning_rate: float, schedule: str, total_steps: int, *, b1: float = 0.9, b2: float = 0.999,
         name: str = "schedule") -> optax.GradientTransformation:
    """Adam at ``learning_rate``, held (``schedule="constant"``) or decayed to 0 over
    ``total_steps`` (``"cosine"``); another ``schedule`` is refused naming ``name``."""
    if schedule == "cosine":
        return optax.adam(optax.cosine_decay_schedule(learning_rate, max(total_steps, 1)), b1=b1, b2=b2)
    if schedule == "constant":
        return optax.adam(learning_rate, b1=b1, b2=b2)
    raise bad_arg(name, repr(schedule), "'cosine' or 'constant'")


def train_step(state: dict, batch, key: jax.Array | None, *, loss_fn: Callable, tx: optax.GradientTransformation):
    """One optax step on ``loss_fn(params, batch, key) -> (loss, aux)``.

    ``state`` is ``{"params", "opt_state"}``; returns ``(state, loss, aux)``. Pure: bind
    ``loss_fn``/``tx`` with :func:`functools.partial` and jit it (:func:`fit`), or call it inside
    a bigger jitted step (the Mirror decoder's G and D updates)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss, aux


def eval_sums(eval_step: Callable, params, arrays: tuple, batch_size: int) -> dict[str, float]:
    """``eval_step(params, batch) -> dict of scalars`` over ``arrays`` (equally long host arrays)
    in chunks of ``batch_size``, each output summed over the chunks as a Python float."""
    sums: dict = {}
    for s in range(0, len(arrays[0]), batch_size):
        out = eval_step(params, tuple(jnp.asarray(a[s : s + batch_size]) for a in arrays))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums


def restore_last(workdir: Path | None, state, kind: str, config: dict) -> tuple[Any, dict | None]:
    """``(state, extra)`` restored from ``workdir/last`` (``kind`` and ``config`` must match, else
    :class:`~cfjax.errors.CheckpointError`); ``(state, None)`` when there is none to resume."""
    if workdir is None or not (workdir / "last").is_dir():
        return state, None
    state, meta = ckpt.restore(workdir / "last", state, kind=kind, config=config)
    return state, meta["extra"]


def save_last(workdir: Path | None, state, kind: str, config: dict, extra: dict) -> None:
    """Write the training state to ``workdir/last`` (atomic; nothing without a ``workdir``)."""
    if workdir is not None:
        ckpt.save(workdir / "last", state, kind=kind, config=config, extra=extra)


# ------------------------------------------------------------------ fit: epochs over host arrays


def train_epoch(step: Callable, state: dict, arrays: tuple, cfg: TrainConfig, epoch: int, *, desc: str, progress: bool):
    """One shuffled pass over ``arrays``: the order and the per-step keys come from
    ``(cfg.seed, epoch)``, so a resumed epoch repeats exactly. Returns ``(state, losses)`` with
    the loss of every 20th step."""
    ekey = jax.random.fold_in(jax.random.key(cfg.seed), epoch)
    bar = progress_bar(  # a tqdm bar on a terminal, a status line every ~30 s in a log
        list(_batches(len(arrays[0]), cfg.batch_size, np.random.default_rng([cfg.seed, epoch]))),
        desc=desc, disable=not progress, leave=False,
    )
    losses = []
    for i, idx in enumerate(bar):
        state, loss, _ = step(state, tuple(jnp.asarray(a[idx]) for a in arrays), jax.random.fold_in(ekey, i))
        if i % 20 == 0:
            losses.append(float(loss))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return state, losses


def _checked_optimizer(cfg: TrainConfig, n: int) -> optax.GradientTransformation:
    """Check ``cfg`` against ``n`` training examples; the Adam transform of :func:`fit`."""
    if n < cfg.batch_size:
        raise bad_arg("train data", f"{n} examples", f"at least batch_size={cfg.batch_size} examples")
    tx = adam(cfg.learning_rate, cfg.schedule, cfg.epochs * (n // cfg.batch_size), name="TrainConfig.schedule")
    if not 0.0 <= cfg.augment_blur <= 1.0:
        raise bad_arg("TrainConfig.augment_blur", repr(cfg.augment_blur), "a fraction in [0, 1]")
    if isinstance(cfg.patience, bool) or not isinstance(cfg.patience, int) or cfg.patience < 0:
        raise bad_arg("TrainConfig.patience", repr(cfg.patience), "an int >= 0 (0: no early stopping)")
    return tx


def _improves(value: float, best: float | None, select_mode: str) -> bool:
    return best is None or (value > best if select_mode == "max" else value < best)


def fit(
    *,
    params,
    loss_fn: Callable,
    eval_fn: Callable,
    train_arrays: tuple,
    test_arrays: tuple,
    cfg: TrainConfig,
    select: str,
    select_mode: str = "max",
    workdir: str | Path | None = None,
    kind: str = "model",
    config: dict | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, list, dict]:
    """Generic optax loop: :func:`train_epoch` of :func:`train_step`, :func:`eval_sums` after
    each epoch, early stopping after ``cfg.patience`` epochs without improvement.

    Args:
      params: initial params.
      loss_fn: ``(params, batch, key) -> (loss, aux_dict)``; ``batch`` is a tuple of arrays.
      eval_fn: ``(params, batch) -> dict of per-batch sums`` (including ``"count"``).
      train_arrays / test_arrays: tuples of equally long host arrays.
      cfg: :class:`TrainConfig`.
      select: the eval metric choosing the ``best`` checkpoint; ``select_mode`` "max"/"min".
      workdir: where ``best``/``last`` go (``None``: no checkpoints). If ``last`` exists with
        the same config and fewer epochs done, training resumes from it (:func:`restore_last`).
      kind, config: recorded in (and checked against) the checkpoints.

    Returns:
      ``(best_params, history, best_metrics)``.
    """
    tx = _checked_optimizer(cfg, len(train_arrays[0]))
    config = {**(config or {}), "train": cfg.as_dict()}
    workdir = Path(workdir) if workdir is not None else None
    state, done = restore_last(workdir, {"params": params, "opt_state": tx.init(params)}, f"{kind}-train-state", config)
    done = done or {}
    history, best_metrics, best_params = done.get("history", []), done.get("best_metrics", {}), None
    step, jeval = jax.jit(functools.partial(train_step, loss_fn=loss_fn, tx=tx)), jax.jit(eval_fn)
    for epoch in range(done.get("epoch", 0), cfg.epochs):
        if _patience_spent(history, select, select_mode, cfg.patience):
            break
        t0 = time.perf_counter()
        state, losses = train_epoch(step, state, train_arrays, cfg, epoch, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", progress=progress)
        sums = eval_sums(jeval, state["params"], test_arrays, cfg.eval_batch_size)
        count = sums.pop("count")
        metrics = {**{k: v / count for k, v in sums.items()}, "train_loss": float(np.mean(losses)) if losses else float("nan")}
        metrics["epoch_s"] = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, **metrics})
        if progress:
            tqdm.write(f"{desc} epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        improved = _improves(metrics[select], best_metrics.get(select), select_mode)
        if improved:
            best_metrics, best_params = dict(metrics), jax.device_get(state["params"])
            if workdir is not None:
                ckpt.save(workdir / "best", state["params"], kind=kind, config=config, extra={"epoch": epoch + 1, "metrics": metrics})
        save_last(workdir, state, f"{kind}-train-state", config, {"epoch": epoch + 1, "history": history, "best_metrics": best_metrics})
    if best_params is None and workdir is not None and (workdir / "best").is_dir():
        # resumed after the best epoch: the best params are on disk only
        best_params, _ = ckpt.restore(workdir / "best", state["params"], kind=kind, config=config)
    return (best_params if best_params is not None else jax.device_get(state["params"])), history, best_metrics


def _patience_spent(history: list, select: str, select_mode: str, patience: int) -> bool:
    """Whether the last ``patience`` epochs of ``history`` all failed to improve on the best
    ``select`` value before them (always ``False`` with ``patience=0``)."""
    if patience <= 0 or len(history) <= patience:
        return False
    vals = [h[select] for h in history]
    pick = max if select_mode == "max" else min
    best_at = vals.index(pick(vals))
    return len(vals) - 1 - best_at >= patience


def random_shift(key: jax.Array, x: jnp.ndarray, max_shift: int) -> jnp.ndarray:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` (zero fill)."""
    n, h, w, _ = x.shape
    pad = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    off = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)

    def crop(img, o):
        return jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(pad, off)


def random_blur(key: jax.Array, x: jax.Array, fraction: float) -> jax.Array:
    """Blur a random ``fraction`` of the images in ``x`` [n, h, w, c] with sigma 0.5, 1 or 1.5."""
    from cfjax.eval.metrics import gaussian_blur

    kb, ks = jax.random.split(key)
    n = x.shape[0]
    blurred = jnp.stack([gaussian_blur(x, s) for s in (0.5, 1.0, 1.5)])  # [3, n, h, w, c]
    pick = blurred[jax.random.randint(ks, (n,), 0, 3), jnp.arange(n)]
    on = jax.random.uniform(kb, (n,)) < fraction
    return jnp.where(on[:, None, None, None], pick, x)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror a random half of the images in ``x`` [n, h, w, c] left-right."""
    on = jax.random.uniform(key, (x.shape[0],)) < 0.5
    return jnp.where(on[:, None, None, None], x[:, :, ::-1], x)


def _check_same_images(train, test) -> None:
    if tuple(test.images.shape[1:]) != tuple(train.images.shape[1:]):
        raise bad_arg("test.images", f"image shape {tuple(test.images.shape[1:])}", f"the training images' shape {tuple(train.images.shape[1:])}")


def _check_data(ds, name):
    check_images(ds.images, f"{name}.images")  # rank, dtype, finite, [0, 1] (a 0..255 float array is refused)
    if len(ds.labels) != len(ds.images):
        raise bad_arg(f"{name}.labels", f"{len(ds.labels)} labels", f"one per image ({len(ds.images)})")


def train_classifier(
    train,
    test,
    model_cfg: ClassifierConfig | None = None,
    train_cfg: TrainConfig | None = None,
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Trained:
    """Train a GAP-CNN with cross-entropy; checkpoints chosen by test accuracy.

    Args:
      train, test: :class:`cfjax.data.Dataset` (or anything with ``images`` [N,H,W,C] float in
        [0,1] and integer ``labels`` [N]).
    """
    model_cfg = model_cfg or ClassifierConfig(num_classes=max(int(np.max(train.labels)) + 1, 2))
    train_cfg = train_cfg or TrainConfig()
    _check_data(train, "train")
    _check_data(test, "test")
    _check_same_images(train, test)
    check_labels(train.labels, "train.labels", model_cfg.num_classes)
    check_labels(test.labels, "test.labels", model_cfg.num_classes)
    module = build_classifier(model_cfg)
    shape = train.images.shape[1:]
    params = module.init(jax.random.key(train_cfg.seed), jnp.zeros((1, *shape)))

    def loss_fn(p, batch, key):
        x, y = batch
        if train_cfg.augment_shift:
            x = random_shift(key, x, train_cfg.augment_shift)
        if train_cfg.augment_blur:
            x = random_blur(jax.random.fold_in(key, 1), x, train_cfg.augment_blur)
        if train_cfg.augment_flip:
            x = random_flip(jax.random.fold_in(key, 2), x)
        logits = module.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), {}

    def eval_fn(p, batch):
        x, y = batch
        logits = module.apply(p, x)
        return {
            "accuracy": jnp.sum(jnp.argmax(logits, -1) == y),
            "loss": jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y)),
            "count": y.shape[0],
        }

    config = _recorded(model_cfg.as_dict(), train)
    params, history, metrics = fit(params=params, loss_fn=loss_fn, eval_fn=eval_fn, cfg=train_cfg, select="accuracy", select_mode="max",
                                   train_arrays=(train.images, np.asarray(train.labels, np.int32)),
                                   test_arrays=(test.images, np.asarray(test.labels, np.int32)),
                                   workdir=workdir, kind="classifier", config=config, progress=progress, desc="classifier")
    return Trained(module, params, history, metrics, {**config, "train": train_cfg.as_dict()})


def vae_loss_terms(module: VAE, params, x, key, beta: float):
    """Per-batch mean of the Bernoulli reconstruction NLL (summed over pixels) and the KL."""
    x_hat, mu, logvar = module.apply(params, x, key)
    eps = 1e-6
    x_hat = jnp.clip(x_hat, eps, 1 - eps)
    rec = -jnp.sum(x * jnp.log(x_hat) + (1 - x) * jnp.log1p(-x_hat), axis=(1, 2, 3))
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)
    return rec, kl, x_hat


def train_vae(
    train,
    test,
    model_cfg: VAEConfig | None = None,
    train_cfg: TrainConfig | None = None,
    workdir: str | Path | None = None,
    progress: bool = True,
) -> Trained:
    """Train a conv VAE (Bernoulli reconstruction + ``beta`` KL); best = lowest test MSE of
    the reconstruction from the posterior mean (what the attacks start from)."""
    model_cfg = model_cfg or VAEConfig()
    train_cfg = train_cfg or TrainConfig()
    _check_data(train, "train")
    _check_data(test, "test")
    _check_same_images(train, test)
    shape = train.images.shape[1:]
    module = build_vae(model_cfg, shape)
    params = module.init(jax.random.key(train_cfg.seed), jnp.zeros((1, *shape)), jax.random.key(1))

    def loss_fn(p, batch, key):
        (x,) = batch
        rec, kl, _ = vae_loss_terms(module, p, x, key, model_cfg.beta)
        return jnp.mean(rec + model_cfg.beta * kl), {}

    def eval_fn(p, batch):
        (x,) = batch
        rec, kl, _ = vae_loss_terms(module, p, x, jax.random.key(0), model_cfg.beta)
        mu, _ = module.apply(p, x, method=VAE.encode)
        xm = module.apply(p, mu, method=VAE.decode)
        return {
            "mse": jnp.sum(jnp.mean((xm - x) ** 2, axis=(1, 2, 3))),
            "l1": jnp.sum(jnp.mean(jnp.abs(xm - x), axis=(1, 2, 3))),
            "rec_nll": jnp.sum(rec),
            "kl": jnp.sum(kl),
            "count": x.shape[0],
        }

    config = _recorded(dataclasses.asdict(model_cfg), train)
    params, history, metrics = fit(params=params, loss_fn=loss_fn, eval_fn=eval_fn, cfg=train_cfg, select="mse", select_mode="min",
                                   train_arrays=(train.images,), test_arrays=(test.images,),
                                   workdir=workdir, kind="vae", config=config, progress=progress, desc="vae")
    return Trained(module, params, history, metrics, {**config, "train": train_cfg.as_dict()})


def load_trained(workdir: str | Path, kind: str) -> Trained:
    """Rebuild a trained classifier or VAE from ``workdir/best`` (no expected config: any)."""
    workdir = Path(workdir)
    meta = ckpt.read_meta(workdir / "best")
    if meta.get("kind") != kind:
        raise bad_arg("kind", repr(meta.get("kind")), f"a {kind!r} checkpoint in {workdir}")
    cfgd = meta["config"]
    shape = tuple(cfgd["image_shape"])
    if kind == "classifier":
        m = cfgd["model"]
        module = build_classifier(ClassifierConfig(m["num_classes"], tuple(m["widths"]), m["convs_per_block"], m.get("arch", "cnn"),
                                                   tuple(m.get("blocks", (2, 2, 2, 2))), m.get("groups", 8)))
        like = module.init(jax.random.key(0), jnp.zeros((1, *shape)))
    elif kind == "vae":
        m = cfgd["model"]
        module = build_vae(VAEConfig(m["latent_dim"], tuple(m["widths"]), m["upsample"], m["beta"]), shape)
        like = module.init(jax.random.key(0), jnp.zeros((1, *shape)), jax.random.key(1))
    else:
        raise bad_arg("kind", repr(kind), "'classifier' or 'vae'")
    params, meta = ckpt.restore(workdir / "best", like, kind=kind, config=cfgd)
    return Trained(module, params, [], meta["extra"].get("metrics", {}), cfgd)


def _recorded(model: dict, train) -> dict:
    """What a classifier or VAE checkpoint records besides its ``"train"`` config (:func:`fit` adds it)."""
    return {"model": model, "image_shape": list(train.images.shape[1:]), "data": getattr(train, "name", "?")}


def _finished(workdir: Path, kind: str, expected: dict) -> bool:
    """Whether ``workdir`` holds a finished run of ``expected``: a matching ``best``
    (:func:`cfjax.checkpoint.matches`) and a ``last`` that ran all ``expected["train"]["epochs"]``."""
    if not ckpt.matches(workdir / "best", kind, expected):
        return False
    last = ckpt.read_meta(workdir / "last") if (workdir / "last").is_dir() else {}
    return last.get("extra", {}).get("epoch", 0) >= expected["train"]["epochs"]


def load_or_train_classifier(train, test, model_cfg=None, train_cfg=None, workdir=None, progress=True) -> Trained:
    """Reuse ``workdir``'s finished classifier if its config matches, else train (resuming)."""
    model_cfg = model_cfg or ClassifierConfig(num_classes=max(int(np.max(train.labels)) + 1, 2))
    train_cfg = train_cfg or TrainConfig()
    expected = {**_recorded(model_cfg.as_dict(), train), "train": train_cfg.as_dict()}
    if workdir is not None and _finished(Path(workdir), "classifier", expected):
        return load_trained(workdir, "classifier")
    return train_classifier(train, test, model_cfg, train_cfg, workdir, progress)


def load_or_train_vae(train, test, model_cfg=None, train_cfg=None, workdir=None, progress=True) -> Trained:
    """Reuse ``workdir``'s finished VAE if its config matches, else train (resuming)."""
    model_cfg = model_cfg or VAEConfig()
    train_cfg = train_cfg or TrainConfig()
    expected = {**_recorded(dataclasses.asdict(model_cfg), train), "train": train_cfg.as_dict()}
    if workdir is not None and _finished(Path(workdir), "vae", expected):
        return load_trained(workdir, "vae")
    return train_vae(train, test, model_cfg, train_cfg, workdir, progress)
