"""Atomic orbax checkpoints with a JSON sidecar that guards against mismatches.

A checkpoint is a directory holding orbax's files plus ``cfjax_meta.json``:
``{"kind": ..., "config": {...}, "digest": sha256 of the leaves, ...}``. It is written
under a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint under the final name. :func:`restore` refuses a checkpoint whose ``kind`` or
``config`` differ from what the caller expects, or whose content no longer matches its
digest (a truncated or corrupted file), with a :class:`~cfjax.errors.CheckpointError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from cfjax.errors import CheckpointError
from cfjax.io import jsonable

META = "cfjax_meta.json"

NOT_MODELS = ("explain-accumulators",)
"""Checkpoint kinds that are run state, not models (so are kinds ending in ``-train-state``)."""
_TRACKERS: list[dict] = []
_READ_ONLY: list[str] = []


@contextlib.contextmanager
def track_models():
    """Collect the models saved or restored inside the ``with`` block: yields a dict
    ``{absolute path: {"kind", "digest"}}`` (the last write of a path wins; run state such as
    accumulators and ``*-train-state`` checkpoints is left out). A shard records them so that
    ``cfjax merge`` can check, before loading anything, that the models it needs are there."""
    seen: dict = {}
    _TRACKERS.append(seen)
    try:
        yield seen
    finally:
        _TRACKERS.remove(seen)


@contextlib.contextmanager
def read_only(reason: str):
    """Inside the block :func:`save` refuses to write (a :class:`CheckpointError` naming
    ``reason`` and the path): e.g. a merge, which must never train or write models."""
    _READ_ONLY.append(reason)
    try:
        yield
    finally:
        _READ_ONLY.pop()


def _note(path: Path, kind: str, digest) -> None:
    if not _TRACKERS or kind in NOT_MODELS or str(kind).endswith("-train-state"):
        return
    for t in _TRACKERS:
        t[str(path)] = {"kind": kind, "digest": digest}


def tree_digest(tree) -> str:
    """sha256 over the leaves' dtypes, shapes and bytes, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def recorded_config(cfg: Any, off: dict[str, Any]) -> dict:
    """A config dataclass as recorded in checkpoints and cache names: every field, except the
    options in ``off`` that sit at their off value (so that checkpoints written before an option
    existed still match a config that leaves it off)."""
    d = dataclasses.asdict(cfg)
    for k, v in off.items():
        if d[k] == v:
            d.pop(k)
    return d


def _checkpointer() -> "ocp.StandardCheckpointer":
    """An orbax checkpointer local to this process.

    cfjax checkpoints hold host (numpy) trees that every process has in full, so each process
    reads and writes on its own: no cross-process barriers, which would otherwise deadlock a
    multi-host run where only process 0 saves (explain accumulators) or processes load the
    models at different moments."""
    pi = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=pi, active_processes={pi}, barrier_sync_key_prefix=f"cfjax-local-{pi}")
    return ocp.StandardCheckpointer(multiprocessing_options=mp)


