"""High-resolution side-by-side benchmark, cfjax vs PyTorch (issue 27 item 4).

    python experiments/bench.py --model resnet128 --out experiments/results/bench_highres_cpu.json \
        --batch-sizes 16 64 256 --steps 2 --torch --torch-compile --mirror --pause mirror_ablation.py
    python experiments/bench_highres.py --model resnet128 resnet224 ...   # the same, several models

Models (``MODELS``; random weights, seed 0: throughput does not depend on them):

* classifier: :class:`cfjax.models.ResNet` (ResNet-18: widths 64/128/256/512, blocks 2/2/2/2,
  GroupNorm(8), 7x7/2 stem + 3x3/2 max pool at >= 96 px), 2 classes (11.2 M parameters);
* attack generator: :class:`cfjax.models.VAE` decoder, latent 512 (the paper's generator latent
  size), linear to a 4x4x512 (128 px) / 7x7x512 (224 px) grid, five (nearest x2 -> 3x3 conv,
  LeakyReLU) stages of 256/128/64/32/32 channels, 3x3 conv to RGB + sigmoid;
* Mirror decoder: :class:`cfjax.models.mirror_decoder.MirrorDecoder` with the default
  :class:`MirrorDecoderConfig` (the paper's Eq. 12 skip editors, widths 48/24/16) fed the
  ResNet's three earlier stage maps as skips.

Methods, per batch size:

* ``attack``: ``cfjax.attack_batch(decode, logits, z0, target, steps=S, threshold=0.999,
  early_exit_every=0)`` (fixed budget; the library's defaults otherwise: compacted schedule,
  the XLA:CPU gradient rewrite) against the same loop in PyTorch (Adam lr 0.1 on the latents,
  ``-p_target`` summed, one final no-grad forward for the final probability as cfjax does).
  The unit is one counterfactual-step (decode + classify forward and input gradient).
* ``mirror``: ``cfjax.mirror_cfe`` per image with the exact reflection solver (feature maps,
  reflection + closed-form refinement, ``m`` transitions decoded with CSP masks, the decoded
  path re-classified, first counterfactual), vmapped over slices of the batch so that at most
  ``max_decode`` images are decoded at once (both sides use the same slices). L-BFGS
  (the job's default solver) is not ported to torch; ``exact`` is the same work for both.

Sides: ``jax`` (jit, AOT-compiled before timing), ``torch`` (eager, batched, NCHW; the Flax
weights copied, port checked on logits) and ``torch_compile`` (``torch.compile`` of the same
function, inductor). Each (model, method, batch, side) runs in a fresh process, so peak RSS is
per configuration. Compilation and warm-up run unpaused; with ``--pause PATTERN`` the processes
whose command line contains PATTERN are SIGSTOPped only around the timed region (and always
SIGCONTed: finally blocks, a SIGTERM handler, and the parent's own finally).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {
    "resnet128": dict(image_shape=(128, 128, 3), latent_dim=512, vae_widths=(32, 64, 128, 256, 512), num_classes=2, widths=(64, 128, 256, 512),
                      blocks=(2, 2, 2, 2), groups=8),
    "resnet224": dict(image_shape=(224, 224, 3), latent_dim=512, vae_widths=(32, 64, 128, 256, 512), num_classes=2, widths=(64, 128, 256, 512),
                      blocks=(2, 2, 2, 2), groups=8),
}
K_STEP = 0.05  # the paper's k grid: 21 points
NICE = None  # the timed regions' niceness (--nice; root only below 0), set in worker mode
NICE_OUTSIDE = None  # the worker's niceness outside them (--nice-outside: compile, warm-up of torch.compile)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor()


# --------------------------------------------------------------------------- pausing


def find_pids(pattern: str) -> list[int]:
    """PIDs whose command line contains ``pattern`` (not this process or its parent)."""
    out = []
    me = {os.getpid(), os.getppid()}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in me:
            continue
        try:
            argv = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        # python processes running the script itself (not shells whose text mentions it)
        if argv and "python" in os.path.basename(argv[0]) and any(x.endswith(pattern) for x in argv[1:3]):
            out.append(int(d))
    return sorted(out)


class Pauser:
    """SIGSTOP/SIGCONT a fixed set of PIDs around timed regions; always resumes."""

    def __init__(self, pids=()):
        self.pids = list(pids)
        self.paused_s = 0.0
        self._t0 = None
        if self.pids:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):  # pragma: no cover - exercised by hand
        self.resume()
        raise SystemExit(128 + signum)

    def _send(self, sig):
        for p in self.pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def pause(self):
        if self.pids and self._t0 is None:
            self._send(signal.SIGSTOP)
            self._t0 = time.perf_counter()

    def resume(self):
        if self.pids:
            self._send(signal.SIGCONT)
        if self._t0 is not None:
            self.paused_s += time.perf_counter() - self._t0
            self._t0 = None

    def __enter__(self):
        self.pause()
        return self

    def __exit__(self, *exc):
        self.resume()
        return False


def procs_running() -> int:
    """Runnable tasks right now (the 4th field of /proc/loadavg, this reader included)."""
    try:
        return int(open("/proc/loadavg").read().split()[3].split("/")[0])
    except OSError:  # pragma: no cover
        return -1


def mean_running(seconds: float = 1.0, every: float = 0.05) -> float:
    xs = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        xs.append(procs_running())
        time.sleep(every)
    return float(np.mean(xs)) if xs else -1.0


class Timed:
    """The timed region: pause the listed processes (after waiting, up to ``quiet_wait_s``, for a
    moment when nothing else is runnable: other users' jobs cannot be paused), sample the
    runnable-task count in a thread while timing, always resume."""

    def __init__(self, pauser: Pauser, quiet_wait_s: float = 0.0, thresh: float = 1.5, nice: int | None = None):
        self.pauser, self.quiet_wait_s, self.thresh = pauser, quiet_wait_s, thresh
        self.nice = NICE if nice is None and NICE is not None else nice
        self.info = {}

    def _renice(self, value: int) -> None:
        # the kernel's autogroup scheduler (sched_autogroup_enabled) shares the CPU between
        # sessions first, and a thread's nice only counts inside its session: a worker is its own
        # session (start_new_session) and renices that group too
        if os.getsid(0) == os.getpid():
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(value))
            except OSError:
                pass
        for tid in os.listdir("/proc/self/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), value)
            except OSError:
                pass

    def __enter__(self):
        import fcntl
        import threading

        # one timed window at a time on this machine (several benchmark processes may be alive)
        self._lock = open(os.path.join(tempfile.gettempdir(), "cfjax_bench_timed.lock"), "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        t0 = time.perf_counter()
        before = None
        while True:
            self.pauser.pause()
            before = mean_running(1.0) if self.quiet_wait_s else None
            if before is None or before <= self.thresh or time.perf_counter() - t0 > self.quiet_wait_s:
                break
            self.pauser.resume()
            time.sleep(15)
        self.info = {"running_before": before, "quiet_wait_s": time.perf_counter() - t0, "loadavg_before": os.getloadavg()}
        if self.nice is not None:
            self._renice(self.nice)  # every thread of this process (nice is per thread on Linux)
            self.info["nice"] = self.nice
        self._samples, self._stop = [], threading.Event()

        def sample():
            while not self._stop.wait(0.25):
                self._samples.append(procs_running())

        self._th = threading.Thread(target=sample, daemon=True)
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join()
        if self.nice is not None:
            self._renice(NICE_OUTSIDE or 0)
        self.pauser.resume()
        self._lock.close()  # releases the flock
        xs = self._samples
        # our own compute threads are runnable too: on a 2-core box ~2-3 is "only us"
        self.info.update(running_mean=float(np.mean(xs)) if xs else None, running_max=int(max(xs)) if xs else None, loadavg_after=os.getloadavg())
        return False


# --------------------------------------------------------------------------- JAX side


def build(cfg: dict, seed: int = 0):
    """Flax modules and params: ``(clf_m, cp, vae_m, vp, g, gp, dcfg)``."""
    import jax
    import jax.numpy as jnp

    from cfjax.models import VAE, ResNet, bind_classifier
    from cfjax.training import mirror_decoder as md

    shape = tuple(cfg["image_shape"])
    clf_m = ResNet(num_classes=cfg["num_classes"], widths=tuple(cfg["widths"]), blocks=tuple(cfg["blocks"]), groups=cfg["groups"])
    # jitted inits: one compile each instead of eager op-by-op dispatch (measured at 224 px on a
    # contended box: 24 -> 20 s for the three; the values are the same draws)
    cp = jax.jit(clf_m.init)(jax.random.key(seed), jnp.zeros((1, *shape)))
    vae_m = VAE(image_shape=shape, latent_dim=cfg["latent_dim"], widths=tuple(cfg["vae_widths"]))
    vp = jax.jit(vae_m.init)(jax.random.key(seed + 1), jnp.zeros((1, *shape)), jax.random.key(2))
    dcfg = md.MirrorDecoderConfig(**cfg.get("decoder", {}))
    g, _ = md.build_decoder(dcfg, shape)
    clf = bind_classifier(clf_m, cp)
    maps = jax.eval_shape(clf.feature_maps, jnp.zeros(shape))
    gp = jax.jit(g.init)(jax.random.key(seed + 3), jnp.zeros((1, *maps[-1].shape)), [jnp.zeros((1, *m.shape)) for m in maps[:-1]],
                         [jnp.ones((1, *m.shape[:2], 1)) for m in maps[:-1]])
    return clf_m, cp, vae_m, vp, g, gp, dcfg


def n_params(tree) -> int:
    import jax

    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


def flat_params(tree, prefix: str) -> dict:
    from flax.traverse_util import flatten_dict

    return {f"{prefix}/" + "/".join(k): np.asarray(v) for k, v in flatten_dict(tree["params"]).items()}


def slice_size(n: int, m: int, max_decode: int) -> int:
    """The largest divisor ``s`` of ``n`` with ``s * m <= max_decode`` (at least 1)."""
    return max([s for s in range(1, n + 1) if n % s == 0 and s * m <= max_decode] or [1])


def mirror_inputs(cfg, batch: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, *cfg["image_shape"])).astype(np.float32)
    src = (np.arange(batch) % cfg["num_classes"]).astype(np.int32)
    tgt = ((src + 1) % cfg["num_classes"]).astype(np.int32)
    return x, src, tgt


def attack_inputs(cfg, batch: int, seed: int = 1):
    z = np.random.default_rng(seed).normal(size=(batch, cfg["latent_dim"])).astype(np.float32)
    return z, (np.arange(batch) % cfg["num_classes"]).astype(np.int32)


def jax_mirror_fn(clf, dec, ks, n: int, s: int):
    """Batched Mirror-CFE (exact solver) over ``n`` images in ``n // s`` sequential slices of ``s``;
    returns ``(k_cf, found, logits_path)``."""
    import jax

    from cfjax.methods import mirror as mr

    def decode(F_k, skips, source, target, k):  # a plain callable (the bound decoder's own checks are not what is timed)
        return dec(F_k, skips, source, target, k)

    one = jax.vmap(lambda x, a, b: mr.mirror_cfe(clf.feature_maps, clf.W, clf.b, decode, x, a, b, ks=ks, solver="exact", others="keep"))

    def f(x, src, tgt):
        def body(args):
            r = one(*args)
            return r.k_cf, r.found, r.logits_path

        if s == n:
            return body((x, src, tgt))
        resh = lambda a: a.reshape(n // s, s, *a.shape[1:])  # noqa: E731
        outs = jax.lax.map(body, (resh(x), resh(src), resh(tgt)))
        return jax.tree_util.tree_map(lambda a: a.reshape(n, *a.shape[2:]), outs)

    return f


def jax_worker(cfg, method, batch, steps, repeats, max_decode, pauser, schedule="compact", rewrite=None, quiet_wait_s=0.0, block=None) -> dict:
    import jax
    import jax.numpy as jnp

    from cfjax.flops import count_flops
    from cfjax.methods import attack as atk
    from cfjax.methods import mirror as mr
    from cfjax.models import bind_classifier, bind_vae

    clf_m, cp, vae_m, vp, g, gp, dcfg = build(cfg)
    clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
    out = {}
    if method == "attack":
        z0, tgt = map(jnp.asarray, attack_inputs(cfg, batch))
        opts = {} if block is None else {"block": block}
        f = jax.jit(lambda z, t: atk.attack_batch(vae.decode, clf.logits, z, t, steps=steps, threshold=0.999, early_exit_every=0, schedule=schedule,
                                                  rewrite_grads=rewrite, **opts))
        # the compacted schedule advances lanes in rounds of `block` steps (default 5, capped at
        # the step budget) and a round always runs whole: with steps % block != 0 the last
        # round's extra steps are computed (masked) and thrown away
        import inspect

        blk = min(block or inspect.signature(atk.attack_batch).parameters["block"].default, steps)
        out.update(block=blk, computed_steps=(-(-steps // blk) * blk) if schedule == "compact" else steps)
        args = (z0, tgt)

        def one_step(z, t):
            return jax.vmap(jax.grad(lambda zz, tt: -jax.nn.softmax(clf.logits(vae.decode(zz)))[tt]))(z, t)

        fwd = count_flops(jax.vmap(lambda zz: clf.logits(vae.decode(zz))), z0)
        step_flops = count_flops(one_step, z0, tgt)
        total_flops = steps * step_flops + fwd  # + the final forward that reports the probability
        out.update(flops_per_cf_step=step_flops / batch, flops_final_forward_per_cf=fwd / batch)
        units = batch * steps
    else:
        x, src, tgt = map(jnp.asarray, mirror_inputs(cfg, batch))
        ks = mr.default_k_grid(K_STEP)
        m = int(ks.shape[0])
        s = slice_size(batch, m, max_decode)
        dec = mr.bind_mirror_decoder(g, gp, clf.W, dcfg.rho_l, dcfg.rho_u)
        fn = jax_mirror_fn(clf, dec, ks, batch, s)
        f = jax.jit(fn)
        args = (x, src, tgt)
        total_flops = count_flops(fn, *args)
        out.update(k_grid=m, slice=s, decoded_images=batch * m, flops_per_cf=total_flops / batch)
        units = batch
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    out["compile_s"] = time.perf_counter() - t0
    ts, load = [], []
    with Timed(pauser, quiet_wait_s) as tm:  # one window: a warm-up run, then the timed runs
        t0 = time.perf_counter()
        res = jax.block_until_ready(compiled(*args))
        out["warmup_s"] = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = jax.block_until_ready(compiled(*args))
            ts.append(time.perf_counter() - t0)
    load.append(tm.info)
    wall = float(np.median(ts))
    if method == "attack":
        out["lane_steps"] = int(np.asarray(res.steps_taken).sum())  # == batch * steps: no lane retired early
        out["cf_steps_per_s"] = units / wall
    else:
        out["found"] = int(np.asarray(res[1]).sum())
        out["logits_path_checksum"] = float(np.asarray(res[2]).sum())
        out["cf_per_s"] = units / wall
        out["decoded_per_s"] = units * out["k_grid"] / wall
    out.update(wall_s=wall, walls_s=ts, flops_per_s=total_flops / wall, loadavg_timed=load)
    return out


def prepare(cfg, path: str) -> dict:
    """Write the Flax params (flattened) and reference outputs to ``path`` (.npz)."""
    import jax
    import jax.numpy as jnp

    from cfjax.methods import mirror as mr
    from cfjax.models import bind_classifier, bind_vae

    clf_m, cp, vae_m, vp, g, gp, dcfg = build(cfg)
    clf, vae = bind_classifier(clf_m, cp), bind_vae(vae_m, vp)
    arrs = {**flat_params(cp, "clf"), **flat_params(vp, "vae"), **flat_params(gp, "dec")}
    z, _ = attack_inputs(cfg, 2, seed=11)
    arrs["ref/z"] = z
    arrs["ref/attack_logits"] = np.asarray(jax.vmap(lambda zz: clf.logits(vae.decode(zz)))(jnp.asarray(z)))
    x, src, tgt = mirror_inputs(cfg, 2, seed=12)
    ks = mr.default_k_grid(0.25)
    dec = mr.bind_mirror_decoder(g, gp, clf.W, dcfg.rho_l, dcfg.rho_u)
    _, _, lp = jax_mirror_fn(clf, dec, ks, 2, 2)(*map(jnp.asarray, (x, src, tgt)))
    arrs.update({"ref/x": x, "ref/src": src, "ref/tgt": tgt, "ref/ks": np.asarray(ks), "ref/mirror_logits_path": np.asarray(lp)})
    dinfo = {"widths": list(dcfg.widths), "editor_width": dcfg.editor_width, "skip_mode": dcfg.skip_mode, "rho_l": dcfg.rho_l, "rho_u": dcfg.rho_u}
    arrs["meta/dcfg"] = np.array(json.dumps(dinfo))
    np.savez(path, **arrs)
    return {"classifier_params": n_params(cp), "decoder_params": n_params({k: v for k, v in vp["params"].items() if not k.startswith(("enc", "mu", "logvar"))}),
            "mirror_decoder_params": n_params(gp), "mirror_decoder": dinfo}


# --------------------------------------------------------------------------- PyTorch twin


class TorchTwin:
    """The same three networks in PyTorch (NCHW), weights from the flattened Flax params."""

    def __init__(self, cfg: dict, params: dict, channels_last: bool = False, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = device
        self.cfg = cfg
        self.cl = channels_last
        self.P = {}
        for k, v in params.items():
            if k.startswith(("meta/", "ref/")):
                continue
            t = torch.tensor(np.asarray(v), device=device)
            if k.endswith("/kernel") and t.ndim == 4:  # flax HWIO -> torch OIHW
                t = t.permute(3, 2, 0, 1).contiguous()
                if channels_last:
                    t = t.to(memory_format=torch.channels_last)
            self.P[k] = t
        # the Mirror decoder's config, written by prepare() (no JAX import on the torch side)
        d = json.loads(str(np.asarray(params["meta/dcfg"])))
        self.dec_widths, self.skip_mode, self.rho_l, self.rho_u = d["widths"], d["skip_mode"], d["rho_l"], d["rho_u"]
        H = cfg["image_shape"][0]
        self.mean = torch.tensor((0.485, 0.456, 0.406)[: cfg["image_shape"][2]], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor((0.229, 0.224, 0.225)[: cfg["image_shape"][2]], device=device).view(1, -1, 1, 1)
        self.large_stem = H >= 96
        self.W = self.P["clf/head/kernel"].T.contiguous()  # [K, C]
        self.b = self.P["clf/head/bias"]

    # -- building blocks
    def conv(self, x, name, stride=1, padding=None):
        F = self.torch.nn.functional
        w = self.P[f"{name}/kernel"]
        pad = (w.shape[-1] // 2) if padding is None else padding
        return F.conv2d(x, w, self.P.get(f"{name}/bias"), stride=stride, padding=pad)

    def gn(self, x, name):
        return self.torch.nn.functional.group_norm(x, self.cfg["groups"], self.P[f"{name}/scale"], self.P[f"{name}/bias"], eps=1e-5)

    # -- classifier (cfjax.models.ResNet)
    def feature_maps(self, x):
        F = self.torch.nn.functional
        h = (x - self.mean) / self.std
        if self.cl:
            h = h.contiguous(memory_format=self.torch.channels_last)
        if self.large_stem:
            h = F.relu(self.gn(self.conv(h, "clf/stem_conv7", stride=2, padding=3), "clf/stem_norm"))
            h = F.max_pool2d(h, 3, 2, 1)
        else:
            h = F.relu(self.gn(self.conv(h, "clf/stem_conv3", padding=1), "clf/stem_norm"))
        maps = []
        for s, (w, n) in enumerate(zip(self.cfg["widths"], self.cfg["blocks"])):
            for i in range(n):
                p = f"clf/stage{s}_block{i}"
                st = 2 if (s > 0 and i == 0) else 1
                y = F.relu(self.gn(self.conv(h, f"{p}/conv1", stride=st, padding=1), f"{p}/norm1"))
                y = self.gn(self.conv(y, f"{p}/conv2", padding=1), f"{p}/norm2")
                if f"{p}/proj/kernel" in self.P:
                    h = self.gn(self.conv(h, f"{p}/proj", stride=st, padding=0), f"{p}/proj_norm")
                h = F.relu(y + h)
            maps.append(h)
        return maps

    def logits(self, x):
        return self.feature_maps(x)[-1].mean((2, 3)) @ self.P["clf/head/kernel"] + self.P["clf/head/bias"]

    # -- attack generator (cfjax.models.VAE decoder, resize upsampling)
    def decode(self, z):
        F = self.torch.nn.functional
        H, W, _ = self.cfg["image_shape"]
        widths = self.cfg["vae_widths"]
        L = len(widths)
        grid = (-(-H // 2**L), -(-W // 2**L))
        h = z @ self.P["vae/from_z/kernel"] + self.P["vae/from_z/bias"]
        h = F.leaky_relu(h.reshape(-1, *grid, widths[-1]).permute(0, 3, 1, 2), 0.2)
        if self.cl:
            h = h.contiguous(memory_format=self.torch.channels_last)
        for i in range(L):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = F.leaky_relu(self.conv(h, f"vae/dec{i}"), 0.2)
        h = self.torch.sigmoid(self.conv(h, "vae/out"))
        top, left = (h.shape[2] - H) // 2, (h.shape[3] - W) // 2
        return h[:, :, top : top + H, left : left + W]

    # -- Mirror decoder (cfjax MirrorDecoder, skip_mode="eq12") and the CSP masks
    def _resize(self, x, hw):
        F = self.torch.nn.functional
        if tuple(x.shape[2:]) == tuple(hw):
            return x
        if hw[0] % x.shape[2] == 0 and hw[1] % x.shape[3] == 0:
            return F.interpolate(x, scale_factor=(hw[0] // x.shape[2], hw[1] // x.shape[3]), mode="nearest")
        return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)

    def _pool_to(self, x, hw):
        F = self.torch.nn.functional
        if tuple(x.shape[2:]) == tuple(hw):
            return x
        if x.shape[2] % hw[0] == 0 and x.shape[3] % hw[1] == 0:
            return F.avg_pool2d(x, (x.shape[2] // hw[0], x.shape[3] // hw[1]))
        return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)

    def csp_masks(self, Fk, s, t, k, hws):
        """One {0, 1} mask [n, 1, h, w] per skip (cfjax.methods.mirror.csp_mask)."""
        torch, F = self.torch, self.torch.nn.functional
        cams = []
        for c in (s, t):
            u = F.relu(torch.einsum("nchw,nc->nhw", Fk, self.W[c]))
            cams.append(u / u.amax((1, 2), keepdim=True).clamp_min(1e-8))
        cams = torch.stack(cams, 1)  # [n, 2, h, w]
        rho = (1.0 - k).clamp(self.rho_l, self.rho_u).view(-1, 1, 1, 1)
        out = []
        for hw in hws:
            c = cams if tuple(cams.shape[2:]) == tuple(hw) else F.interpolate(cams, size=tuple(hw), mode="bilinear", align_corners=False)
            out.append((c > rho).any(1, keepdim=True).to(Fk.dtype))
        return out

    def mirror_decode(self, Fk, skips, masks):
        torch, F = self.torch, self.torch.nn.functional
        if self.skip_mode != "eq12":
            raise NotImplementedError("the torch twin ports skip_mode='eq12' (the default) only")
        H, W, _ = self.cfg["image_shape"]
        h = F.relu(self.conv(Fk, "dec/stem"))
        for level, i in enumerate(reversed(range(len(skips)))):
            skip, m = skips[i], masks[i]
            hw = tuple(skip.shape[2:])
            width_name = f"dec/editor{i}"
            b = F.relu(self.conv(self._pool_to(skip, Fk.shape[2:]), f"{width_name}/B"))
            u = F.relu(self.conv(torch.cat([b, Fk], 1), f"{width_name}/D0"))
            u = F.relu(self.conv(self._resize(u, hw), f"{width_name}/D1"))
            edited = F.relu(self.conv(u, f"{width_name}/D2"))
            mixed = (1.0 - m) * skip + m * edited
            h = self._resize(h, hw)
            h = F.relu(self.conv(torch.cat([h, mixed], 1), f"dec/up{i}_conv0"))
            h = F.relu(self.conv(h, f"dec/up{i}_conv1"))
        j = 0
        while 2 * h.shape[2] <= H and 2 * h.shape[3] <= W:  # the high-resolution tail (x2 + 3x3 conv stages)
            h = F.relu(self.conv(self._resize(h, (2 * h.shape[2], 2 * h.shape[3])), f"dec/tail{j}_conv"))
            j += 1
        h = self._resize(h, (H, W))
        return torch.sigmoid(self.conv(h, "dec/out"))

    def mirror_cfe(self, x, src, tgt, ks):
        """Mirror-CFE with the exact solver on a batch (x NCHW); returns ``(k_cf, found, logits_path [n, m, K])``."""
        torch = self.torch
        n, m = x.shape[0], ks.shape[0]
        maps = self.feature_maps(x)
        skips, Fs = maps[:-1], maps[-1]
        W, b = self.W, self.b
        wm, bm = W[tgt] - W[src], b[tgt] - b[src]  # [n, C], [n]
        nn_ = (wm * wm).sum(1)
        margin = (torch.einsum("nchw,nc->nhw", Fs, wm) + bm.view(-1, 1, 1)) / torch.where(nn_ > 0, nn_, torch.ones_like(nn_)).view(-1, 1, 1)
        margin = torch.where((nn_ > 0).view(-1, 1, 1), margin, torch.zeros_like(margin))
        Fref = Fs - 2.0 * margin[:, None] * wm[:, :, None, None]
        logits = Fs.mean((2, 3)) @ W.T + b
        q = logits.clone()
        ar = torch.arange(n, device=x.device)
        q[ar, src], q[ar, tgt] = logits[ar, tgt], logits[ar, src]
        r = q - (Fref.mean((2, 3)) @ W.T + b)
        delta = r @ torch.linalg.pinv(W).T  # [n, C]
        Fr = Fref + delta[:, :, None, None]
        Fk = Fs[:, None] + ks.view(1, -1, 1, 1, 1) * (Fr - Fs)[:, None]  # [n, m, C, h, w]
        Fk = Fk.reshape(n * m, *Fs.shape[1:])
        rep = lambda a: a.repeat_interleave(m, 0)  # noqa: E731
        kk = ks.repeat(n)
        sk = [rep(s_) for s_ in skips]
        masks = self.csp_masks(Fk, rep(src), rep(tgt), kk, [s_.shape[2:] for s_ in skips])
        xk = self.mirror_decode(Fk, sk, masks)
        ld = (self.feature_maps(xk)[-1].mean((2, 3)) @ W.T + b).reshape(n, m, -1)
        ok = (ld.argmax(-1) == tgt[:, None]) & (ks[None] > 0.5 + 1e-6)
        found = ok.any(1)
        idx = torch.where(found, ok.float().argmax(1), torch.full_like(found, m - 1, dtype=torch.long))
        k_cf = torch.where(found, ks[idx], torch.full_like(ks[idx], float("nan")))
        return k_cf, found, ld


def torch_worker(cfg, method, batch, steps, repeats, max_decode, pauser, params_path, compile_=False, channels_last=False, quiet_wait_s=0.0) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    T = lambda a: torch.tensor(np.asarray(a), device=dev)  # noqa: E731
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    P = dict(np.load(params_path))
    tw = TorchTwin(cfg, P, channels_last=channels_last, device=dev)
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "channels_last": channels_last, "torch_device": dev}
    with torch.no_grad():  # port check against the JAX outputs written by prepare()
        z = T(P["ref/z"])
        out["port_max_logit_diff"] = float((tw.logits(tw.decode(z)) - T(P["ref/attack_logits"])).abs().max())
        out["port_max_abs_logit"] = float(np.abs(P["ref/attack_logits"]).max())
        xr = T(P["ref/x"]).permute(0, 3, 1, 2)
        _, _, lp = tw.mirror_cfe(xr, T(P["ref/src"]).long(), T(P["ref/tgt"]).long(), T(P["ref/ks"]))
        out["port_max_mirror_logit_diff"] = float((lp - T(P["ref/mirror_logits_path"])).abs().max())
    if method == "attack":
        zn, tn = attack_inputs(cfg, batch)
        tgt = T(tn).long()

        def probs(z):
            return torch.softmax(tw.logits(tw.decode(z)), -1).gather(1, tgt[:, None])[:, 0]

        fn = torch.compile(probs) if compile_ else probs

        def run(nsteps):
            z = T(zn).requires_grad_(True)
            opt = torch.optim.Adam([z], lr=0.1)
            for _ in range(nsteps):
                opt.zero_grad(set_to_none=True)
                (-fn(z).sum()).backward()
                opt.step()
            with torch.no_grad():
                p = fn(z)
            sync()
            return p

        units = batch * steps
        warm = lambda: run(1)  # noqa: E731  (compiles forward + backward under torch.compile)
        timed = lambda: run(steps)  # noqa: E731
    else:
        xn, sn, tn = mirror_inputs(cfg, batch)
        ks = torch.linspace(0.0, 1.0, int(round(1.0 / K_STEP)) + 1, device=dev)
        m = ks.shape[0]
        s = slice_size(batch, m, max_decode)
        x = T(xn).permute(0, 3, 1, 2).contiguous()
        src, tgt = T(sn).long(), T(tn).long()
        fn = torch.compile(tw.mirror_cfe) if compile_ else tw.mirror_cfe

        def run():
            with torch.no_grad():
                res = [fn(x[a : a + s], src[a : a + s], tgt[a : a + s], ks) for a in range(0, batch, s)]
            sync()
            return [torch.cat([r[j] for r in res]) for j in range(3)]

        def warm():  # one slice (compiles under torch.compile: every slice has the same shape)
            with torch.no_grad():
                fn(x[:s], src[:s], tgt[:s], ks)
            sync()

        units = batch
        out.update(k_grid=m, slice=s)
        timed = run
    if compile_:  # compilation outside the timed window (unpaused), recorded
        t0 = time.perf_counter()
        try:
            warm()
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            out["error"] = f"torch.compile failed: {type(e).__name__}: {str(e)[:2000]}"
            out["compile_s"] = time.perf_counter() - t0
            return out
        out["compile_s"] = time.perf_counter() - t0
    ts, load = [], []
    with Timed(pauser, quiet_wait_s) as tm:  # one window: a warm-up (1 step / 1 slice), then the timed runs
        t0 = time.perf_counter()
        warm()
        out["warmup_s"] = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = timed()
            ts.append(time.perf_counter() - t0)
    load.append(tm.info)
    wall = float(np.median(ts))
    if method == "attack":
        out["cf_steps_per_s"] = units / wall
    else:
        out["found"] = int(res[1].sum())
        out["logits_path_checksum"] = float(res[2].sum())
        out["cf_per_s"] = units / wall
        out["decoded_per_s"] = units * out["k_grid"] / wall
    out.update(wall_s=wall, walls_s=ts, loadavg_timed=load)
    return out


# --------------------------------------------------------------------------- orchestration


def _worker_main(a) -> int:
    global NICE, NICE_OUTSIDE
    NICE, NICE_OUTSIDE = a.nice, a.nice_outside
    if NICE_OUTSIDE is not None and not a.in_process:
        Timed(Pauser())._renice(NICE_OUTSIDE)
    cfg = {**MODELS[a.model[0]], **json.loads(a.cfg_json or "{}")}
    pauser = Pauser(a.pause_pids or [])
    try:
        if a.worker == "prepare":
            rec = prepare(cfg, a.params)
        elif a.worker == "peak":
            with Timed(pauser, a.quiet_wait_s or 0.0) as tm:
                rec = {"matmul_peak_f32_flops": matmul_peak_worker()}
            rec["load"] = tm.info
            import jax

            if jax.default_backend() == "gpu":
                rec["matmul_peak_bf16_flops"] = matmul_peak_worker("bfloat16")
        elif a.worker == "jax":
            rec = jax_worker(cfg, a.method, a.batch, a.steps, a.repeats, a.max_decode, pauser, schedule=a.schedule,
                             rewrite=None if a.rewrite == "default" else a.rewrite == "on", quiet_wait_s=a.quiet_wait_s or 0.0, block=a.block)
        else:
            rec = torch_worker(cfg, a.method, a.batch, a.steps, a.repeats, a.max_decode, pauser, a.params, compile_=a.worker == "torch_compile",
                               channels_last=a.channels_last, quiet_wait_s=a.quiet_wait_s or 0.0)
    finally:
        pauser.resume()
    rec.update(paused_s=pauser.paused_s, peak_rss_mb=_peak_rss_mb())
    print("RESULT " + json.dumps(rec), flush=True)
    return 0


def _in_process(wa) -> dict:
    """A worker's job in this process (``--in-process``: the GPU check, where process start-up
    costs device time; peak RSS is then the process's running maximum)."""
    import contextlib
    import io

    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf):
            _worker_main(wa)
    except Exception as e:  # noqa: BLE001 - recorded like a failed worker process
        return {"error": f"{type(e).__name__}: {str(e)[:2000]}", "process_wall_s": time.perf_counter() - t0}
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("RESULT ")]
    rec = json.loads(lines[-1][7:])
    rec.update(process_wall_s=time.perf_counter() - t0, in_process=True)
    return rec


