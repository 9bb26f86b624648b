"""Build the reference models (explained classifier + oracle per dataset) and record them.

    python experiments/reference_models.py --data mnist5k fashion_mnist [--work runs/reference] [--force]

Trains each model with early stopping on a validation split carved from train
(:mod:`cfjax.training.reference`), writes it into ``cfjax/reference_models/`` with its sha256 in
``manifest.json``, and writes ``experiments/results/reference_models.json``:

* ``{dataset: {"classifier": {"accuracy", "sha256", ...}, "oracle": {...}, "ceilings": {...}}}``;
* ``ceilings`` per class of the test split: the classifier's recall, its denoised-validity
  ceiling (real images kept in their class after the sigma-1 blur that D.Val applies) and the
  oracle's agreement with the label (its recall), each with a Wilson 95% interval.

A model whose manifest entry already has the same config and an intact file is not retrained
(``--force`` retrains). Per-epoch checkpoints under ``--work`` make a crashed run resume.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from cfjax import data as cdata
from cfjax.eval.intervals import wilson
from cfjax.eval.metrics import gaussian_blur
from cfjax.io import atomic_write_json
from cfjax.training import reference as ref

RESULTS = Path(__file__).resolve().parent / "results" / "reference_models.json"


def _fresh(dataset: str, role: str) -> bool:
    try:
        entry = ref.read_manifest().get(dataset, {}).get(role)
    except FileNotFoundError:
        return False
    if entry is None:
        return False
    spec = ref.SPECS[dataset][role]
    p = ref.PACKAGE_DIR / entry["file"]
    same = entry["config"]["train"] == json.loads(json.dumps(spec.train.as_dict())) and entry["config"]["model"]["widths"] == list(spec.model.widths)
    return same and p.is_file() and ref.sha256_file(p) == entry["sha256"]


def _rate(hits: np.ndarray) -> dict:
    k, n = int(np.sum(hits)), int(hits.size)
    return {"value": k / n if n else None, "ci": list(wilson(k, n)), "n": n}


def ceilings(dataset: str) -> dict:
    """Per-class real-image ceilings of the test split for the dataset's reference models."""
    test = cdata.load(dataset, "test")
    clf, orc = ref.load_reference(dataset, "classifier"), ref.load_reference(dataset, "oracle")
    blurred = np.concatenate([np.asarray(gaussian_blur(jnp.asarray(test.images[s : s + 500]), 1.0)) for s in range(0, len(test), 500)])
    pc, pb, po = ref.predict(clf, test.images), ref.predict(clf, blurred), ref.predict(orc, test.images)
    y = np.asarray(test.labels)
    out = {}
    for c in range(test.num_classes):
        m = y == c
        out[str(c)] = {"classifier_recall": _rate(pc[m] == c), "denoised_validity": _rate(pb[m] == c), "oracle_agreement": _rate(po[m] == c)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=list(ref.SPECS), choices=sorted(ref.SPECS))
    p.add_argument("--roles", nargs="+", default=list(ref.ROLES), choices=list(ref.ROLES))
    p.add_argument("--work", default="runs/reference", help="resumable per-epoch checkpoints")
    p.add_argument("--force", action="store_true", help="retrain even when the shipped model matches its spec")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    summary = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for ds in a.data:
        for role in a.roles:
            if a.force or not _fresh(ds, role):
                entry = ref.train_reference(ds, role, ref.PACKAGE_DIR, Path(a.work) / ds / role, progress=not a.no_progress)
                ref.write_manifest({ds: {role: entry}})
            entry = ref.read_manifest()[ds][role]
            acc = entry["metrics"]["test_accuracy"]
            summary.setdefault(ds, {})[role] = {"accuracy": acc, "sha256": entry["sha256"], "floor": entry["floor"],
                                                "meets_floor": acc >= entry["floor"], **entry["metrics"]}
            print(f"{ds} {role}: test accuracy {acc:.4f} (floor {entry['floor']}), val {entry['metrics']['val_accuracy']:.4f}, "
                  f"epochs {entry['metrics']['epochs_run']}", flush=True)
            atomic_write_json(RESULTS, summary)
        if all(r in summary.get(ds, {}) for r in ref.ROLES):
            summary[ds]["ceilings"] = ceilings(ds)
            atomic_write_json(RESULTS, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
