"""Shards of one ``cfjax global`` run as Ray tasks, then ``cfjax merge`` (a local two-worker demo).

Each Ray task runs ``cfjax global <method> ... --shard I/N --out OUT/shard_I`` (the CLI's own
``main``: a shard is an ordinary, idempotent, resumable job, so Ray's task retries are safe: a
retried shard resumes from its checkpoint under ``OUT/shard_I/state``). The driver then runs
``cfjax merge OUT/shard_* --out OUT/merged``, which checks that the folders are ONE run's shards
(same fingerprint, every index once) and writes the unsharded run's ``summary.json`` and report.

Models: by default each shard trains (or reuses) its own cache under ``OUT/shard_I/models``
(deterministic on one machine; the run fingerprint includes the model digests, so shards with
different models would be refused at the merge). On a cluster, pass ``--models-dir`` on shared
storage, filled once beforehand (e.g. by running shard 0 alone first).

``ray`` is not a cfjax dependency: ``pip install ray``. Example (2 local workers, smoke models)::

    .venv/bin/python experiments/ray_shards.py --out runs/ray -- global attack --data mnist5k --smoke --limit 4 --no-pixel

On a Ray cluster: ``--address auto`` (or ``RAY_ADDRESS``), ``--shards`` as many as you like, and
``--num-cpus-per-shard`` to size each task.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _shard_task(argv: list[str], env: dict) -> int:
    os.environ.update(env)
    from cfjax.cli import main

    return main(argv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder: OUT/shard_I for each shard, OUT/merged for the merge")
    ap.add_argument("--shards", type=int, default=2, help="number of shards (Ray tasks)")
    ap.add_argument("--workers", type=int, default=2, help="local Ray: CPUs (concurrent tasks) when starting Ray here")
    ap.add_argument("--num-cpus-per-shard", type=float, default=1.0)
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    ap.add_argument("--retries", type=int, default=2, help="Ray task retries of a failed/killed shard (it resumes)")
    ap.add_argument("cfjax_args", nargs=argparse.REMAINDER, help="-- global attack|mirror [options] (without --out/--shard)")
    a = ap.parse_args(argv)
    run_args = [x for x in a.cfjax_args if x != "--"]
    if len(run_args) < 2 or run_args[0] != "global" or run_args[1] not in ("attack", "mirror"):
        ap.error("after --, give the run: global attack|mirror [options]")
    if any(x == "--out" or x.startswith("--out=") or x == "--shard" or x.startswith("--shard=") for x in run_args):
        ap.error("--out and --shard are set per shard by this script")
    try:
        import ray
    except ImportError:
        print("ray is not installed (pip install ray); it is not a cfjax dependency", file=sys.stderr)
        return 3

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_", "CFJAX_", "TFDS_"))}
    env.setdefault("JAX_PLATFORMS", "cpu")
    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=True)
    task = ray.remote(num_cpus=a.num_cpus_per_shard, max_retries=a.retries)(_shard_task)
    t0 = time.perf_counter()
    dirs = [out / f"shard_{i}" for i in range(a.shards)]
    refs = [task.remote([*run_args, "--out", str(d), "--shard", f"{i}/{a.shards}"], env) for i, d in enumerate(dirs)]
    codes = ray.get(refs)
    shards_s = time.perf_counter() - t0
    ray.shutdown()
    if any(codes):
        print(f"shards failed with exit codes {codes}", file=sys.stderr)
        return 1
    from cfjax.cli import main as cfjax_main

    t1 = time.perf_counter()
    rc = cfjax_main(["merge", *map(str, dirs), "--out", str(out / "merged")])
    if rc:
        return rc
    s = json.loads((out / "merged" / "summary.json").read_text())
    print(json.dumps({"shards": a.shards, "shards_wall_s": round(shards_s, 1), "merge_wall_s": round(time.perf_counter() - t1, 1),
                      "n_counterfactuals": s["n_counterfactuals"], "validity": s["validity"], "summary": str(out / "merged" / "summary.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
