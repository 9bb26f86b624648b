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
data, config, model digests, row count) without the result-neutral fields
(:data:`RESULT_NEUTRAL`: batch/chunk size, checkpoint spacing, ...) and never the shard index, so
all shards of one run share it, a shard retried with another batch size still merges, and a merge
whose own config or models differ from the shards' is refused (naming the fields that differ).

The output folder belongs to ONE run (``run.json``): process 0 locks it (a second writer exits
naming the first), a folder holding another run's files is refused before any loading unless
``overwrite``, and a pass never leaves another run's per-example files beside its own. A merge
checks every shard's fields, digests and contents before loading anything, never trains or
writes models, and never writes into an input shard's folder.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import parallel
from cfjax.errors import bad_arg
from cfjax.eval.evaluators import Evaluator, finalize_states, init_states, merge_states, update_states
from cfjax.io import (FolderLock, atomic_write_bytes, atomic_write_json, check_writable_dir, jsonable, read_regular_file,
                      remove_stray_temporaries)

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


def run_pass(p: Pass, out: Path, *, checkpoint_every: int, progress: bool, shard: tuple[int, int] | None = None,
             finalize: bool = True) -> PassResult:
    """Stream ``p.data`` (or shard ``shard = (i, n)`` of it) through ``p.rows_fn`` and the
    evaluators (plus the skeleton's row count, :data:`ROWS`); resumes from ``out/state/<name>``.
    The compiled step holds at most the shard's rows (``p.chunk_size`` is capped at them)."""
    state_dir = out / "state" / p.name
    resumed = (state_dir / "accumulators").is_dir()
    data, n_rows = shard_rows(p, shard)
    evs = _with_rows(p.evaluators)
    t0 = time.perf_counter()
    if n_rows == 0:  # an empty shard (more shards than rows): zero sums
        acc = jax.tree_util.tree_map(np.asarray, init_states(evs))
        if jax.process_index() == 0 and (out / "per_example" / p.name).is_dir():
            import shutil

            shutil.rmtree(out / "per_example" / p.name)
    else:
        acc = parallel.explain_dataset(
            make_step(p.rows_fn, evs, p.outputs), init_states(evs), data, chunk_size=min(p.chunk_size, global_chunk(p.chunk_size, n_rows)),
            checkpoint_dir=state_dir, checkpoint_every=checkpoint_every,
            run_config=p.run_config if shard is None else {**p.run_config, "shard": list(shard)},
            outputs_dir=out / "per_example" / p.name if p.outputs else None, progress=progress, desc=p.desc or p.name,
        )
    wall = time.perf_counter() - t0
    return PassResult(finalize_states(p.evaluators, acc) if finalize else {}, acc, wall, resumed)


# ------------------------------------------------------------------------------ shards and merge

RESULT_NEUTRAL = ("batch_size", "chunk_size", "checkpoint_every", "max_decode", "lpips_weights", "figures", "n_figure_examples",
                  "figure_pairs", "record_every")
"""Config fields that never change a result (rows per compiled step, checkpoint spacing, the
memory bound of a step, the path of a sha256-checked weight file, what the figures show): left out of the run's
fingerprint and of an output folder's identity, so a shard retried with another batch size on
another machine still merges. Dropped at the top level of a ``run_config`` and of the dicts
directly inside it (e.g. ``run_config["cfg"]``), never deeper (a decoder's training batch size is
a model option, covered by the model's digest anyway)."""

SHARD_VERSION = 2
MAX_SHARDS = 1_000_000
_HEX = set("0123456789abcdef")
ROWS = "_rows"
"""The skeleton's own evaluator in every pass: the number of real rows (the mask's sum), which a
merge checks against the rows each ``shard.json`` records."""


def _rows_evaluator() -> Evaluator:
    from cfjax.eval.evaluators import counts

    return counts(ROWS, {"rows": "_mask"})


def _with_rows(evaluators: Sequence[Evaluator]) -> list:
    return [*evaluators, _rows_evaluator()]


