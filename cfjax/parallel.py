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

Datasets larger than memory: ``data`` values are *row sources*, anything with ``len()`` and
``src[start:stop]`` returning numpy rows: numpy arrays, ``np.memmap`` files on disk (read chunk by
chunk; the pages of a read-only memmap are released after each chunk so the resident memory does
not grow with the file), the lazy views :class:`Rows` and :class:`RowSlice`, and
:class:`RecordRows` over per-record sources (a TFDS ``data_source``, a Grain ``MapDataset``).
Nothing here materialises a whole source: :func:`read_rows` reads one chunk.

Multi-host: call :func:`initialize_distributed` first on every process; each process passes
only its own slice of the data (``process_slice``; :func:`take_rows` cuts it lazily) and the
global chunk is assembled with ``jax.make_array_from_process_local_data``. Shards of a run on a
cluster engine (SLURM arrays, Kubernetes Indexed Jobs, Ray) take their rows with
:func:`shard_slice` first, then split them over their processes the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import mmap
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from cfjax import checkpoint as ckpt
from cfjax.errors import bad_arg
from cfjax.progress import progress_bar

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


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """The contiguous rows ``[start, stop)`` of shard ``shard`` of ``num_shards`` (sizes differ
    by at most one; a shard may be empty when ``num_shards > n``). Shards cover ``range(n)``
    exactly once, in order."""
    if not 0 <= shard < num_shards:
        raise bad_arg("shard", f"{shard}/{num_shards}", f"an index in [0, {num_shards - 1}]")
    return slice(shard * n // num_shards, (shard + 1) * n // num_shards)


def _release(src) -> None:
    """Drop the resident pages of a read-only/shared ``np.memmap`` (they stay in the OS page
    cache; the next read maps what it needs again), so streaming a file does not grow the RSS."""
    mm = getattr(src, "_mmap", None)
    if isinstance(src, np.memmap) and mm is not None and getattr(src, "mode", None) in ("r", "r+") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # pragma: no cover - platform without madvise on this mapping
            pass


def read_rows(src, s: slice) -> np.ndarray:
    """Rows ``s`` of a row source as a fresh host numpy array (one chunk is read, never the whole
    source)."""
    if isinstance(src, (Rows, RowSlice, RecordRows)):
        return src[s]
    if isinstance(src, np.memmap):
        out = np.array(src[s])  # a copy: the mapping's pages are released below
        _release(src)
        return out
    return np.asarray(src[s])


def _pick(src, idx: np.ndarray) -> np.ndarray:
    """``src[idx]`` for an integer index array: fancy indexing on numpy arrays and memmaps,
    ``__getitems__``/one row at a time on other random-access sources."""
    if isinstance(src, np.ndarray):
        out = np.asarray(src[idx])  # fancy indexing copies
        _release(src)
        return out
    if isinstance(src, (Rows, RowSlice, RecordRows)):
        return src.pick(idx)
    if hasattr(src, "shape") and hasattr(src, "dtype") and hasattr(src, "__array__"):  # jax arrays and other array types
        return np.asarray(src[idx])
    if len(idx) and np.all(np.diff(idx) == 1):  # a run of consecutive rows: one slice
        return np.asarray(src[int(idx[0]) : int(idx[-1]) + 1])
    return np.stack([np.asarray(src[int(i)]) for i in idx]) if len(idx) else np.asarray(src[0:0])


class Rows:
    """Lazy row view ``src[idx]`` for :func:`explain_dataset` (which slices it chunk by chunk),
    so (image, target) pairs never materialise copies of the images on the host. ``src`` is any
    row source (a numpy array or memmap, a :class:`RecordRows`, ...)."""

    def __init__(self, arr, idx: np.ndarray):
        self.arr, self.idx = arr, np.asarray(idx)

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s):
        if not isinstance(s, slice):
            return self.pick(np.asarray([s]))[0] if np.ndim(s) == 0 else self.pick(np.asarray(s))
        return _pick(self.arr, self.idx[s])

    def pick(self, idx: np.ndarray) -> np.ndarray:
        return _pick(self.arr, self.idx[np.asarray(idx, np.int64)])

    def take(self, s: slice) -> "Rows":
        """A lazy sub-view (no rows read)."""
        return Rows(self.arr, self.idx[s])


