"""The one job skeleton every method runs through.

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
evaluator list); this module knows nothing about either paper.

Shards and merge (cluster engines: SLURM arrays, Kubernetes Indexed Jobs, Ray; see
``docs/scale.md``)::

    run_job(..., shard=(i, n))         the passes over shard i of n of every pass's rows (a
                                       contiguous split, before the per-process split), then
                                       out/shard_states.npz + out/shard.json (the evaluator sums
                                       and the run's fingerprint); no summary. Resumes from
                                       out/state/<pass> like any run.
    run_job(..., merge=[dir, ...])     check the shards (one run, every index once), add their
                                       sums (evaluators.merge_states), then summarize, figures,
                                       summary.json + report.html as an unsharded run.

The run's fingerprint (:func:`run_fingerprint`) hashes every pass's ``run_config`` (method,
data, config, model digests, row count) and never the shard index, so all shards of one run
share it and a merge whose own config or models differ from the shards' is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import parallel
from cfjax.errors import bad_arg
from cfjax.eval.evaluators import Evaluator, finalize_states, init_states, merge_states, update_states
from cfjax.io import atomic_write_bytes, atomic_write_json, check_writable_dir

SHARD_FILE = "shard.json"
"""A finished shard's record (written last: its presence marks a complete shard)."""
STATES_FILE = "shard_states.npz"
"""A shard's evaluator sums, one array per leaf (``<pass>__<i>``)."""
MERGE_FILE = "merge.json"


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


def run_pass(p: Pass, out: Path, *, checkpoint_every: int, progress: bool, shard: tuple[int, int] | None = None,
             finalize: bool = True) -> PassResult:
    """Stream ``p.data`` (or shard ``shard = (i, n)`` of it) through ``p.rows_fn`` and the
    evaluators; resumes from ``out/state/<name>``."""
    state_dir = out / "state" / p.name
    resumed = (state_dir / "accumulators").is_dir()
    data, n_rows = shard_rows(p, shard)
    t0 = time.perf_counter()
    if n_rows == 0:  # an empty shard (more shards than rows): zero sums
        acc = jax.tree_util.tree_map(np.asarray, init_states(p.evaluators))
    else:
        acc = parallel.explain_dataset(
            make_step(p.rows_fn, p.evaluators, p.outputs), init_states(p.evaluators), data, chunk_size=p.chunk_size,
            checkpoint_dir=state_dir, checkpoint_every=checkpoint_every,
            run_config=p.run_config if shard is None else {**p.run_config, "shard": list(shard)},
            outputs_dir=out / "per_example" / p.name if p.outputs else None, progress=progress, desc=p.desc or p.name,
        )
    wall = time.perf_counter() - t0
    return PassResult(finalize_states(p.evaluators, acc) if finalize else {}, acc, wall, resumed)


# ------------------------------------------------------------------------------ shards and merge


def run_fingerprint(passes: Sequence[Pass]) -> str:
    """The run's identity: a hash of every pass's name, ``run_config`` and row count (never a
    shard index, a chunk size or a device count: shards may run on different machines)."""
    desc = {p.name: {"run": p.run_config, "rows": pass_rows(p)} for p in passes}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_shard(shard) -> tuple[int, int] | None:
    """``None`` or a valid ``(index, count)`` (raises :class:`cfjax.InputError` naming ``shard``)."""
    if shard is None:
        return None
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise bad_arg("shard", repr(shard), "(index, count), e.g. (0, 4) for the first of 4 shards") from None
    for v in (i, n):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise bad_arg("shard", repr(shard), "two integers (index, count)")
    if n < 1 or not 0 <= i < n:
        raise bad_arg("shard", f"{i}/{n}", f"an index in [0, {max(n, 1) - 1}] of a positive count")
    return int(i), int(n)


def _flat(state) -> list:
    return jax.tree_util.tree_flatten_with_path(state)[0]