def _neutral_free(d):
    if not isinstance(d, dict):
        return d
    return {k: ({kk: vv for kk, vv in v.items() if kk not in RESULT_NEUTRAL} if isinstance(v, dict) else v)
            for k, v in d.items() if k not in RESULT_NEUTRAL}


def run_description(passes: Sequence[Pass]) -> dict:
    """What the fingerprint hashes: every pass's ``run_config`` without the
    :data:`RESULT_NEUTRAL` fields, and its row count (JSON values)."""
    desc = {p.name: {"run": _neutral_free(p.run_config), "rows": pass_rows(p)} for p in passes}
    return json.loads(json.dumps(desc, sort_keys=True, default=str))


def run_fingerprint(passes: Sequence[Pass]) -> str:
    """The run's identity: a hash of :func:`run_description` (never a shard index, a chunk size,
    a checkpoint spacing or a device count: shards may run on different machines)."""
    return _hash(run_description(passes))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def differences(a, b, limit: int = 5, prefix: str = "") -> list[str]:
    """The fields where two JSON descriptions differ: ``["path: A vs B", ...]`` (at most
    ``limit`` entries, values shortened)."""
    out: list[str] = []

    def walk(x, y, path):
        if len(out) > limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k, "<absent>"), y.get(k, "<absent>"), f"{path}.{k}" if path else str(k))
        elif x != y:
            out.append(f"{path or '<root>'}: {_short(x, 40)} vs {_short(y, 40)}")

    walk(a, b, prefix)
    return out[:limit] + ([f"... ({len(out) - limit}+ more)"] if len(out) > limit else [])


def check_shard(shard) -> tuple[int, int] | None:
    """``None`` or a valid ``(index, count)`` (raises :class:`cfjax.InputError` naming ``shard``)."""
    if shard is None:
        return None
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise bad_arg("shard", _short(shard), "(index, count), e.g. (0, 4) for the first of 4 shards") from None
    for v in (i, n):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise bad_arg("shard", _short(shard), "two integers (index, count)")
    if not 1 <= n <= MAX_SHARDS or not 0 <= i < n:
        raise bad_arg("shard", f"{i}/{n}", f"an index in [0, count - 1] of a count in [1, {MAX_SHARDS:,}]")
    return int(i), int(n)


def _flat(state) -> list:
    return jax.tree_util.tree_flatten_with_path(state)[0]


def _record_digest(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k not in ("record_sha256", "dir")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_shard(out: Path, shard: tuple[int, int], passes: Sequence[Pass], results: dict, meta: dict | None = None,
                models: Sequence[dict] = ()) -> dict:
    """``out/shard_states.npz`` (every pass's sums), then ``out/shard.json`` (each written to a
    temporary name, then renamed; the record last, with a digest of itself and of the states).
    ``models``: the ``{"kind", "digest"}`` of every model the shard used (a merge checks they are
    there before loading anything). Returns the record."""
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
        "kind": "cfjax-shard", "version": SHARD_VERSION, "fingerprint": run_fingerprint(passes), "run": run_description(passes),
        "shard": shard[0], "num_shards": shard[1], "states_file": STATES_FILE, "states_sha256": hashlib.sha256(data).hexdigest(),
        "passes": {p.name: {"rows_total": pass_rows(p), "rows": shard_rows(p, shard)[1], "rows_slice": _slice_list(pass_rows(p), shard),
                            "wall_s": results[p.name].wall_s, "resumed": results[p.name].resumed, "leaves": layout[p.name]} for p in passes},
        "models": sorted((dict(m) for m in models), key=lambda m: (m["kind"], str(m["digest"]))),
        "n_devices": jax.device_count(), "n_processes": jax.process_count(), **(meta or {}),
    }
    record = jsonable(record)
    record["record_sha256"] = _record_digest(record)
    atomic_write_json(out / SHARD_FILE, record)
    return record


def _slice_list(n: int, shard: tuple[int, int]) -> list:
    s = parallel.shard_slice(n, *shard)
    return [s.start, s.stop]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_hex(v, n: int) -> bool:
    return isinstance(v, str) and len(v) == n and set(v) <= _HEX


