"""Where the attack step's time goes at 128 px, JAX vs PyTorch (issue 27 item 4 profile).

    .venv/bin/python experiments/bench_highres_profile.py --out prof.json [--batch 16] [--pause mirror_ablation.py --nice -19]

Times (straight-line jit, median of ``--repeats``, inside bench_highres's timed windows) the
pieces of one latent-attack step on the ``resnet128`` models of experiments/bench_highres.py:
the classifier's forward and input gradient, the decoder's forward and VJP, with and without
cfjax's XLA:CPU gradient rewrite (``cfjax.methods.jaxpr_rewrite.cpu_friendly``), and the same pieces in
PyTorch eager; then single layers: a stride-2 3x3 conv's input gradient, the 3x3/2 max pool's
gradient (select_and_scatter), GroupNorm forward + backward. A prototype (NOT in the library):
the strided conv's input gradient computed as a stride-1 conv's input gradient on an explicitly
dilated cotangent (``--dilate-proto``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_highres as bh  # noqa: E402


def strided_conv_dilated_vjp(fn):
    """``fn`` re-interpreted so that every strided conv's input gradient is a STRIDE-1 conv's
    input gradient on the cotangent scattered onto the stride-1 output grid (a prototype)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from cfjax.methods.jaxpr_rewrite import _conv_fast_vjp, reinterpret

    def conv_rule(eqn, invals):
        if eqn.primitive is not lax.conv_general_dilated_p:
            return None
        params = eqn.params
        strides = tuple(params["window_strides"])
        if all(s_ == 1 for s_ in strides) or any(d != 1 for d in params["lhs_dilation"]) or params["feature_group_count"] != 1:
            return [_conv_fast_vjp(*invals, params)]
        lhs, rhs = invals
        p1 = {**params, "window_strides": (1,) * len(strides)}
        dn = params["dimension_numbers"]

        @jax.custom_vjp
        def conv(l, r):
            return lax.conv_general_dilated_p.bind(l, r, **params)

        def fwd(l, r):
            return conv(l, r), (l, r)

        def bwd(res, g):
            l, r = res
            out1 = jax.eval_shape(lambda a, b: lax.conv_general_dilated_p.bind(a, b, **p1), l, r)
            sp = dn.out_spec[2:]
            idx = [slice(None)] * g.ndim
            for d, s_ in zip(sp, strides):
                idx[d] = slice(0, s_ * g.shape[d], s_)
            # the stride-1 output may be shorter than s * O; pad then cut
            full = list(out1.shape)
            for d, s_ in zip(sp, strides):
                full[d] = max(full[d], s_ * g.shape[d])
            gd = jnp.zeros(full, g.dtype).at[tuple(idx)].set(g)
            gd = gd[tuple(slice(0, n) for n in out1.shape)]
            gl = jax.vjp(lambda a: _conv_fast_vjp(a, r, p1), l)[1](gd)[0]
            gr = jax.vjp(lambda b: lax.conv_general_dilated_p.bind(l, b, **params), r)[1](g)[0]
            return gl, gr

        conv.defvjp(fwd, bwd)
        return [conv(lhs, rhs)]

    def wrapped(*args):
        return reinterpret(fn, conv_rule, args)

    return wrapped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_highres_profile.json")
    ap.add_argument("--model", default="resnet128", choices=sorted(bh.MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pause", default=None)
    ap.add_argument("--nice", type=int, default=None, help="niceness inside the timed windows (root: e.g. -19)")
    ap.add_argument("--nice-outside", type=int, default=None, help="niceness of this process outside them (tracing, compiling)")
    ap.add_argument("--cfg-json", default=None)
    a = ap.parse_args(argv)
    if (a.nice is not None or a.nice_outside is not None) and os.getsid(0) != os.getpid():
        os.setsid()  # own session: the autogroup renice then applies to this process only
    bh.NICE, bh.NICE_OUTSIDE = a.nice, a.nice_outside
    if a.nice_outside is not None:
        bh.Timed(bh.Pauser())._renice(a.nice_outside)
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F

    from cfjax.methods.jaxpr_rewrite import cpu_friendly
    from cfjax.io import atomic_write_json
    from cfjax.models import bind_classifier, bind_vae

    torch.set_num_threads(os.cpu_count() or 1)
    pauser = bh.Pauser(bh.find_pids(a.pause) if a.pause else [])
    cfg = {**bh.MODELS[a.model], **json.loads(a.cfg_json or "{}")}
    clf_m, cp, vae_m, vp, *_ = bh.build(cfg)
    clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bh.prepare(cfg, os.path.join(tmp, "p.npz"))
        P = dict(np.load(os.path.join(tmp, "p.npz")))
    tw = bh.TorchTwin(cfg, P)
    B = a.batch
    z, t = bh.attack_inputs(cfg, B)
    z, t = jnp.asarray(z), jnp.asarray(t)
    x = jax.vmap(vae.decode)(z)
    res = {"command": " ".join(sys.argv), "model": a.model, "batch": B, "environment": bh.environment(), "jax": {}, "torch": {}, "layers": {}}

    def tj(name, f, *args, group="jax"):
        g = jax.jit(f)
        jax.block_until_ready(g(*args))
        ts = []
        with bh.Timed(pauser) as tm:
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(g(*args))
                ts.append(time.perf_counter() - t0)
        res[group][name] = {"ms": 1e3 * float(np.median(ts)), "running_mean": tm.info.get("running_mean")}
        print(group, name, f"{res[group][name]['ms']:.1f} ms", flush=True)

    def tt(name, f, group="torch"):
        f()
        ts = []
        with bh.Timed(pauser) as tm:
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
        res[group][name] = {"ms": 1e3 * float(np.median(ts)), "running_mean": tm.info.get("running_mean")}
        print(group, name, f"{res[group][name]['ms']:.1f} ms", flush=True)

    def grad_of(logits):
        return jax.vmap(jax.grad(lambda xx, tt_: -jax.nn.softmax(logits(xx))[tt_]))

    def dec_vjp(decode):
        return lambda zz, gg: jax.vjp(jax.vmap(decode), zz)[1](gg)[0]

    gx = jnp.ones_like(x) * 1e-3
    tj("classifier_forward", jax.vmap(clf.logits), x)
    tj("classifier_input_grad", grad_of(clf.logits), x, t)
    tj("classifier_input_grad_rewrite", grad_of(cpu_friendly(clf.logits)), x, t)
    tj("classifier_input_grad_dilate_proto", grad_of(strided_conv_dilated_vjp(clf.logits)), x, t)
    tj("decoder_forward", jax.vmap(vae.decode), z)
    tj("decoder_vjp", dec_vjp(vae.decode), z, gx)
    tj("decoder_vjp_rewrite", dec_vjp(cpu_friendly(vae.decode)), z, gx)

    def step_scan(decode, logits, n=2):
        def body(zz, _):
            return zz - 0.1 * jax.vmap(jax.grad(lambda a_, b_: -jax.nn.softmax(logits(decode(a_)))[b_]))(zz, t), None

        return lambda zz: jax.lax.scan(body, zz, None, length=n)[0]

    tj("two_steps_in_scan_plain", step_scan(vae.decode, clf.logits), z)
    tj("two_steps_in_scan_rewrite", step_scan(cpu_friendly(vae.decode), cpu_friendly(clf.logits)), z)
    tj("two_steps_in_scan_dilate_proto", step_scan(cpu_friendly(vae.decode), strided_conv_dilated_vjp(clf.logits)), z)

    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2).contiguous()
    zt = torch.tensor(np.asarray(z))
    tgt = torch.tensor(np.asarray(t)).long()
    with torch.no_grad():
        tt("classifier_forward", lambda: tw.logits(xt))

    def tgrad():
        xx = xt.clone().requires_grad_(True)
        (-torch.softmax(tw.logits(xx), -1).gather(1, tgt[:, None]).sum()).backward()

    tt("classifier_input_grad", tgrad)
    with torch.no_grad():
        tt("decoder_forward", lambda: tw.decode(zt))
    gxt = torch.full_like(xt, 1e-3)

    def tdec():
        zz = zt.clone().requires_grad_(True)
        tw.decode(zz).backward(gxt)

    tt("decoder_vjp", tdec)

    # single layers at the shapes of the 128 px ResNet
    rng = np.random.default_rng(0)
    hin = rng.normal(size=(B, 32, 32, 64)).astype(np.float32)
    w = (rng.normal(size=(3, 3, 64, 128)) * 0.05).astype(np.float32)
    from jax import lax

    conv2 = lambda h, ww: lax.conv_general_dilated(h, ww, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    hj, wj = jnp.asarray(hin), jnp.asarray(w)
    tj("conv3x3_s2_64_128_forward", conv2, hj, wj, group="layers")
    tj("conv3x3_s2_64_128_input_grad", lambda h, ww: jax.grad(lambda hh: conv2(hh, ww).sum())(h), hj, wj, group="layers")
    tj("conv3x3_s2_64_128_input_grad_rewrite", lambda h, ww: jax.grad(lambda hh: cpu_friendly(conv2)(hh, ww).sum())(h), hj, wj, group="layers")
    tj("conv3x3_s2_64_128_input_grad_dilate_proto", lambda h, ww: jax.grad(lambda hh: strided_conv_dilated_vjp(conv2)(hh, ww).sum())(h), hj, wj,
       group="layers")
    ht = torch.tensor(hin).permute(0, 3, 1, 2).contiguous()
    wt = torch.tensor(w).permute(3, 2, 0, 1).contiguous()

    def tconv():
        hh = ht.clone().requires_grad_(True)
        F.conv2d(hh, wt, stride=2, padding=1).sum().backward()

    tt("torch_conv3x3_s2_64_128_input_grad", tconv, group="layers")
    with torch.no_grad():
        tt("torch_conv3x3_s2_64_128_forward", lambda: F.conv2d(ht, wt, stride=2, padding=1), group="layers")
    hp = jnp.asarray(rng.normal(size=(B, 64, 64, 64)).astype(np.float32))
    import flax.linen as nn

    pool = lambda h: nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # noqa: E731
    tj("maxpool3x3_s2_grad", lambda h: jax.grad(lambda hh: pool(hh).sum())(h), hp, group="layers")
    hpt = torch.tensor(np.asarray(hp)).permute(0, 3, 1, 2).contiguous()

    def tpool():
        hh = hpt.clone().requires_grad_(True)
        F.max_pool2d(hh, 3, 2, 1).sum().backward()

    tt("torch_maxpool3x3_s2_grad", tpool, group="layers")
    gn = nn.GroupNorm(8, epsilon=1e-5)
    gp = gn.init(jax.random.key(0), hp)
    tj("groupnorm_fwd_bwd", lambda h: jax.grad(lambda hh: (gn.apply(gp, hh) ** 2).sum())(h), hp, group="layers")

    def tgn():
        hh = hpt.clone().requires_grad_(True)
        (F.group_norm(hh, 8, eps=1e-5) ** 2).sum().backward()

    tt("torch_groupnorm_fwd_bwd", tgn, group="layers")
    res["paused_s"] = pauser.paused_s
    atomic_write_json(a.out, res)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
