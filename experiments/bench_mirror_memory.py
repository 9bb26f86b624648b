"""Peak host memory of one Mirror-CFE step (feature maps, reflection, 21 decoded transitions,
metrics) at batch 64 / 256 / 1024, with and without ``max_decode`` (the bounded, sliced decode).

    python experiments/bench_mirror_memory.py [--batches 64 256 1024] [--max-decode 2048] \
        [--out experiments/results/bench_mirror_memory.json]

Each (batch, max_decode) runs in a fresh process (random-weight MNIST-size models, the default
decoder architecture, ``solver="exact"``); peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``
after one compiled step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
sys.path.insert(0, "experiments")
from bench import random_mirror_parts
from cfjax.jobs.mirror import mirror_rows
from cfjax.models import Classifier
batch, max_decode = int(sys.argv[1]), (None if sys.argv[2] == "none" else int(sys.argv[2]))
clf_m = Classifier(num_classes=10)
x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
cp = clf_m.init(jax.random.key(1), x[:1])
clf, dec, bb, ks = random_mirror_parts(clf_m, cp, x[:1], seed=2)
src = jnp.arange(batch, dtype=jnp.int32) % 10
tgt = (src + 1) % 10
f = jax.jit(lambda x, s, t: mirror_rows(clf, dec, bb, x, s, t, jnp.ones(x.shape[0], bool), ks=ks, solver="exact", max_decode=max_decode)["l1"].sum())
t0 = time.perf_counter()
jax.block_until_ready(f(x, src, tgt))
print(json.dumps({"batch": batch, "max_decode": max_decode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "first_step_s": time.perf_counter() - t0}))
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--max-decode", type=int, default=2048)
    p.add_argument("--skip-unbounded-above", type=int, default=None, help="skip the unbounded run for batches above this")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_mirror_memory.json"))
    a = p.parse_args(argv)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    rows = []
    for b in a.batches:
        for md in ("none", str(a.max_decode)):
            if md == "none" and a.skip_unbounded_above is not None and b > a.skip_unbounded_above:
                continue
            r = subprocess.run([sys.executable, "-c", CHILD, str(b), md], capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode != 0:
                rows.append({"batch": b, "max_decode": None if md == "none" else int(md), "error": r.stderr[-500:]})
            else:
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    out = {"rows": rows, "loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    from cfjax.io import atomic_write_json

    atomic_write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
