"""Throughput of the Counterfactual Attacks job's computation on this machine (CPU), real models.

    python experiments/bench_attack_cpu.py --out experiments/results/bench_attack_cpu.json \
        [--models runs/demo/models] [--batch-sizes 64 256 1024] [--pairs 2048] [--steps 200]

Takes the default mnist5k models (trained or reused under ``--models``, the ``cfjax demo``
layout), builds ``--pairs`` (image, other class) pairs from the test split, and times the
latent attack (:func:`cfjax.attack.attack_batch`, early stop at p >= 0.5, Adam lr 0.1) and the
pixel baseline (Adam lr 0.01) in jitted batches of each size: compile time, then the
steady-state wall time of all pairs (second pass), counterfactuals per second, mean steps.
Variants: the default compacted schedule with the CPU gradient rewrite, the plain vmap
schedule, and the compacted schedule without the rewrite (``--variants``). Records the load
average, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cfjax.training import zoo  # noqa: E402
from cfjax.io import atomic_write_json  # noqa: E402
from cfjax.jobs.attack import make_pairs  # noqa: E402
from cfjax.models import bind_classifier, bind_vae  # noqa: E402

from cfjax.methods import attack as atk  # noqa: E402

VARIANTS = {
    "compact+rewrite": dict(schedule="compact", rewrite_grads=True),
    "vmap+rewrite": dict(schedule="vmap", rewrite_grads=True),
    "compact, no rewrite": dict(schedule="compact", rewrite_grads=False),
    "vmap, no rewrite": dict(schedule="vmap", rewrite_grads=False),
}


def run(fn, arrays, bs):
    n = len(arrays[0])
    outs = []
    for s in range(0, n, bs):
        outs.append(fn(*(a[s : s + bs] for a in arrays)))
    jax.block_until_ready(outs)
    return outs


def bench(kind, fns, x, z, tgt, bs, steps, variant):
    kw = dict(steps=steps, threshold=0.5, **VARIANTS[variant])
    if kind == "latent":
        f = jax.jit(lambda z, t: atk.attack_batch(fns[1].decode, fns[0].logits, z, t, learning_rate=0.1, **kw))
        arrays = (z, tgt)
    else:
        f = jax.jit(lambda x, t: atk.attack_pixels_batch(fns[0].logits, x, t, learning_rate=0.01, **kw))
        arrays = (x, tgt)
    t0 = time.perf_counter()
    f = f.lower(*(a[:bs] for a in arrays)).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = run(f, arrays, bs)
    wall = time.perf_counter() - t0
    steps_taken = np.concatenate([np.asarray(o.steps_taken) for o in outs])
    ok = np.concatenate([np.asarray(o.success) for o in outs])
    return {
        "method": kind, "variant": variant, "batch_size": bs, "steps_budget": steps, "n": int(len(ok)),
        "compile_s": round(compile_s, 2), "wall_s": round(wall, 2), "cf_per_s": round(len(ok) / wall, 2),
        "validity": float(ok.mean()), "mean_steps_all": float(steps_taken.mean()),
        "example_steps_per_s": round(float(steps_taken.sum()) / wall, 1), "loadavg_after": os.getloadavg(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="experiments/results/bench_attack_cpu.json")
    p.add_argument("--models", default="runs/demo/models")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--pairs", type=int, default=2048)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--methods", nargs="+", default=["latent", "pixel"])
    p.add_argument("--variants", nargs="+", default=["compact+rewrite"], choices=list(VARIANTS))
    a = p.parse_args(argv)
    m = zoo.get_models("mnist5k", a.models)
    clf = bind_classifier(m.classifier.module, m.classifier.params)
    vae = bind_vae(m.vae.module, m.vae.params)
    img, _, tgt = make_pairs(m.test.labels, 10)
    img, tgt = img[: a.pairs], tgt[: a.pairs]
    x = jnp.asarray(m.test.images[img])
    z = jax.jit(jax.vmap(vae.encode))(x)
    t = jnp.asarray(tgt)
    res = {"machine": platform.machine(), "cpus": os.cpu_count(), "backend": jax.default_backend(), "jax": jax.__version__,
           "loadavg_start": os.getloadavg(), "pairs": int(len(tgt)), "results": []}
    for method in a.methods:
        for variant in a.variants:
            for bs in a.batch_sizes:
                r = bench(method, (clf, vae), x, z, t, bs, a.steps, variant)
                print(r, flush=True)
                res["results"].append(r)
                atomic_write_json(a.out, res)
    return res


if __name__ == "__main__":
    main()
