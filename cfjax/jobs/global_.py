"""``cfjax global``: the global explanation over a whole dataset split.

A thin shell over :func:`cfjax.jobs.attack.run_attack_explanation` (``--method attack``) and
:func:`cfjax.jobs.mirror.run_mirror_global` (``--method mirror``) with no image limit: the pass
is streamed through one compiled, sharded step (:func:`cfjax.parallel.explain_dataset`),
checkpoints its accumulators every ``--checkpoint-every`` chunks and, killed and restarted with
the same command, resumes where it stopped.

Multi-host (TPU pod slices, GPU clusters, several CPU processes): start the same command on
every host with ``--coordinator HOST:PORT --num-processes N --process-id I`` (or the env vars
``CFJAX_COORDINATOR``, ``CFJAX_NUM_PROCESSES``, ``CFJAX_PROCESS_ID``; ``--distributed`` alone
lets ``jax.distributed.initialize()`` auto-detect a Cloud TPU / SLURM cluster). Each process
attacks only its contiguous slice of the (image, target) pairs; the accumulators are reduced
across all devices of all hosts inside the compiled step; process 0 writes the outputs.
"""

from __future__ import annotations

import dataclasses
import math
import os

from cfjax.cli import subcommand


def add_distributed_args(p) -> None:
    g = p.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--distributed", action="store_true", help="initialise jax.distributed (auto-detects TPU pods / SLURM without the flags below)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (env CFJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (env CFJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index (env CFJAX_PROCESS_ID)")
    g.add_argument("--cpu-collectives", choices=["gloo", "mpi"], default=None, help="cross-process collectives on the CPU backend (tests, CPU clusters)")


def maybe_initialize_distributed(a) -> tuple[int, int]:
    """Call :func:`cfjax.parallel.initialize_distributed` if asked by flags or env vars."""
    from cfjax import parallel
    from cfjax.errors import bad_arg

    asked = a.distributed or a.coordinator or a.num_processes is not None or a.process_id is not None or "CFJAX_COORDINATOR" in os.environ
    if not asked:
        return 0, 1
    if a.num_processes is not None and a.num_processes < 1:
        raise bad_arg("--num-processes", a.num_processes, "a positive integer")
    if a.process_id is not None and a.num_processes is not None and not 0 <= a.process_id < a.num_processes:
        raise bad_arg("--process-id", a.process_id, f"an index in [0, {a.num_processes - 1}]")
    return parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id, cpu_collectives=a.cpu_collectives)


@subcommand("global", "global explanation over a whole test split (streamed, sharded, resumable, multi-host)")
def _global_parser(p):
    p.add_argument("--method", choices=["attack", "mirror"], default="attack")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=None, help="[attack] step budget")
    p.add_argument("--batch-size", type=int, default=None, help="counterfactuals per jitted step")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint the accumulators every N chunks")
    p.add_argument("--no-pixel", action="store_true", help="[attack] skip the pixel baseline")
    p.add_argument("--pairs", default=None, help="[mirror] 'all' or 'S,T;S,T;...' (default: the dataset's paper pairs)")
    p.add_argument("--limit", type=int, default=None, help="first N test images only (default: the whole split)")
    p.add_argument("--smoke", action="store_true")
    add_distributed_args(p)

    def run(a):
        maybe_initialize_distributed(a)
        if a.method == "mirror":
            from cfjax.jobs.mirror import MirrorJobConfig, parse_pairs, run_mirror_global

            cfg = MirrorJobConfig.smoke_config() if a.smoke else MirrorJobConfig()
            over = dict(chunk_size=a.batch_size, checkpoint_every=a.checkpoint_every, limit=a.limit)
            cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
            run_mirror_global(a.data, a.out, config=cfg, pairs=parse_pairs(a.pairs), data_dir=a.data_dir)
            return
        from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation

        cfg = AttackJobConfig.smoke_config() if a.smoke else AttackJobConfig()
        over = dict(steps=a.steps, batch_size=a.batch_size, checkpoint_every=a.checkpoint_every)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        cfg = dataclasses.replace(cfg, limit=a.limit if a.limit is not None else (cfg.limit if a.smoke else None))
        if a.no_pixel:
            cfg = dataclasses.replace(cfg, pixel_baseline=False)
        if cfg.steps % cfg.record_every:
            cfg = dataclasses.replace(cfg, record_every=math.gcd(cfg.steps, cfg.record_every))
        run_attack_explanation(a.data, a.out, cfg, data_dir=a.data_dir)

    return run