def _field_error(d, field: str, got, expected: str) -> Exception:
    return bad_arg(f"shard folder {str(d)!r}, shard.json field {field}", got, expected)


def _check_record(rec, d: Path) -> dict:
    """One ``shard.json``'s fields, each checked (types, ranges, the rows against the split, its
    own digest); raises :class:`cfjax.InputError` naming the folder and the field."""
    if not isinstance(rec, dict) or rec.get("kind") != "cfjax-shard":
        raise bad_arg(f"shard folder {str(d)!r}", f"a {SHARD_FILE} of kind {_short(rec.get('kind') if isinstance(rec, dict) else rec)}",
                      f"a {SHARD_FILE} written by cfjax (kind 'cfjax-shard')")
    if rec.get("version") != SHARD_VERSION:
        raise _field_error(d, "version", _short(rec.get("version")), f"{SHARD_VERSION} (rerun the shard with this cfjax version)")
    if not _is_hex(rec.get("fingerprint"), 16):
        raise _field_error(d, "fingerprint", _short(rec.get("fingerprint", "<absent>")), "the run's fingerprint (16 hex digits)")
    n, i = rec.get("num_shards", "<absent>"), rec.get("shard", "<absent>")
    if not _is_int(n) or not 1 <= n <= MAX_SHARDS:
        raise _field_error(d, "num_shards", f"{_short(n, 24)} ({type(n).__name__})", f"an integer in [1, {MAX_SHARDS:,}]")
    if not _is_int(i) or not 0 <= i < n:
        raise _field_error(d, "shard", f"{_short(i, 24)} ({type(i).__name__})", f"an integer in [0, {n - 1}]")
    if rec.get("states_file") != STATES_FILE:
        raise _field_error(d, "states_file", _short(rec.get("states_file", "<absent>")), f"{STATES_FILE!r} (a file inside the shard folder)")
    if not _is_hex(rec.get("states_sha256"), 64):
        raise _field_error(d, "states_sha256", _short(rec.get("states_sha256", "<absent>")), "a sha256 (64 hex digits)")
    if not isinstance(rec.get("run"), dict):
        raise _field_error(d, "run", _short(rec.get("run", "<absent>")), "the run's description (a dict)")
    models = rec.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and isinstance(m.get("kind"), str) and isinstance(m.get("digest"), str)
                                               for m in models):
        raise _field_error(d, "models", _short(models), "a list of {kind, digest}")
    passes = rec.get("passes")
    if not isinstance(passes, dict) or not passes:
        raise _field_error(d, "passes", _short(passes), "a dict of the passes' rows")
    for name, p in passes.items():
        f = f"passes.{name}"
        if not isinstance(p, dict):
            raise _field_error(d, f, _short(p), "a dict")
        total = p.get("rows_total")
        if not _is_int(total) or total < 0:
            raise _field_error(d, f"{f}.rows_total", _short(total), "a non-negative integer")
        want = _slice_list(total, (i, n))
        if p.get("rows_slice") != want:
            raise _field_error(d, f"{f}.rows_slice", _short(p.get("rows_slice")), f"{want} (shard {i}/{n} of {total} rows)")
        if not _is_int(p.get("rows")) or p["rows"] != want[1] - want[0]:
            raise _field_error(d, f"{f}.rows", _short(p.get("rows")), f"{want[1] - want[0]} (shard {i}/{n} of {total} rows)")
        w = p.get("wall_s")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise _field_error(d, f"{f}.wall_s", _short(w), "a non-negative number of seconds")
        if not isinstance(p.get("resumed"), bool):
            raise _field_error(d, f"{f}.resumed", _short(p.get("resumed")), "true or false")
        leaves = p.get("leaves")
        if not isinstance(leaves, list) or not all(isinstance(x, str) for x in leaves) or not 0 < len(leaves) <= 100_000:
            raise _field_error(d, f"{f}.leaves", _short(leaves), "the list of its sums' names")
    if rec.get("record_sha256") != _record_digest(rec):
        raise _field_error(d, "record_sha256", "a record that no longer matches it (shard.json was edited after the shard wrote it)",
                           "the shard's own record: rerun the shard (it resumes)")
    return rec


