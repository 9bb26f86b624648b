"""Why a Mirror-CFE pair's denoised validity (D.Val) at the first counterfactual is low: for every
test image of the source class that the classifier gets right, decode the whole path with the
job's cached models and record, per grid point k, the decoded and the blurred (sigma 1) image's
class, and where the feature-space path itself enters the target class (and which third class
holds it before: :func:`cfjax.methods.mirror.feature_crossing`). Writes OUT/diagnosis.json and
OUT/masks.png (the CSP masks and the target CAM at a few k for the first D.Val failures).

    python experiments/mirror_dval_diagnosis.py --data fashion_mnist --models-dir runs/fm_default \
        --source 0 --target 2 --out runs/diag_0_2 [--set rho_u=0.2 ...]

``--set`` takes the decoder options that name the cached decoder (as in mirror_ablation.py; the
default config otherwise). The decoder must already be trained (``--decoder-pairs paper`` of
mirror_ablation.py): this script never trains one.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mirror_ablation import decoder_value  # noqa: E402

from cfjax.errors import bad_arg  # noqa: E402
from cfjax.io import atomic_savefig, atomic_write_json  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--source", type=int, default=0)
    p.add_argument("--target", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], help="decoder option KEY=VALUE that names the cached decoder")
    p.add_argument("--n-mask-examples", type=int, default=6)
    a = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    from cfjax.eval import metrics
    from cfjax.data import class_names
    from cfjax.jobs.skeleton import batched_predict
    from cfjax.jobs.mirror import MIRROR_PAIRS, MirrorJobConfig, classifier_backbone, decoder_dir, get_decoder, load_models, mirror_rows
    from cfjax.methods import mirror as mr

    if a.data not in MIRROR_PAIRS:
        raise bad_arg("--data", repr(a.data), f"one of {sorted(MIRROR_PAIRS)}")
    K = len(class_names(a.data))
    for name, v in (("--source", a.source), ("--target", a.target)):
        if not 0 <= v < K:
            raise bad_arg(name, v, f"a class index in [0, {K - 1}] of {a.data}")
    if a.source == a.target:
        raise bad_arg("--target", f"{a.target} (== --source)", "a class different from the source")
    base = MirrorJobConfig()
    over = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        if not hasattr(base.decoder, k):
            raise bad_arg("--set", repr(kv), "KEY=VALUE with KEY a MirrorDecoderConfig field")
        over[k] = decoder_value(base.decoder, k, v)
    dec = dataclasses.replace(base.decoder, pairs=tuple(MIRROR_PAIRS[a.data]), **over)
    cfg = dataclasses.replace(base, decoder=dec)
    cfg.validate()
    S, T = a.source, a.target
    train, test, clf_t, bb_t, root = load_models(a.data, Path(a.models_dir), cfg, progress=False)
    ddir = decoder_dir(root, dec)
    if not (ddir / "best").is_dir():
        raise bad_arg("--set", repr(a.set), f"the options of a trained decoder (no decoder at {ddir}; train it with mirror_ablation.py)")
    trained, _ = get_decoder(clf_t, train, test, root, dec, False)  # cached (checked above): loads, never trains
    clf = clf_t.fns
    decode = mr.bind_mirror_decoder(trained, clf.W)
    ks = np.asarray(mr.default_k_grid(cfg.k_step), np.float32)
    logits = jax.jit(clf_t.logits_batch)
    labels = np.asarray(test.labels)
    test_logits = batched_predict(logits, test.images)
    preds = np.argmax(test_logits, -1)
    sel = np.flatnonzero((labels == S) & (preds == S))
    run = jax.jit(lambda x, s, t: mirror_rows(clf, decode, classifier_backbone(bb_t.module, bb_t.params), x, s, t,
                                              jnp.ones(x.shape[0], bool), ks=ks, return_images=True, max_decode=2048,
                                              others=dec.reflect_others))
    acc = {k: [] for k in ("k_cf", "found", "l1", "dval", "p_dec", "blur_cls", "l1_path")}
    for i in range(0, len(sel), 64):
        x = jnp.asarray(test.images[sel[i:i + 64]])
        n = x.shape[0]
        r = run(x, jnp.full(n, S, jnp.int32), jnp.full(n, T, jnp.int32))
        xk = r["x_k"]
        blurred = metrics.gaussian_blur(xk.reshape(n * len(ks), *xk.shape[2:]), cfg.blur_sigma)
        acc["blur_cls"].append(np.asarray(jnp.argmax(logits(blurred), -1)).reshape(n, len(ks)))
        acc["l1_path"].append(np.asarray(jnp.abs(xk - x[:, None]).mean((2, 3, 4))))
        for k in ("k_cf", "found", "l1", "dval", "p_dec"):
            acc[k].append(np.asarray(r[k]))
    o = {k: np.concatenate(v) for k, v in acc.items()}
    # the feature-space path itself (closed form): where it enters the target class, and which class holds it before
    k_feat, blocker = (np.asarray(v) for v in jax.vmap(lambda l: mr.feature_crossing(l, S, T, dec.reflect_others))(jnp.asarray(test_logits[sel])))
    found = o["found"].astype(bool)
    ci = np.round(np.nan_to_num(o["k_cf"], nan=1.0) / cfg.k_step).astype(int)
    fail = found & (o["dval"] < 0.5)
    names = list(class_names(a.data))
    blur_at_fail = np.bincount(o["blur_cls"][np.arange(len(ci)), ci][fail], minlength=len(names))
    by_k = []
    for j in range(int(round(0.5 / cfg.k_step)) + 1, len(ks)):
        m = found & (ci == j)
        by_k.append({"k": float(ks[j]), "n_first_cf": int(m.sum()), "dval_of_those": float(o["dval"][m].mean()) if m.any() else None,
                     "l1_of_those": float(o["l1"][m].mean()) if m.any() else None,
                     "validity_at_k": float(np.mean(o["p_dec"][:, j] > 0.5)), "blurred_validity_at_k": float(np.mean(o["blur_cls"][:, j] == T)),
                     "l1_at_k": float(o["l1_path"][:, j].mean()),
                     "feature_validity_at_k": float(np.mean(k_feat < ks[j] - 1e-6))})
    out = {"data": a.data, "source": S, "target": T, "decoder": str(ddir.name), "decoder_options": over, "n": int(len(sel)),
           "validity": float(found.mean()), "denoised_validity": float(o["dval"][found].mean()),  # among the counterfactuals, as the job reports it
           "l1": float(o["l1"][found].mean()), "first_cf_k_mean": float(o["k_cf"][found].mean()),
           "blurred_class_at_dval_failures": {names[c]: int(v) for c, v in enumerate(blur_at_fail) if v},
           "feature_crossing_k_mean": float(k_feat.mean()),  # where the feature-space path enters the target (0.5 if unblocked)
           "feature_path_blocked_by": {names[c]: int(v) for c, v in enumerate(np.bincount(blocker[blocker != S], minlength=len(names))) if v},
           "p_target_at_cf": {"dval_ok": float(o["p_dec"][np.arange(len(ci)), ci][found & ~fail].mean()),
                              "dval_fail": float(o["p_dec"][np.arange(len(ci)), ci][fail].mean()) if fail.any() else None},
           "by_first_cf_k": by_k, "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}
    outd = Path(a.out)
    outd.mkdir(parents=True, exist_ok=True)
    atomic_write_json(outd / "diagnosis.json", out)
    _mask_figure(outd / "masks.png", test, sel, np.flatnonzero(fail)[: a.n_mask_examples], clf, S, T, dec, names)
    print(f"{names[S]} -> {names[T]}: validity {out['validity']:.3f}, D.Val {out['denoised_validity']:.3f}, L1 {out['l1']:.3f}; "
          f"blurred class at D.Val failures {out['blurred_class_at_dval_failures']}; written {outd / 'diagnosis.json'}")
    return out


def _mask_figure(path: Path, test, sel, rows, clf, S: int, T: int, dec, names, ks=(0.55, 0.7, 0.85, 1.0)) -> None:
    """Per D.Val failure: the source, then per k the CSP mask at 28x28 (white = the decoder may edit
    the source's skip there) and the normalised target CAM on F_k."""
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cfjax.methods import mirror as mr

    if len(rows) == 0:
        return
    W = jnp.asarray(clf.W)
    fig, ax = plt.subplots(len(rows), 1 + 2 * len(ks), figsize=(1.25 * (1 + 2 * len(ks)), 1.35 * len(rows)), squeeze=False)
    hw = tuple(test.images.shape[1:3])
    for r, e in enumerate(rows):
        x = jnp.asarray(test.images[sel[e]])
        F_s = clf.feature_maps(x)[-1]
        F_r = mr.reflect(F_s, clf.W, clf.b, S, T, solver="exact", others=dec.reflect_others).F_r
        ax[r, 0].imshow(np.asarray(x[..., 0]), cmap="gray", vmin=0, vmax=1)
        ax[r, 0].set_title(names[S], fontsize=6)
        for j, k in enumerate(ks):
            F_k = F_s + k * (F_r - F_s)
            m = mr.csp_mask(F_k, W, S, T, k, dec.rho_l, dec.rho_u, hw)
            ax[r, 1 + 2 * j].imshow(np.asarray(m[..., 0]), cmap="gray", vmin=0, vmax=1)
            ax[r, 1 + 2 * j].set_title(f"mask k={k}", fontsize=6)
            ax[r, 2 + 2 * j].imshow(np.asarray(mr.normalized_cam(F_k, W[T])), cmap="magma", vmin=0, vmax=1)
            ax[r, 2 + 2 * j].set_title(f"CAM {names[T]} k={k}", fontsize=6)
    for a_ in ax.ravel():
        a_.axis("off")
    fig.suptitle(f"CSP masks (rho = clip(1 - k, {dec.rho_l}, {dec.rho_u})) on D.Val failures, {names[S]} -> {names[T]}", fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
