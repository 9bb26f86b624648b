"""The shard file format: a shard's record (``shard.json``) and sums (``shard_states.npz``), the
run's fingerprint that ties the shards of one run together, the checks a merge runs on every
shard before anything is loaded, the merge of their sums, and the ``cfjax global`` options a
shard records so that ``cfjax merge`` can rebuild the run's config (:func:`cli_record`,
:func:`recorded_options`).

Shards and merge (cluster engines: SLURM arrays, Kubernetes Indexed Jobs, Ray; see
``docs/scale.md``)::

    run_job(..., shard=(i, n))         the passes over shard i of n of every pass's rows (a
                                       contiguous split, before the per-process split), then
                                       out/shard_states.npz + out/shard.json (write_shard); no
                                       summary. Resumes from out/state/<pass> like any run.
    run_job(..., merge=[dir, ...])     read_shards (one run, every index once, every field,
                                       digest and states file checked), then merge_results (the
                                       shards' sums merged per evaluator) and an unsharded run's
                                       summary, figures, summary.json + report.html.

The run's fingerprint (:func:`run_fingerprint`) hashes every pass's ``run_config`` (method,
data, config, model digests, row count) without the result-neutral fields
(:data:`RESULT_NEUTRAL`: batch/chunk size, checkpoint spacing, ...) and never the shard index, so
all shards of one run share it, a shard retried with another batch size still merges, and a merge
whose own config or models differ from the shards' is refused (naming the fields that differ).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from cfjax import checkpoint as ckpt
from cfjax import parallel
from cfjax.errors import bad_arg
from cfjax.eval.evaluators import finalize_states, init_states, merge_states
from cfjax.io import atomic_write_bytes, atomic_write_json, jsonable, read_regular_file
from cfjax.jobs.passes import ROWS, Pass, PassResult, global_chunk, pass_rows, rows_evaluator, shard_rows, with_rows

SHARD_FILE = "shard.json"
"""A finished shard's record (written last: its presence marks a complete shard)."""
STATES_FILE = "shard_states.npz"
"""A shard's evaluator sums, one array per leaf (``<pass>__<i>``)."""
MERGE_FILE = "merge.json"
"""A merge's record of the shards it merged (their folders, rows and timings)."""


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


def without_neutral(d):
    """``d`` without the :data:`RESULT_NEUTRAL` fields, at its top level and in the dicts directly
    inside it."""
    if not isinstance(d, dict):
        return d
    return {k: ({kk: vv for kk, vv in v.items() if kk not in RESULT_NEUTRAL} if isinstance(v, dict) else v)
            for k, v in d.items() if k not in RESULT_NEUTRAL}


def run_description(passes: Sequence[Pass]) -> dict:
    """What the fingerprint hashes: every pass's ``run_config`` without the
    :data:`RESULT_NEUTRAL` fields, and its row count (JSON values)."""
    desc = {p.name: {"run": without_neutral(p.run_config), "rows": pass_rows(p)} for p in passes}
    return json.loads(json.dumps(desc, sort_keys=True, default=str))


def run_fingerprint(passes: Sequence[Pass]) -> str:
    """The run's identity: a hash of :func:`run_description` (never a shard index, a chunk size,
    a checkpoint spacing or a device count: shards may run on different machines)."""
    return short_hash(run_description(passes))


def short_hash(obj) -> str:
    """16 hex digits of the sha256 of ``obj``'s sorted JSON."""
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
    return jax.tree_util.keystr(_flat({ROWS: rows_evaluator().init()})[0][0])


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
        template = jax.tree_util.tree_map(np.asarray, init_states(with_rows(p.evaluators)))
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
    ``resumed``: any shard resumed, ``chunk_size``: the unsharded run's rows per step)."""
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
        out[p.name] = PassResult(finalize_states(p.evaluators, merged), merged, wall, resumed, global_chunk(p.chunk_size, pass_rows(p)))
    return out


def check_models_present(records: Sequence[dict], models_dir) -> None:
    """Before a merge loads anything: every model the shards used (``shard.json``'s ``models``)
    is a checkpoint under ``models_dir`` (a merge never trains). Raises
    :class:`cfjax.InputError` naming ``models_dir`` and the missing models."""
    need = {(m["kind"], m["digest"]) for r in records for m in r.get("models", [])}
    if not need:
        return
    have = ckpt.models_under(models_dir) if Path(models_dir).is_dir() else set()
    missing = sorted(need - have)
    if missing:
        names = ", ".join(f"{k} {dg[:12]}" for k, dg in missing[:4]) + (" ..." if len(missing) > 4 else "")
        raise bad_arg("models_dir", f"{str(models_dir)!r} without {names}",
                      "the folder holding the shards' models (merge never trains: pass the shards' --models-dir)")


