"""Worker for the 2-process localhost test of explain_dataset (run as a script).

argv: PORT PROCESS_ID OUT_JSON [DELAY_S]: with DELAY_S, process 0 first sleeps that long inside
``process0_first`` (as if training the models) while process 1 waits at the barrier.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from xla_env import with_devices  # noqa: E402

os.environ["XLA_FLAGS"] = with_devices(2)

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from cfjax import parallel  # noqa: E402

port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
parallel.initialize_distributed(f"127.0.0.1:{port}", 2, pid, cpu_collectives="gloo")
delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
if delay:
    parallel.process0_first(lambda: time.sleep(delay))
sys.path.insert(0, os.path.dirname(__file__))
from test_parallel import _data, _init, _toy_step  # noqa: E402

import jax  # noqa: E402

data = _data(77, seed=5)
sl = parallel.process_slice(77)
local = {k: v[sl] for k, v in data.items()}
acc = parallel.explain_dataset(_toy_step({"traces": 0}), _init(), local, chunk_size=16, progress=False)
with open(out, "w") as f:
    json.dump({"devices": jax.device_count(), "local": jax.local_device_count(), **{k: np.asarray(v).tolist() for k, v in acc.items()}}, f)
