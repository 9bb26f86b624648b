"""``cfjax`` command line: a thin shell over the library's public functions.

Subcommands:
  cfjax train classifier|vae --data NAME --out DIR [--epochs N ...]
  cfjax demo --out DIR                 the README's main job
  (explain / global / bench are added by their modules; see ``cfjax --help``)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

SUBCOMMANDS: dict = {}


def subcommand(name: str, help: str):
    """Register ``fn(subparser)`` -> handler; keeps each module's CLI next to its code."""

    def deco(fn):
        SUBCOMMANDS[name] = (help, fn)
        return fn

    return deco


@subcommand("train", "train a model (classifier | vae | mirror-decoder) and write orbax checkpoints")
def _train_parser(p: argparse.ArgumentParser):
    p.add_argument("model", choices=["classifier", "vae"])
    p.add_argument("--data", required=True, help="dataset name (mnist5k, fashion_mnist, mnist, celeb_a)")
    p.add_argument("--out", required=True, help="checkpoint directory (best/ and last/ go here)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-dim", type=int, default=None, help="VAE latent size")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="cap examples per split (smoke runs)")

    def run(a):
        from cfjax import data as cdata
        from cfjax import train as ct
        from cfjax.zoo import DEFAULTS

        zc = DEFAULTS.get(a.data, DEFAULTS["fashion_mnist"])
        tr = cdata.load(a.data, "train", data_dir=a.data_dir, limit=a.limit)
        te = cdata.load(a.data, "test", data_dir=a.data_dir, limit=a.limit)
        tcfg = zc.classifier_train if a.model == "classifier" else zc.vae_train
        over = {k: v for k, v in dict(epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.lr).items() if v is not None}
        tcfg = dataclasses.replace(tcfg, seed=a.seed, **over)
        t0 = time.perf_counter()
        if a.model == "classifier":
            res = ct.train_classifier(tr, te, dataclasses.replace(zc.classifier, num_classes=tr.num_classes), tcfg, a.out)
        else:
            mc = zc.vae if a.latent_dim is None else dataclasses.replace(zc.vae, latent_dim=a.latent_dim)
            res = ct.train_vae(tr, te, mc, tcfg, a.out)
        out = {"model": a.model, "data": a.data, "wall_s": round(time.perf_counter() - t0, 1), **res.metrics}
        print(json.dumps(out, indent=1))

    return run


@subcommand("demo", "the main job on the bundled MNIST sample (train/reuse models, explain, report)")
def _demo_parser(p: argparse.ArgumentParser):
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--smoke", action="store_true", help="tiny configuration that runs in seconds")
    p.add_argument("--limit", type=int, default=None, help="test images to explain (default 50; 0 = the whole test split)")

    def run(a):
        from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation

        cfg = AttackJobConfig.smoke_config() if a.smoke else AttackJobConfig.demo_config()
        if a.limit is not None:
            cfg = dataclasses.replace(cfg, limit=a.limit if a.limit > 0 else None)
        s = run_attack_explanation(a.data, a.out, cfg)
        print(f"classifier test accuracy: {s['classifier_accuracy']:.4f}; VAE test reconstruction MSE: {s['vae_mse']:.5f}")
        print(f"{s['n_counterfactuals']} counterfactuals in {s['total_wall_s']:.0f}s; see {Path(a.out) / 'report.html'}")

    return run


def build_parser() -> argparse.ArgumentParser:
    _load_plugins()
    parser = argparse.ArgumentParser(prog="cfjax", description="Counterfactual explanations of image classifiers in JAX.")
    parser.add_argument("--debug-nans", action="store_true", help="turn on jax_debug_nans for this run")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, fn) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(_run=fn(sp))
    return parser


def _load_plugins():
    """Import the modules that register further subcommands (explain, global, bench...)."""
    import importlib

    for mod in ("cfjax.jobs.attack", "cfjax.jobs.mirror", "cfjax.jobs.global_", "cfjax.jobs.bench"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod and not mod.startswith(str(e.name)):
                raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `cfjax train mirror-decoder ...` is served by the `train-mirror-decoder` subcommand
    for i in range(len(argv) - 1):
        if argv[i] == "train" and argv[i + 1] == "mirror-decoder":
            argv[i : i + 2] = ["train-mirror-decoder"]
            break
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.debug_nans:
        import jax

        jax.config.update("jax_debug_nans", True)
    from cfjax.errors import CfjaxError

    try:
        a._run(a)
    except CfjaxError as e:
        print(f"cfjax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # `python -m cfjax.cli`: run the registry of the importable module `cfjax.cli` (the
    # subcommand modules register there), not this `__main__` copy's empty one
    from cfjax.cli import main as _main

    sys.exit(_main())
