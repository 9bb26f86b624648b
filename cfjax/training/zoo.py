"""Default models per dataset, trained once and cached as checkpoints.

``get_models("mnist5k", cache_dir)`` returns the default classifier and VAE for a dataset,
training them on first use and reusing the checkpoints afterwards (a checkpoint written for
another config is refused, never silently reused). The defaults are the configurations
whose accuracies/reconstruction errors are reported in BUILD_NOTES.md.
"""

from __future__ import annotations

import dataclasses
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


def defaults_for(dataset: str) -> ZooConfig:
    """The default models' configs of ``dataset`` (datasets without their own entry, e.g.
    ``celeb_a``, get Fashion-MNIST's: the one place this fallback lives)."""
    return DEFAULTS.get(dataset, DEFAULTS["fashion_mnist"])


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
      dataset: a name from :data:`cfjax.data.DATASETS`.
      cache_dir: checkpoints go to ``cache_dir/<dataset>/{classifier,vae}``.
      config: override the defaults (e.g. :data:`SMOKE`).
      limit: cap the number of train/test examples (smoke runs).
    """
    if config is None:
        config = defaults_for(dataset)
    train = cdata.load(dataset, "train", data_dir=data_dir, limit=limit)
    test = cdata.load(dataset, "test", data_dir=data_dir, limit=limit)
    root = Path(cache_dir) / dataset
    clf_cfg = dataclasses.replace(config.classifier, num_classes=train.num_classes)
    clf = ct.load_or_train_classifier(train, test, clf_cfg, config.classifier_train, root / "classifier", progress)
    vae = ct.load_or_train_vae(train, test, config.vae, config.vae_train, root / "vae", progress)
    return Models(train, test, clf, vae)
