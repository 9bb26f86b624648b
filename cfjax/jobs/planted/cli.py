"""``cfjax benchmark planted``: the planted-cue benchmark from the command line.

Wire it into ``cfjax/cli.py`` with ``add_parser(subparsers)`` on the ``benchmark`` sub-parsers
and ``run(args)`` for the chosen command. Every argument is checked (the whole config validated)
before anything is loaded, trained or written.
"""

from __future__ import annotations

import argparse
import sys

from cfjax.data.planted import CUE_ORDER
from cfjax.errors import InputError, bad_arg
from cfjax.jobs.planted.config import READOUTS, PlantedConfig


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``planted`` to a sub-parser group (``cfjax benchmark planted ...``)."""
    p = subparsers.add_parser("planted", help="planted-cue benchmark: do the explanations find what the classifier uses?",
                              description="Train one small classifier per (cue, rho, seed) cell, measure its reliance on every "
                                          "planted cue by intervention and score each explainer against it (docs/planted.md).")
    p.add_argument("--data", default="mnist5k", help="mnist5k or fashion_mnist")
    p.add_argument("--pair", default=None, help="source,target classes (default 3,8)")
    p.add_argument("--cues", default=None, help=f"comma-separated cues (default all: {','.join(CUE_ORDER)})")
    p.add_argument("--rho", default=None, help="comma-separated strengths in [0.5, 1] (default 0.5,0.75,0.9,1.0)")
    p.add_argument("--seeds", default=None, help="number of seeds per cell (default 3)")
    p.add_argument("--two-cue", default=None, help="two-cue cells, 'a+b,c+d' ('none' for none)")
    p.add_argument("--two-cue-rho", default=None, help="rho of the two-cue cells (default 1.0)")
    p.add_argument("--epochs", default=None, help="classifier epochs per cell (default 10)")
    p.add_argument("--readout", default=None, choices=READOUTS, help="the attack read-out reported as 'attack' (default measured)")
    p.add_argument("--out", required=True, help="output folder (resumable: finished cells are reused)")
    p.add_argument("--smoke", action="store_true", help="a tiny configuration for tests (the preset; other flags override it)")
    p.set_defaults(func=run)
    return p


def _floats(name, text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise bad_arg(name, repr(text), "comma-separated numbers") from None


def _int(name, text):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise bad_arg(name, repr(text), "an integer") from None


def config_from_args(args) -> PlantedConfig:
    """The validated :class:`PlantedConfig` of parsed ``args`` (raises InputError)."""
    cfg = PlantedConfig.smoke() if args.smoke else PlantedConfig()
    ch = {"data": args.data}
    if args.pair is not None:
        ch["pair"] = tuple(_int("--pair", v) for v in args.pair.split(","))
    if args.cues is not None:
        ch["cues"] = tuple(v.strip() for v in args.cues.split(",") if v.strip())
    if args.rho is not None:
        ch["rhos"] = _floats("--rho", args.rho)
    if args.seeds is not None:
        ch["seeds"] = _int("--seeds", args.seeds)
    if args.two_cue is not None:
        ch["two_cue"] = () if args.two_cue == "none" else tuple(tuple(p.split("+")) for p in args.two_cue.split(","))
    if args.two_cue_rho is not None:
        ch["two_cue_rhos"] = _floats("--two-cue-rho", args.two_cue_rho)
    if args.epochs is not None:
        ch["epochs"] = _int("--epochs", args.epochs)
    if args.readout is not None:
        ch["readout"] = args.readout
    return cfg.__class__(**{**cfg.__dict__, **ch}).validate()


def run(args) -> int:
    """Run the benchmark; 2 on a bad argument (before any work), 0 when done."""
    try:
        cfg = config_from_args(args)
    except InputError as e:
        print(f"cfjax benchmark planted: {e}", file=sys.stderr)
        return 2
    from cfjax.jobs.planted.job import run_benchmark

    s = run_benchmark(cfg, args.out)
    for name, e in s["explainers"].items():
        v = e["top1_rho_ge_0_9"]
        txt = "not run" if v["value"] is None else f"{v['value']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"
        print(f"{name:>16}: top-1 at rho >= 0.9 {txt}")
    print(f"wrote {args.out}/summary.json ({len(s['cells'])} cells, {s['timing']['cells_computed']} computed)")
    return 0


def benchmark_subcommand(p: argparse.ArgumentParser):
    """``cfjax benchmark ...`` for ``cfjax.cli.SUBCOMMANDS``: adds ``planted`` under ``p`` and
    returns the handler ``main`` calls. A bad argument raises :class:`InputError` (``main`` prints
    it and exits 2) before anything is loaded, trained or written."""
    add_parser(p.add_subparsers(dest="benchmark", required=True))

    def handler(args) -> None:
        config_from_args(args)  # raises InputError before any work
        if run(args):
            raise bad_arg("arguments", "a run that failed", "a valid benchmark")

    return handler
