"""Meshes, pad-shard-unpad, and the streamed whole-dataset pass.

:func:`explain_dataset` streams a dataset of any size through ONE jitted, sharded step:

* a ``("data",)`` mesh over every device (all hosts' devices in a multi-host run);
* a fixed chunk of ``chunk_size`` examples per step, sharded along ``"data"`` with
  ``NamedSharding``; the last chunk is padded and its padding masked out;
* accumulators (sums, counts, moments: any pytree) carried across chunks, reduced inside
  ``jit`` (a sum over a sharded batch axis is an all-reduce XLA inserts for us);
* the accumulators and the chunk cursor checkpointed (orbax, atomic) every ``K`` chunks, so a
  run killed at any point and restarted with the same arguments ends with an identical
  result;
* optionally, per-example outputs written per chunk to ``.npz`` files (host memory stays
  flat in the dataset size).

Multi-host: call :func:`initialize_distributed` first on every process; each process passes
only its own slice of the data (``process_slice``) and the global chunk is assembled with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from cfjax import checkpoint as ckpt
from cfjax.errors import bad_arg

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``("data",)`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str | None = None,
) -> tuple[int, int]:
    """Start JAX's multi-host runtime (TPU pods, GPU clusters, or CPU processes on one box).

    Arguments default to the env vars ``CFJAX_COORDINATOR``, ``CFJAX_NUM_PROCESSES`` and
    ``CFJAX_PROCESS_ID``; when none is set, ``jax.distributed.initialize()`` auto-detects
    the cluster (Cloud TPU, SLURM, Open MPI...). ``cpu_collectives="gloo"`` enables
    cross-process collectives on CPU (the localhost test). Returns
    ``(process_index, process_count)``.
    """
    coordinator_address = coordinator_address or os.environ.get("CFJAX_COORDINATOR")
    if num_processes is None and "CFJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["CFJAX_NUM_PROCESSES"])
    if process_id is None and "CFJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["CFJAX_PROCESS_ID"])
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is None and num_processes is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
    return jax.process_index(), jax.process_count()


def process_slice(n: int, process_index: int | None = None, process_count: int | None = None) -> slice:
    """The contiguous rows ``[start, stop)`` of an ``n``-example dataset this process owns."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    per = math.ceil(n / pc)
    return slice(min(pi * per, n), min((pi + 1) * per, n))


class Rows:
    """Lazy row view ``arr[idx]`` for :func:`explain_dataset` (which slices it chunk by chunk),
    so (image, target) pairs never materialise copies of the images on the host."""

    def __init__(self, arr, idx: np.ndarray):
        self.arr, self.idx = arr, np.asarray(idx)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s):
        return np.asarray(self.arr[self.idx[s]])


