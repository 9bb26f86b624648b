"""One cache of the smoke models for the whole test session (every xdist worker), so the CLI
tests that need trained smoke models (shards, merge, multi-process, kill) train each model once.

``shared_models_dir(tmp_path_factory, "attack" | "mirror")`` trains (under a file lock, once per
session) what a ``--smoke`` run of that method needs, and returns the folder to pass as
``--models-dir``. Tests only read it afterwards: the same smoke configs find their checkpoints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

MIRROR_PAIRS = "3,8;8,3;4,9;9,4"
"""The pairs the Mirror tests that share these models explain (the paper's pairs: one decoder serves them all)."""
_MIRROR_RUN = ["global", "mirror", "--data", "mnist5k", "--smoke", "--pairs", MIRROR_PAIRS, "--limit", "8", "--no-figures"]


def _pretrain(kind: str, models: Path, scratch: Path) -> None:
    if kind == "attack":  # the classifier and the VAE only: no job, nothing compiled for it
        from cfjax.jobs.attack import AttackJobConfig
        from cfjax.training import zoo

        cfg = AttackJobConfig.smoke()
        zoo.get_models("mnist5k", models, config=cfg.models, limit=cfg.data_limit, progress=False)
    else:  # classifier, domain backbone, oracle and decoder, as a Mirror run loads them
        from cfjax.cli import main

        assert main([*_MIRROR_RUN, "--models-dir", str(models), "--out", str(scratch / "run")]) == 0


def shared_models_dir(tmp_path_factory, kind: str) -> Path:
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the session's folder, shared by the workers
    models = root / "cfjax-smoke-models"
    models.mkdir(exist_ok=True)
    with open(root / "cfjax-smoke-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = models / f".{kind}.done"
        if not done.exists():
            _pretrain(kind, models, tmp_path_factory.mktemp(f"pretrain-{kind}"))
            done.touch()
    return models
