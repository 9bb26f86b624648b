"""cfjax's small error hierarchy.

Every error names the argument at fault, what was received and what was expected.
The classes subclass the matching builtin (``ValueError``/``FileNotFoundError``) so that
callers who do not know about cfjax can still catch them the usual way.
"""

from __future__ import annotations


class CfjaxError(Exception):
    """Base class of every error cfjax raises on purpose."""


class InputError(CfjaxError, ValueError):
    """An argument has the wrong shape, dtype, range or value."""


class DataNotFoundError(CfjaxError, FileNotFoundError):
    """A dataset or data directory is missing; the message says how to get it."""


class CheckpointError(CfjaxError, ValueError):
    """A checkpoint is missing, corrupted, or was written for another model/config."""


def bad_arg(name: str, got: object, expected: str) -> InputError:
    """Build an :class:`InputError` with the house message format.

    >>> str(bad_arg("images", "shape (3, 28)", "rank-4 NHWC array"))
    'images: expected rank-4 NHWC array, got shape (3, 28)'
    """
    return InputError(f"{name}: expected {expected}, got {got}")
