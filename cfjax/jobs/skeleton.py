"""The one job skeleton every method runs through.

::

    validate(config)                   every argument check, before any loading or training
    load(context)                      data + models (process 0 first on multi-host runs)
    passes(context, models)            one or more streamed passes: rows of (image, source, target)
      -> run_pass                      explain_dataset(step, evaluator sums, rows): one compiled,
                                       sharded, checkpointed, resumable program per pass
    summarize(context, models, results)   summary fields from the evaluators' finalized sums
    figures(context, models, summary)     PNGs for the report (process 0 only)
    write summary.json + report.html      atomically (process 0 only)

A method contributes a :class:`Method` (its per-chunk step as ``Pass.rows_fn`` and its
evaluator list); this module knows nothing about either paper.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import parallel
from cfjax.eval.evaluators import Evaluator, finalize_states, init_states, update_states
from cfjax.io import atomic_write_json, check_writable_dir


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
      data: host rows ``{"x", "source", "target", ...}`` (this process's slice).
      chunk_size: rows per compiled step (a multiple of the device count).
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
    ``wall_s``: seconds of this call; ``resumed``: it started from a checkpoint."""

    fields: dict
    states: dict
    wall_s: float
    resumed: bool


def make_step(rows_fn: Callable, evaluators: Sequence[Evaluator], outputs: Sequence[str] | None) -> Callable:
    """``(acc, batch, mask) -> (acc, outputs)`` for :func:`cfjax.parallel.explain_dataset`."""

    def step(acc, batch, mask):
        rows = dict(rows_fn(batch, mask))
        rows.setdefault("w", mask.astype(jnp.float32))
        acc = update_states(evaluators, acc, rows)
        return acc, ({k: rows[k] for k in outputs} if outputs else None)

    return step


def run_pass(p: Pass, out: Path, *, checkpoint_every: int, progress: bool) -> PassResult:
    """Stream ``p.data`` through ``p.rows_fn`` and the evaluators (resumes from ``out/state``)."""
    state_dir = out / "state" / p.name
    resumed = (state_dir / "accumulators").is_dir()
    t0 = time.perf_counter()
    acc = parallel.explain_dataset(
        make_step(p.rows_fn, p.evaluators, p.outputs), init_states(p.evaluators), p.data, chunk_size=p.chunk_size,
        checkpoint_dir=state_dir, checkpoint_every=checkpoint_every, run_config=p.run_config,
        outputs_dir=out / "per_example" / p.name if p.outputs else None, progress=progress, desc=p.desc or p.name,
    )
    wall = time.perf_counter() - t0
    return PassResult(finalize_states(p.evaluators, acc), acc, wall, resumed)


def global_chunk(chunk_size: int, n_rows: int) -> int:
    """The compiled step's rows: ``min(chunk_size, n_rows)`` rounded up to the device count."""
    n_dev = jax.device_count()
    return -(-min(chunk_size, max(n_rows, 1)) // n_dev) * n_dev


def batched_predict(fn: Callable, images: np.ndarray, bs: int = 500) -> np.ndarray:
    """``fn`` over ``images`` in host batches of ``bs`` (a jitted ``fn`` compiles at most twice)."""
    return np.concatenate([np.asarray(fn(jnp.asarray(images[s : s + bs]))) for s in range(0, len(images), bs)])


class Context(NamedTuple):
    """What every phase of a job sees."""

    dataset: str
    out: Path
    config: Any
    data_dir: str | None
    progress: bool
    lead: bool
    t_start: float


class Method(Protocol):
    """What a method's job module provides (see :mod:`cfjax.jobs.attack`, :mod:`cfjax.jobs.mirror`)."""

    def validate(self, dataset: str, config: Any) -> None: ...

    def load(self, ctx: Context) -> Any: ...

    def passes(self, ctx: Context, models: Any) -> Sequence[Pass]: ...

    def summarize(self, ctx: Context, models: Any, results: dict[str, PassResult]) -> dict: ...

    def figures(self, ctx: Context, models: Any, summary: dict) -> list: ...

    def title(self, ctx: Context, summary: dict) -> str: ...

    def checkpoint_every(self, config: Any) -> int: ...


def run_job(method: Method, dataset: str, out_dir, config: Any, *, data_dir=None, progress: bool = True, models: Any = None) -> dict:
    """Run ``method`` through the skeleton; returns the summary (written by process 0 to
    ``out_dir/summary.json`` with ``report.html`` and ``figures/``)."""
    method.validate(dataset, config)
    out = check_writable_dir(out_dir, "out")
    lead = jax.process_index() == 0
    ctx = Context(dataset, out, config, data_dir, progress, lead, time.perf_counter())
    if models is None:
        models = parallel.process0_first(lambda: method.load(ctx))
    results = {}
    for p in method.passes(ctx, models):
        results[p.name] = run_pass(p, out, checkpoint_every=method.checkpoint_every(config), progress=progress)
    summary = method.summarize(ctx, models, results)
    if not lead:
        return summary
    t_fig = time.perf_counter()
    figs = method.figures(ctx, models, summary)
    if isinstance(summary.get("phase_wall_s"), dict):
        summary["phase_wall_s"]["figures"] = time.perf_counter() - t_fig
    summary["total_wall_s"] = time.perf_counter() - ctx.t_start
    write_outputs(out, summary, figs, method.title(ctx, summary))
    return summary


def write_outputs(out: Path, summary: dict, figures: list, title: str) -> None:
    """``summary.json`` and ``report.html`` (each written to a temporary name, then renamed)."""
    from cfjax.jobs import report

    atomic_write_json(out / "summary.json", summary)
    report.write_report(out, summary, figures, title=title)


__all__ = ["Context", "Method", "Pass", "PassResult", "batched_predict", "global_chunk", "make_step", "run_job", "run_pass", "write_outputs"]
