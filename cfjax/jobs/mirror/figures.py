"""The Mirror-CFE job's figures: transition strips, target probability along k (features vs
decoded), the grid over pairs and the decoder's loss history."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cfjax import parallel
from cfjax.io import atomic_savefig
from cfjax.jobs import report
from cfjax.jobs.mirror.config import MIRROR_PAIRS, MirrorJobConfig
from cfjax.jobs.mirror.rows import mirror_rows, rows_options
from cfjax.methods import mirror as mr


def _strip_figure(x, o, ks, title: str | None = None):
    """Rows: source | decoded G(F_k) every other k with the classifier's target probability |
    the first counterfactual (red frame; grey when none) | counterfactual - source."""
    import matplotlib.pyplot as plt

    ne = len(x)
    cols = list(range(0, len(ks), 2)) if len(ks) > 11 else list(range(len(ks)))
    h = ne * 1.15 + 0.5
    fig, axes = plt.subplots(ne, len(cols) + 3, figsize=((len(cols) + 3) * 0.85, h), squeeze=False)
    fig.subplots_adjust(hspace=0.45, top=1.0 - 0.45 / h)  # two-line labels clear the row above
    for i in range(ne):
        report.show(axes[i, 0], x[i], "source" if i == 0 else None)
        for j, c in enumerate(cols):
            report.show(axes[i, j + 1], o["x_k"][i, c], f"k={ks[c]:.2f}\np={o['p_dec'][i, c]:.2f}")
        kc = o["k_cf"][i]
        report.show(axes[i, -2], o["x_cf"][i], f"first CF\nk={kc:.2f}" if o["found"][i] else "no CF\n(k=1)")
        for sp in axes[i, -2].spines.values():
            sp.set_color("tab:red" if o["found"][i] else "gray")
            sp.set_linewidth(2)
        report.show(axes[i, -1], np.mean(o["x_cf"][i] - x[i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
    if title:
        fig.suptitle(title, fontsize=8, y=1.0 - 0.08 / h)
    return fig


def global_figures(out: Path, test, clf, decode, backbone, ks, cfg: MirrorJobConfig, rows, summary, n_per_pair: int = 4) -> list:
    """Per pair: a transition strip of a few explained images, and every pair's mean target
    probability along k (features vs decoded) in one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx, src, tgt = rows
    names = test.class_names
    pairs = list(dict.fromkeys(zip(src.tolist(), tgt.tolist())))[:12]
    sel = [np.flatnonzero((src == a) & (tgt == b))[:n_per_pair] for a, b in pairs]
    nb = max(len(v) for v in sel)
    jrun = jax.jit(lambda x, so, ta: mirror_rows(clf, decode, backbone, x, so, ta, jnp.ones(x.shape[0], bool), ks=ks, return_images=True,
                                                 **rows_options(cfg)))
    figs = []
    for (a, b), r in zip(pairs, sel):
        x = test.images[idx[r]]
        o = jrun(*(jnp.asarray(parallel.pad_to(np.asarray(v), nb)) for v in (x, src[r], tgt[r])))
        o = jax.tree_util.tree_map(lambda v: np.asarray(v)[: len(r)], jax.device_get(o))
        row = summary["pairs"].get(f"{names[a]}->{names[b]}", {})
        num = lambda key: float("nan") if row.get(key) is None else row[key]  # noqa: E731 -- 0.0 is a value, not a missing one
        title = (f"{names[a]} -> {names[b]}: validity {num('validity'):.2f}, D.Val {num('denoised_validity'):.2f}, "
                 f"|p gap| at CF {num('target_prob_gap_at_cf'):.2f}")
        name = f"strip_{a}_{b}.png"
        atomic_savefig(_strip_figure(x, o, ks, title), out / "figures" / name)
        figs.append((f"Transitions {names[a]} -> {names[b]}", f"figures/{name}",
                     "Read each row left to right: the source, the decoded G(F_k) as k goes 0 -> 1 with the classifier's target probability, the first counterfactual (smallest k > 0.5 classified as target) and its difference; the target class should be visible by the first counterfactual."))
    pc = summary.get("pair_curves", {})
    if pc:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        kk = np.asarray(mr.default_k_grid(cfg.k_step))
        for j, (key, cv) in enumerate(list(pc.items())[:12]):
            c = plt.cm.tab10(j % 10)
            ax.plot(kk, cv["p_target_decoded"], color=c, lw=1.6, label=key)
            ax.plot(kk, cv["p_target_logits"], color=c, lw=0.8, ls="--")
        ax.axvline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlabel("k")
        ax.set_ylabel("p(target)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=5, ncol=2, loc="upper left")
        ax.set_title("mean target probability along k: decoded (solid) vs features (dashed)", fontsize=7)
        atomic_savefig(fig, out / "figures" / "confidence_vs_k_pairs.png")
        figs.append(("Confidence vs k per pair", "figures/confidence_vs_k_pairs.png",
                     "Solid: the classifier on the decoded image G(F_k); dashed: softmax(W z_k + b) of the interpolated features; where solid lags dashed, the decoder does not follow the features."))
        for key, cv in list(pc.items())[:12]:
            name = f"confidence_{key.replace('->', '_to_').replace('/', '-').replace(' ', '')}.png"
            atomic_savefig(_pair_confidence_figure(kk, cv, key, summary["pairs"].get(key, {})), out / "figures" / name)
            figs.append((f"Faithfulness {key}", f"figures/{name}",
                         "The path's target probability softmax(W z_k + b)_t (features, dashed) beside the classifier's on the decoded "
                         "image G(F_k) (solid), and their signed gap (decoded - path): a faithful decoder follows the dashed curve."))
    return figs


def _pair_confidence_figure(kk, cv, key: str, row: dict):
    """One pair's mean target probability along k: path (features) vs decoded, and the signed gap."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 2.6))
    lin, dec = np.asarray(cv["p_target_logits"]), np.asarray(cv["p_target_decoded"])
    ax.plot(kk, lin, color="tab:blue", ls="--", lw=1.4, label="path: softmax(W z_k + b)_t")
    ax.plot(kk, dec, color="tab:orange", lw=1.6, label="decoded: classifier(G(F_k))_t")
    ax.fill_between(kk, lin, dec, color="tab:red", alpha=0.15, lw=0, label="gap (decoded - path)")
    ax.axvline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("k")
    ax.set_ylabel("p(target)")
    ax.set_ylim(-0.02, 1.02)
    g, gs = row.get("target_prob_gap_at_cf"), row.get("target_prob_gap_signed_at_cf")
    sub = f"\n|gap| at CF {g:.2f}, signed {gs:+.2f}" if g is not None and gs is not None else ""
    ax.set_title(f"{key}{sub}", fontsize=7)
    ax.legend(fontsize=5, loc="upper left")
    return fig


def pair_figures(out: Path, test, preds, clf, decode, backbone, ks, cfg: MirrorJobConfig, data, summary, history, dataset) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = out / "figures"
    figs = []
    names = test.class_names
    s, t = summary["source"], summary["target"]
    pairs = cfg.figure_pairs if cfg.figure_pairs is not None else MIRROR_PAIRS.get(dataset, ((s, t),))
    if (s, t) not in pairs:
        pairs = ((s, t), *pairs)
    ne = min(cfg.n_figure_examples, len(data["x"]))
    nb = max(ne, len(pairs))  # both figure batches padded to one size: one compile
    jrun = jax.jit(lambda x, so, ta: mirror_rows(clf, decode, backbone, x, so, ta, jnp.ones(x.shape[0], bool), ks=ks, return_images=True,
                                                 **rows_options(cfg)))

    def run(x, so, ta):
        n = len(x)
        o = jrun(*(jnp.asarray(parallel.pad_to(np.asarray(a), nb)) for a in (x, so, ta)))
        return jax.tree_util.tree_map(lambda a: np.asarray(a)[:n], jax.device_get(o))

    o = run(data["x"][:ne], data["source"][:ne], data["target"][:ne])
    # transition strips
    fig = _strip_figure(data["x"][:ne], o, ks)
    atomic_savefig(fig, figdir / "transitions.png")
    figs.append(("Transition strips", "figures/transitions.png",
                 f"{names[s]} -> {names[t]}, read each row left to right: the source, the decoded G(F_k) as k goes 0 -> 1 with the classifier's target probability, the first counterfactual (smallest k > 0.5 classified as target) and its difference; a {names[t]} should be visible by the first counterfactual."))
    # confidence vs k
    cv = summary["curves"]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    kk = np.asarray(cv["k"])
    for i in range(ne):
        ax.plot(kk, o["p_lin"][i], color="tab:blue", alpha=0.25, lw=0.7)
        ax.plot(kk, o["p_dec"][i], color="tab:orange", alpha=0.25, lw=0.7)
    ax.plot(kk, cv["p_target_logits"], color="tab:blue", lw=2, label="softmax(W z_k + b)_t  (features)")
    ax.plot(kk, cv["p_target_decoded"], color="tab:orange", lw=2, label="classifier(G(F_k))_t  (decoded)")
    ax.plot(kk, cv["decoded_is_target"], color="tab:green", lw=1.5, ls="--", label="fraction decoded as target")
    ax.axvline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("k")
    ax.set_ylabel(f"p({names[t]})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=6, loc="upper left")
    ax.set_title(f"{names[s]} -> {names[t]}: confidence along the transition (n={summary['n_counterfactuals']})", fontsize=8)
    atomic_savefig(fig, figdir / "confidence_vs_k.png")
    figs.append(("Confidence vs k", "figures/confidence_vs_k.png", "Mean (thick) and per-example (thin) target probability of the interpolated features (blue) and of the decoded image (orange): the orange curve should cross 0.5 soon after k = 0.5."))
    # grid over pairs
    rows = []
    for ps, pt in pairs:
        cand = np.flatnonzero((test.labels == ps) & (preds == ps))
        if len(cand) == 0:
            cand = np.flatnonzero(test.labels == ps)
        if len(cand):
            rows.append((ps, pt, int(cand[0])))
    if rows:
        xr = test.images[[r[2] for r in rows]]
        og = run(xr, np.asarray([r[0] for r in rows], np.int32), np.asarray([r[1] for r in rows], np.int32))
        fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 1.1, len(rows) * 1.15), squeeze=False)
        for i, (ps, pt, _) in enumerate(rows):
            report.show(axes[i, 0], xr[i], "source" if i == 0 else None)
            report.show(axes[i, 1], og["x_k"][i, 0], "G(F_s), k=0" if i == 0 else None)
            report.show(axes[i, 2], og["x_cf"][i], f"k={og['k_cf'][i]:.2f} p={og['target_prob'][i]:.2f}" if og["found"][i] else "no CF")
            report.show(axes[i, 3], np.mean(og["x_cf"][i] - xr[i], -1), "CF - source" if i == 0 else None, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[i, 0].set_ylabel(f"{names[ps]}->{names[pt]}", fontsize=6)
        atomic_savefig(fig, figdir / "pairs_grid.png")
        figs.append(("Grid over pairs", "figures/pairs_grid.png", "One correctly classified test image per pair: source | reconstruction | first counterfactual | difference; one decoder serves every pair."))
    # decoder loss history
    if history:
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        st = [h["step"] for h in history]
        for key in ("cls", "adv", "rec", "fea", "tri", "d"):
            if key in history[0]:
                ax.plot(st, [h[key] for h in history], label=key, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("decoder step")
        ax.legend(fontsize=6, ncol=3)
        ax.set_title("decoder losses (means per log interval)", fontsize=8)
        atomic_savefig(fig, figdir / "decoder_losses.png")
        figs.append(("Decoder training", "figures/decoder_losses.png", "The decoder's per-term loss history (L_cls, L_adv, L_rec, L_fea, L_tri; d = discriminator): flat tails mean training has converged."))
    return figs

