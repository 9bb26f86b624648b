"""How far a merged summary is from the unsharded run's: the largest relative difference of every
float field, of the std fields alone, and of their variances.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/scale/merge_precision.py --out runs/merge_precision

Runs the smoke global attack (mnist5k, 5 images per class towards every other class) unsharded,
as 3 shards and their merge, and writes experiments/results/scale/merge_precision.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax

from cfjax.cli import main as cli
from cfjax.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent.parent / "results" / "scale" / "merge_precision.json"
TIMING = {"wall_s", "cf_per_s", "phase_wall_s", "total_wall_s", "models_wall_s", "resumed", "decoder_load_or_train_s", "load_or_train_s"}


FLOOR = 1e-6


def _walk_rest(a, b, path, out):
    for k in a:
        if k not in TIMING and k in b and not (k == "std" and "mean" in a):
            _walk(a[k], b[k], f"{path}/{k}", out)


def _walk(a, b, path, out):
    if isinstance(a, dict):
        if "std" in a and "mean" in a and isinstance(a["std"], float) and isinstance(b["std"], float):
            sa, sb = a["std"], b["std"]
            scale = abs(a["mean"]) + max(sa, sb)
            if scale < FLOOR:  # values at float32's resolution of zero (a descriptor of an unchanged image)
                out["below_floor"].append(scale)
                return _walk_rest(a, b, path, out)
            out["var_rel_to_scale_std"].append(abs(sa * sa - sb * sb) / (scale * max(sa, sb)) if max(sa, sb) > 0 else 0.0)
            out["std_rel"].append(abs(sa - sb) / max(abs(sa), abs(sb)) if max(abs(sa), abs(sb)) > 0 else 0.0)
        _walk_rest(a, b, path, out)
    elif isinstance(a, list) and isinstance(b, list):
        for u, v in zip(a, b):
            _walk(u, v, path, out)
    elif isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
        if not path.endswith("/std"):
            out["float_rel"].append(abs(a - b) / max(abs(a), abs(b), 1e-30) if max(abs(a), abs(b)) > 1e-6 else abs(a - b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/merge_precision")
    p.add_argument("--compare-only", action="store_true", help="compare the runs already in --out")
    a = p.parse_args(argv)
    root = Path(a.out)
    base = ["global", "attack", "--data", "mnist5k", "--smoke", "--limit", "5", "--pixel-limit", "2", "--batch-size", "8",
            "--models-dir", str(root / "models"), "--overwrite"]
    if not a.compare_only:
        assert cli([*base, "--out", str(root / "full")]) == 0
        shards = [root / f"shard{i}" for i in range(3)]
        for i, d in enumerate(shards):
            assert cli([*base, "--out", str(d), "--shard", f"{i}/3"]) == 0
        assert cli(["merge", *map(str, shards), "--out", str(root / "merged"), "--overwrite"]) == 0
    full = json.loads((root / "full" / "summary.json").read_text())
    merged = json.loads((root / "merged" / "summary.json").read_text())
    out = {"float_rel": [], "std_rel": [], "var_rel_to_scale_std": [], "below_floor": []}
    _walk(full, merged, "", out)
    res = {k: {"max": max(v) if v else None, "n": len(v)} for k, v in out.items()}
    res["floor"] = FLOOR
    res["devices"] = jax.device_count()
    res["command"] = "python experiments/scale/merge_precision.py"
    atomic_write_json(RESULTS, res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