# ------------------------------------------------------------------------------ the options a shard records

NOT_RUN_OPTIONS = frozenset({"_run", "out", "shard", "distributed", "coordinator", "num_processes", "process_id", "cpu_collectives",
                             "debug_nans", "command", "overwrite"})
"""Parsed `cfjax global` options that are not the run's (where it writes, which shard, the
multi-host flags): left out of a shard's ``cli`` record."""


def cli_record(method: str, options: dict) -> dict:
    """What ``cfjax merge`` needs to rebuild a `cfjax global METHOD` run's config (the
    ``shard_meta`` of :func:`write_shard`): the parsed options without :data:`NOT_RUN_OPTIONS`,
    with folders made absolute."""
    args = {k: v for k, v in options.items() if k not in NOT_RUN_OPTIONS}
    for k in ("data_dir", "models_dir"):
        if args.get(k):
            args[k] = str(Path(args[k]).resolve())
    return {"cli": {"command": "global", "method": method, "args": args}}


def _option_ok(act: argparse.Action, v) -> tuple[bool, str]:
    """Whether a recorded value ``v`` fits its option ``act`` (type or choices), and what fits."""
    if isinstance(act, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return isinstance(v, bool), "true or false"
    if v is None:
        return True, ""
    if act.choices is not None:
        return v in act.choices, f"one of {list(act.choices)}"
    if act.type in (int, float):
        ok = isinstance(v, (int, float) if act.type is float else int) and not isinstance(v, bool)
        return ok, f"{'a number' if act.type is float else 'an integer'} or null"
    return isinstance(v, str), "a string or null"


def recorded_options(rec: dict, actions_for: Callable[[str], dict]) -> argparse.Namespace:
    """The `cfjax global` options a shard recorded (``shard.json``'s ``cli``, :func:`cli_record`),
    checked against today's parser (``actions_for(method)``: its ``dest -> argparse action``):
    every option present, none unknown, each of its option's type or choices. Raises
    :class:`cfjax.InputError` naming the folder and the field."""
    where = f"shard folder {rec.get('dir')!r}, shard.json field"
    cli = rec.get("cli")
    if not isinstance(cli, dict) or cli.get("command") != "global" or cli.get("method") not in ("attack", "mirror"):
        raise bad_arg(f"{where} cli", repr(cli)[:60] if cli is not None else "absent",
                      "the `cfjax global attack|mirror ... --shard I/N` options (merge other shards in Python: run_job(..., merge=dirs))")
    args = cli.get("args")
    if not isinstance(args, dict):
        raise bad_arg(f"{where} cli.args", repr(args)[:60], "a dict of the run's options")
    actions = actions_for(cli["method"])
    expected = {d for d in actions if d not in NOT_RUN_OPTIONS and d != "help"}
    missing, unknown = sorted(expected - set(args)), sorted(set(args) - expected - {"method"})
    if missing:
        raise bad_arg(f"{where} cli.args", f"no {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}",
                      "every option of `cfjax global` (rerun the shard with this cfjax version)")
    if unknown:
        raise bad_arg(f"{where} cli.args", f"unknown options {', '.join(map(repr, unknown[:4]))}", "the options of `cfjax global " + cli["method"] + "`")
    for k in sorted(expected):
        ok, want = _option_ok(actions[k], args[k])
        if not ok:
            raise bad_arg(f"{where} cli.args.{k}", repr(args[k])[:60], want)
    return argparse.Namespace(**{**args, "method": cli["method"]})


__all__ = ["MAX_SHARDS", "MERGE_FILE", "NOT_RUN_OPTIONS", "RESULT_NEUTRAL", "SHARD_FILE", "SHARD_VERSION", "STATES_FILE", "check_models_present",
           "check_shard", "cli_record", "differences", "short_hash", "without_neutral", "load_shard_states", "merge_results", "read_shards", "recorded_options",
           "run_description", "run_fingerprint", "write_shard"]
