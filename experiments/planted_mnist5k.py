"""The reduced mnist5k planted-cue grid (issue 33): 6 cues x rho {0.5, 0.9, 1.0} x seeds, plus
three two-cue pairs at rho = 1, written to experiments/results/planted/mnist5k/.

    nice -n 10 .venv/bin/python experiments/planted_mnist5k.py --seeds 1   # then --seeds 2, 3: cells are reused
"""

import argparse
import resource
import time

from cfjax.jobs.planted import PlantedConfig, run_benchmark

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", type=int, default=1)
ap.add_argument("--out", default="experiments/results/planted/mnist5k")
a = ap.parse_args()
cfg = PlantedConfig(rhos=(0.5, 0.9, 1.0), seeds=a.seeds).validate()
t0 = time.perf_counter()
s = run_benchmark(cfg, a.out)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"wall {time.perf_counter() - t0:.0f} s, CPU (user+sys) {ru.ru_utime + ru.ru_stime:.0f} s, cells {len(s['cells'])}")
for name, e in {**s["explainers"], **{f"attack_{k}": v for k, v in s["readouts"].items()}}.items():
    print(name, {k: (e[k]["value"], e[k]["ci"]) for k in ("top1_rho_ge_0_9", "spearman_reliance", "false_alarm_null", "two_cue_top1")})