def _states_leaf_name() -> str:
    return jax.tree_util.keystr(_flat({ROWS: _rows_evaluator().init()})[0][0])


def _verify_states(rec: dict) -> dict:
    """Read and check one shard's states file before anything is loaded: a regular file inside
    the folder matching its digest, a plain numeric ``.npz`` (no pickled objects) holding exactly
    the leaves ``shard.json`` lists, and for every pass a row count equal to its ``rows``.
    Returns ``{key: array}``."""
    d = Path(rec["dir"])
    data = read_regular_file(d / STATES_FILE, f"shard folder {str(d)!r}, states file", inside=d)
    if hashlib.sha256(data).hexdigest() != rec["states_sha256"]:
        raise _field_error(d, "states_sha256", f"{STATES_FILE} with other content", "an intact shard: rerun the shard")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        keys = set(npz.files)
    except (ValueError, OSError, EOFError) as e:
        raise bad_arg(f"shard folder {str(d)!r}, {STATES_FILE}", _short(str(e)), "a numpy .npz of the shard's sums") from e
    arrays, rows_leaf = {}, _states_leaf_name()
    for name, p in rec["passes"].items():
        for j, leaf in enumerate(p["leaves"]):
            key = f"{name}__{j:04d}"
            if key not in keys:
                raise bad_arg(f"shard folder {str(d)!r}, {STATES_FILE} array {key}", "absent", f"the sum {leaf} of pass {name!r}")
            try:
                v = npz[key]
            except ValueError as e:  # an object array: would need pickle
                raise bad_arg(f"shard folder {str(d)!r}, {STATES_FILE} array {key}", _short(str(e)), "a numeric array") from e
            if v.dtype.kind not in "fiub":
                raise bad_arg(f"shard folder {str(d)!r}, {STATES_FILE} array {key}", f"dtype {v.dtype}", "a numeric array")
            arrays[key] = v
        if rows_leaf not in p["leaves"]:
            raise _field_error(d, f"passes.{name}.leaves", f"no {rows_leaf}", "the skeleton's row count among the sums")
        counted = float(np.asarray(arrays[f"{name}__{p['leaves'].index(rows_leaf):04d}"]).sum())
        if not math.isfinite(counted) or abs(counted - p["rows"]) > max(0.5, 1e-6 * p["rows"]):
            raise _field_error(d, f"passes.{name}.rows", f"{p['rows']} while its sums count {counted:.0f} rows", "the rows its states hold")
    extra = sorted(keys - set(arrays))
    if extra:
        raise bad_arg(f"shard folder {str(d)!r}, {STATES_FILE}", f"arrays {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} "
                      "that shard.json does not list", "only the sums shard.json lists")
    return arrays


