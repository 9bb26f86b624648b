"""Reference models: the explained classifier and the oracle that cfjax's reported numbers use.

Each dataset has two small classifiers, shipped in the package as one msgpack file each
(``cfjax/reference_models/<dataset>/<role>.msgpack``) and listed, with their sha256 digests,
configs and test metrics, in ``cfjax/reference_models/manifest.json``:

* ``classifier``: the explained GAP-CNN (the zoo's widths, two convs per block on mnist5k);
* ``oracle``: an independent judge of a different architecture and seed, for oracle validity.

Both are trained to convergence with early stopping on a validation split carved from train
(:func:`cfjax.data.validation_split`); the test split is read once, for the recorded metrics.
:func:`load_reference` refuses a file whose digest is not the manifest's.

Rebuild (bit-identical on the same machine; on another CPU the digest differs, since XLA:CPU
picks kernels by machine, and the rebuilt model must still meet its floor)::

    python experiments/reference_models.py --data mnist5k fashion_mnist

Example::

    from cfjax.training import reference
    clf = reference.load_reference("mnist5k", "classifier")   # a cfjax.training.loop.Trained
    print(clf.metrics["test_accuracy"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from cfjax import data as cdata
from cfjax.errors import CheckpointError, DataNotFoundError, bad_arg
from cfjax.io import atomic_write_bytes, atomic_write_json
from cfjax.training import loop as ct

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "reference_models"
"""Where the shipped reference models and their manifest live."""

ROLES = ("classifier", "oracle")


class ReferenceSpec(NamedTuple):
    """How one reference model is built: its architecture, its training, and its floor (the test
    accuracy it must reach), with the validation share carved from train for early stopping."""

    model: ct.ClassifierConfig
    train: ct.TrainConfig
    floor: float
    val_fraction: float = 0.1


SPECS: dict[str, dict[str, ReferenceSpec]] = {
    "mnist5k": {
        "classifier": ReferenceSpec(ct.ClassifierConfig(10, (32, 64, 128, 128), convs_per_block=2),
                                    ct.TrainConfig(epochs=60, batch_size=64, augment_shift=2, seed=0, patience=12, eval_batch_size=500),
                                    floor=0.975),
        "oracle": ReferenceSpec(ct.ClassifierConfig(10, (32, 64, 128), convs_per_block=2),
                                ct.TrainConfig(epochs=40, batch_size=64, augment_shift=2, seed=1, patience=8, eval_batch_size=500),
                                floor=0.96),
    },
    "fashion_mnist": {
        "classifier": ReferenceSpec(ct.ClassifierConfig(10, (32, 64, 128, 128), convs_per_block=1),
                                    ct.TrainConfig(epochs=40, batch_size=128, augment_shift=1, augment_flip=True, seed=0, patience=6),
                                    floor=0.92, val_fraction=5000 / 60000),
        "oracle": ReferenceSpec(ct.ClassifierConfig(10, (32, 64, 128), convs_per_block=1),
                                ct.TrainConfig(epochs=40, batch_size=128, augment_shift=1, augment_flip=True, seed=1, patience=6),
                                floor=0.90, val_fraction=5000 / 60000),
    },
}


def _check(dataset: str, role: str) -> ReferenceSpec:
    if dataset not in SPECS:
        raise bad_arg("dataset", repr(dataset), f"one of {sorted(SPECS)} (the datasets with reference models)")
    if role not in ROLES:
        raise bad_arg("role", repr(role), f"one of {list(ROLES)}")
    return SPECS[dataset][role]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def per_class_recall(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
    """Recall of each class (NaN for a class with no example)."""
    return [float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else float("nan") for c in range(num_classes)]


def predict(trained: ct.Trained, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Arg-max class of ``trained`` on host ``images`` [N, H, W, C], in batches. int32 [N]."""
    f = jax.jit(lambda x: jnp.argmax(trained.module.apply(trained.params, x), -1))
    return np.concatenate([np.asarray(f(jnp.asarray(images[s : s + batch]))) for s in range(0, len(images), batch)] or [np.zeros(0, np.int32)])


