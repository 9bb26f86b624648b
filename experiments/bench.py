"""Throughput benchmark of both methods; writes bench.json.

    python experiments/bench.py --out bench.json [--batch-sizes 64 256 1024] [--steps 100]
        [--torch] [--full-test-set] [--upsample resize transpose]
    python experiments/bench.py --model celeba64 --out bench_celeba64.json --batch-sizes 16 64 --steps 20 --torch

``--model resnet128`` / ``--model resnet224`` (issue 27): a ResNet-18 GAP classifier
(cfjax.models.ResNet, GroupNorm) with a latent-512 VAE decoder (attack) and the default Mirror
decoder at 128x128x3 / 224x224x3, side by side with PyTorch (eager and ``--torch-compile``),
each configuration in a fresh process; delegated to ``experiments/bench_highres.py`` (see its
docstring for the models, the protocol and ``--pause``)::

    python experiments/bench.py --model resnet128 --out bench_highres.json --batch-sizes 16 64 256 --steps 2 \
        --torch --torch-compile --mirror --pause mirror_ablation.py

``--model celeba64`` swaps the MNIST-sized models for CelebA-sized ones (64x64x3 images): a
VAE decoder with latent 128 (4x4x256 grid, four nearest-x2 + 3x3 conv stages of 256/128/64/64
channels) and a plain GAP-CNN classifier (cfjax Classifier, widths 64/128/256/256, two convs
per block, 2 classes, ~2.3 M parameters; not residual). Only the latent attack (and
``--torch``) is measured for it.

Measures, per (method, batch size, steps): compile time, steady-state wall time (median of
``--repeats``), counterfactuals/s, FLOPs per counterfactual (dense convs + matmuls counted from the jaxpr by cfjax.flops;
XLA's cost analysis beside it), and the
achieved FLOP/s as a fraction of a matmul peak measured in the same run; peak RSS. With
``--torch`` the same latent attack runs in PyTorch eager (same architecture, the Flax weights
copied over, same steps), batched and per image (as the authors' loop), timed in the same run.
Model weights are random: throughput does not depend on them (the attack runs a fixed
number of steps here: ``early_exit_every=0``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from cfjax.training import mirror_decoder as md  # noqa: E402

from cfjax.methods import attack as atk  # noqa: E402
from cfjax.flops import count_flops  # noqa: E402
from cfjax.io import atomic_write_json  # noqa: E402
from cfjax.models import VAE, Classifier, bind_classifier, bind_vae  # noqa: E402


def _time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def matmul_peak(dtype=jnp.float32, n=None, repeats=5) -> float:
    """Measured dense matmul FLOP/s on the default device."""
    n = n or (8192 if jax.default_backend() == "gpu" else 2048)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    return 2 * n**3 / _time(lambda: f(a), repeats)


MODELS = {
    # image shape, latent dim, VAE widths (decoder mirrors them), classifier kwargs
    "mnist": dict(image_shape=(28, 28, 1), latent_dim=16, vae_widths=(16, 32, 64), clf=dict()),
    "celeba64": dict(image_shape=(64, 64, 3), latent_dim=128, vae_widths=(64, 128, 256, 256),
                     clf=dict(num_classes=2, widths=(64, 128, 256, 256), convs_per_block=2)),
}


def build(upsample="resize", seed=0, model="mnist"):
    cfg = MODELS[model]
    shape = (1, *cfg["image_shape"])
    clf_m = Classifier(**cfg["clf"])
    vae_m = VAE(image_shape=cfg["image_shape"], latent_dim=cfg["latent_dim"], widths=cfg["vae_widths"], upsample=upsample)
    cp = clf_m.init(jax.random.key(seed), jnp.zeros(shape))
    vp = vae_m.init(jax.random.key(seed + 1), jnp.zeros(shape), jax.random.key(2))
    return clf_m, cp, vae_m, vp


def n_params(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def bench_attack(clf, vae, batch, steps, repeats, latent_dim=16, num_classes=10):
    z0 = jax.random.normal(jax.random.key(1), (batch, latent_dim))
    tgt = jnp.arange(batch) % num_classes
    f = jax.jit(lambda z, t: atk.attack_batch(vae.decode, clf.logits, z, t, steps=steps, threshold=0.999, early_exit_every=0))
    t0 = time.perf_counter()
    compiled = f.lower(z0, tgt).compile()
    compile_s = time.perf_counter() - t0
    # XLA's cost analysis counts a loop body once, not times its trip count: cost one
    # optimiser step (forward + backward of decode -> classify for the batch) and multiply.
    def one_step(z, t):
        return jax.vmap(jax.grad(lambda zz, tt: -jax.nn.softmax(clf.logits(vae.decode(zz)))[tt]))(z, t)

    ca = jax.jit(one_step).lower(z0, tgt).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    xla_flops = float(ca.get("flops", float("nan"))) * steps if ca else float("nan")
    # the dense FLOPs counted from the jaxpr (convs + matmuls, forward + backward): XLA's
    # number misses convolutions lowered to library calls (see cfjax.flops)
    flops = count_flops(one_step, z0, tgt) * steps
    jax.block_until_ready(compiled(z0, tgt))
    wall = _time(lambda: compiled(z0, tgt), repeats)
    return {"compile_s": compile_s, "wall_s": wall, "cf_per_s": batch / wall, "flops_per_cf": flops / batch, "flops_per_s": flops / wall,
            "xla_cost_analysis_flops_per_cf": xla_flops / batch}


def bench_reflect(clf, batch, solver, repeats):
    from cfjax.methods import mirror

    x = jax.random.uniform(jax.random.key(3), (batch, 28, 28, 1))
    F = jax.vmap(clf.feature_map)(x)
    src = jnp.zeros(batch, jnp.int32)
    tgt = jnp.ones(batch, jnp.int32)
    f = jax.jit(jax.vmap(lambda F, s, t: mirror.reflect(F, clf.W, clf.b, s, t, solver=solver)))
    t0 = time.perf_counter()
    compiled = f.lower(F, src, tgt).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(F, src, tgt))
    wall = _time(lambda: compiled(F, src, tgt), repeats)
    return {"compile_s": compile_s, "wall_s": wall, "cf_per_s": batch / wall}


def random_mirror_parts(clf_m, cp, x1, seed: int):
    """``(clf, decode, backbone, ks)`` for a Mirror-CFE step on 28x28x1 images: the bound
    classifier, the default decoder architecture with random weights (``jax.random.key(seed)``,
    shapes from one image ``x1`` [1, 28, 28, 1]), the classifier as backbone, the k grid
    (throughput and memory do not depend on the weights)."""
    from cfjax.methods import mirror as mr
    from cfjax.jobs.mirror import classifier_backbone

    clf = bind_classifier(clf_m, cp)
    dcfg = md.MirrorDecoderConfig()
    g, _ = md.build_decoder(dcfg, (28, 28, 1))
    maps = jax.vmap(clf.feature_maps)(x1)
    gp = g.init(jax.random.key(seed), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]])
    dec = mr.bind_mirror_decoder(g, gp, clf.W, config=dcfg)  # carries the path it walks
    return clf, dec, classifier_backbone(clf_m, cp), mr.default_k_grid(0.05)


def bench_mirror_chunk(clf_m, cp, batch, repeats, solver="jaxopt"):
    """The whole Mirror-CFE step per image (feature maps, reflection + L-BFGS, 21 decoded
    transitions, first counterfactual, metrics): :func:`cfjax.jobs.mirror.mirror_rows` with a
    randomly initialised decoder (throughput does not depend on the weights)."""
    from cfjax.jobs.mirror import mirror_rows

    x = jax.random.uniform(jax.random.key(5), (batch, 28, 28, 1))
    clf, dec, bb, ks = random_mirror_parts(clf_m, cp, x[:1], seed=6)
    src = jnp.arange(batch, dtype=jnp.int32) % 10
    tgt = (src + 1 + jnp.arange(batch, dtype=jnp.int32) % 9) % 10
    mask = jnp.ones(batch, bool)
    f = jax.jit(lambda x, s, t, m: mirror_rows(clf, dec, bb, x, s, t, m, ks=ks, solver=solver))
    t0 = time.perf_counter()
    compiled = f.lower(x, src, tgt, mask).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(x, src, tgt, mask))
    wall = _time(lambda: compiled(x, src, tgt, mask), repeats)
    return {"compile_s": compile_s, "wall_s": wall, "cf_per_s": batch / wall, "k_grid": int(ks.shape[0])}


def full_test_set(clf, vae, n_images=10000, k=10, steps=100, chunk=8192):
    """n_images x (k-1) targets x steps, streamed in fixed chunks: end-to-end cf/s."""
    n = n_images * (k - 1)
    z = jax.random.normal(jax.random.key(4), (n, 16))
    t = jnp.asarray((np.repeat(np.arange(n_images) % k, k - 1) + np.tile(np.arange(1, k), n_images)) % k)
    f = jax.jit(lambda z, t: atk.attack_batch(vae.decode, clf.logits, z, t, steps=steps, threshold=0.999, early_exit_every=0).success.sum())
    pad = (-n) % chunk
    z = jnp.concatenate([z, jnp.zeros((pad, 16))])
    t = jnp.concatenate([t, jnp.zeros(pad, t.dtype)])
    jax.block_until_ready(f(z[:chunk], t[:chunk]))
    t0 = time.perf_counter()
    outs = [f(z[s : s + chunk], t[s : s + chunk]) for s in range(0, n + pad, chunk)]
    jax.block_until_ready(outs)
    wall = time.perf_counter() - t0
    return {"n_counterfactuals": n, "steps": steps, "chunk": chunk, "wall_s": wall, "cf_per_s": n / wall}


def torch_side_by_side(clf_m, cp, vae_m, vp, batch, steps, per_image_n=4):
    """Same latent attack in PyTorch eager with the Flax weights copied over."""
    H, W, _ = vae_m.image_shape
    D, K = vae_m.latent_dim, clf_m.num_classes
    import torch
    import torch.nn.functional as Fn

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    T = lambda a: torch.tensor(np.asarray(a), device=dev)  # noqa: E731
    P, V = cp["params"], vp["params"]

    def conv(x, p, stride=1):  # flax HWIO -> torch OIHW, NCHW
        w = T(p["kernel"]).permute(3, 2, 0, 1)
        return Fn.conv2d(x, w, T(p["bias"]), stride=stride, padding=1)

    widths = clf_m.widths
    n_up = len(vae_m.widths)
    grid = (-(-H // 2**n_up), -(-W // 2**n_up))
    top, left = (grid[0] * 2**n_up - H) // 2, (grid[1] * 2**n_up - W) // 2

    def decode(z):
        h = z @ T(V["from_z"]["kernel"]) + T(V["from_z"]["bias"])
        h = Fn.leaky_relu(h.reshape(-1, *grid, vae_m.widths[-1]).permute(0, 3, 1, 2), 0.2)
        for i in range(len(vae_m.widths)):
            h = h.repeat_interleave(2, 2).repeat_interleave(2, 3)
            h = Fn.leaky_relu(conv(h, V[f"dec{i}"]), 0.2)
        h = torch.sigmoid(conv(h, V["out"]))
        return h[:, :, top : top + H, left : left + W]

    def logits(x):
        h = (x - 0.5) / 0.5
        for b in range(len(widths)):
            if b > 0:
                h = Fn.max_pool2d(h, 2, ceil_mode=True)
            for i in range(clf_m.convs_per_block):
                h = Fn.relu(conv(h, P[f"block{b}_conv{i}"]))
        return h.mean((2, 3)) @ T(P["head"]["kernel"]) + T(P["head"]["bias"])

    def run(n):
        z = torch.randn(n, D, device=dev, requires_grad=True)
        tgt = torch.arange(n, device=dev) % K
        opt = torch.optim.Adam([z], lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            p = torch.softmax(logits(decode(z)), -1).gather(1, tgt[:, None])
            (-p.sum()).backward()
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    # check the port: same logits as the Flax model on the same latents
    z = np.random.default_rng(0).normal(size=(4, D)).astype(np.float32)
    jl = np.asarray(jax.vmap(lambda zz: bind_classifier(clf_m, cp).logits(bind_vae(vae_m, vp).decode(zz)))(jnp.asarray(z)))
    with torch.no_grad():
        tl = logits(decode(T(z))).cpu().numpy()
    max_diff = float(np.abs(jl - tl).max())
    run(min(batch, 8))
    t0 = time.perf_counter()
    run(batch)
    batched = time.perf_counter() - t0
    out = {"device": dev, "threads": torch.get_num_threads(), "port_max_logit_diff": max_diff,
           "port_max_abs_logit": float(np.abs(jl).max()), "batched_cf_per_s": batch / batched}
    if per_image_n:
        t0 = time.perf_counter()
        for _ in range(per_image_n):
            run(1)
        out["per_image_cf_per_s"] = per_image_n / (time.perf_counter() - t0)
    return out


HIGHRES = ("resnet128", "resnet224")


def _highres(a) -> int:
    """``--model resnet128|resnet224``: run experiments/bench_highres.py with this command's options."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_highres

    sides = ["jax"] + (["torch"] if a.torch else []) + (["torch_compile"] if a.torch_compile else [])
    args = ["--model", a.model, "--out", a.out, "--batch-sizes", *map(str, a.batch_sizes), "--steps", str(a.steps[0]), "--repeats", str(a.repeats),
            "--sides", *sides, "--methods", "attack", *(["mirror"] if a.mirror else []), "--max-decode", str(a.max_decode)]
    if a.mirror_batch_sizes:
        args += ["--mirror-batch-sizes", *map(str, a.mirror_batch_sizes)]
    if a.pause:
        args += ["--pause", a.pause]
    if a.highres_cfg_json:
        args += ["--cfg-json", a.highres_cfg_json]
    if a.torch_sides:
        args[args.index("--sides") + 1 : args.index("--methods")] = a.torch_sides
    for flag, v in (("--nice", a.nice), ("--nice-outside", a.nice_outside), ("--quiet-wait-s", a.quiet_wait_s), ("--block", a.block)):
        if v is not None:
            args += [flag, str(v)]
    if a.skip_existing:
        args.append("--skip-existing")
    if a.in_process:
        args.append("--in-process")
    return bench_highres.main(args)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench.json")
    p.add_argument("--model", choices=sorted(MODELS) + sorted(HIGHRES), default="mnist",
                   help="mnist: 28x28x1, latent 16 (default); celeba64: 64x64x3, latent 128 (latent attack only); "
                        "resnet128/resnet224: ResNet-18 at 128/224 px vs PyTorch (experiments/bench_highres.py)")
    p.add_argument("--torch-per-image", type=int, default=None,
                   help="images timed one at a time in the PyTorch loop (default 4 for mnist, 0 for celeba64)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, nargs="+", default=[100])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--upsample", nargs="+", default=["resize"])
    p.add_argument("--torch", action="store_true")
    p.add_argument("--mirror", action="store_true")
    p.add_argument("--full-test-set", action="store_true")
    p.add_argument("--full-test-set-images", type=int, default=10000, help="images of the full pass (x 9 targets; 10,000 = MNIST's test set)")
    p.add_argument("--full-test-set-steps", type=int, default=100)
    p.add_argument("--full-test-set-chunk", type=int, default=8192)
    p.add_argument("--torch-compile", action="store_true", help="resnet models: also time torch.compile")
    p.add_argument("--pause", default=None, help="resnet models: SIGSTOP processes matching this around timed regions")
    p.add_argument("--max-decode", type=int, default=168, help="resnet models: Mirror-CFE images decoded at once")
    p.add_argument("--mirror-batch-sizes", type=int, nargs="+", default=None, help="resnet models: Mirror batch sizes (default --batch-sizes)")
    p.add_argument("--nice", type=int, default=None, help="resnet models: niceness of the timed regions (root: e.g. -19)")
    p.add_argument("--nice-outside", type=int, default=None, help="resnet models: niceness of the workers outside timed regions")
    p.add_argument("--quiet-wait-s", type=float, default=None, help="resnet models: wait up to this long for an idle moment before timing")
    p.add_argument("--skip-existing", action="store_true", help="resnet models: keep the rows already in --out (merge models / resume)")
    p.add_argument("--torch-sides", nargs="+", default=None, choices=["jax", "torch", "torch_compile"],
                   help="resnet models: the sides to run (default: jax + what --torch/--torch-compile ask for)")
    p.add_argument("--block", type=int, default=None, help="resnet models: attack_batch's block (compacted schedule round; default the library's 5)")
    p.add_argument("--in-process", action="store_true",
                   help="resnet models: every configuration in this process (as the GPU check runs; peak RSS is then cumulative)")
    p.add_argument("--highres-cfg-json", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.model in HIGHRES:
        return _highres(a)
    cfg = MODELS[a.model]
    if a.model != "mnist" and (a.mirror or a.full_test_set):
        p.error("--mirror and --full-test-set are MNIST-only")
    per_image_n = a.torch_per_image if a.torch_per_image is not None else (4 if a.model == "mnist" else 0)
    res = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "jax": jax.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "attack": [], "reflect": [], "mirror": [], "torch": []}
    res["matmul_peak_f32_flops"] = matmul_peak(jnp.float32)
    if jax.default_backend() == "gpu":
        res["matmul_peak_bf16_flops"] = matmul_peak(jnp.bfloat16)
    for up in a.upsample:
        clf_m, cp, vae_m, vp = build(up, model=a.model)
        if a.model != "mnist":
            res["model"] = {"name": a.model, "image_shape": list(cfg["image_shape"]), "latent_dim": cfg["latent_dim"],
                            "vae_widths": list(cfg["vae_widths"]), "classifier": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg["clf"].items()},
                            "classifier_params": n_params(cp),
                            "decoder_params": n_params({k: v for k, v in vp["params"].items() if not k.startswith(("enc", "mu", "logvar"))})}
            print(json.dumps(res["model"]), flush=True)
        clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
        for steps in a.steps:
            for bs in a.batch_sizes:
                r = bench_attack(clf, vae, bs, steps, a.repeats, cfg["latent_dim"], clf_m.num_classes)
                r.update(upsample=up, batch=bs, steps=steps, frac_of_matmul_peak=r["flops_per_s"] / res["matmul_peak_f32_flops"])
                res["attack"].append(r)
                print(json.dumps(r), flush=True)
                if a.torch and up == "resize":
                    t = torch_side_by_side(clf_m, cp, vae_m, vp, bs, steps, per_image_n)
                    t.update(batch=bs, steps=steps, jax_over_torch_batched=r["cf_per_s"] / t["batched_cf_per_s"])
                    if "per_image_cf_per_s" in t:
                        t["jax_over_torch_per_image"] = r["cf_per_s"] / t["per_image_cf_per_s"]
                    res["torch"].append(t)
                    print(json.dumps(t), flush=True)
        if a.mirror and up == a.upsample[0]:
            for bs in a.batch_sizes:
                for solver in ("exact", "jaxopt"):
                    r = bench_reflect(clf, bs, solver, a.repeats)
                    r.update(batch=bs, solver=solver)
                    res["reflect"].append(r)
                    print(json.dumps(r), flush=True)
                r = bench_mirror_chunk(clf_m, cp, bs, a.repeats)
                r.update(batch=bs, solver="jaxopt", what="full Mirror-CFE step (reflect + L-BFGS + 21 decoded transitions + metrics)")
                res.setdefault("mirror", []).append(r)
                print(json.dumps(r), flush=True)
        if a.full_test_set and up == a.upsample[0]:
            res["full_test_set"] = full_test_set(clf, vae, n_images=a.full_test_set_images, steps=a.full_test_set_steps, chunk=a.full_test_set_chunk)
            res["full_test_set"]["weights"] = "random (throughput does not depend on them); latents drawn N(0, 1), not encoded images"
            print(json.dumps(res["full_test_set"]), flush=True)
    res["loadavg_end"] = os.getloadavg()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
