"""Who owns an output folder: one run (``run.json``), a lock while it writes, and the default
model cache beside its outputs (:func:`models_dir_for`).

The output folder belongs to ONE run. Process 0 locks it (:class:`cfjax.io.FolderLock`: a second
writer exits naming the first), a folder holding another run's files is refused before any
loading unless the caller passes ``overwrite=True`` (``--overwrite``), and the run's record is
written only once its data and models have loaded (:func:`settle`), so a run that fails to load
leaves nothing behind. A merge never writes into an input shard's folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from cfjax.errors import bad_arg
from cfjax.io import atomic_write_json, read_regular_file
from cfjax.jobs.shards import MERGE_FILE, SHARD_FILE, STATES_FILE, differences, short_hash, without_neutral

RUN_FILE = "run.json"
"""Which run an output folder's files belong to: ``{"kind": "cfjax-run", "identity", "desc", "fingerprint"}``."""
RUN_OUTPUTS = ("state", "per_example", "figures", "summary.json", "report.html", SHARD_FILE, STATES_FILE, MERGE_FILE, RUN_FILE)
"""A run's own files in its output folder (``models/``, the default model cache, is not one:
runs share it)."""
MODELS = "models"
"""The default model cache's folder name inside an output folder."""


def models_dir_for(out, given=None) -> Path:
    """The model cache of a run writing to ``out``: ``given`` when set, else ``out/models``."""
    return Path(given) if given is not None else Path(out) / MODELS


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
    desc = {"method": type(method).__name__, "dataset": dataset, "options": opts, "config": without_neutral(cfg), "role": role}
    if records is not None:
        desc["merge_of"] = {"fingerprint": records[0]["fingerprint"], "num_shards": records[0]["num_shards"]}
    return json.loads(json.dumps(desc, sort_keys=True, default=str))


def read_run_file(out: Path) -> dict | None:
    """``out/run.json`` (``None``: absent; ``{}``: unreadable, i.e. no known run's)."""
    f = out / RUN_FILE
    if not os.path.lexists(f):
        return None
    try:
        rec = json.loads(read_regular_file(f, f"out {RUN_FILE}", inside=out, max_bytes=16 << 20))
    except ValueError:  # InputError is a ValueError too: unreadable -> belongs to no known run
        return {}
    return rec if isinstance(rec, dict) else {}


def claim_check(out: Path, identity: dict, overwrite: bool) -> str:
    """``"fresh"`` (no run's files), ``"same"`` (this run's own: resume/redo) or ``"replace"``
    (another run's, ``overwrite``); refuses another run's folder otherwise. Reads only."""
    present = [n for n in RUN_OUTPUTS if os.path.lexists(out / n)]
    if not present:
        return "fresh"
    rec = read_run_file(out)
    if rec is not None and rec.get("identity") == short_hash(identity):
        return "same"
    if overwrite:
        return "replace"
    if not rec or not isinstance(rec.get("desc"), dict):
        what = f"outputs of another run ({', '.join(present[:4])}; no readable {RUN_FILE})"
    else:
        what = f"another run's outputs (it vs this run: {'; '.join(differences(rec['desc'], identity)) or 'other identity'})"
    raise bad_arg("out", f"{str(out)!r} holding {what}",
                  "an empty folder or this run's own (it resumes): pass --overwrite to replace them, or pick another --out")


def replace_outputs(out: Path) -> None:
    """Remove a run's own files (:data:`RUN_OUTPUTS`) from ``out`` (``models/`` stays)."""
    for n in RUN_OUTPUTS:
        f = out / n
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
        elif os.path.lexists(f):
            f.unlink()


def write_run_file(out: Path, identity: dict, fingerprint: str | None) -> None:
    atomic_write_json(out / RUN_FILE, {"kind": "cfjax-run", "identity": short_hash(identity), "fingerprint": fingerprint, "desc": identity})


def settle(out: Path, identity: dict, fingerprint: str, *, overwrite: bool) -> None:
    """Make ``out`` this run's, once its data and models have loaded (process 0, under the lock):
    refuse another run's files (:func:`claim_check`) or, with ``overwrite``, remove them; refuse
    the outputs of a run with the same options but other models or data (another fingerprint)
    unless ``overwrite``; then record the run in ``run.json``."""
    if claim_check(out, identity, overwrite) == "replace":
        replace_outputs(out)
    known = (read_run_file(out) or {}).get("fingerprint")
    if known not in (None, fingerprint):
        if not overwrite:
            raise bad_arg("out", f"{str(out)!r} holding the outputs of run {known} (same options, other models or data; this run is {fingerprint})",
                          "this run's own folder: pass --overwrite to replace them, or pick another --out")
        replace_outputs(out)
    write_run_file(out, identity, fingerprint)


def check_merge_out(out: Path, records: Sequence[dict]) -> None:
    """A merge's output folder is none of its input shard folders."""
    if not out.exists():
        return
    for r in records:
        if os.path.samefile(out, r["dir"]):
            raise bad_arg("out", f"{str(out)!r}, the folder of input shard {r['shard']}/{r['num_shards']}",
                          "a folder of its own for the merge (not an input shard's)")


__all__ = ["MODELS", "RUN_FILE", "RUN_OUTPUTS", "check_merge_out", "claim_check", "models_dir_for", "read_run_file", "replace_outputs",
           "run_identity", "settle", "write_run_file"]
