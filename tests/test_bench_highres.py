"""experiments/bench_highres.py: the PyTorch twin computes what cfjax computes (same weights,
tiny widths at full resolution), and the benchmark writes a consistent JSON. No timing asserts."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))

torch = pytest.importorskip("torch", reason="the PyTorch twin needs torch (.ci/run installs the CPU build)")

TINY = {"widths": (8, 8, 16, 16), "groups": 4, "vae_widths": (4, 4, 8, 8, 8), "latent_dim": 16, "decoder": {"widths": (8, 8, 8), "editor_width": 8}}


def _twin(model, tmp_path, **over):
    import bench_highres as bh

    cfg = {**bh.MODELS[model], **TINY, **over}
    path = str(tmp_path / f"{model}.npz")
    bh.prepare(cfg, path)
    P = dict(np.load(path))
    return bh, cfg, P, bh.TorchTwin(cfg, P)


@pytest.mark.parametrize("model,over,full", [("resnet128", {}, True), ("resnet224", {}, False), ("resnet128", {"image_shape": (64, 64, 3)}, False)])
def test_torch_twin_matches_flax(tmp_path, model, over, full):
    """ResNet (both stems), VAE decoder, Mirror decoder + CSP masks + exact reflection: the
    torch twin's logits equal the Flax ones (decoded latents, and the whole decoded Mirror path)
    to ~1e-4. Every size checks prepare()'s references (the bench's own port check); at 128 px
    (``full``) also every stage map, the 21-point path on a fresh batch and the attack's gradient
    in float64 (the same code at every size: the compiles, not the checks, cost the time)."""
    import jax
    import jax.numpy as jnp

    from cfjax.methods import mirror as mr
    from cfjax.models import bind_classifier, bind_vae

    bh, cfg, P, tw = _twin(model, tmp_path, **over)
    # the references written by prepare(): logits of decoded latents and of a decoded Mirror path
    with torch.no_grad():
        l = tw.logits(tw.decode(torch.tensor(P["ref/z"])))
        assert np.abs(l.numpy() - P["ref/attack_logits"]).max() < 1e-4 * (1 + np.abs(P["ref/attack_logits"]).max())
        _, _, lp = tw.mirror_cfe(torch.tensor(P["ref/x"]).permute(0, 3, 1, 2), torch.tensor(P["ref/src"]).long(),
                                 torch.tensor(P["ref/tgt"]).long(), torch.tensor(P["ref/ks"]))
    assert P["ref/ks"].shape == (5,) and lp.shape == P["ref/mirror_logits_path"].shape
    np.testing.assert_allclose(lp.numpy(), P["ref/mirror_logits_path"], atol=1e-4, rtol=1e-4)
    if not full:
        return
    clf_m, cp, vae_m, vp, g, gp, dcfg = bh.build(cfg)
    clf = bind_classifier(clf_m, cp)
    # every stage map (the Mirror skips) equal
    x, src, tgt = bh.mirror_inputs(cfg, 3, seed=7)
    jm = jax.vmap(clf.feature_maps)(jnp.asarray(x))
    with torch.no_grad():
        tm = tw.feature_maps(torch.tensor(x).permute(0, 3, 1, 2))
    assert len(jm) == len(tm) == 4
    for a, b in zip(jm, tm):
        np.testing.assert_allclose(b.permute(0, 2, 3, 1).numpy(), np.asarray(a), atol=1e-4, rtol=1e-4)
    # the whole Mirror-CFE path on the paper's 21-point grid, 2 slices of the batch
    ks = mr.default_k_grid(bh.K_STEP)
    dec = mr.bind_mirror_decoder(g, gp, clf.W, dcfg.rho_l, dcfg.rho_u)
    x, src, tgt = bh.mirror_inputs(cfg, 4)
    k_j, f_j, lp_j = bh.jax_mirror_fn(clf, dec, ks, 4, 2)(jnp.asarray(x), jnp.asarray(src), jnp.asarray(tgt))
    with torch.no_grad():
        k_t, f_t, lp_t = tw.mirror_cfe(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(src).long(), torch.tensor(tgt).long(),
                                       torch.tensor(np.asarray(ks)))
    np.testing.assert_allclose(lp_t.numpy(), np.asarray(lp_j), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(f_t.numpy(), np.asarray(f_j))
    np.testing.assert_allclose(k_t.numpy(), np.asarray(k_j), atol=1e-6)
    # the attack's step: the gradient of -p_target w.r.t. the latent, both sides, in float64:
    # float32 round-off differs between the sides by up to ~6% of max |g| at these tiny widths
    # (at 224 px against float64: JAX off by 1.1e-6, torch by 5.8e-4, max |g| 0.13), so the twin's
    # backward is checked where round-off does not hide a real difference
    z, t = bh.attack_inputs(cfg, 3)
    with jax.enable_x64(True):
        f64 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        clf64, vae64 = bind_classifier(clf_m, f64(cp)), bind_vae(vae_m, f64(vp))
        gj = jax.vmap(jax.grad(lambda zz, tt: -jax.nn.softmax(clf64.logits(vae64.decode(zz)))[tt]))(jnp.asarray(z, jnp.float64), jnp.asarray(t))
        gj = np.asarray(gj)
    assert gj.dtype == np.float64
    tw.P = {k: v.double() for k, v in tw.P.items()}
    tw.mean, tw.std = tw.mean.double(), tw.std.double()
    zt = torch.tensor(z, dtype=torch.float64).requires_grad_(True)
    (-torch.softmax(tw.logits(tw.decode(zt)), -1).gather(1, torch.tensor(t).long()[:, None]).sum()).backward()
    np.testing.assert_allclose(zt.grad.numpy(), gj, atol=1e-6 * np.abs(gj).max(), rtol=0)


def test_slice_size():
    import bench_highres as bh

    assert bh.slice_size(64, 21, 168) == 8 and bh.slice_size(16, 21, 168) == 8 and bh.slice_size(256, 21, 168) == 8
    assert bh.slice_size(5, 21, 10) == 1 and bh.slice_size(6, 1, 100) == 6


def test_pauser_resumes_on_error():
    """The pause helper sends SIGCONT even when the timed region raises."""
    import signal
    import subprocess

    import bench_highres as bh

    import time

    def state(want, timeout=10.0):  # signals are delivered asynchronously: poll
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = open(f"/proc/{p.pid}/stat").read().split()[2]
            if (st == "T") == want:
                return st
            time.sleep(0.01)
        return st

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(RuntimeError):
            with bh.Pauser([p.pid]):
                assert state(True) == "T"  # stopped
                raise RuntimeError("boom")
        assert state(False) != "T"  # resumed
    finally:
        p.send_signal(signal.SIGCONT)
        p.kill()
        p.wait()


@pytest.mark.slow
def test_bench_highres_writes_consistent_json(tmp_path):
    """End to end on tiny widths at 128 px, one batch of 2, both methods, jax and torch eager,
    every configuration in this process (``--in-process``, the GPU check's mode; the default
    one-process-per-configuration mode differs only in where the worker runs:
    test_worker_processes_report_back covers it)."""
    import bench

    out = tmp_path / "hr.json"
    cfg = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
    bench.main(["--model", "resnet128", "--out", str(out), "--batch-sizes", "2", "--steps", "1", "--repeats", "1", "--torch", "--mirror",
                "--max-decode", "21", "--highres-cfg-json", cfg, "--in-process"])
    r = json.loads(out.read_text())
    assert r["options"]["in_process"] is True
    assert r["matmul_peak_f32_flops"] > 1e8 and r["environment"]["cpus"] >= 1
    rows = {(x["method"], x["side"]): x for x in r["rows"]}
    assert set(rows) == {("attack", "jax"), ("attack", "torch"), ("mirror", "jax"), ("mirror", "torch")}
    for x in rows.values():
        assert "error" not in x, x
        assert x["peak_rss_mb"] > 0 and x["model"] == "resnet128" and x["batch"] == 2
    a, at = rows["attack", "jax"], rows["attack", "torch"]
    assert a["lane_steps"] == 2 and a["flops_per_cf_step"] > 0
    assert a["frac_of_matmul_peak"] == pytest.approx(a["flops_per_s"] / r["matmul_peak_f32_flops"])
    assert a["jax_over_torch"] == pytest.approx(a["cf_steps_per_s"] / at["cf_steps_per_s"])
    assert at["port_max_logit_diff"] < 1e-4 and at["port_max_mirror_logit_diff"] < 1e-4
    m, mt = rows["mirror", "jax"], rows["mirror", "torch"]
    assert m["k_grid"] == mt["k_grid"] == 21 and m["slice"] == mt["slice"] == 1
    assert m["found"] == mt["found"]
    assert m["logits_path_checksum"] == pytest.approx(mt["logits_path_checksum"], rel=1e-3, abs=1e-3)


def test_worker_processes_report_back():
    """The default mode's worker process (here the matmul-peak worker) reports its result line,
    and a failing worker comes back as an error row rather than an exception."""
    import bench_highres as bh

    rec = bh.run_worker(["--model", "resnet128", "--worker", "peak", "--quiet-wait-s", "0"], 300, [])
    assert "error" not in rec, rec
    assert rec["matmul_peak_f32_flops"] > 1e8 and rec["peak_rss_mb"] > 0 and rec["process_wall_s"] > 0
    bad = bh.run_worker(["--model", "resnet999", "--worker", "peak"], 300, [])
    assert bad["error"].startswith("exit 2") and "resnet999" in bad["error"]
