"""Mirror-CFE re-measured on the shipped reference models (issue 34): one preset, one split.

    python experiments/mirror_reference.py --data mnist5k --preset robust --split test --steps 3000 \
        --out runs/remeasure/mnist5k_robust_test --models-dir runs/remeasure/models [--seed 0]

The explained classifier and the oracle are the dataset's reference models
(:mod:`cfjax.training.reference`, loaded by sha256); the decoder trains on the training split
minus the reference validation split, on the dataset's 6 paper pairs; ``--split validation``
explains the validation images (where presets and thresholds are chosen), ``--split test`` the
test images (the reported table). Writes the run folder (``summary.json`` with ``split``,
``reference_models``, ``<metric>_ci`` intervals, the ceilings and ``oracle_validity_at``) and copies
the summary to ``experiments/results/mirror_<dataset short>_<preset>_reference_<split>_summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

from cfjax.jobs.mirror import MirrorJobConfig, run_mirror_global
from cfjax.jobs.mirror.config import PRESETS
from cfjax.training.reference import SPECS

SHORT = {"mnist5k": "mnist", "fashion_mnist": "fashion"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(SPECS), default="mnist5k")
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--split", choices=("test", "validation"), default="validation")
    p.add_argument("--steps", type=int, default=3000, help="decoder steps (the paper's schedule is 10,000)")
    p.add_argument("--seed", type=int, default=0, help="decoder seed")
    p.add_argument("--out", required=True)
    p.add_argument("--models-dir", required=True)
    a = p.parse_args(argv)
    if a.steps < 1:
        p.error("--steps: expected a positive number of decoder steps")
    cfg = MirrorJobConfig.from_preset(a.preset)
    cfg = dataclasses.replace(cfg, reference_models=True, split=a.split,
                              decoder=dataclasses.replace(cfg.decoder, steps=a.steps, seed=a.seed))
    run_mirror_global(a.data, a.out, config=cfg, models_dir=a.models_dir)
    dest = Path(__file__).resolve().parent / "results" / f"mirror_{SHORT[a.data]}_{a.preset}_reference_{a.split}_summary.json"
    if a.seed:
        dest = dest.with_name(dest.name.replace("_summary", f"_seed{a.seed}_summary"))
    shutil.copyfile(Path(a.out) / "summary.json", dest)
    print(f"summary: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
