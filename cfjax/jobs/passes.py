"""A job's streamed passes: :class:`Pass` (rows, per-chunk step, evaluators), :func:`run_pass`
(one compiled, sharded, checkpointed, resumable program per pass, through
:func:`cfjax.parallel.explain_dataset`) and the one rounding of a pass's rows per compiled step
(:func:`global_chunk`).

Every pass carries one evaluator of the skeleton's own besides the method's: the number of real
rows (:data:`ROWS`), which a merge checks against the rows each shard records.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import parallel
from cfjax.errors import bad_arg
from cfjax.eval.evaluators import Evaluator, counts, finalize_states, init_states, update_states

ROWS = "_rows"
"""The skeleton's own evaluator in every pass: the number of real rows (the mask's sum), which a
merge checks against the rows each ``shard.json`` records."""


@dataclasses.dataclass(frozen=True)
class Pass:
    """One streamed pass over rows of work.

    Attributes:
      name: folder name of its state (``out/state/<name>``) and per-example outputs
        (``out/per_example/<name>``), and the progress-bar label.
      rows_fn: ``(batch, mask) -> rows``: the method's pure per-chunk step; ``batch`` holds
        ``[n, ...]`` arrays of this chunk (``x``, ``source``, ``target``), ``rows`` the
        per-example results the evaluators read (the skeleton adds ``w``, the padding weight,
        when absent).
      evaluators: the pass's metrics (sums only).
      data: host row sources ``{"x", "source", "target", ...}``: ALL the pass's rows (numpy
        arrays, memmaps, lazy :class:`cfjax.parallel.Rows` views, any source with ``len()`` and
        ``[a:b]``); :func:`run_pass` takes this shard's and this process's part lazily.
      chunk_size: the rows per compiled step the method asks for (its ``--batch-size`` or
        ``--chunk-size``, as given); :func:`run_pass` caps it at the rows and rounds it up to the
        device count (:func:`global_chunk`).
      run_config: fingerprint material: a checkpoint of another run is refused.
      outputs: row keys written per example (``None``: nothing written).
      desc: progress label (default ``name``).
    """

    name: str
    rows_fn: Callable[[dict, Any], dict]
    evaluators: Sequence[Evaluator]
    data: dict
    chunk_size: int
    run_config: dict
    outputs: Sequence[str] | None = None
    desc: str | None = None


class PassResult(NamedTuple):
    """``fields``: the evaluators' finalized summary fields; ``states``: the raw sums;
    ``wall_s``: seconds of this call; ``resumed``: it started from a checkpoint;
    ``chunk_size``: the rows of its compiled step (:func:`global_chunk` of the pass's
    ``chunk_size`` and the rows it ran over; for a merge, those of the unsharded run)."""

    fields: dict
    states: dict
    wall_s: float
    resumed: bool
    chunk_size: int = 0


def global_chunk(chunk_size: int, n_rows: int) -> int:
    """The compiled step's rows: ``min(chunk_size, n_rows)`` rounded up to the device count."""
    n_dev = jax.device_count()
    return -(-min(chunk_size, max(n_rows, 1)) // n_dev) * n_dev


def make_step(rows_fn: Callable, evaluators: Sequence[Evaluator], outputs: Sequence[str] | None) -> Callable:
    """``(acc, batch, mask) -> (acc, outputs)`` for :func:`cfjax.parallel.explain_dataset`."""

    def step(acc, batch, mask):
        rows = dict(rows_fn(batch, mask))
        rows.setdefault("w", mask.astype(jnp.float32))
        rows["_mask"] = mask.astype(jnp.float32)
        acc = update_states(evaluators, acc, rows)
        return acc, ({k: rows[k] for k in outputs} if outputs else None)

    return step


def pass_rows(p: Pass) -> int:
    """The number of rows of a pass (all shards, all processes)."""
    lens = {k: len(v) for k, v in p.data.items()}
    if len(set(lens.values())) != 1:
        raise bad_arg(f"pass {p.name!r} data", f"lengths {lens}", "row sources of equal length")
    return next(iter(lens.values()))


def shard_rows(p: Pass, shard: tuple[int, int] | None) -> tuple[dict, int]:
    """``(this process's rows of this shard, the shard's row count)``: lazy views, nothing read."""
    n = pass_rows(p)
    sl = slice(0, n) if shard is None else parallel.shard_slice(n, *shard)
    n_shard = sl.stop - sl.start
    mine = parallel.process_slice(n_shard)
    return {k: parallel.take_rows(parallel.take_rows(v, sl), mine) for k, v in p.data.items()}, n_shard


def rows_evaluator() -> Evaluator:
    """The skeleton's row count (:data:`ROWS`)."""
    return counts(ROWS, {"rows": "_mask"})


def with_rows(evaluators: Sequence[Evaluator]) -> list:
    """A pass's evaluators and the skeleton's row count."""
    return [*evaluators, rows_evaluator()]


def run_pass(p: Pass, out: Path, *, checkpoint_every: int, progress: bool, shard: tuple[int, int] | None = None,
             finalize: bool = True) -> PassResult:
    """Stream ``p.data`` (or shard ``shard = (i, n)`` of it) through ``p.rows_fn`` and the
    evaluators (plus the skeleton's row count, :data:`ROWS`); resumes from ``out/state/<name>``.
    The compiled step holds :func:`global_chunk` ``(p.chunk_size, the shard's rows)`` rows."""
    state_dir = out / "state" / p.name
    resumed = (state_dir / "accumulators").is_dir()
    data, n_rows = shard_rows(p, shard)
    evs = with_rows(p.evaluators)
    chunk = global_chunk(p.chunk_size, n_rows)  # the one rounding of a pass's rows per step
    t0 = time.perf_counter()
    if n_rows == 0:  # an empty shard (more shards than rows): zero sums
        acc = jax.tree_util.tree_map(np.asarray, init_states(evs))
        if jax.process_index() == 0 and (out / "per_example" / p.name).is_dir():
            shutil.rmtree(out / "per_example" / p.name)
    else:
        acc = parallel.explain_dataset(
            make_step(p.rows_fn, evs, p.outputs), init_states(evs), data, chunk_size=chunk,
            checkpoint_dir=state_dir, checkpoint_every=checkpoint_every,
            run_config=p.run_config if shard is None else {**p.run_config, "shard": list(shard)},
            outputs_dir=out / "per_example" / p.name if p.outputs else None, progress=progress, desc=p.desc or p.name,
        )
    wall = time.perf_counter() - t0
    return PassResult(finalize_states(p.evaluators, acc) if finalize else {}, acc, wall, resumed, chunk)


def batched_predict(fn: Callable, images: np.ndarray, bs: int = 500) -> np.ndarray:
    """``fn`` over ``images`` in host batches of ``bs`` (a jitted ``fn`` compiles at most twice)."""
    return np.concatenate([np.asarray(fn(jnp.asarray(images[s : s + bs]))) for s in range(0, len(images), bs)])


__all__ = ["ROWS", "Pass", "PassResult", "batched_predict", "global_chunk", "make_step", "pass_rows", "rows_evaluator", "run_pass",
           "shard_rows", "with_rows"]