def read_shards(dirs) -> list[dict]:
    """The records of ``dirs``, checked to be ONE run's complete set of intact shards, before
    anything is loaded or written: each folder has a regular ``shard.json`` (not a link, pipe or
    device) whose every field is checked (:func:`_check_record`: types, ranges, rows against the
    split, its own digest); all share one fingerprint (a refusal lists the fields that differ),
    shard count and passes; every index ``0..N-1`` is present exactly once; every states file
    (inside its folder, a regular file) matches its digest, holds plain numeric arrays and counts
    the rows its record states. Sorted by shard index; each record gains ``"dir"`` and the private
    ``"_states"`` (the verified arrays). Raises :class:`cfjax.InputError` naming the folder and
    the field."""
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    dirs = [Path(d) for d in (dirs or [])]
    if not dirs:
        raise bad_arg("shards", "no folders", "the output folders of every shard of one run")
    recs = []
    for d in dirs:
        f = d / SHARD_FILE
        if not d.is_dir():
            raise bad_arg(f"shard folder {str(d)!r}", "no such folder" if not d.exists() else "not a folder", "a finished shard's folder")
        if not os.path.lexists(f):
            raise bad_arg(f"shard folder {str(d)!r}", f"no {SHARD_FILE} (the shard has not finished: rerun it, it resumes)",
                          f"a finished shard's folder (with {SHARD_FILE})")
        raw = read_regular_file(f, f"shard folder {str(d)!r}, {SHARD_FILE}", inside=d, max_bytes=64 << 20)
        try:
            rec = json.loads(raw)
        except ValueError as e:
            raise bad_arg(f"shard folder {str(d)!r}, {SHARD_FILE}", _short(str(e)), "valid JSON") from e
        recs.append({**_check_record(rec, d), "dir": str(d)})
    first = recs[0]
    for r in recs[1:]:
        if r["fingerprint"] != first["fingerprint"]:
            diff = "; ".join(differences(first["run"], r["run"])) or "the same options, other fingerprints"
            raise bad_arg(f"shard folder {r['dir']!r}", f"a shard of another run ({first['dir']!r} vs it: {diff})",
                          "shards of ONE run: same method, data, config and models")
        if r["num_shards"] != first["num_shards"]:
            raise bad_arg(f"shard folder {r['dir']!r}", f"shard {r['shard']}/{r['num_shards']} while {first['dir']!r} is "
                          f"{first['shard']}/{first['num_shards']}", "shards of one split (the same N in every --shard I/N)")
        if set(r["passes"]) != set(first["passes"]) or any(r["passes"][k]["rows_total"] != v["rows_total"] for k, v in first["passes"].items()):
            raise bad_arg(f"shard folder {r['dir']!r}", "other passes or row totals than the first shard's", "shards of one run")
    n = first["num_shards"]
    seen: dict = {}
    for r in recs:
        if r["shard"] in seen:
            raise bad_arg("shard folders", f"shard {r['shard']}/{n} twice ({seen[r['shard']]!r} and {r['dir']!r})", "each shard once")
        seen[r["shard"]] = r["dir"]
    if len(seen) < n:
        missing = []
        for i in range(n):
            if i not in seen:
                missing.append(f"{i}/{n}")
                if len(missing) == 5:
                    break
        more = n - len(seen) - len(missing)
        raise bad_arg("shard folders", f"{len(recs)} of {n} shards; missing {', '.join(missing)}{f' and {more:,} more' if more else ''}",
                      f"all {n:,} shards of the run")
    recs = sorted(recs, key=lambda r: r["shard"])
    for r in recs:  # digests and contents of every shard before any data or model is loaded
        r["_states"] = _verify_states(r)
    return recs


def load_shard_states(rec: dict, passes: Sequence[Pass]) -> dict:
    """One shard's sums ``{pass: state}`` (verified by :func:`read_shards`), checked against the
    passes' evaluators."""
    arrays = rec.get("_states")
    if arrays is None:
        arrays = _verify_states(rec)
    out = {}
    for p in passes:
        template = jax.tree_util.tree_map(np.asarray, init_states(_with_rows(p.evaluators)))
        leaves = _flat(template)
        names = [jax.tree_util.keystr(k) for k, _ in leaves]
        if rec["passes"].get(p.name, {}).get("leaves") != names:
            raise bad_arg(f"shard folder {rec['dir']!r}", f"pass {p.name!r} with other evaluator sums", "shards written by this cfjax version")
        vals = []
        for j, (_, t) in enumerate(leaves):
            v = arrays[f"{p.name}__{j:04d}"]
            if v.shape != t.shape:
                raise bad_arg(f"shard folder {rec['dir']!r}", f"pass {p.name!r} leaf {names[j]} of shape {v.shape}", f"shape {t.shape}")
            vals.append(v.astype(t.dtype))
        out[p.name] = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), vals)
    return out


