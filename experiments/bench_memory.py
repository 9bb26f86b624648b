"""Peak host memory of a streamed pass over a dataset on disk: does it grow with the rows?

For each size (default 10,000 and 100,000 rows of 28x28x1 float32: 31 MB and 314 MB on disk)
this script writes a raw array file, then runs ONE fresh Python process per (size, mode) that
opens it as ``np.memmap(mode="r")`` and streams it through
:func:`cfjax.parallel.explain_dataset` with a trivial sum step (chunks of 1,024 rows), and reports
that process's peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the
resident size right after JAX's start-up (the floor).

Modes:

* ``memmap``: the memmap as the row source (cfjax reads one chunk at a time and releases the
  mapping's pages after each chunk);
* ``memmap_no_release``: the same file behind a plain wrapper that returns ``memmap[a:b]`` (what
  an unaware reader gets: every page read stays mapped, so the RSS grows with the file; shown
  for contrast, not asserted).

Writes ``experiments/results/bench_memory.json`` and asserts that the ``memmap`` mode's peak RSS
at the largest size exceeds the smallest size's by less than ``--max-growth-mb`` (default 64 MB,
while the data grows by ~280 MB). A benchmark, not a unit test: run it by hand::

    .venv/bin/python experiments/bench_memory.py
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

ROOT = Path(__file__).resolve().parent.parent
SHAPE = (28, 28, 1)


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover
        return _peak_mb()


def _peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def write_file(path: Path, n: int, block: int = 10_000) -> None:
    """``n`` rows of deterministic float32 images, written block by block (never held whole)."""
    import numpy as np

    with open(path, "wb") as f:
        for s in range(0, n, block):
            m = min(block, n - s)
            rows = (np.arange(s, s + m, dtype=np.float32)[:, None] % 255.0) / 255.0 + np.zeros((1, int(np.prod(SHAPE))), np.float32)
            f.write(rows.astype(np.float32).tobytes())


def worker(path: str, n: int, chunk: int, mode: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cfjax import parallel

    mm = np.memmap(path, dtype=np.float32, mode="r", shape=(n, *SHAPE))

    class Plain:  # a reader that knows nothing about releasing pages
        def __len__(self):
            return n

        def __getitem__(self, s):
            return mm[s]

    src = mm if mode == "memmap" else Plain()

    def step(acc, batch, mask):
        m = mask.astype(jnp.float32)
        return {"sum": acc["sum"] + jnp.sum(batch["x"].reshape(batch["x"].shape[0], -1).mean(-1) * m), "n": acc["n"] + jnp.sum(m)}, None

    init = {"sum": np.zeros((), np.float32), "n": np.zeros((), np.float32)}
    jax.block_until_ready(jnp.zeros(1) + 1)
    floor = _rss_mb()
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(step, init, {"x": src}, chunk_size=chunk, progress=False)
    wall = time.perf_counter() - t0
    expect = float(np.sum((np.arange(n) % 255.0) / 255.0))
    return {"rows": n, "mode": mode, "bytes_on_disk": n * int(np.prod(SHAPE)) * 4, "chunk_size": chunk, "rss_after_startup_mb": round(floor, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "rss_at_end_mb": round(_rss_mb(), 1), "wall_s": round(wall, 2), "count": float(acc["n"]),
            "sum_rel_err": abs(float(acc["sum"]) - expect) / max(expect, 1.0), "devices": jax.device_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--modes", nargs="+", default=["memmap", "memmap_no_release"], choices=["memmap", "memmap_no_release"])
    ap.add_argument("--max-growth-mb", type=float, default=64.0)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_memory.json"))
    ap.add_argument("--tmp", default=None, help="folder for the data files (default: a temporary folder)")
    ap.add_argument("--worker", nargs=4, metavar=("PATH", "N", "CHUNK", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        path, n, chunk, mode = a.worker
        print(json.dumps(worker(path, int(n), int(chunk), mode)))
        return 0
    runs = []
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for n in a.sizes:
            path = Path(tmp) / f"rows_{n}.f32"
            write_file(path, n)
            for mode in a.modes:
                r = subprocess.run([sys.executable, __file__, "--worker", str(path), str(n), str(a.chunk), mode], env=env, capture_output=True,
                                   text=True, timeout=1800)
                if r.returncode:
                    print(r.stderr, file=sys.stderr)
                    return 1
                rec = json.loads(r.stdout.strip().splitlines()[-1])
                assert rec["count"] == n and rec["sum_rel_err"] < 1e-4, rec
                runs.append(rec)
                print(f"{mode:18s} {n:>7d} rows ({rec['bytes_on_disk'] / 2**20:6.1f} MB on disk): peak RSS {rec['peak_rss_mb']:7.1f} MB "
                      f"(after start-up {rec['rss_after_startup_mb']:.1f} MB), {rec['wall_s']:.1f} s", flush=True)
            path.unlink()
    peaks = {m: {r["rows"]: r["peak_rss_mb"] for r in runs if r["mode"] == m} for m in a.modes}
    result = {"benchmark": "peak RSS streaming a memmapped float32 array through cfjax.parallel.explain_dataset",
              "shape_per_row": list(SHAPE), "chunk_size": a.chunk, "python": sys.version.split()[0], "platform": sys.platform,
              "cpu_count": os.cpu_count(), "runs": runs, "peak_rss_mb": {m: {str(k): v for k, v in p.items()} for m, p in peaks.items()}}
    lo, hi = min(a.sizes), max(a.sizes)
    if "memmap" in peaks and lo != hi:
        growth = peaks["memmap"][hi] - peaks["memmap"][lo]
        result["memmap_growth_mb"] = round(growth, 1)
        result["max_growth_mb"] = a.max_growth_mb
        result["data_growth_mb"] = round((hi - lo) * 28 * 28 * 4 / 2**20, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")
    if "memmap_growth_mb" in result:
        assert result["memmap_growth_mb"] < a.max_growth_mb, (
            f"peak RSS grew by {result['memmap_growth_mb']} MB from {lo} to {hi} rows (limit {a.max_growth_mb} MB)")
        print(f"peak RSS growth {lo} -> {hi} rows: {result['memmap_growth_mb']} MB (data grew {result['data_growth_mb']} MB): OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