def pad_to(x: np.ndarray, n: int) -> np.ndarray:
    """Pad the leading axis of ``x`` to ``n`` rows by repeating row 0 (finite, masked later)."""
    if len(x) == n:
        return x
    if len(x) == 0:
        raise bad_arg("chunk", "0 rows", "at least one row to pad from")
    reps = np.repeat(x[:1], n - len(x), axis=0)
    return np.concatenate([x, reps], axis=0)


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def explain_dataset(
    step: Callable,
    init: Any,
    data: Mapping[str, Any],
    *,
    chunk_size: int,
    mesh: Mesh | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    run_config: Mapping | None = None,
    outputs_dir: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "explain",
    stop_after: int | None = None,
) -> Any:
    """Stream ``data`` through ``step`` in fixed, sharded chunks; return the accumulators.

    Args:
      step: pure ``(acc, batch, mask) -> (acc, outputs)``. ``batch`` is a dict of arrays with a
        leading axis of ``chunk_size``; ``mask`` [chunk_size] bool marks real (non-padding) rows.
        All reductions into ``acc`` must be sums over the batch axis weighted by ``mask`` (so
        they shard and pad correctly). ``outputs`` is a pytree of per-example arrays, or ``None``.
      init: the initial accumulators (a pytree of arrays).
      data: name -> array-like with random access along axis 0 (numpy arrays, memmaps, a
        TFDS data source wrapper), all of the same length: THIS process's examples.
      chunk_size: global examples per step (a multiple of the device count).
      mesh: a ``("data",)`` mesh; default :func:`data_mesh` over all devices.
      checkpoint_dir: where the accumulators and cursor are checkpointed every
        ``checkpoint_every`` chunks and at the end; an existing checkpoint written with the
        same ``run_config``, data size, chunk size and device count is resumed, another one is
        refused with a clear error.
      run_config: JSON-able description of the run (method, models, options), used in that
        check.
      outputs_dir: if given, ``outputs`` of each chunk (padding removed) go to
        ``outputs_dir/chunk_XXXXXX.npz`` (atomically).
      progress: show a progress bar.
      stop_after: process at most this many chunks in this call (tests use it to simulate a
        crash); ``None`` runs to the end.

    Returns:
      The final accumulators (host numpy pytree).
    """
    mesh = mesh or data_mesh()
    n_dev = mesh.devices.size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise bad_arg("chunk_size", repr(chunk_size), "a positive integer")
    if chunk_size % n_dev:
        raise bad_arg("chunk_size", chunk_size, f"a multiple of the device count ({n_dev})")
    if not data:
        raise bad_arg("data", "an empty mapping", "at least one named array")
    lens = {k: len(v) for k, v in data.items()}
    if len(set(lens.values())) != 1:
        raise bad_arg("data", f"lengths {lens}", "arrays of equal length")
    n_local = next(iter(lens.values()))
    pc = jax.process_count()
    local_chunk = chunk_size // pc
    if chunk_size % pc:
        raise bad_arg("chunk_size", chunk_size, f"a multiple of the process count ({pc})")
    # every process must run the same number of steps: agree on the longest local slice
    n_max = _max_over_processes(n_local)
    if n_max == 0:
        raise bad_arg("data", "0 examples", "a non-empty dataset")
    n_chunks = math.ceil(n_max / local_chunk)

    row = NamedSharding(mesh, P(DATA))
    rep = NamedSharding(mesh, P())
    acc = jax.device_put(init, rep)
    cursor = 0
    fp = _fingerprint({"run": run_config or {}, "n": n_max, "p": pc, "chunk": chunk_size, "devices": n_dev})
    if checkpoint_dir is not None:
        cdir = Path(checkpoint_dir) / "accumulators"
        if cdir.is_dir():
            host_acc, meta = ckpt.restore(cdir, jax.tree_util.tree_map(np.asarray, init), kind="explain-accumulators", config={"fingerprint": fp, "run": run_config or {}})
            acc = jax.device_put(host_acc, rep)
            cursor = int(meta["extra"]["cursor"])
    jstep = jax.jit(step, in_shardings=(rep, row, row), out_shardings=(rep, row), donate_argnums=(0,))

    def save(c):
        if checkpoint_dir is not None and jax.process_index() == 0:
            ckpt.save(
                Path(checkpoint_dir) / "accumulators",
                jax.device_get(acc),
                kind="explain-accumulators",
                config={"fingerprint": fp, "run": run_config or {}},
                extra={"cursor": c, "n_chunks": n_chunks},
            )
        _barrier("cfjax-ckpt")

    bar = tqdm(total=n_chunks, initial=cursor, desc=desc, disable=not progress or jax.process_index() != 0, unit="chunk")
    done_now = 0
    for c in range(cursor, n_chunks):
        if stop_after is not None and done_now >= stop_after:
            break
        s, e = c * local_chunk, min((c + 1) * local_chunk, n_local)
        real = max(e - s, 0)
        if real > 0:
            local = {k: pad_to(np.asarray(v[s:e]), local_chunk) for k, v in data.items()}
        else:  # this process has run out of rows: feed masked copies of its first row
            local = {k: pad_to(np.asarray(v[:1]), local_chunk) for k, v in data.items()}
        lmask = np.arange(local_chunk) < real
        batch = {k: _global(v, row, chunk_size) for k, v in local.items()}
        mask = _global(lmask, row, chunk_size)
        acc, outs = jstep(acc, batch, mask)
        if outputs_dir is not None and outs is not None:
            _write_outputs(Path(outputs_dir), c, outs, lmask)
        done_now += 1
        bar.update(1)
        if (c + 1) % checkpoint_every == 0 or c + 1 == n_chunks:
            save(c + 1)
    bar.close()
    return jax.tree_util.tree_map(np.asarray, jax.device_get(acc))


def _global(local: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def _max_over_processes(n: int) -> int:
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.array([n]))))


def process0_first(fn: Callable[[], Any], name: str = "cfjax-process0-first") -> Any:
    """Run ``fn()`` on process 0 first, then on the others (after a barrier), and return its
    result on every process: e.g. load-or-train models, so that only process 0 trains and
    writes them and the others load what it wrote. Just ``fn()`` with one process."""
    multi, lead = jax.process_count() > 1, jax.process_index() == 0
    if multi and not lead:
        _barrier(name)
    out = fn()
    if multi and lead:
        _barrier(name)
    return out


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _write_outputs(out_dir: Path, c: int, outs, lmask: np.ndarray) -> None:
    """Write this process's real rows of a chunk's outputs atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flat, _ = jax.tree_util.tree_flatten_with_path(outs)
    arrays = {}
    for path, leaf in flat:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        local = np.concatenate([np.asarray(s.data) for s in sorted(leaf.addressable_shards, key=lambda s: s.index[0].start or 0)])
        arrays[name] = local[lmask]
    suffix = f".p{jax.process_index()}" if jax.process_count() > 1 else ""
    final = out_dir / f"chunk_{c:06d}{suffix}.npz"
    tmp = out_dir / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, final)