def save(path: str | os.PathLike, tree, *, kind: str, config: dict | None = None, extra: dict | None = None) -> Path:
    """Atomically write ``tree`` (a pytree of arrays) to the directory ``path``.

    Args:
      path: final checkpoint directory; replaced if it exists.
      tree: pytree of arrays (device arrays are fetched to the host).
      kind: what the tree is (``"classifier"``, ``"vae"``, ``"accumulators"``...).
      config: the config the tree was made with; :func:`restore` compares against it.
      extra: more JSON-able metadata (metrics, epoch, cursor...).

    Returns:
      The final path.
    """
    path = Path(path).absolute()
    if _READ_ONLY:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected no write ({_READ_ONLY[-1]}), got a {kind!r} checkpoint to save "
                              "(the models it needs are missing or differ)")
    path.parent.mkdir(parents=True, exist_ok=True)
    host_tree = jax.tree_util.tree_map(np.asarray, tree)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        ckptr = _checkpointer()
        ckptr.save(tmp / "state", host_tree)
        ckptr.wait_until_finished()
        digest = tree_digest(host_tree)
        meta = {"kind": kind, "config": jsonable(config or {}, keep_nonfinite=True), "digest": digest,
                "extra": jsonable(extra or {}, keep_nonfinite=True)}
        with open(tmp / META, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _note(path, kind, digest)
    return path


def models_under(root: str | os.PathLike, depth: int = 4) -> set[tuple[str, str]]:
    """``{(kind, digest)}`` of the model checkpoints up to ``depth`` folders below ``root``
    (reads only the JSON sidecars; run state is left out, as in :func:`track_models`)."""
    root, found = Path(root), set()
    for d in range(1, depth + 1):
        for f in root.glob("/".join(["*"] * d) + "/" + META):
            try:
                meta = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            kind = meta.get("kind") if isinstance(meta, dict) else None
            if isinstance(kind, str) and kind not in NOT_MODELS and not kind.endswith("-train-state"):
                found.add((kind, str(meta.get("digest"))))
    return found


def read_meta(path: str | os.PathLike) -> dict:
    """The sidecar metadata of a checkpoint; raises :class:`CheckpointError` if absent."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: expected a checkpoint directory, got missing path {str(path)!r}")
    try:
        with open(path / META) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a readable {META}, got {type(e).__name__}: {e}") from e


def matches(path: str | os.PathLike, kind: str, config: dict) -> bool:
    """Whether ``path`` holds a checkpoint of ``kind`` written with ``config`` (compared as
    :func:`save` records it, :func:`cfjax.io.jsonable`), judged from the sidecar alone: a
    missing or unreadable checkpoint is not a match. The "is this cached model mine?" test of
    every ``load_or_train_*``; :func:`restore` still checks the content's digest."""
    try:
        meta = read_meta(path)
    except CheckpointError:
        return False
    return isinstance(meta, dict) and meta.get("kind") == kind and meta.get("config") == jsonable(config, keep_nonfinite=True)


def _diff(expected: dict, got: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(expected) | set(got)):
        a, b = expected.get(k, "<absent>"), got.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint has {b!r}, expected {a!r}")
    return out


def restore(
    path: str | os.PathLike,
    target=None,
    *,
    kind: str | None = None,
    config: dict | None = None,
) -> tuple[Any, dict]:
    """Restore a checkpoint written by :func:`save`.

    Args:
      path: the checkpoint directory.
      target: a pytree with the expected structure/shapes/dtypes (recommended: a
        structural mismatch then fails with a clear error).
      kind: expected ``kind``; a different one is refused.
      config: expected config; any differing field is refused and listed.

    Returns:
      ``(tree, meta)`` with numpy leaves.
    """
    path = Path(path).absolute()
    meta = read_meta(path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected kind {kind!r}, got {meta.get('kind')!r}")
    if config is not None:
        diffs = _diff(jsonable(config, keep_nonfinite=True), meta.get("config", {}))
        if diffs:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for another config; refusing to load it:\n  "
                + "\n  ".join(diffs)
                + "\nDelete it or point --out elsewhere to train a new one."
            )
    try:
        ckptr = _checkpointer()
        if target is not None:
            target = jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), np.asarray(a).dtype), target)
            tree = ckptr.restore(path / "state", target)
        else:
            tree = ckptr.restore(path / "state")
    except Exception as e:  # orbax raises many types for corrupt/mismatched files
        raise CheckpointError(
            f"checkpoint {str(path)!r}: could not be read ({type(e).__name__}: {str(e)[:300]}); "
            "expected an intact checkpoint of the same architecture"
        ) from e
    tree = jax.tree_util.tree_map(np.asarray, tree)
    if tree_digest(tree) != meta.get("digest"):
        raise CheckpointError(f"checkpoint {str(path)!r}: content does not match its digest (truncated or corrupted files)")
    _note(path, meta.get("kind"), meta.get("digest"))
    return tree, meta
