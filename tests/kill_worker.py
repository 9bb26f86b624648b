"""A streamed explain_dataset run for the SIGKILL tests (run as a script).

argv: CKPT_DIR OUT_JSON ; prints "chunk N" lines as it goes (slowed down so a kill lands mid-run).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from xla_env import with_devices  # noqa: E402

os.environ["XLA_FLAGS"] = with_devices(4)  # always 4 (child_env() passes only the compile flags)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cfjax import parallel  # noqa: E402
from cfjax.io import atomic_write_json  # noqa: E402

ckpt_dir, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(11)
data = {"x": rng.normal(size=(203, 7)).astype(np.float32)}


def step(acc, batch, mask):
    m = mask.astype(jnp.float32)[:, None]
    f = jnp.sin(batch["x"] * 3.0) * m
    return {"s": acc["s"] + f.sum(0), "q": acc["q"] + (f**2).sum(0), "n": acc["n"] + m.sum()}, None


class Slow(dict):
    """Data view that sleeps a little per chunk so that kills land at many points."""

    def __init__(self, d):
        super().__init__(d)
        self._x = d["x"]


class SlowArray:
    def __init__(self, a):
        self.a = a

    def __len__(self):
        return len(self.a)

    def __getitem__(self, s):
        time.sleep(0.15)
        print("chunk", s.start, flush=True)
        return self.a[s]


init = {"s": np.zeros(7, np.float32), "q": np.zeros(7, np.float32), "n": np.zeros((), np.float32)}
acc = parallel.explain_dataset(step, init, {"x": SlowArray(data["x"])}, chunk_size=8, checkpoint_dir=ckpt_dir or None,
                               checkpoint_every=1, run_config={"t": "kill"}, progress=False)
atomic_write_json(out, {k: np.asarray(v).tolist() for k, v in acc.items()})
