"""The environment of the processes tests spawn: the suite's XLA flags (conftest), not the parent's
simulated device count."""

from __future__ import annotations

import os


def child_env(n_devices: int | None = None, drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """``os.environ`` without ``XLA_FLAGS`` (and ``drop``), then ``XLA_FLAGS`` = ``n_devices``
    simulated CPU devices (None: XLA's default of one, or the child assigns its own) plus the suite's
    compile flags (``CFJAX_TEST_XLA_EXTRA``), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and k not in drop}
    flags = with_devices(n_devices) if n_devices is not None else os.environ.get("CFJAX_TEST_XLA_EXTRA", "").strip()
    if flags:
        env["XLA_FLAGS"] = flags
    env.update(extra)
    return env


def with_devices(n_devices: int) -> str:
    """The ``XLA_FLAGS`` a worker script sets for itself: ``n_devices`` plus the suite's compile flags."""
    return f"--xla_force_host_platform_device_count={n_devices} {os.environ.get('CFJAX_TEST_XLA_EXTRA', '')}".strip()
