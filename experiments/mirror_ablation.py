"""One row of the Mirror-CFE ablation table: train one decoder (paper pairs or all pairs) with the
given options, explain the dataset's 6 paper pairs in one pass (with an explicit --decoder-pairs list:
those of its pairs that are paper pairs, or all of them when none is), write the row.

    python experiments/mirror_ablation.py --data mnist5k --out runs/abl/eq12 --classifier-blur 0.5 \
        --steps 5000 --decoder-pairs paper --set skip_mode=eq12 --set fea_normalized=true --set w_fea=1

Writes OUT/summary.json (the global pass: overall + per-pair table) and OUT/row.json (the
ablation row: validity at the first counterfactual and at k = 1, D.Val at both, oracle validity,
L1 on [0, 1] and [-1, 1], the feature-vs-decoded target-probability gap, decoder steps and wall
time, the command). Models are cached under --models-dir (default OUT/../models) so rows that
share a classifier train it once; the decoder cache key is its full config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cfjax._checks import parse_pairs  # noqa: E402
from cfjax.io import atomic_write_json  # noqa: E402
from cfjax.jobs.mirror import MIRROR_PAIRS, MirrorJobConfig, run_mirror_global  # noqa: E402
from cfjax.training import zoo  # noqa: E402


def _value(v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    if "," in v:
        return tuple(_value(x) for x in v.split(","))
    return v


def decoder_value(decoder, key: str, text: str):
    """``--set KEY=TEXT`` as the type of the decoder field ``key`` ("1" for a float field is 1.0: the
    decoder cache key then equals the default config's)."""
    if not hasattr(decoder, key):
        from cfjax.errors import bad_arg

        fields = ", ".join(f.name for f in dataclasses.fields(decoder))
        raise bad_arg("--set", f"{key}={text}", f"KEY=VALUE with KEY a MirrorDecoderConfig field ({fields})")
    v, d = _value(text), getattr(decoder, key)
    return float(v) if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool) else v


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--out", required=True)
    p.add_argument("--models-dir", default=None)
    p.add_argument("--classifier-blur", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--decoder-pairs", default="paper", help="'paper' (the 6 explained pairs), 'all', or 'S,T;S,T'")
    p.add_argument("--preset", choices=["paper", "robust"], default="paper", help="the base the --set options change (default: the paper's)")
    p.add_argument("--set", action="append", default=[], help="decoder option KEY=VALUE (MirrorDecoderConfig field)")
    p.add_argument("--classifier-epochs", type=int, default=None, help="epochs of the explained classifier (default: the zoo's)")
    p.add_argument("--classifier-flip", action="store_true", help="train the explained classifier with left-right flips")
    p.add_argument("--backbone-epochs", type=int, default=2)
    p.add_argument("--oracle-epochs", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="first N test images")
    p.add_argument("--cf-threshold", type=float, default=None,
                   help="first counterfactual = argmax target AND p_t(decoded) >= this (default: the paper's argmax rule)")
    p.add_argument("--figures", action="store_true", help="per-pair transition strips and confidence curves in the report")
    p.add_argument("--warm-start", default=None, help="continue this shorter decoder run (same options, fewer steps)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--train-only", action="store_true", help="train (or reuse) the classifier and the decoder, write OUT/train.json, no evaluation")
    a = p.parse_args(argv)
    pairs = MIRROR_PAIRS[a.data] if a.data in MIRROR_PAIRS else None
    base = MirrorJobConfig.from_preset(a.preset, smoke=a.smoke)
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        from cfjax.errors import bad_arg

        raise bad_arg("--set", bad, "KEY=VALUE (a MirrorDecoderConfig field)")
    over = dict(kv.split("=", 1) for kv in a.set)
    dec = dataclasses.replace(base.decoder, steps=a.steps, checkpoint_every=min(base.decoder.checkpoint_every, a.steps),
                              **{k: decoder_value(base.decoder, k, v) for k, v in over.items()})
    if a.decoder_pairs == "paper":
        dec = dataclasses.replace(dec, pairs=tuple(pairs))
    elif a.decoder_pairs != "all":
        dec = dataclasses.replace(dec, pairs=parse_pairs(a.decoder_pairs, name="--decoder-pairs"))
        pairs = [p for p in (pairs or ()) if p in dec.pairs] or list(dec.pairs)  # a per-pair decoder explains its own pairs
    cfg = dataclasses.replace(base, decoder=dec, classifier_augment_blur=a.classifier_blur, backbone_epochs=a.backbone_epochs,
                              decoder_pairs="all" if a.decoder_pairs == "all" else base.decoder_pairs,  # "auto" would pick the paper pairs
                              oracle_epochs=a.oracle_epochs, limit=a.limit, figures=a.figures, chunk_size=64,
                              decoder_warm_start=a.warm_start, cf_threshold=a.cf_threshold)
    cfg.validate()  # bad options fail here, before any training
    if a.classifier_epochs is not None or a.classifier_flip:
        zc = cfg.models or zoo.defaults_for(a.data)
        tc = dataclasses.replace(zc.classifier_train, augment_flip=a.classifier_flip)
        tc = tc if a.classifier_epochs is None else dataclasses.replace(tc, epochs=a.classifier_epochs)
        cfg = dataclasses.replace(cfg, models=dataclasses.replace(zc, classifier_train=tc))
    out = Path(a.out)
    models_dir = Path(a.models_dir) if a.models_dir else out.parent / "models"
    t0 = time.perf_counter()
    if a.train_only:
        from cfjax.jobs.mirror import train_decoder

        rec = train_decoder(a.data, out, cfg, models_dir=models_dir)
        atomic_write_json(out / "train.json", {**rec, "total_s": time.perf_counter() - t0, "options": over, "steps": a.steps})
        return rec
    s = run_mirror_global(a.data, out, config=cfg, pairs=pairs, models_dir=models_dir)
    keys = ("validity", "validity_k1", "denoised_validity", "denoised_validity_k1", "oracle_validity", "oracle_validity_k1", "l1",
            "l1_pm1", "lpips_alex", "first_cf_k_mean", "first_cf_k_q25", "first_cf_k_q50", "first_cf_k_q75", "first_cf_k_grid_mean",
            "converged_rate", "n_counterfactuals")
    row = {k: s.get(k) for k in keys}
    row.update({k: s["faithfulness"].get(k) for k in s["faithfulness"]})
    row["preset"] = a.preset
    row["cf_threshold"] = a.cf_threshold
    row["target_prob_decoded_at_cf"] = s.get("target_prob_mean")
    row.update(
        data=a.data, classifier_blur=a.classifier_blur, classifier_epochs=a.classifier_epochs, classifier_flip=a.classifier_flip, decoder_pairs=a.decoder_pairs, steps=a.steps, options=over, warm_start=a.warm_start,
        decoder_train_s=s["decoder_load_or_train_s"],
        classifier_accuracy=s["classifier_accuracy"], oracle_accuracy=s.get("oracle_accuracy"), total_s=time.perf_counter() - t0,
        pairs={k: {**{kk: v.get(kk) for kk in ("validity", "denoised_validity", "oracle_validity", "l1", "validity_k1", "denoised_validity_k1",
                                               "oracle_validity_k1", "first_cf_k_mean", "lpips_alex", "target_prob_gap_at_cf",
                                               "target_prob_gap_signed_at_cf", "target_prob_gap_mean", "feature_l1_rel_at_cf")},
                   # what real images of the target class score (the ceilings of D.Val and oracle validity)
                   **{f"real_target_{kk}": s["real_target_ceiling"].get(k.split("->")[-1], {}).get(kk) for kk in ("denoised_validity", "denoised_validity_given_valid", "oracle_validity")}}
               for k, v in s["pairs"].items()},
        command="python experiments/mirror_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv),
    )
    atomic_write_json(out / "row.json", row)
    print(json.dumps({k: row[k] for k in keys + ("target_prob_gap_at_cf", "target_prob_gap_signed_at_cf", "decoder_train_s")}, indent=1))
    return row


if __name__ == "__main__":
    main()
