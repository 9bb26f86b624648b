"""Test setup: 8 simulated CPU devices (set before JAX is imported), shared fixtures.

Single-device behaviour is tested by building meshes over ``jax.devices()[:1]``; the
device-count invariance tests compare those with all 8.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mnist_small():
    """A class-balanced 1,000/200 slice of the real MNIST-5k sample."""
    from cfjax import data as cdata

    tr = cdata.load("mnist5k", "train")
    te = cdata.load("mnist5k", "test")
    rng = np.random.default_rng(0)
    itr = np.sort(rng.choice(len(tr), 1000, replace=False))
    ite = np.sort(rng.choice(len(te), 200, replace=False))
    return cdata.subset(tr, itr), cdata.subset(te, ite)