class RowSlice:
    """Lazy contiguous view ``src[start:stop]`` of a row source that cannot be sliced into a
    view itself (see :func:`take_rows`)."""

    def __init__(self, src, start: int, stop: int):
        self.src, self.start, self.stop = src, int(start), int(max(start, stop))

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, s):
        if not isinstance(s, slice):
            return self.pick(np.asarray([s]))[0] if np.ndim(s) == 0 else self.pick(np.asarray(s))
        a, b, step = s.indices(len(self))
        if step != 1:
            return self.pick(np.arange(a, b, step))
        return read_rows(self.src, slice(self.start + a, self.start + max(a, b)))

    def pick(self, idx: np.ndarray) -> np.ndarray:
        idx = np.arange(len(self))[np.asarray(idx, np.int64)]
        return _pick(self.src, self.start + idx)

    def take(self, s: slice) -> "RowSlice":
        a, b, step = s.indices(len(self))
        if step != 1:
            raise bad_arg("slice", repr(s), "a contiguous slice (step 1)")
        return RowSlice(self.src, self.start + a, self.start + max(a, b))


class RecordRows:
    """A row source over a per-record random-access source: ``source[i]`` returns one record
    (an array, or a dict of arrays picked by ``key``), as a TFDS ``data_source`` or a Grain
    ``MapDataset`` does. Reads use ``source.__getitems__`` when it exists (TFDS/ArrayRecord
    batch reads), else one record at a time; only the rows asked for are read.

    Example:
      >>> recs = [{"image": np.full((2, 2, 1), i, np.float32), "label": i} for i in range(5)]
      >>> RecordRows(recs, "image")[1:3][:, 0, 0, 0].tolist()
      [1.0, 2.0]
    """

    def __init__(self, source, key: str | None = None, dtype=None):
        self.source, self.key, self.dtype = source, key, dtype

    def __len__(self) -> int:
        return len(self.source)

    def _one(self, rec):
        v = rec[self.key] if self.key is not None else rec
        return np.asarray(v, self.dtype)

    def pick(self, idx: np.ndarray) -> np.ndarray:
        keys = [int(i) for i in np.arange(len(self))[np.asarray(idx, np.int64)]]
        getitems = getattr(self.source, "__getitems__", None)
        recs = getitems(keys) if getitems is not None else [self.source[i] for i in keys]
        if not keys:
            return np.zeros((0,), self.dtype or np.float32)
        return np.stack([self._one(r) for r in recs])

    def __getitem__(self, s):
        if not isinstance(s, slice):
            return self.pick(np.asarray([s]))[0] if np.ndim(s) == 0 else self.pick(np.asarray(s))
        return self.pick(np.arange(*s.indices(len(self))))

    def take(self, s: slice) -> "RowSlice":
        return RowSlice(self, *s.indices(len(self))[:2])


def take_rows(src, s: slice):
    """A lazy view of rows ``s`` (a contiguous slice) of a row source: a numpy view for arrays
    and memmaps, a sub-view for :class:`Rows`/:class:`RowSlice`, a :class:`RowSlice` for anything
    else. No row is read."""
    if isinstance(src, np.ndarray):
        return src[s]
    if isinstance(src, (Rows, RowSlice, RecordRows)):
        return src.take(s)
    a, b, step = s.indices(len(src))
    if step != 1:
        raise bad_arg("slice", repr(s), "a contiguous slice (step 1)")
    return RowSlice(src, a, b)


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
      data: name -> row source with random access along axis 0 (``len()`` and ``src[a:b]``:
        numpy arrays, ``np.memmap`` files, :class:`Rows`, :class:`RecordRows` over a TFDS data
        source or a Grain ``MapDataset``), all of the same length: THIS process's examples. Only
        one chunk of rows is read (and held) at a time.
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
    pc = jax.process_count()
    n_local = _check_pass(data, chunk_size, n_dev, pc)
    local_chunk = chunk_size // pc
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
    if outputs_dir is not None and jax.process_index() == 0:
        # chunks at or after the cursor are (re)written by this call: files there are another
        # run's (another chunking or process count) or a killed run's last, uncheckpointed chunk
        drop_outputs_from(Path(outputs_dir), cursor)
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

    bar = progress_bar(total=n_chunks, initial=cursor, desc=desc, disable=not progress or jax.process_index() != 0, unit="chunk")
    done_now = 0
    met = pc == 1  # multi-process: the processes meet once after compiling the step
    for c in range(cursor, n_chunks):
        if stop_after is not None and done_now >= stop_after:
            break
        local, lmask = _local_chunk(data, c, local_chunk, n_local)
        batch = {k: _global(v, row, chunk_size) for k, v in local.items()}
        mask = _global(lmask, row, chunk_size)
        # bounded host memory: at most this chunk (being put) and the previous one (computing) are
        # in flight, however far ahead async dispatch could otherwise read (the next chunk is
        # read and transferred while the previous step computes)
        jax.block_until_ready(acc)
        if not met:
            # compile first, then meet: the first cross-process collective of the step must not
            # wait on a peer that is still compiling (gloo's CPU collectives give up after 30 s)
            jstep, met = jstep.lower(acc, batch, mask).compile(), True
            _barrier("cfjax-compiled")
        acc, outs = jstep(acc, batch, mask)
        if outputs_dir is not None and outs is not None:
            _write_outputs(Path(outputs_dir), c, outs, lmask)
        done_now += 1
        bar.update(1)
        if (c + 1) % checkpoint_every == 0 or c + 1 == n_chunks:
            save(c + 1)
    bar.close()
    return jax.tree_util.tree_map(np.asarray, jax.device_get(acc))