def write_shard(out: Path, shard: tuple[int, int], passes: Sequence[Pass], results: dict, meta: dict | None = None) -> dict:
    """``out/shard_states.npz`` (every pass's sums), then ``out/shard.json`` (each written to a
    temporary name, then renamed; the record last). Returns the record."""
    arrays, layout = {}, {}
    for p in passes:
        leaves = _flat(results[p.name].states)
        layout[p.name] = [jax.tree_util.keystr(k) for k, _ in leaves]
        for j, (_, v) in enumerate(leaves):
            arrays[f"{p.name}__{j:04d}"] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(out / STATES_FILE, data)
    record = {
        "kind": "cfjax-shard", "version": 1, "fingerprint": run_fingerprint(passes), "shard": shard[0], "num_shards": shard[1],
        "states_file": STATES_FILE, "states_sha256": hashlib.sha256(data).hexdigest(),
        "passes": {p.name: {"rows_total": pass_rows(p), "rows": shard_rows(p, shard)[1], "rows_slice": _slice_list(pass_rows(p), shard),
                            "wall_s": results[p.name].wall_s, "resumed": results[p.name].resumed, "leaves": layout[p.name]} for p in passes},
        "n_devices": jax.device_count(), "n_processes": jax.process_count(), **(meta or {}),
    }
    atomic_write_json(out / SHARD_FILE, record)
    return record


def _slice_list(n: int, shard: tuple[int, int]) -> list:
    s = parallel.shard_slice(n, *shard)
    return [s.start, s.stop]


def read_shards(dirs) -> list[dict]:
    """The records of ``dirs``, checked to be ONE run's complete set of shards: each has a
    ``shard.json``, all share one fingerprint and shard count, and every index ``0..N-1`` is
    present exactly once. Sorted by shard index; each record gains ``"dir"``. Raises
    :class:`cfjax.InputError` (naming the folder at fault) otherwise."""
    dirs = [Path(d) for d in (dirs or [])]
    if not dirs:
        raise bad_arg("shards", "no folders", "the output folders of every shard of one run")
    recs = []
    for d in dirs:
        f = d / SHARD_FILE
        if not f.is_file():
            why = "no such folder" if not d.exists() else f"no {SHARD_FILE} (the shard has not finished: rerun it, it resumes)"
            raise bad_arg("shard folder", f"{str(d)!r}: {why}", f"a finished shard's folder (with {SHARD_FILE})")
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise bad_arg("shard folder", f"{str(f)!r} ({e})", f"a readable {SHARD_FILE}") from e
        if not isinstance(rec, dict) or rec.get("kind") != "cfjax-shard":
            raise bad_arg("shard folder", f"{str(f)!r}", f"a {SHARD_FILE} written by cfjax (kind 'cfjax-shard')")
        recs.append({**rec, "dir": str(d)})
    first = recs[0]
    for r in recs[1:]:
        if r["fingerprint"] != first["fingerprint"]:
            raise bad_arg("shard folder", f"{r['dir']!r} from another run (fingerprint {r['fingerprint']}, {first['dir']!r} has "
                          f"{first['fingerprint']})", "shards of ONE run: same method, data, config and models")
        if r["num_shards"] != first["num_shards"]:
            raise bad_arg("shard folder", f"{r['dir']!r} is shard {r['shard']}/{r['num_shards']}, {first['dir']!r} is "
                          f"{first['shard']}/{first['num_shards']}", "shards of one split (the same N in every --shard I/N)")
    n = first["num_shards"]
    seen: dict = {}
    for r in recs:
        if r["shard"] in seen:
            raise bad_arg("shard folder", f"shard {r['shard']}/{n} twice ({seen[r['shard']]!r} and {r['dir']!r})", "each shard once")
        seen[r["shard"]] = r["dir"]
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise bad_arg("shard folders", f"{len(recs)} of {n} shards; missing {', '.join(f'{i}/{n}' for i in missing)}",
                      f"all {n} shards of the run")
    return sorted(recs, key=lambda r: r["shard"])


def load_shard_states(rec: dict, passes: Sequence[Pass]) -> dict:
    """One shard's sums ``{pass: state}``, checked against the passes' evaluators."""
    f = Path(rec["dir"]) / rec.get("states_file", STATES_FILE)
    try:
        data = f.read_bytes()
    except OSError as e:
        raise bad_arg("shard folder", f"{rec['dir']!r} without its states ({e.strerror or e})", f"a finished shard with {STATES_FILE}") from e
    if hashlib.sha256(data).hexdigest() != rec.get("states_sha256"):
        raise bad_arg("shard folder", f"{str(f)!r} (its content does not match shard.json's digest)", "an intact shard: rerun the shard")
    arrays = np.load(io.BytesIO(data))
    out = {}
    for p in passes:
        template = jax.tree_util.tree_map(np.asarray, init_states(p.evaluators))
        leaves = _flat(template)
        names = [jax.tree_util.keystr(k) for k, _ in leaves]
        if rec["passes"].get(p.name, {}).get("leaves") != names:
            raise bad_arg("shard folder", f"{rec['dir']!r} (pass {p.name!r} has other evaluator sums)", "shards written by this cfjax version")
        vals = []
        for j, (_, t) in enumerate(leaves):
            v = arrays[f"{p.name}__{j:04d}"]
            if v.shape != t.shape:
                raise bad_arg("shard folder", f"{rec['dir']!r} (pass {p.name!r} leaf {names[j]} of shape {v.shape})", f"shape {t.shape}")
            vals.append(v.astype(t.dtype))
        out[p.name] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), vals)
    return out


