"""Validation splits carved from a training split.

Every choice cfjax makes (a checkpoint, a preset, a threshold, an ablation winner) is made on
validation images drawn from the training split; the test split is read only for the reported
table. :func:`validation_split` is the one place that carving happens.
"""

from __future__ import annotations

import numpy as np

from cfjax.data.sources import Dataset, subset
from cfjax.errors import bad_arg


def validation_split(ds: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into ``(train, validation)``, stratified by label.

    Each class keeps ``round(fraction * n_c)`` of its images (at least one where it has two or
    more) for validation, chosen by a permutation seeded with ``seed``. Both parts keep ``ds``'s
    row order, so the result is a pure function of ``(ds, fraction, seed)``. The validation part
    is named ``"<split>-val"`` and the rest ``"<split>-minus-val"``.

    Args:
      ds: a labelled :class:`~cfjax.data.Dataset` (usually the ``"train"`` split).
      fraction: share of each class held out, in (0, 1).
      seed: seed of the per-class permutation.

    Returns:
      ``(train, validation)``, disjoint, together all of ``ds``.

    Example:
      >>> import cfjax.data as cd
      >>> tr, va = cd.validation_split(cd.load("mnist5k", "train"), 0.1)
      >>> len(tr), len(va)
      (3600, 400)
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise bad_arg("fraction", repr(fraction), "a share strictly between 0 and 1")
    labels = np.asarray(ds.labels)
    if labels.ndim != 1 or len(labels) < 2:
        raise bad_arg("ds.labels", f"shape {labels.shape}", "one label per image, at least 2 images")
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) >= 2 else 0
        held[rng.permutation(idx)[:k]] = True
    train = subset(ds, ~held)._replace(split=f"{ds.split}-minus-val")
    val = subset(ds, held)._replace(split=f"{ds.split}-val")
    return train, val
