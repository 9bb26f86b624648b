"""Atomic file writes: write to a temporary name in the same directory, then rename."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from cfjax.errors import bad_arg


def _clean(o, keep_nonfinite: bool = False):
    if isinstance(o, float) and not math.isfinite(o):
        return o if keep_nonfinite else None
    if isinstance(o, dict):
        return {str(k): _clean(v, keep_nonfinite) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v, keep_nonfinite) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _clean(o.item(), keep_nonfinite)
    return o


def jsonable(obj, *, keep_nonfinite: bool = False):
    """``obj`` as the JSON values it reads back as: tuples as lists, keys as strings, numpy/JAX
    scalars as numbers, any other object JSON cannot hold as its ``str``; NaN/Inf as None (what
    :func:`atomic_write_json` writes), or kept with ``keep_nonfinite`` (checkpoint sidecars, so
    that a resumed run reads back the very history it wrote). Two configs that compare equal
    after ``jsonable`` are the same config (:func:`cfjax.checkpoint.matches`)."""
    return json.loads(json.dumps(_clean(obj, keep_nonfinite), default=str))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | os.PathLike, write) -> Path:
    """``write(f)`` into a temporary file beside ``path`` (binary, fsynced), then rename it over
    ``path``: readers see the old file or the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


# ------------------------------------------------------------------------------ one writer per folder

LOCK_FILE = ".cfjax.lock"
"""The lock of an output folder: JSON ``{"pid", "host", "start", "since", "command"}`` of the run writing it."""


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; ``None`` elsewhere or when gone), so a
    PID reused by another process does not keep a dead run's lock alive."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return start is None or _proc_start(pid) in (None, start)


MAX_COMMAND = 8192
"""The longest command a lock records (characters): the refusal shows the holder's command whole."""


class FolderLock:
    """An exclusive lock on an output folder (``with FolderLock(out, "out"): ...``).

    The lock file (:data:`LOCK_FILE`) appears atomically (a hard link of a complete temporary
    file, so it is never seen half-written) and names the holder's PID, host and command. A second writer gets an :class:`~cfjax.errors.InputError` naming the first. A
    lock left by a dead process on this host (killed run) is stale and taken over; a lock of
    another host cannot be checked from here: the message says which file to delete once that run
    is gone."""

    def __init__(self, folder: str | os.PathLike, name: str = "out"):
        self.folder, self.name = Path(folder), name
        self.path = self.folder / LOCK_FILE
        self.held = False

    def _record(self) -> dict:
        import socket
        import sys
        import time

        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _proc_start(os.getpid()),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:MAX_COMMAND]}

    def check(self) -> bool:
        """Raise naming the holder if a live run holds the lock; ``True`` when a lock file is
        there but stale (its process is gone), ``False`` when there is none. Writes nothing."""
        import socket

        if not os.path.lexists(self.path):
            return False
        holder = self.holder()
        if holder is None:  # unreadable or half-written: a starting run
            raise bad_arg(self.name, f"{str(self.folder)!r} locked by an unreadable {LOCK_FILE}",
                          f"a folder no other cfjax run is writing (delete {str(self.path)!r} if no run is)")
        same_host = holder.get("host") == socket.gethostname()
        pid = holder.get("pid")
        if same_host and isinstance(pid, int) and not isinstance(pid, bool) and not _alive(pid, holder.get("start")):
            return True
        where = "this host" if same_host else f"host {holder.get('host')!r}"
        hint = "" if same_host else f"; if that run is gone, delete {str(self.path)!r}"
        raise bad_arg(self.name, f"{str(self.folder)!r} in use by another cfjax run: PID {pid} on {where} since "
                      f"{holder.get('since')} (command: {str(holder.get('command'))})",
                      f"a folder no other run is writing: wait for it or pick another {self.name}{hint}")

    def acquire(self) -> "FolderLock":
        """Take the lock: the record is written to a temporary file first and hard-linked to the
        lock's name (atomic, and never seen half-written); a stale lock is taken over."""
        tmp = self.folder / f".{LOCK_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    if self.check():  # stale: its run is gone
                        try:
                            os.unlink(self.path)
                        except FileNotFoundError:
                            pass
                    continue
                if (self.holder() or {}).get("pid") != os.getpid():  # a racing takeover of a stale lock replaced ours
                    continue
                self.held = True
                return self
        finally:
            os.unlink(tmp)
        raise bad_arg(self.name, f"{str(self.folder)!r} (its lock kept changing hands)", "a folder no other run is writing")

    def holder(self) -> dict | None:
        """The lock file's record (``None`` when absent or unreadable)."""
        try:
            rec = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self.holder()
            if holder is not None and holder.get("pid") == os.getpid():
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stray_temporaries(folder: str | os.PathLike, subdirs=("", "figures")) -> list[Path]:
    """Delete the temporary files atomic writers leave when killed (``.NAME.XXXX.tmp`` from
    :func:`atomic_write_bytes`) in ``folder`` and its ``subdirs``. Call only while holding the
    folder's :class:`FolderLock` (no other writer). Returns what was removed."""
    gone = []
    for sub in subdirs:
        d = Path(folder) / sub
        if not d.is_dir():
            continue
        for f in [*d.glob(".*.tmp"), *d.glob(".probe.*")]:
            if f.is_file() and not f.is_symlink():
                f.unlink()
                gone.append(f)
    return gone


def read_regular_file(path: str | os.PathLike, name: str, inside: str | os.PathLike | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a symlink, pipe or device) and, with
    ``inside``, lie directly in that folder. Never blocks on a named pipe. Raises
    :class:`~cfjax.errors.InputError` naming ``name``."""
    import stat

    path = Path(path)
    if inside is not None:
        folder = Path(inside).resolve()
        if path.name in ("", ".", "..") or path.parent.resolve() != folder:
            raise bad_arg(name, f"{str(path)!r} (outside {str(folder)!r})", f"a file inside {str(folder)!r}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        why = "a symbolic link" if path.is_symlink() else (e.strerror or str(e))
        raise bad_arg(name, f"{str(path)!r} ({why})", "a readable regular file") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise bad_arg(name, f"{str(path)!r} (not a regular file)", "a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise bad_arg(name, f"{str(path)!r} of {st.st_size} bytes", f"at most {max_bytes} bytes")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    finally:
        os.close(fd)
