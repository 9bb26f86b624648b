"""The one job skeleton every method runs through: the job's lifecycle.

::

    validate(config)                   every argument check, before any loading or training
    load(context)                      data + models (process 0 first on multi-host runs)
    passes(context, models)            one or more streamed passes: rows of (image, source, target)
      -> run_pass                      explain_dataset(step, evaluator sums, rows): one compiled,
                                       sharded, checkpointed, resumable program per pass
    summarize(context, models, results)   summary fields from the evaluators' finalized sums
    figures(context, models, summary)     PNGs for the report (process 0 only)
    headline(context, summary)            the report's first block: (label, value) pairs
    write summary.json + report.html      atomically (process 0 only); one self-contained HTML
                                          file (cfjax.jobs.report.write_report)

A method contributes a :class:`Method` (its per-chunk step as ``Pass.rows_fn`` and its
evaluator list); this module knows nothing about either paper. Its parts live beside it:
:mod:`cfjax.jobs.passes` (a pass and how it runs), :mod:`cfjax.jobs.shards` (the shard file
format, the run's fingerprint, the merge) and :mod:`cfjax.jobs.run_folder` (who owns the output
folder); their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Sequence

import jax

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax.errors import bad_arg
from cfjax.io import FolderLock, atomic_write_json, check_writable_dir, remove_stray_temporaries
from cfjax.jobs.passes import ROWS, Pass, PassResult, batched_predict, global_chunk, make_step, pass_rows, run_pass, shard_rows
from cfjax.jobs.run_folder import (RUN_FILE, RUN_OUTPUTS, check_merge_out, claim_check, models_dir_for, run_identity, settle)
from cfjax.jobs.shards import (MERGE_FILE, RESULT_NEUTRAL, SHARD_FILE, SHARD_VERSION, STATES_FILE, _record_digest, check_models_present,
                               check_shard, differences, load_shard_states, merge_results, read_shards, run_description, run_fingerprint,
                               write_shard)


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

    def headline(self, ctx: Context, summary: dict) -> list:
        """``(label, value)`` pairs shown first in the report (method, data, classifier, n,
        validity, denoised validity, L1, the method's own key numbers, throughput)."""
        ...

    def checkpoint_every(self, config: Any) -> int: ...

    # Optional: ``models_dir`` (where ``load`` reads and caches models; ``None``: ``out/models``,
    # :func:`~cfjax.jobs.run_folder.models_dir_for`), used by a merge to check that the shards'
    # models are there before loading them. Public attributes holding plain values (str,
    # numbers, tuples...) are the method's options and enter the output folder's identity
    # (:func:`~cfjax.jobs.run_folder.run_identity`).


def run_job(method: Method, dataset: str, out_dir, config: Any, *, data_dir=None, progress: bool = True, models: Any = None,
            shard: tuple[int, int] | None = None, merge=None, shard_meta: dict | None = None, overwrite: bool = False) -> dict:
    """Run ``method`` through the skeleton; returns the summary (written by process 0 to
    ``out_dir/summary.json`` with ``report.html`` and ``figures/``).

    The output folder belongs to one run (:mod:`cfjax.jobs.run_folder`). Process 0 locks it
    (:class:`cfjax.io.FolderLock`: a second writer is refused, naming the first; a dead run's lock
    is taken over) and removes the temporary files a killed run left. A folder holding another
    run's files (another method, dataset, config, role or models) is refused before anything is
    loaded, unless ``overwrite``, which removes them (:data:`RUN_OUTPUTS`; ``models/`` stays) once
    this run's data and models have loaded; the run is then recorded in ``out_dir/run.json``. A
    run whose loading fails writes nothing there. The same run again resumes.

    Args:
      shard: ``(i, n)``: run the passes over shard ``i`` of ``n`` of every pass's rows only and
        write its sums and the run's fingerprint (``shard_states.npz``, ``shard.json``, plus
        ``shard_meta``) instead of a summary; returns the shard record.
      merge: the folders of every shard of one run: check them completely (:func:`read_shards`:
        fields, digests, contents, row counts; before any loading or writing), check that the
        models they used are under the method's ``models_dir`` (:func:`check_models_present`;
        a merge never trains or writes models), merge their sums, and write the same
        ``summary.json`` and report as an unsharded run (and ``merge.json``: the shards merged);
        the passes are built (for their evaluators and fingerprint) but not run. ``out_dir`` may
        not be an input shard's folder.
      overwrite: replace another run's outputs in ``out_dir`` instead of refusing
        (``--overwrite`` on the command line).
    """
    method.validate(dataset, config)
    shard = check_shard(shard)
    if shard is not None and merge is not None:
        raise bad_arg("shard", f"{shard[0]}/{shard[1]} with merge", "either a shard to compute or shards to merge, not both")
    overwrite = bool(overwrite)
    records = read_shards(merge) if merge is not None else None  # every shard's files, before anything is loaded or written
    out = Path(out_dir)
    if records is not None:
        check_merge_out(out, records)
    identity = run_identity(method, dataset, config, shard, records)
    lead = jax.process_index() == 0
    if lead and out.is_dir():  # refuse a busy folder or another run's before creating or loading anything
        FolderLock(out, "out").check()
        claim_check(out, identity, overwrite)
    created = not out.exists()
    out = check_writable_dir(out, "out")
    lock = FolderLock(out, "out") if lead else None
    try:
        if lock is not None:
            lock.acquire()
            remove_stray_temporaries(out)
            claim_check(out, identity, overwrite)  # again, now that no one else writes here
        ctx = Context(dataset, out, config, data_dir, progress, lead, time.perf_counter())
        models, passes, used = _load(method, ctx, models, records)
        fp = run_fingerprint(passes)
        if records is not None:
            results = merge_results(records, passes)
        else:
            if lead:  # loading worked: from now on the folder's run files are this run's
                settle(out, identity, fp, overwrite=overwrite)
            results = {p.name: run_pass(p, out, checkpoint_every=method.checkpoint_every(config), progress=progress, shard=shard,
                                        finalize=shard is None) for p in passes}
        if shard is not None:
            return write_shard(out, shard, passes, results, shard_meta, models=used) if lead else {"fingerprint": fp, "shard": shard[0]}
        return _finish(method, ctx, models, results, records, identity, overwrite)
    finally:
        if lock is not None:
            lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty folder behind


def _load(method: Method, ctx: Context, models: Any, records) -> tuple[Any, list, list]:
    """``(models, passes, the models used)``: ``method.load`` (process 0 first) unless given, then
    its passes. A merge first checks that the shards' models are there, and loads read-only."""
    guard = ckpt.read_only("cfjax merge never trains or writes models") if records is not None else contextlib.nullcontext()
    with ckpt.track_models() as used, guard:
        if models is None:
            if records is not None:
                check_models_present(records, models_dir_for(ctx.out, getattr(method, "models_dir", None)))
            models = parallel.process0_first(lambda: method.load(ctx))
        passes = list(method.passes(ctx, models))
    return models, passes, list(used.values())


def _finish(method: Method, ctx: Context, models: Any, results: dict, records, identity: dict, overwrite: bool) -> dict:
    """Summary, figures, ``summary.json`` and the report (process 0); a merge also settles its
    folder and writes ``merge.json``."""
    out = ctx.out
    summary = method.summarize(ctx, models, results)
    if not ctx.lead:
        return summary
    if records is not None:  # a merge writes nothing before it succeeds
        settle(out, identity, records[0]["fingerprint"], overwrite=overwrite)
    t_fig = time.perf_counter()
    figs = method.figures(ctx, models, summary)
    if isinstance(summary.get("phase_wall_s"), dict):
        summary["phase_wall_s"]["figures"] = time.perf_counter() - t_fig
    summary["total_wall_s"] = time.perf_counter() - ctx.t_start
    write_outputs(out, summary, figs, method.title(ctx, summary), method.headline(ctx, summary))
    if records is not None:
        shards = [{"dir": str(Path(r["dir"]).resolve()), "shard": r["shard"],
                   "passes": {k: {f: v[f] for f in ("rows", "rows_slice", "wall_s", "resumed")} for k, v in r["passes"].items()}} for r in records]
        atomic_write_json(out / MERGE_FILE, {"fingerprint": records[0]["fingerprint"], "num_shards": records[0]["num_shards"], "shards": shards})
    return summary


def write_outputs(out: Path, summary: dict, figures: list, title: str, headline: list | None = None) -> None:
    """``summary.json`` and ``report.html`` (each written to a temporary name, then renamed)."""
    from cfjax.jobs import report

    atomic_write_json(out / "summary.json", summary)
    report.write_report(out, summary, figures, title=title, headline=headline)


__all__ = ["MERGE_FILE", "RESULT_NEUTRAL", "ROWS", "RUN_FILE", "RUN_OUTPUTS", "SHARD_FILE", "SHARD_VERSION", "STATES_FILE", "Context", "Method",
           "Pass", "PassResult", "batched_predict", "check_models_present", "check_shard", "differences", "global_chunk", "load_shard_states",
           "make_step", "merge_results", "models_dir_for", "pass_rows", "read_shards", "run_description", "run_fingerprint", "run_identity",
           "run_job", "run_pass", "shard_rows", "write_outputs", "write_shard"]