def train_reference(dataset: str, role: str, out_root: str | Path, workdir: str | Path | None = None, *, progress: bool = True) -> dict:
    """Train one reference model and write ``out_root/<dataset>/<role>.msgpack`` atomically.

    Early stopping and the kept checkpoint use the validation split; the test split is read once
    afterwards for the recorded accuracy and per-class recall. ``workdir`` holds resumable
    per-epoch checkpoints (a crashed run resumes there).

    Returns:
      The manifest entry: ``file``, ``sha256``, ``config``, ``floor`` and ``metrics`` (validation
      and test accuracy, per-class test recall, epochs run, best epoch).
    """
    spec = _check(dataset, role)
    full = cdata.load(dataset, "train")
    test = cdata.load(dataset, "test")
    train, val = cdata.validation_split(full, spec.val_fraction, seed=0)
    trained = ct.train_classifier(train, val, spec.model, spec.train, workdir, progress)
    pred = predict(trained, test.images)
    labels = np.asarray(test.labels)
    best_epoch = max(trained.history, key=lambda h: h["accuracy"])["epoch"] if trained.history else None
    metrics = {
        "val_accuracy": float(trained.metrics["accuracy"]),
        "test_accuracy": float(np.mean(pred == labels)),
        "test_recall": per_class_recall(pred, labels, full.num_classes),
        "n_train": len(train), "n_val": len(val), "n_test": len(test),
        "epochs_run": len(trained.history) or None, "best_epoch": best_epoch,
    }
    rel = f"{dataset}/{role}.msgpack"
    path = atomic_write_bytes(Path(out_root) / rel, flax.serialization.to_bytes(jax.device_get(trained.params)))
    config = {"model": dataclasses.asdict(spec.model), "train": spec.train.as_dict(), "val_fraction": spec.val_fraction,
              "image_shape": list(full.image_shape)}
    return {"file": rel, "sha256": sha256_file(path), "config": config, "floor": spec.floor, "metrics": metrics}


def read_manifest(root: str | Path = PACKAGE_DIR) -> dict:
    """``root/manifest.json``: ``{dataset: {role: entry}}`` (see :func:`train_reference`)."""
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise DataNotFoundError(f"reference models: expected {str(p)!r}; rebuild with "
                                "`python experiments/reference_models.py --data mnist5k fashion_mnist`")
    return json.loads(p.read_text())


def write_manifest(entries: dict, root: str | Path = PACKAGE_DIR) -> Path:
    """Merge ``{dataset: {role: entry}}`` into ``root/manifest.json`` (atomically)."""
    p = Path(root) / "manifest.json"
    old = json.loads(p.read_text()) if p.is_file() else {}
    for ds, roles in entries.items():
        old.setdefault(ds, {}).update(roles)
    return atomic_write_json(p, old)


def load_reference(dataset: str, role: str = "classifier", root: str | Path = PACKAGE_DIR) -> ct.Trained:
    """Load a shipped reference model, checking its sha256 against the manifest.

    Args:
      dataset: ``"mnist5k"`` or ``"fashion_mnist"``.
      role: ``"classifier"`` (the explained model) or ``"oracle"``.
      root: the folder holding ``manifest.json`` and the msgpack files.

    Returns:
      A :class:`cfjax.training.loop.Trained` whose ``metrics`` are the manifest's (``accuracy``:
      the test accuracy) and, like its ``config``, carry ``sha256``.

    Raises:
      CheckpointError: the file's digest is not the manifest's (a corrupted or rebuilt file that
        was not re-listed).
    """
    spec = _check(dataset, role)
    entry = read_manifest(root).get(dataset, {}).get(role)
    if entry is None:
        raise DataNotFoundError(f"reference models: {dataset}/{role} is not in {str(Path(root) / 'manifest.json')!r}; rebuild with "
                                f"`python experiments/reference_models.py --data {dataset}`")
    path = Path(root) / entry["file"]
    got = sha256_file(path) if path.is_file() else "missing"
    if got != entry["sha256"]:
        raise CheckpointError(f"reference model {str(path)!r}: expected sha256 {entry['sha256']}, got {got}")
    module = ct.build_classifier(spec.model)
    like = module.init(jax.random.key(0), jnp.zeros((1, *entry["config"]["image_shape"])))
    params = flax.serialization.from_bytes(like, path.read_bytes())
    config = {**entry["config"], "data": dataset, "role": role, "sha256": entry["sha256"]}
    metrics = {**entry["metrics"], "accuracy": entry["metrics"]["test_accuracy"], "sha256": entry["sha256"]}
    return ct.Trained(module, params, [], metrics, config)
