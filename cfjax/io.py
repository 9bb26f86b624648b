"""Atomic file writes: write to a temporary name in the same directory, then rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from cfjax.errors import bad_arg


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _clean(o.item())
    return o


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """JSON (NaN/Inf written as null, numpy scalars as numbers), atomically."""
    return atomic_write_bytes(path, json.dumps(_clean(obj), indent=1).encode())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_savefig(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def check_writable_dir(path: str | os.PathLike, name: str = "out", min_free_mb: int = 50) -> Path:
    """Fail early when the output folder cannot be created/written or the disk is (nearly) full."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise bad_arg(name, f"{str(path)!r} ({e.strerror or e})", "a writable directory") from e
    st = os.statvfs(path)
    free_mb = st.f_bavail * st.f_frsize / 2**20
    if free_mb < min_free_mb:
        raise bad_arg(name, f"{str(path)!r} with {free_mb:.0f} MiB free", f"at least {min_free_mb} MiB of free disk")
    return path