def run_worker(args: list, timeout: float, pids) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--pause-pids", *map(str, pids)] if pids else [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "process_wall_s": time.perf_counter() - t0}
    finally:
        for p in pids:  # belt and braces: the worker resumes them itself
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode or not lines:
        return {"error": f"exit {r.returncode}: {r.stderr[-3000:]}", "process_wall_s": time.perf_counter() - t0}
    rec = json.loads(lines[-1][7:])
    rec["process_wall_s"] = time.perf_counter() - t0
    return rec


def matmul_peak_worker(dtype="float32") -> float:
    """Measured dense matmul FLOP/s (2048^2 on CPU, 8192^2 on GPU; JAX's default precision)."""
    import jax
    import jax.numpy as jnp

    n = 8192 if jax.default_backend() == "gpu" else 2048
    a = jax.random.normal(jax.random.key(0), (n, n), getattr(jnp, dtype))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(ts))


def environment() -> dict:
    import jax

    env = {"jax": jax.__version__, "backend": jax.default_backend(), "cpu_model": cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(),
           "python": sys.version.split()[0], "XLA_FLAGS": os.environ.get("XLA_FLAGS"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "jax_threads": "XLA:CPU default (all cores)"}
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = os.cpu_count()
    except ImportError:  # pragma: no cover
        env["torch"] = None
    try:
        env["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:  # pragma: no cover
        pass
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["resnet128"], choices=sorted(MODELS))
    p.add_argument("--out", default="bench_highres.json")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--mirror-batch-sizes", type=int, nargs="+", default=None, help="default: --batch-sizes")
    p.add_argument("--steps", type=int, default=2, help="attack steps per timed run (+ one final forward)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--methods", nargs="+", default=["attack", "mirror"], choices=["attack", "mirror"])
    p.add_argument("--sides", nargs="+", default=["jax", "torch", "torch_compile"], choices=["jax", "torch", "torch_compile"])
    p.add_argument("--max-decode", type=int, default=168, help="images decoded at once by Mirror-CFE (both sides)")
    p.add_argument("--cfg-json", default=None, help="JSON overrides of the model config (tests: tiny widths)")
    p.add_argument("--pause", default=None, help="SIGSTOP processes whose command line contains this around timed regions")
    p.add_argument("--pause-budget-s", type=float, default=1800.0, help="stop pausing (and flag rows 'contended') after this many paused seconds")
    p.add_argument("--timeout", type=float, default=900.0, help="per worker process")
    p.add_argument("--schedule", default="compact", choices=["compact", "vmap"])
    p.add_argument("--block", type=int, default=None, help="attack_batch's block (compacted schedule round length; default: the library's, 5)")
    p.add_argument("--rewrite", default="default", choices=["default", "on", "off"])
    p.add_argument("--channels-last", action="store_true", help="torch sides in channels_last memory format")
    p.add_argument("--quiet-wait-s", type=float, default=None,
                   help="before each timed region wait up to this long for a moment with nothing else runnable (default 120 with --pause, else 0)")
    p.add_argument("--nice", type=int, default=None,
                   help="niceness of the benchmark's threads inside timed regions (e.g. -19: other users' jobs, which cannot be paused, get "
                        "a small share of the CPU; root only); the same for every side")
    p.add_argument("--nice-outside", type=int, default=None,
                   help="niceness of the worker processes outside the timed regions (tracing, compilation, model set-up)")
    p.add_argument("--in-process", action="store_true",
                   help="run every configuration in this process (GPU check: no per-process start-up; peak RSS is then cumulative)")
    p.add_argument("--skip-existing", action="store_true", help="keep rows already in --out (resume a partial run)")
    # worker mode
    p.add_argument("--worker", choices=["prepare", "peak", "jax", "torch", "torch_compile"], help=argparse.SUPPRESS)
    p.add_argument("--method", default="attack", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--params", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pause-pids", type=int, nargs="*", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return _worker_main(a)
    from cfjax.io import atomic_write_json

    pids = find_pids(a.pause) if a.pause else []
    quiet = a.quiet_wait_s if a.quiet_wait_s is not None else (120.0 if a.pause else 0.0)
    res = {"benchmark": "issue 27 item 4: cfjax vs PyTorch at high resolution, CPU", "command": " ".join(sys.argv), "argv": argv, "environment": environment(), "paused_pids": pids, "pause_pattern": a.pause, "options": {
               "steps": a.steps, "repeats": a.repeats, "max_decode": a.max_decode, "k_step": K_STEP, "schedule": a.schedule, "rewrite": a.rewrite,
               "channels_last": a.channels_last, "quiet_wait_s": quiet, "nice": a.nice, "nice_outside": a.nice_outside,
               "in_process": a.in_process}, "models": {}, "rows": [], "paused_s_total": 0.0}
    if a.skip_existing and os.path.exists(a.out):
        old = json.load(open(a.out))
        res["rows"] = old.get("rows", [])
        res["models"] = old.get("models", {})
        res["paused_s_total"] = old.get("paused_s_total", 0.0)
        res["matmul_peak_f32_flops"] = old.get("matmul_peak_f32_flops")
        for k in ("matmul_peak_load", "matmul_peak_bf16_flops"):
            if k in old:
                res[k] = old[k]
        res["commands"] = old.get("commands", [old.get("command")])
    res["commands"] = res.get("commands", []) + [res["command"]]
    key = lambda r: (r["model"], r["method"], r["batch"], r["side"], r.get("block_option"))  # noqa: E731
    done = {key(r) for r in res["rows"] if "error" not in r}
    cfg_over = json.loads(a.cfg_json or "{}")

    def save():
        res["loadavg_end"] = os.getloadavg()
        atomic_write_json(a.out, res)

    if not res.get("matmul_peak_f32_flops"):
        pk = ["--model", a.model[0], "--worker", "peak", "--quiet-wait-s", str(quiet)] + (["--nice", str(a.nice)] if a.nice is not None else [])
        rec = _in_process(p.parse_args(pk)) if a.in_process else run_worker(pk, a.timeout, pids)
        if "error" in rec:
            raise RuntimeError(f"matmul peak: {rec['error']}")
        res["matmul_peak_f32_flops"] = rec["matmul_peak_f32_flops"]
        res["matmul_peak_load"] = rec["load"]
        if "matmul_peak_bf16_flops" in rec:
            res["matmul_peak_bf16_flops"] = rec["matmul_peak_bf16_flops"]
        res["paused_s_total"] += rec.get("paused_s", 0.0)
    print(f"matmul peak {res['matmul_peak_f32_flops'] / 1e9:.1f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.model:
            cfg = {**MODELS[model], **cfg_over}
            params = os.path.join(tmp, f"{model}.npz")
            common = ["--model", model] + (["--cfg-json", a.cfg_json] if a.cfg_json else [])
            prep = ["--worker", "prepare", *common, "--params", params] + (["--nice-outside", str(a.nice_outside)] if a.nice_outside is not None else [])
            info = _in_process(p.parse_args(prep)) if a.in_process else run_worker(prep, a.timeout, [])
            if "error" in info:
                raise RuntimeError(f"prepare {model}: {info['error']}")
            res["models"][model] = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}, **info}
            print(model, json.dumps(res["models"][model]), flush=True)
            for method in a.methods:
                bss = a.batch_sizes if method == "attack" or not a.mirror_batch_sizes else a.mirror_batch_sizes
                for bs in bss:
                    for side in a.sides:
                        if (model, method, bs, side, a.block if method == "attack" and side == "jax" else None) in done:
                            continue
                        use = pids if res["paused_s_total"] < a.pause_budget_s else []
                        args = [*common, "--worker", side, "--quiet-wait-s", str(quiet), "--method", method, "--batch", str(bs), "--steps", str(a.steps), "--repeats", str(a.repeats),
                                "--max-decode", str(a.max_decode), "--params", params, "--schedule", a.schedule, "--rewrite", a.rewrite]
                        if a.block is not None:
                            args += ["--block", str(a.block)]
                        if a.channels_last:
                            args.append("--channels-last")
                        if a.nice is not None:
                            args += ["--nice", str(a.nice)]
                        if a.nice_outside is not None:
                            args += ["--nice-outside", str(a.nice_outside)]
                        if a.in_process:
                            rec = _in_process(p.parse_args(args))
                        else:
                            rec = run_worker(args, a.timeout, use)
                        rec.update(model=model, method=method, batch=bs, side=side, contended=bool(pids) and not use,
                                   block_option=a.block if method == "attack" and side == "jax" else None)
                        if method == "attack":
                            rec["steps"] = a.steps
                        if "flops_per_s" in rec:
                            rec["frac_of_matmul_peak"] = rec["flops_per_s"] / res["matmul_peak_f32_flops"]
                        res["paused_s_total"] += rec.get("paused_s", 0.0)
                        res["rows"] = [r for r in res["rows"] if key(r) != key(rec)] + [rec]
                        _ratios(res["rows"])
                        save()
                        print(json.dumps({k: v for k, v in rec.items() if k not in ("walls_s", "loadavg_timed")}), flush=True)
    save()
    print(f"wrote {a.out} (paused {res['paused_s_total']:.0f} s in all)")
    return 0


def _ratios(rows) -> None:
    """``jax_over_<side>`` on the jax rows (same model/method/batch)."""
    key = lambda r: "cf_steps_per_s" if r["method"] == "attack" else "cf_per_s"  # noqa: E731
    for r in rows:
        if r["side"] != "jax" or key(r) not in r:
            continue
        for o in rows:
            if o["side"] != "jax" and (o["model"], o["method"], o["batch"]) == (r["model"], r["method"], r["batch"]) and key(o) in o:
                r[f"jax_over_{o['side']}"] = r[key(r)] / o[key(o)]


if __name__ == "__main__":
    sys.exit(main())