def merge_results(records: Sequence[dict], passes: Sequence[Pass]) -> dict[str, PassResult]:
    """The shards' sums added per pass (exactly the sums of one unsharded run, up to float32
    summation order), finalized into :class:`PassResult` s (``wall_s``: the shards' total,
    ``resumed``: any shard resumed)."""
    fp = run_fingerprint(passes)
    if records[0]["fingerprint"] != fp or set(records[0]["passes"]) != {p.name for p in passes}:
        raise bad_arg("merge", f"shards of run {records[0]['fingerprint']} but this merge's config/models/data give run {fp}",
                      "the shards' own options (cfjax merge reads them from shard.json) and the same models (--models-dir)")
    states = [load_shard_states(r, passes) for r in records]
    out = {}
    for p in passes:
        merged = merge_states(*[s[p.name] for s in states])
        wall = float(sum(r["passes"][p.name]["wall_s"] for r in records))
        resumed = any(r["passes"][p.name]["resumed"] for r in records)
        out[p.name] = PassResult(finalize_states(p.evaluators, merged), merged, wall, resumed)
    return out


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

    def headline(self, ctx: Context, summary: dict) -> list:
        """``(label, value)`` pairs shown first in the report (method, data, classifier, n,
        validity, denoised validity, L1, the method's own key numbers, throughput)."""
        ...

    def checkpoint_every(self, config: Any) -> int: ...


def run_job(method: Method, dataset: str, out_dir, config: Any, *, data_dir=None, progress: bool = True, models: Any = None,
            shard: tuple[int, int] | None = None, merge=None, shard_meta: dict | None = None) -> dict:
    """Run ``method`` through the skeleton; returns the summary (written by process 0 to
    ``out_dir/summary.json`` with ``report.html`` and ``figures/``).

    Args:
      shard: ``(i, n)``: run the passes over shard ``i`` of ``n`` of every pass's rows only and
        write its sums and the run's fingerprint (``shard_states.npz``, ``shard.json``, plus
        ``shard_meta``) instead of a summary; returns the shard record.
      merge: the folders of every shard of one run: check them (:func:`read_shards`, before any
        loading), add their sums, and write the same ``summary.json`` and report as an unsharded
        run (and ``merge.json``: the shards merged); the passes are built (for their evaluators
        and fingerprint) but not run.
    """
    method.validate(dataset, config)
    shard = check_shard(shard)
    if shard is not None and merge is not None:
        raise bad_arg("shard", f"{shard[0]}/{shard[1]} with merge", "either a shard to compute or shards to merge, not both")
    records = read_shards(merge) if merge is not None else None
    out = check_writable_dir(out_dir, "out")
    lead = jax.process_index() == 0
    ctx = Context(dataset, out, config, data_dir, progress, lead, time.perf_counter())
    if models is None:
        models = parallel.process0_first(lambda: method.load(ctx))
    passes = list(method.passes(ctx, models))
    if records is not None:
        results = merge_results(records, passes)
    else:
        results = {}
        for p in passes:
            results[p.name] = run_pass(p, out, checkpoint_every=method.checkpoint_every(config), progress=progress, shard=shard,
                                       finalize=shard is None)
    if shard is not None:
        return write_shard(out, shard, passes, results, shard_meta) if lead else {"fingerprint": run_fingerprint(passes), "shard": shard[0]}
    summary = method.summarize(ctx, models, results)
    if not lead:
        return summary
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


__all__ = ["MERGE_FILE", "SHARD_FILE", "STATES_FILE", "Context", "Method", "Pass", "PassResult", "batched_predict", "check_shard",
           "global_chunk", "load_shard_states", "make_step", "merge_results", "pass_rows", "read_shards", "run_fingerprint", "run_job",
           "run_pass", "shard_rows", "write_outputs", "write_shard"]