def merge_results(records: Sequence[dict], passes: Sequence[Pass]) -> dict[str, PassResult]:
    """The shards' sums added per pass (exactly the sums of one unsharded run, up to float32
    summation order), finalized into :class:`PassResult` s (``wall_s``: the shards' total,
    ``resumed``: any shard resumed)."""
    fp = run_fingerprint(passes)
    if records[0]["fingerprint"] != fp or set(records[0]["passes"]) != {p.name for p in passes}:
        diff = "; ".join(differences(records[0].get("run", {}), run_description(passes))) or "other passes"
        raise bad_arg("merge", f"shards of run {records[0]['fingerprint']} while this merge's config/models/data give run {fp} "
                      f"(shards vs merge: {diff})",
                      "the shards' own options (cfjax merge reads them from shard.json) and the same models (--models-dir)")
    states = [load_shard_states(r, passes) for r in records]
    out = {}
    for p in passes:
        merged = merge_states(*[s[p.name] for s in states], evaluators=p.evaluators)
        wall = float(sum(r["passes"][p.name]["wall_s"] for r in records))
        resumed = any(r["passes"][p.name]["resumed"] for r in records)
        out[p.name] = PassResult(finalize_states(p.evaluators, merged), merged, wall, resumed)
    return out


def check_models_present(records: Sequence[dict], models_dir) -> None:
    """Before a merge loads anything: every model the shards used (``shard.json``'s ``models``)
    is a checkpoint under ``models_dir`` (a merge never trains). Raises
    :class:`cfjax.InputError` naming ``models_dir`` and the missing models."""
    from cfjax import checkpoint as ckpt

    need = {(m["kind"], m["digest"]) for r in records for m in r.get("models", [])}
    if not need:
        return
    have = ckpt.models_under(models_dir) if Path(models_dir).is_dir() else set()
    missing = sorted(need - have)
    if missing:
        names = ", ".join(f"{k} {dg[:12]}" for k, dg in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise bad_arg("models_dir", f"{str(models_dir)!r} without {names}",
                      "the folder holding the shards' models (merge never trains: pass the shards' --models-dir)")


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

    # Optional: ``models_dir`` (where ``load`` reads and caches models; ``None``: ``out/models``),
    # used by a merge to check that the shards' models are there before loading them. Public
    # attributes holding plain values (str, numbers, tuples...) are the method's options and
    # enter the output folder's identity (:func:`run_identity`).


# ------------------------------------------------------------------------------ the output folder

RUN_FILE = "run.json"
"""Which run an output folder's files belong to: ``{"kind": "cfjax-run", "identity", "desc", "fingerprint"}``."""
RUN_OUTPUTS = ("state", "per_example", "figures", "summary.json", "report.html", SHARD_FILE, STATES_FILE, MERGE_FILE, RUN_FILE)
"""A run's own files in its output folder (``models/``, the default model cache, is not one:
runs share it)."""
_OVERWRITE: contextvars.ContextVar = contextvars.ContextVar("cfjax_overwrite", default=False)


@contextlib.contextmanager
def overwrite_outputs(on: bool = True):
    """Inside the block, :func:`run_job` replaces another run's outputs in its output folder
    instead of refusing (``--overwrite`` on the command line)."""
    token = _OVERWRITE.set(bool(on))
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


def _plain(v) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def run_identity(method, dataset: str, config: Any, shard: tuple[int, int] | None = None, records: Sequence[dict] | None = None) -> dict:
    """What an output folder's files belong to, known before anything is loaded: the method and
    its plain options, the dataset, the config (without :data:`RESULT_NEUTRAL` fields) and the
    role (a run, shard ``i/n``, or the merge of a run's shards)."""
    opts = {k: v for k, v in vars(method).items() if not k.startswith("_") and k not in ("models_dir", "pairs_arg") and _plain(v)}
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config)
    role = "merge" if records is not None else ("run" if shard is None else f"shard {shard[0]}/{shard[1]}")
    desc = {"method": type(method).__name__, "dataset": dataset, "options": opts, "config": _neutral_free(cfg), "role": role}
    if records is not None:
        desc["merge_of"] = {"fingerprint": records[0]["fingerprint"], "num_shards": records[0]["num_shards"]}
    return json.loads(json.dumps(desc, sort_keys=True, default=str))


