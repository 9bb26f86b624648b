"""``cfjax global``: the global explanation over a whole dataset split.

A thin shell over :func:`cfjax.jobs.attack.run_attack_explanation` with no image limit: the
pass is streamed through one compiled, sharded step (:func:`cfjax.parallel.explain_dataset`),
checkpoints its accumulators every ``--checkpoint-every`` chunks and, killed and restarted with
the same command, resumes where it stopped.
"""

from __future__ import annotations

import dataclasses

from cfjax.cli import subcommand


@subcommand("global", "global explanation over a whole test split (streamed, sharded, resumable)")
def _global_parser(p):
    p.add_argument("--method", choices=["attack"], default="attack")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="counterfactuals per jitted step")
    p.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint the accumulators every N chunks")
    p.add_argument("--no-pixel", action="store_true", help="skip the pixel baseline")
    p.add_argument("--smoke", action="store_true")

    def run(a):
        from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation

        cfg = AttackJobConfig.smoke_config() if a.smoke else AttackJobConfig()
        over = dict(steps=a.steps, batch_size=a.batch_size, checkpoint_every=a.checkpoint_every)
        cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
        if not a.smoke:
            cfg = dataclasses.replace(cfg, limit=None)
        if a.no_pixel:
            cfg = dataclasses.replace(cfg, pixel_baseline=False)
        if cfg.steps % cfg.record_every:
            import math

            cfg = dataclasses.replace(cfg, record_every=math.gcd(cfg.steps, cfg.record_every))
        run_attack_explanation(a.data, a.out, cfg, data_dir=a.data_dir)

    return run
