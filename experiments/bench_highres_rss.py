"""Peak RSS of a streamed latent-attack pass at 128 px: flat in the dataset size? (issue 27 item 4)

For each N (default 128 and 1,024 images of 128x128x3 float32: 25 MB and 201 MB on disk) this
writes a raw array file, then ONE fresh process per N opens it as ``np.memmap(mode="r")`` and
streams it through :func:`cfjax.parallel.explain_dataset` in chunks of ``--chunk`` images. The
step is the real pipeline at full size: the VAE encoder's mean of each image, ``--steps`` Adam
steps of the latent attack (``cfjax.attack_batch``: latent-512 VAE decoder -> ResNet-18, the
``resnet128`` models of experiments/bench_highres.py, random weights) towards the other class,
and masked sums of success / target probability into the accumulators. The process's peak
RSS (``ru_maxrss``) and its peak *anonymous* RSS (``RssAnon`` of /proc/self/status, sampled
every 10 ms by a thread) are compared across N. ``ru_maxrss`` also counts the memmap's
file-backed pages the stream has touched (page cache the kernel drops under pressure, so it
grows with N without being memory the run needs); ``RssAnon`` is the heap, the XLA buffers
and the arrays: the figure that must stay flat::

    .venv/bin/python experiments/bench_highres_rss.py --out rss.json

No pausing: memory does not depend on other processes' load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))


def write_file(path: Path, n: int, shape, block: int = 64) -> None:
    with open(path, "wb") as f:
        for s in range(0, n, block):
            m = min(block, n - s)
            rng = np.random.default_rng(s)
            f.write(rng.uniform(size=(m, *shape)).astype(np.float32).tobytes())


class AnonPeak:
    """Peak ``RssAnon`` (MiB) of this process, sampled by a daemon thread (Linux /proc)."""

    def __init__(self, every_s: float = 0.01):
        import threading

        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._t.start()

    @staticmethod
    def read() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self, every_s):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.read())
            self._stop.wait(every_s)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return max(self.peak, self.read())


def worker(path: str, n: int, chunk: int, steps: int, model: str, cfg_json: str | None) -> dict:
    import jax
    import jax.numpy as jnp

    import bench_highres as bh
    from cfjax import parallel
    from cfjax.methods import attack as atk
    from cfjax.models import bind_classifier, bind_vae

    cfg = {**bh.MODELS[model], **json.loads(cfg_json or "{}")}
    shape = tuple(cfg["image_shape"])
    clf_m, cp, vae_m, vp, *_ = bh.build(cfg)
    clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, *shape))

    def step(acc, batch, mask):
        x = batch["x"]
        z0 = jax.vmap(vae.encode)(x)
        src = jnp.argmax(jax.vmap(clf.logits)(x), -1)
        tgt = (src + 1) % cfg["num_classes"]
        r = atk.attack_batch(vae.decode, clf.logits, z0, tgt, steps=steps, threshold=0.999, early_exit_every=0, block=steps)
        m = mask.astype(jnp.float32)
        return {"n": acc["n"] + m.sum(), "success": acc["success"] + (r.success * m).sum(), "p": acc["p"] + (r.target_prob * m).sum()}, None

    init = {k: np.zeros((), np.float32) for k in ("n", "success", "p")}
    jax.block_until_ready(jnp.zeros(1) + 1)
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    anon_floor = AnonPeak.read()
    sampler = AnonPeak()
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(step, init, {"x": mm}, chunk_size=chunk, progress=False)
    anon_peak = sampler.stop()
    return {"anon_rss_after_models_mb": round(anon_floor, 1), "peak_anon_rss_mb": round(anon_peak, 1),"rows": n, "bytes_on_disk": n * int(np.prod(shape)) * 4, "chunk_size": chunk, "attack_steps": steps, "model": model,
            "peak_rss_after_models_mb": round(floor, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "wall_s": round(time.perf_counter() - t0, 1), "count": float(acc["n"]), "mean_target_prob": float(acc["p"]) / max(float(acc["n"]), 1.0),
            "devices": jax.device_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--model", default="resnet128")
    ap.add_argument("--cfg-json", default=None, help="model config overrides (tests: tiny widths)")
    ap.add_argument("--max-growth-mb", type=float, default=64.0)
    ap.add_argument("--nice", type=int, default=None, help="autogroup niceness of the workers (root: e.g. -5 on a shared box)")
    ap.add_argument("--out", default="bench_highres_rss.json")
    ap.add_argument("--worker", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        if a.nice is not None:  # the worker is its own session (start_new_session): renice its autogroup
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(a.nice))
            except OSError:
                pass
        print("RESULT " + json.dumps(worker(a.worker[0], int(a.worker[1]), a.chunk, a.steps, a.model, a.cfg_json)))
        return 0
    import bench_highres as bh
    from cfjax.io import atomic_write_json

    shape = tuple({**bh.MODELS[a.model], **json.loads(a.cfg_json or "{}")}["image_shape"])
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    res = {"benchmark": "peak RSS of a streamed latent attack (encode + attack_batch) at 128 px through cfjax.parallel.explain_dataset",
           "command": " ".join(sys.argv), "shape_per_row": list(shape), "chunk_size": a.chunk, "attack_steps": a.steps, "model": a.model,
           "cfg_overrides": json.loads(a.cfg_json or "{}"), "environment": bh.environment(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.sizes:
            path = Path(tmp) / f"rows_{n}.f32"
            write_file(path, n, shape)
            cmd = [sys.executable, __file__, "--worker", str(path), str(n), "--chunk", str(a.chunk), "--steps", str(a.steps), "--model", a.model]
            if a.cfg_json:
                cmd += ["--cfg-json", a.cfg_json]
            if a.nice is not None:
                cmd += ["--nice", str(a.nice)]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200, start_new_session=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode or not lines:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            rec = json.loads(lines[-1][7:])
            assert rec["count"] == n, rec
            res["runs"].append(rec)
            print(json.dumps(rec), flush=True)
            path.unlink()
    peaks = {r["rows"]: r["peak_rss_mb"] for r in res["runs"]}
    anon = {r["rows"]: r["peak_anon_rss_mb"] for r in res["runs"]}
    lo, hi = min(a.sizes), max(a.sizes)
    res["peak_rss_mb"] = {str(k): v for k, v in peaks.items()}
    res["peak_anon_rss_mb"] = {str(k): v for k, v in anon.items()}
    if lo != hi:
        res["growth_mb"] = round(peaks[hi] - peaks[lo], 1)
        res["anon_growth_mb"] = round(anon[hi] - anon[lo], 1)
        res["data_growth_mb"] = round((hi - lo) * int(np.prod(shape)) * 4 / 2**20, 1)
        res["max_growth_mb"] = a.max_growth_mb
        res["flat"] = res["anon_growth_mb"] < a.max_growth_mb
        res["flat_rule"] = "peak anonymous RSS (heap + XLA buffers) grows < max_growth_mb from the smallest to the largest N"
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}: peak RSS {res['peak_rss_mb']} MB (anonymous {res['peak_anon_rss_mb']} MB); "
          f"anonymous growth {res.get('anon_growth_mb')} MB while the data grew {res.get('data_growth_mb')} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
