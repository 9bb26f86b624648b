"""Both methods end to end at 128 px on synthetic shapes in the MedMNIST+ format (issue 27).

Writes a synthetic ``bloodmnist_128.npz`` (8 shape classes, :mod:`cfjax.data.synthetic`) to
``--data-dir`` (ignored ``runs/``; never committed), then runs the two jobs exactly as the CLI
does (``cfjax explain mirror --data bloodmnist --size 128 ...`` and ``cfjax global attack ...``)
with small full-resolution models, and copies the strips each job draws plus a short summary
to ``--out`` (``experiments/results/highres/``)::

    nice -n 10 python experiments/highres_shapes.py                 # ~25 CPU-min on 2 cores
    python experiments/highres_shapes.py --smoke --out /tmp/hr      # plumbing, minutes
    # the longer Mirror decoders in BUILD_NOTES (the other sections of summary.json are kept):
    python experiments/highres_shapes.py --methods mirror --oracle-epochs 12 --decoder-steps 1500 \
        --warm-start runs/highres/models/bloodmnist@128/mirror_decoder_0-1_1-0-<hash of the 500-step run>
    python experiments/highres_shapes.py --methods mirror --oracle-epochs 12 --decoder-steps 2500 --preset robust
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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


def models(smoke: bool, vae_beta: float = 1.0, vae_epochs: int = 12) -> zoo.ZooConfig:
    """Small ResNet (GroupNorm) + VAE at full 128 px resolution."""
    e = 1 if smoke else None
    return zoo.ZooConfig(
        ct.ClassifierConfig(num_classes=8, widths=(16, 16, 32, 32), arch="resnet", groups=4),
        ct.TrainConfig(epochs=e or 4, batch_size=32, augment_shift=4, eval_batch_size=64),
        ct.VAEConfig(latent_dim=32, widths=(16, 32, 32, 64, 64), beta=vae_beta),
        ct.TrainConfig(epochs=e or vae_epochs, batch_size=32, eval_batch_size=64),
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
    p.add_argument("--preset", default="paper", choices=("paper", "robust"), help="the Mirror decoder's preset")
    p.add_argument("--oracle-epochs", type=int, default=3)
    p.add_argument("--methods", default="mirror,attack",
                   help="comma-separated subset of mirror,attack; a method not run keeps its section of --out's summary.json")
    p.add_argument("--vae-beta", type=float, default=1.0, help="the attack VAE's KL weight (a new VAE needs a new --work)")
    p.add_argument("--vae-epochs", type=int, default=12, help="the attack VAE's epochs (a new VAE needs a new --work)")
    p.add_argument("--warm-start", default=None, help="a shorter decoder run of the same config to continue (its workdir)")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    if not methods or any(m not in ("mirror", "attack") for m in methods):
        p.error(f"--methods: expected a comma-separated subset of mirror,attack, got {a.methods!r}")
    if a.vae_beta <= 0:
        p.error(f"--vae-beta: expected > 0, got {a.vae_beta}")
    if a.decoder_steps < 1 or a.oracle_epochs < 1 or a.vae_epochs < 1:
        p.error("--decoder-steps, --oracle-epochs and --vae-epochs must be >= 1")
    from cfjax.jobs.attack import AttackJobConfig, run_attack_explanation
    from cfjax.jobs.mirror import MirrorJobConfig, run_mirror_explanation
    from cfjax.training.mirror_decoder import MirrorDecoderConfig

    work, out = Path(a.work), Path(a.out)
    data_dir = work / "data"
    n_train, n_test = (240, 48) if a.smoke else (a.train, a.test)
    if not medmnist_path("bloodmnist", a.size, data_dir).is_file():
        write_medmnist_npz(data_dir, a.size, n_train=n_train, n_val=max(n_test // 2, 8), n_test=n_test, seed=0)
    spec = f"bloodmnist@{a.size}"
    zc = models(a.smoke, a.vae_beta, a.vae_epochs)
    dec = dataclasses.replace(
        MirrorDecoderConfig.smoke(a.preset) if a.smoke else MirrorDecoderConfig.preset(a.preset),
        widths=(32, 32, 16), editor_width=16, fk_channels=16, disc_widths=(16, 32), batch_size=16,
        steps=20 if a.smoke else a.decoder_steps, log_every=5 if a.smoke else 50, checkpoint_every=10 if a.smoke else 250,
        eval_examples=32, pairs=((a.source, a.target), (a.target, a.source)),
    )
    mcfg = MirrorJobConfig(preset=a.preset, models=zc, decoder=dec, limit=a.limit, chunk_size=16, oracle_widths=(8, 16, 32), oracle_convs_per_block=1,
                           oracle_epochs=a.oracle_epochs if not a.smoke else 1, backbone_epochs=1, lpips_alex=False, n_figure_examples=6,
                           decoder_warm_start=a.warm_start)
    jobs = {"mirror": work / f"mirror_{a.preset}_{dec.steps}", "attack": work / "attack"}
    prev = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    keep = ("validity", "denoised_validity", "oracle_validity", "oracle_validity_k1", "l1", "first_cf_k_mean", "converged_rate",
            "classifier_accuracy", "oracle_accuracy", "validity_k1", "oracle_validity_real_target", "lpips_domain", "faithfulness", "n_counterfactuals", "n_examples", "mean_steps", "vae_mse", "pair", "pairs")
    summary = {
        "what": f"Mirror-CFE ({SHAPE_CLASSES[a.source]} -> {SHAPE_CLASSES[a.target]}) and Counterfactual Attacks (every shape -> "
                f"{SHAPE_CLASSES[a.target]}) at {a.size} px on synthetic shapes in the MedMNIST+ format",
        "data": {"spec": spec, "n_train": n_train, "n_test": n_test, "classes": list(SHAPE_CLASSES)},
        "models": {"classifier": dataclasses.asdict(zc.classifier), "vae": dataclasses.asdict(zc.vae)},
        "wall_s": dict(prev.get("wall_s", {})),
        "smoke": a.smoke,
    }
    out.mkdir(parents=True, exist_ok=True)
    for job in ("mirror", "attack"):
        if job not in methods:
            if job in prev:
                summary[job] = prev[job]
            continue
        t0 = time.perf_counter()
        if job == "mirror":
            res = run_mirror_explanation(spec, jobs[job], source=a.source, target=a.target, config=mcfg, models_dir=work / "models",
                                         data_dir=data_dir)
        else:
            acfg = AttackJobConfig(models=zc, targets=str(a.target), limit=a.limit, pixel_baseline=False, lpips_alex=False,
                                   steps=20 if a.smoke else 300, batch_size=16, predictor_steps=300)
            res = run_attack_explanation(spec, jobs[job], acfg, data_dir=data_dir, models_dir=work / "models")
        summary["wall_s"][job] = round(time.perf_counter() - t0, 1)
        summary[job] = {k: res.get(k) for k in keep if k in res and not (job == "attack" and k == "pairs")}
        if job == "mirror":
            summary[job].update(preset=a.preset, decoder_steps=dec.steps, oracle_epochs=mcfg.oracle_epochs)
        for stale in out.glob(f"{job}_*.png"):
            stale.unlink()
        for png in sorted((jobs[job] / "figures").glob("*.png")):
            shutil.copyfile(png, out / f"{job}_{png.name}")
    summary["figures"] = sorted(p.name for p in out.glob("*.png"))
    atomic_write_json(out / "summary.json", summary)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
