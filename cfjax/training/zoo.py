"""Default models per dataset, trained once and cached as checkpoints.

``get_models("mnist5k", cache_dir)`` returns the default classifier and VAE for a dataset,
training them on first use and reusing the checkpoints afterwards (a checkpoint written for
another config is refused, never silently reused). The defaults are the configurations
whose accuracies/reconstruction errors are reported in BUILD_NOTES.md.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import NamedTuple

from cfjax import data as cdata
from cfjax.training import loop as ct


@dataclasses.dataclass(frozen=True)
class ZooConfig:
    """Model + training configs of one dataset's default models."""

    classifier: ct.ClassifierConfig
    classifier_train: ct.TrainConfig
    vae: ct.VAEConfig
    vae_train: ct.TrainConfig


DEFAULTS: dict[str, ZooConfig] = {
    "mnist5k": ZooConfig(
        ct.ClassifierConfig(num_classes=10),
        ct.TrainConfig(epochs=20, augment_shift=2),
        ct.VAEConfig(latent_dim=16),
        ct.TrainConfig(epochs=30),
    ),
    "mnist": ZooConfig(
        ct.ClassifierConfig(num_classes=10),
        ct.TrainConfig(epochs=6, augment_shift=2),
        ct.VAEConfig(latent_dim=16),
        ct.TrainConfig(epochs=10),
    ),
    "fashion_mnist": ZooConfig(
        ct.ClassifierConfig(num_classes=10),
        ct.TrainConfig(epochs=10, augment_shift=1),
        ct.VAEConfig(latent_dim=16),
        ct.TrainConfig(epochs=10),
    ),
}

SMOKE = ZooConfig(
    ct.ClassifierConfig(num_classes=10),
    ct.TrainConfig(epochs=1, batch_size=64),
    ct.VAEConfig(latent_dim=16),
    ct.TrainConfig(epochs=1, batch_size=64),
)


def _highres(size: int, num_classes: int, epochs: int, batch: int) -> ZooConfig:
    """ResNet-18 (GroupNorm, widths 64..512) + a conv VAE whose encoder halves the image down to
    a 4x4 (7x7 at 224 px) grid; batch sizes fit 24 GiB of host RAM (BUILD_NOTES, issue 27)."""
    stages = {64: (32, 64, 128, 256), 128: (32, 64, 128, 256, 256), 224: (32, 64, 128, 256, 256)}
    vae_widths = stages.get(size) or stages[min(stages, key=lambda s: abs(s - size))]
    return ZooConfig(
        ct.ClassifierConfig(num_classes=num_classes, widths=(64, 128, 256, 512), arch="resnet", blocks=(2, 2, 2, 2), groups=8),
        ct.TrainConfig(epochs=epochs, batch_size=batch, augment_shift=max(size // 32, 1), augment_flip=True, eval_batch_size=batch),
        ct.VAEConfig(latent_dim=128, widths=vae_widths),
        ct.TrainConfig(epochs=2 * epochs, batch_size=batch, eval_batch_size=batch),
    )


def defaults_for(dataset: str) -> ZooConfig:
    """The default models' configs of dataset spec ``dataset`` (see :func:`cfjax.data.parse_spec`).

    * MNISTs: their own entries; datasets without one fall back to Fashion-MNIST's (the one
      place this fallback lives).
    * ``bloodmnist``: at 28 px the 28-px GAP-CNN (8 classes); at 64/128/224 px
      :func:`_highres`: ResNet-18 (GroupNorm) 15 epochs, batch 128/64/32, VAE latent 128.
    * ``celeb_a`` / ``celeb_a_hq`` (default 64 px): :func:`_highres` with 2 classes (a ``:task``)
      at 10 epochs.
    """
    spec = cdata.parse_spec(dataset)
    if spec.name == "bloodmnist":
        size = spec.size or 28
        if size == 28:
            return ZooConfig(ct.ClassifierConfig(num_classes=8), ct.TrainConfig(epochs=20, augment_shift=1, augment_flip=True),
                             ct.VAEConfig(latent_dim=32), ct.TrainConfig(epochs=20))
        return _highres(size, 8, 15, 128 if size <= 64 else 64 if size <= 128 else 32)
    if spec.name in ("celeb_a", "celeb_a_hq"):
        size = spec.size or 64
        return _highres(size, 2, 10, 128 if size <= 64 else 64 if size <= 128 else 32)
    return DEFAULTS.get(spec.name, DEFAULTS["fashion_mnist"])


def smoke_for(dataset: str) -> ZooConfig:
    """:data:`SMOKE` at 28 px; above 28 px the same seconds-long budget on tiny full-resolution
    models: a ResNet of widths (8, 8, 16, 16) (GroupNorm, 4 groups) and a VAE whose encoder
    halves the image down to a grid of 8x8 or less (7x7 at 224 px)."""
    spec = cdata.parse_spec(dataset)
    size = spec.size or (64 if spec.name in ("celeb_a", "celeb_a_hq") else 28)
    if size <= 28:
        return SMOKE
    n_stages = max(3, min(6, math.ceil(math.log2(size / 8))))
    return ZooConfig(
        ct.ClassifierConfig(num_classes=10, widths=(8, 8, 16, 16), arch="resnet", groups=4),
        ct.TrainConfig(epochs=1, batch_size=32),
        ct.VAEConfig(latent_dim=16, widths=(8, 16, 16, 32, 32, 32)[:n_stages]),
        ct.TrainConfig(epochs=1, batch_size=32),
    )


def resolve(dataset: str, config: ZooConfig | None) -> ZooConfig:
    """The zoo config a job uses: ``None`` -> :func:`defaults_for`; :data:`SMOKE` ->
    :func:`smoke_for` (tiny models at the dataset's own resolution); anything else as given."""
    if config is None:
        return defaults_for(dataset)
    if config is SMOKE:
        return smoke_for(dataset)
    return config


class Models(NamedTuple):
    """A dataset's train/test splits and its trained classifier and VAE."""

    train: cdata.Dataset
    test: cdata.Dataset
    classifier: ct.Trained
    vae: ct.Trained


def get_models(
    dataset: str,
    cache_dir: str | Path,
    *,
    config: ZooConfig | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> Models:
    """Load the dataset and train-or-reuse its default classifier and VAE under ``cache_dir``.

    Args:
      dataset: a dataset spec (a name from :data:`cfjax.data.DATASETS`, optionally
        ``@SIZE`` / ``:TASK``).
      cache_dir: checkpoints go to ``cache_dir/<dataset spec>/{classifier,vae}``.
      config: override the defaults (e.g. :data:`SMOKE`, resolved by :func:`resolve`).
      limit: cap the number of train/test examples (smoke runs).
    """
    config = resolve(dataset, config)
    train = cdata.load(dataset, "train", data_dir=data_dir, limit=limit)
    test = cdata.load(dataset, "test", data_dir=data_dir, limit=limit)
    root = Path(cache_dir) / dataset
    clf_cfg = dataclasses.replace(config.classifier, num_classes=train.num_classes)
    clf = ct.load_or_train_classifier(train, test, clf_cfg, config.classifier_train, root / "classifier", progress)
    vae = ct.load_or_train_vae(train, test, config.vae, config.vae_train, root / "vae", progress)
    return Models(train, test, clf, vae)