def _read_run_file(out: Path) -> dict | None:
    f = out / RUN_FILE
    if not os.path.lexists(f):
        return None
    try:
        rec = json.loads(read_regular_file(f, f"out {RUN_FILE}", inside=out, max_bytes=16 << 20))
    except ValueError:  # InputError is a ValueError too: unreadable -> belongs to no known run
        return {}
    return rec if isinstance(rec, dict) else {}


def _claim_check(out: Path, identity: dict, overwrite: bool) -> str:
    """``"fresh"`` (no run's files), ``"same"`` (this run's own: resume/redo) or ``"replace"``
    (another run's, ``overwrite``); refuses another run's folder otherwise. Reads only."""
    present = [n for n in RUN_OUTPUTS if os.path.lexists(out / n)]
    if not present:
        return "fresh"
    rec = _read_run_file(out)
    if rec is not None and rec.get("identity") == _hash(identity):
        return "same"
    if overwrite:
        return "replace"
    if not rec or not isinstance(rec.get("desc"), dict):
        what = f"outputs of another run ({', '.join(present[:4])}; no readable {RUN_FILE})"
    else:
        what = f"another run's outputs (it vs this run: {'; '.join(differences(rec['desc'], identity)) or 'other identity'})"
    raise bad_arg("out", f"{str(out)!r} holding {what}",
                  "an empty folder or this run's own (it resumes): pass --overwrite to replace them, or pick another --out")


def _replace_outputs(out: Path) -> None:
    """Remove a run's own files (:data:`RUN_OUTPUTS`) from ``out`` (``models/`` stays)."""
    import shutil

    for n in RUN_OUTPUTS:
        f = out / n
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
        elif os.path.lexists(f):
            f.unlink()


def _write_run_file(out: Path, identity: dict, fingerprint: str | None) -> None:
    atomic_write_json(out / RUN_FILE, {"kind": "cfjax-run", "identity": _hash(identity), "fingerprint": fingerprint, "desc": identity})


def _check_merge_out(out: Path, records: Sequence[dict]) -> None:
    """A merge's output folder is none of its input shard folders."""
    if not out.exists():
        return
    for r in records:
        if os.path.samefile(out, r["dir"]):
            raise bad_arg("out", f"{str(out)!r}, the folder of input shard {r['shard']}/{r['num_shards']}",
                          "a folder of its own for the merge (not an input shard's)")


def run_job(method: Method, dataset: str, out_dir, config: Any, *, data_dir=None, progress: bool = True, models: Any = None,
            shard: tuple[int, int] | None = None, merge=None, shard_meta: dict | None = None, overwrite: bool | None = None) -> dict:
    """Run ``method`` through the skeleton; returns the summary (written by process 0 to
    ``out_dir/summary.json`` with ``report.html`` and ``figures/``).

    The output folder belongs to one run. Process 0 locks it (:class:`cfjax.io.FolderLock`: a
    second writer is refused, naming the first; a dead run's lock is taken over), removes the
    temporary files a killed run left, and records the run in ``out_dir/run.json``. A folder
    holding another run's files (another method, dataset, config, role or models) is refused
    before anything is loaded, unless ``overwrite`` (default: :func:`overwrite_outputs`), which
    first removes them (:data:`RUN_OUTPUTS`; ``models/`` stays). The same run again resumes.

    Args:
      shard: ``(i, n)``: run the passes over shard ``i`` of ``n`` of every pass's rows only and
        write its sums and the run's fingerprint (``shard_states.npz``, ``shard.json``, plus
        ``shard_meta``) instead of a summary; returns the shard record.
      merge: the folders of every shard of one run: check them completely (:func:`read_shards`:
        fields, digests, contents, row counts; before any loading or writing), check that the
        models they used are under the method's ``models_dir`` (:func:`check_models_present`;
        a merge never trains or writes models), add their sums, and write the same
        ``summary.json`` and report as an unsharded run (and ``merge.json``: the shards merged);
        the passes are built (for their evaluators and fingerprint) but not run. ``out_dir`` may
        not be an input shard's folder.
      overwrite: replace another run's outputs in ``out_dir`` instead of refusing.
    """
    method.validate(dataset, config)
    shard = check_shard(shard)
    if shard is not None and merge is not None:
        raise bad_arg("shard", f"{shard[0]}/{shard[1]} with merge", "either a shard to compute or shards to merge, not both")
    overwrite = _OVERWRITE.get() if overwrite is None else bool(overwrite)
    records = read_shards(merge) if merge is not None else None  # every shard's files, before anything is loaded or written
    out = Path(out_dir)
    if records is not None:
        _check_merge_out(out, records)
    identity = run_identity(method, dataset, config, shard, records)
    lead = jax.process_index() == 0
    if lead and out.is_dir():  # refuse a busy folder or another run's before creating or loading anything
        FolderLock(out, "out").check()
        _claim_check(out, identity, overwrite)
    created = not out.exists()
    out = check_writable_dir(out, "out")
    lock = FolderLock(out, "out") if lead else None
    try:
        if lock is not None:
            lock.acquire()
            remove_stray_temporaries(out)
            action = _claim_check(out, identity, overwrite)  # again, now that no one else writes here
            if records is None:  # a run's files from now on are this run's (a merge writes nothing before it succeeds)
                if action == "replace":
                    _replace_outputs(out)
                _write_run_file(out, identity, (_read_run_file(out) or {}).get("fingerprint") if action == "same" else None)
        return _run_locked(method, dataset, out, config, data_dir=data_dir, progress=progress, models=models, shard=shard,
                           records=records, shard_meta=shard_meta, overwrite=overwrite, identity=identity, lead=lead)
    finally:
        if lock is not None:
            lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a refused run leaves no empty folder behind