def _check_pass(data: Mapping[str, Any], chunk_size, n_dev: int, pc: int) -> int:
    """:func:`explain_dataset`'s argument checks; returns the local row count."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise bad_arg("chunk_size", repr(chunk_size), "a positive integer")
    if chunk_size % n_dev:
        raise bad_arg("chunk_size", chunk_size, f"a multiple of the device count ({n_dev})")
    if not data:
        raise bad_arg("data", "an empty mapping", "at least one named array")
    lens = {k: len(v) for k, v in data.items()}
    if len(set(lens.values())) != 1:
        raise bad_arg("data", f"lengths {lens}", "arrays of equal length")
    if chunk_size % pc:
        raise bad_arg("chunk_size", chunk_size, f"a multiple of the process count ({pc})")
    return next(iter(lens.values()))


def _local_chunk(data: Mapping[str, Any], c: int, local_chunk: int, n_local: int) -> tuple[dict, np.ndarray]:
    """This process's rows of chunk ``c``, padded to ``local_chunk``, and the mask of real rows (a
    process that has run out of rows feeds masked copies of its first row)."""
    s, e = c * local_chunk, min((c + 1) * local_chunk, n_local)
    real = max(e - s, 0)
    rows = slice(s, e) if real > 0 else slice(0, 1)
    return {k: pad_to(read_rows(v, rows), local_chunk) for k, v in data.items()}, np.arange(local_chunk) < real


def _global(local: np.ndarray, sharding: NamedSharding, global_rows: int) -> jax.Array:
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))


def _max_over_processes(n: int) -> int:
    if jax.process_count() == 1:
        return n
    from jax.experimental import multihost_utils

    _barrier("cfjax-max")  # meet first: the allgather's CPU (gloo) transport times out after 30 s
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


BARRIER_TIMEOUT_S = 6 * 3600
"""How long a process waits at a barrier for its peers (e.g. process 0 training the models)."""
_BARRIER_SEQ = itertools.count()  # barrier ids must be unique; every process calls barriers in the same order


def _barrier(name: str) -> None:
    """Wait until every process gets here. Uses the coordination service's barrier (a timeout
    of :data:`BARRIER_TIMEOUT_S`), not a collective: on CPU, gloo collectives time out after
    30 s, too short for a peer that is training models or compiling."""
    if jax.process_count() > 1:
        client = _coordination_client()
        if client is not None:
            client.wait_at_barrier(f"{name}-{next(_BARRIER_SEQ)}", timeout_in_ms=BARRIER_TIMEOUT_S * 1000)
            return
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _coordination_client():
    """The distributed runtime client of ``jax.distributed.initialize`` (``None`` if absent)."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a JAX without the private module
        return None
    return getattr(distributed.global_state, "client", None)


def drop_outputs_from(out_dir: Path, cursor: int) -> list[Path]:
    """Delete the per-example files of chunks ``>= cursor`` (every process's) and temporary
    files in ``out_dir``: a pass that starts at chunk ``cursor`` never leaves files of another
    run beside its own. Process 0 calls it before the processes first meet, so no peer has
    written yet."""
    gone = []
    if not out_dir.is_dir():
        return gone
    for f in out_dir.iterdir():
        name = f.name
        idx = name[6:12] if name.startswith("chunk_") else ""
        stale = (idx.isdigit() and int(idx) >= cursor and name.endswith(".npz")) or (name.startswith(".chunk_") and name.endswith(".tmp"))
        if stale and (f.is_file() or f.is_symlink()):
            f.unlink()
            gone.append(f)
    return gone


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
