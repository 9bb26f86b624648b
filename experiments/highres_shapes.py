"""Both methods end to end at 128 px on synthetic shapes in the MedMNIST+ format (issue 27).

Writes a synthetic ``bloodmnist_128.npz`` (8 shape classes, :mod:`cfjax.data.synthetic`) to
``--data-dir`` (ignored ``runs/``; never committed), then runs the two jobs exactly as the CLI
does (``cfjax explain mirror --data bloodmnist --size 128 ...`` and ``cfjax global attack ...``)
with small full-resolution models, and copies the strips each job draws plus a short summary
to ``--out`` (``experiments/results/highres/``)::

    nice -n 10 python experiments/highres_shapes.py                 # ~25 CPU-min on 2 cores
    python experiments/highres_shapes.py --smoke --out /tmp/hr      # plumbing, minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cfjax.data import medmnist_path  # noqa: E402
from cfjax.data.synthetic import SHAPE_CLASSES, write_medmnist_npz  # noqa: E402
from cfjax.io import atomic_write_json  # noqa: E402
from cfjax.training import loop as ct  # noqa: E402
from cfjax.training import zoo  # noqa: E402


def models(smoke: bool) -> zoo.ZooConfig:
    """Small ResNet (GroupNorm) + VAE at full 128 px resolution."""
    e = 1 if smoke else None
    return zoo.ZooConfig(
        ct.ClassifierConfig(num_classes=8, widths=(16, 16, 32, 32), arch="resnet", groups=4),
        ct.TrainConfig(epochs=e or 4, batch_size=32, augment_shift=4, eval_batch_size=64),
        ct.VAEConfig(latent_dim=32, widths=(16, 32, 32, 64, 64)),
        ct.TrainConfig(epochs=e or 12, batch_size=32, eval_batch_size=64),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "experiments/results/highres"))
    p.add_argument("--work", default=str(ROOT / "runs/highres"), help="data, models and the jobs' run folders (ignored)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--train", type=int, default=2400)
    p.add_argument("--test", type=int, default=480)
    p.add_argument("--source", type=int, default=0)
    p.add_argument("--target", type=int, default=1)
    p.add_argument("--decoder-steps", type=int, default=1500)
    p.add_argument("--limit", type=int, default=48, help="test images per job")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation
    from cfjax.jobs.mirror import MirrorJobConfig, run_mirror_explanation
    from cfjax.training.mirror_decoder import MirrorDecoderConfig

    work, out = Path(a.work), Path(a.out)
    data_dir = work / "data"
    n_train, n_test = (240, 48) if a.smoke else (a.train, a.test)
    if not medmnist_path("bloodmnist", a.size, data_dir).is_file():
        write_medmnist_npz(data_dir, a.size, n_train=n_train, n_val=max(n_test // 2, 8), n_test=n_test, seed=0)
    spec = f"bloodmnist@{a.size}"
    zc = models(a.smoke)
    t0 = time.perf_counter()
    dec = dataclasses.replace(
        MirrorDecoderConfig.smoke() if a.smoke else MirrorDecoderConfig(),
        widths=(32, 32, 16), editor_width=16, fk_channels=16, disc_widths=(16, 32), batch_size=16,
        steps=20 if a.smoke else a.decoder_steps, log_every=5 if a.smoke else 50, checkpoint_every=10 if a.smoke else 250,
        eval_examples=32, pairs=((a.source, a.target), (a.target, a.source)),
    )
    mcfg = MirrorJobConfig(models=zc, decoder=dec, limit=a.limit, chunk_size=16, oracle_widths=(8, 16, 32), oracle_convs_per_block=1,
                           oracle_epochs=3 if not a.smoke else 1, backbone_epochs=1, lpips_alex=False, n_figure_examples=6)
    ms = run_mirror_explanation(spec, work / "mirror", source=a.source, target=a.target, config=mcfg, models_dir=work / "models",
                                data_dir=data_dir)
    t_mirror = time.perf_counter() - t0
    acfg = AttackJobConfig(models=zc, targets=str(a.target), limit=a.limit, pixel_baseline=False, lpips_alex=False,
                           steps=20 if a.smoke else 300, batch_size=16, predictor_steps=300)
    as_ = run_attack_explanation(spec, work / "attack", acfg, data_dir=data_dir, models_dir=work / "models")
    t_attack = time.perf_counter() - t0 - t_mirror

    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for job in ("mirror", "attack"):
        for png in sorted((work / job / "figures").glob("*.png")):
            dst = out / f"{job}_{png.name}"
            shutil.copyfile(png, dst)
            copied.append(dst.name)
    keep = ("validity", "denoised_validity", "oracle_validity", "l1", "first_cf_k_mean", "converged_rate", "classifier_accuracy",
            "n_counterfactuals", "n_examples", "mean_steps", "vae_mse", "pair", "pairs")
    summary = {
        "what": f"Mirror-CFE ({SHAPE_CLASSES[a.source]} -> {SHAPE_CLASSES[a.target]}) and Counterfactual Attacks (every shape -> "
                f"{SHAPE_CLASSES[a.target]}) at {a.size} px on synthetic shapes in the MedMNIST+ format",
        "data": {"spec": spec, "n_train": n_train, "n_test": n_test, "classes": list(SHAPE_CLASSES)},
        "models": {"classifier": dataclasses.asdict(zc.classifier), "vae": dataclasses.asdict(zc.vae), "decoder_steps": dec.steps},
        "mirror": {k: ms.get(k) for k in keep if k in ms},
        "attack": {k: as_.get(k) for k in keep if k in as_ and k != "pairs"},
        "wall_s": {"mirror": round(t_mirror, 1), "attack": round(t_attack, 1)},
        "figures": copied,
        "smoke": a.smoke,
    }
    atomic_write_json(out / "summary.json", summary)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