def _run_locked(method: Method, dataset: str, out: Path, config: Any, *, data_dir, progress: bool, models: Any, shard, records,
                shard_meta, overwrite: bool, identity: dict, lead: bool) -> dict:
    from cfjax import checkpoint as ckpt

    ctx = Context(dataset, out, config, data_dir, progress, lead, time.perf_counter())
    guard = ckpt.read_only("cfjax merge never trains or writes models") if records is not None else contextlib.nullcontext()
    with ckpt.track_models() as used, guard:
        if models is None:
            if records is not None:
                check_models_present(records, getattr(method, "models_dir", None) or out / "models")
            models = parallel.process0_first(lambda: method.load(ctx))
        passes = list(method.passes(ctx, models))
    fp = run_fingerprint(passes)
    if records is not None:
        results = merge_results(records, passes)
    else:
        if lead:
            known = (_read_run_file(out) or {}).get("fingerprint")
            if known not in (None, fp):
                if not overwrite:
                    raise bad_arg("out", f"{str(out)!r} holding the outputs of run {known} (same options, other models or data; this run is {fp})",
                                  "this run's own folder: pass --overwrite to replace them, or pick another --out")
                _replace_outputs(out)
            _write_run_file(out, identity, fp)
        results = {}
        for p in passes:
            results[p.name] = run_pass(p, out, checkpoint_every=method.checkpoint_every(config), progress=progress, shard=shard,
                                       finalize=shard is None)
    if shard is not None:
        if not lead:
            return {"fingerprint": fp, "shard": shard[0]}
        return write_shard(out, shard, passes, results, shard_meta, models=list(used.values()))
    summary = method.summarize(ctx, models, results)
    if not lead:
        return summary
    if records is not None:
        if _claim_check(out, identity, overwrite) == "replace":
            _replace_outputs(out)
        _write_run_file(out, identity, records[0]["fingerprint"])
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


__all__ = ["MERGE_FILE", "RESULT_NEUTRAL", "RUN_FILE", "RUN_OUTPUTS", "SHARD_FILE", "STATES_FILE", "Context", "Method", "Pass", "PassResult",
           "batched_predict", "check_models_present", "check_shard", "differences", "global_chunk", "load_shard_states", "make_step",
           "merge_results", "overwrite_outputs", "pass_rows", "read_shards", "run_description", "run_fingerprint", "run_identity", "run_job",
           "run_pass", "shard_rows", "write_outputs", "write_shard"]
