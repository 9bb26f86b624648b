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

_RUNS = {
    "attack": [["global", "attack", "--data", "mnist5k", "--smoke", "--limit", "1", "--no-pixel"]],
    # the decoders of the pair sets the tests explain (a decoder may be trained for the explained pairs only)
    "mirror": [["global", "mirror", "--data", "mnist5k", "--smoke", "--pairs", pairs, "--limit", "8", "--no-figures"]
               for pairs in ("3,8", "3,8;8,3;4,9;1,7")],
}


def shared_models_dir(tmp_path_factory, kind: str) -> Path:
    from cfjax.cli import main

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # xdist: the session's folder, shared by the workers
    models = root / "cfjax-smoke-models"
    models.mkdir(exist_ok=True)
    with open(root / "cfjax-smoke-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = models / f".{kind}.done"
        if not done.exists():
            for i, argv in enumerate(_RUNS[kind]):
                out = tmp_path_factory.mktemp(f"pretrain-{kind}")
                assert main([*argv, "--models-dir", str(models), "--out", str(out / f"run{i}")]) == 0
            done.touch()
    return models
