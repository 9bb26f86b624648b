"""Progress bars fit for terminals and for cluster logs.

:func:`progress_bar` is ``tqdm`` when its stream is a terminal. When it is not (a batch job: SLURM,
Kubernetes, Ray, ``> log 2>&1``), it prints a plain one-line status at most every
``interval`` seconds (default 30, env ``CFJAX_PROGRESS_INTERVAL``) instead of redrawing a bar
with carriage returns, so a shard's log stays a few lines long::

    latent attack:  40% 4/10 [01:00<01:30, 15.00s/chunk]
    latent attack: 100% 10/10 [02:30<00:00, 15.00s/chunk]

Example:
  >>> import io
  >>> log = io.StringIO()
  >>> for _ in progress_bar(range(1000), desc="work", file=log, leave=True):
  ...     pass
  >>> log.getvalue().count("\\n") <= 3   # the first status, the last, maybe one between
  True
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm as _tty_tqdm
from tqdm.std import tqdm as _std_tqdm

DEFAULT_INTERVAL = 30.0
_LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def log_interval() -> float:
    """Seconds between two status lines in a log (``CFJAX_PROGRESS_INTERVAL``, default 30)."""
    try:
        return max(0.0, float(os.environ.get("CFJAX_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def is_terminal(stream) -> bool:
    """``stream.isatty()``, False for anything that is not a file-like terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A file wrapper that turns tqdm's ``\\r``-redrawn status into whole lines (and drops the
    carriage returns, blank writes and cursor moves tqdm uses to clear a bar)."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"

    def write(self, s: str) -> None:
        line = s.replace("\r", "").strip()
        if line and not line.startswith("\x1b["):
            self.stream.write(line + "\n")

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (AttributeError, ValueError):
            pass


class _LogBar(_std_tqdm):
    """tqdm for logs: ``set_postfix``/``set_description`` update the next status line instead of
    printing one each (training loops call them every few steps)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def progress_bar(iterable=None, *, desc: str | None = None, total=None, disable: bool = False, leave: bool | None = True,
                 file=None, interval: float | None = None, **kw):
    """A ``tqdm`` bar on a terminal; a status line every ``interval`` seconds otherwise.

    Args:
      iterable, desc, total, disable, leave, **kw: as for ``tqdm`` (``unit``, ``initial``, ...).
      file: the stream (default ``sys.stderr`` at call time); whether it is a terminal decides
        the mode.
      interval: seconds between status lines in log mode (default :func:`log_interval`).
    """
    stream = sys.stderr if file is None else file
    if disable or is_terminal(stream):
        return _tty_tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, file=file, **kw)
    every = log_interval() if interval is None else float(interval)
    known = total is not None or hasattr(iterable, "__len__")
    kw.setdefault("bar_format", _LOG_FORMAT if known else None)
    return _LogBar(iterable, desc=desc, total=total, disable=False, leave=leave, file=_Lines(stream), mininterval=every,
                     maxinterval=max(every, 1e-3), ascii=True, dynamic_ncols=False, **kw)


__all__ = ["DEFAULT_INTERVAL", "is_terminal", "log_interval", "progress_bar"]
