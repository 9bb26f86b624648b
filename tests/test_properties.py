"""Property tests (hypothesis): the attack loops, the mirror reflection and the streamed
dataset pass on random shapes, heads and datasets.

Everything runs on tiny hand-written JAX functions built from a fixed PRNG key (nothing is
trained). Model weights, logit gains and poison cut-offs are passed to ``jit`` as *data*,
so the only recompilations are the shape/option combinations hypothesis draws (kept to
small sets); the settings are derandomized so the file is reproducible and fast.
"""

import functools
import math
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cfjax.methods import mirror as mr
from cfjax import parallel

from cfjax.methods import attack as atk  # noqa: E402

K = 4  # classes of the toy classifier
IMG = (3, 4, 1)  # toy image shape
NPIX = int(np.prod(IMG))
LR = 0.2

FAST = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------------- toy model (pure JAX)


def _decode(W1, z):
    """A tiny nonlinear "decoder": latent [D] -> image [3, 4, 1] in (0, 1)."""
    return jax.nn.sigmoid(jnp.tanh(z @ W1)).reshape(IMG)


def _logits(W2, gain, cut, x):
    """A linear classifier on pixels; its logits are NaN wherever ``sum(x) > cut`` (``cut =
    inf``: never), to produce non-finite lanes on purpose."""
    l = gain * (x.reshape(-1) @ W2)
    return l + jnp.where(jnp.sum(x) > cut, jnp.nan, 0.0)


def _weights(seed, d):
    k1, k2 = jax.random.split(jax.random.key(seed))
    W1 = jax.random.normal(k1, (d, NPIX)) * 0.8
    W2 = jax.random.normal(k2, (NPIX, K))
    return W1, W2


@jax.jit
def _reference(W1, W2, gain, cut, z, t):
    """Independent per-lane recomputation at the returned points: image, target probability,
    whether the logits are finite, the image sum (the poison test) and the gradient norm of
    the attack loss ``-p_t``."""

    def one(z, t):
        x = _decode(W1, z)
        l = _logits(W2, gain, cut, x)
        p = jax.nn.softmax(l)[t]
        g = jax.grad(lambda zz: -jax.nn.softmax(_logits(W2, gain, cut, _decode(W1, zz)))[t])(z)
        return x, p, jnp.all(jnp.isfinite(l)), jnp.sum(x), jnp.sqrt(jnp.sum(g * g))

    return jax.vmap(one)(z, t)


@functools.lru_cache(maxsize=None)
def _batch_fn(schedule, steps, threshold, early_exit_every):
    """``attack_batch`` jitted once per option set; weights, gain and cut are traced."""

    def run(W1, W2, gain, cut, z0, t):
        return atk.attack_batch(
            lambda z: _decode(W1, z),
            lambda x: _logits(W2, gain, cut, x),
            z0,
            t,
            schedule=schedule,
            block=3,
            min_width=2,
            steps=steps,
            learning_rate=LR,
            threshold=threshold,
            early_exit_every=early_exit_every,
        )

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _single_traj_fn(steps, threshold, record_every):
    """``jax.vmap(attack)`` (the single-example entry point) with a recorded trajectory."""

    def run(W1, W2, gain, z0, t):
        one = lambda z, tt: atk.attack(  # noqa: E731
            lambda zz: _decode(W1, zz),
            lambda x: _logits(W2, gain, jnp.inf, x),
            z,
            tt,
            steps=steps,
            learning_rate=LR,
            threshold=threshold,
            record_every=record_every,
        )
        return jax.vmap(one)(z0, t)

    return jax.jit(run)


@functools.lru_cache(maxsize=None)
def _pixel_fn(schedule, steps, threshold):
    def run(W2, gain, x0, t):
        return atk.attack_pixels_batch(lambda x: _logits(W2, gain, jnp.inf, x), x0, t, schedule=schedule, block=2, min_width=1,
                                       steps=steps, learning_rate=0.05, threshold=threshold)

    return jax.jit(run)


def _np(res):
    return {k: (None if v is None else np.asarray(v)) for k, v in res._asdict().items()}


def _check_attack_invariants(r, z0, t, steps, thr, ref, cut=np.inf, *, near=1e-5):
    """The documented per-lane semantics of an :class:`AttackResult` (numpy dict ``r``)."""
    n = len(t)
    x_ref, p_ref, finite_ref, xsum_ref, gnorm_ref = (np.asarray(a) for a in ref)
    assert r["z"].shape == z0.shape and r["x"].shape == (n, *IMG)
    assert r["target_prob"].shape == (n,) and r["steps_taken"].shape == (n,)
    assert r["success"].dtype == np.bool_ and r["status"].dtype == np.int32 and r["steps_taken"].dtype == np.int32
    st_ = r["status"]
    assert np.all(np.isin(st_, [atk.SUCCESS, atk.BUDGET, atk.ZERO_GRAD, atk.NON_FINITE])), st_
    # never crash into non-finite points: z only moves on finite gradients, so z and x stay finite
    assert np.all(np.isfinite(r["z"])) and np.all(np.isfinite(r["x"]))
    # the returned image is decode(z) at the returned z
    np.testing.assert_allclose(r["x"], x_ref, rtol=1e-5, atol=1e-6)
    # step counts within the budget; an untouched lane is exactly where it started
    assert np.all((r["steps_taken"] >= 0) & (r["steps_taken"] <= steps)), r["steps_taken"]
    still = r["steps_taken"] == 0
    np.testing.assert_array_equal(r["z"][still], z0[still])
    # success is judged by the threshold at the returned point, and only there
    p = r["target_prob"]
    thr32 = np.float32(thr)  # the comparison the library makes (float32 probabilities)
    assert np.array_equal(r["success"], np.isfinite(p) & (p >= thr32)), (r["success"], p, thr)
    assert np.array_equal(r["success"], st_ == atk.SUCCESS), (r["success"], st_)
    assert np.all(p[st_ == atk.SUCCESS] >= thr32)
    # target_prob is the real target probability at z (independently recomputed)
    fin = st_ != atk.NON_FINITE
    assert np.all(np.isfinite(p[fin])), (p, st_)
    np.testing.assert_allclose(p[fin], p_ref[fin], rtol=1e-4, atol=1e-6)
    clear = fin & (np.abs(p_ref - thr) > near)
    assert np.array_equal(r["success"][clear], p_ref[clear] >= thr)
    # status-specific meaning
    budget = st_ == atk.BUDGET
    assert np.all(r["steps_taken"][budget] == steps), (r["steps_taken"], st_)
    assert np.all(p[budget] < thr32)
    zg = st_ == atk.ZERO_GRAD
    assert np.all(p[zg] < thr32) and np.all(gnorm_ref[zg] == 0.0), (gnorm_ref, st_)
    nf = st_ == atk.NON_FINITE
    assert not np.any(r["success"][nf])
    unambiguous = np.abs(xsum_ref - cut) > 1e-4  # the poison rule is sum(x) > cut
    assert np.array_equal(nf[unambiguous], ~finite_ref[unambiguous]), (st_, finite_ref)
    return clear


@st.composite
def attack_cases(draw, max_n=9, dims=(2, 5), steps_choices=(1, 7, 20)):
    n = draw(st.integers(1, max_n))
    d = draw(st.sampled_from(dims))
    return dict(
        n=n,
        d=d,
        seed=draw(st.integers(0, 2**16)),
        steps=draw(st.sampled_from(steps_choices)),
        threshold=draw(st.floats(0.05, 0.95)),
        gain=draw(st.floats(0.5, 6.0)),
        targets=draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)),
        saturate=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        poison=draw(st.booleans()),
        early=draw(st.sampled_from([0, 1, 10])),
    )


# ------------------------------------------------------------------------------------ attacks


@settings(max_examples=10, **FAST)
@given(case=attack_cases())
def test_attack_batch_semantics_and_schedules_agree(case):
    """Random batches (1..9), latent sizes, budgets, thresholds, targets, saturated (zero
    gradient) lanes and NaN regions: the documented semantics hold lane by lane, and the
    compacted schedule gives the vmap schedule's results."""
    n, d, steps, thr = case["n"], case["d"], case["steps"], case["threshold"]
    W1, W2 = _weights(case["seed"], d)
    z0 = np.array(jax.random.normal(jax.random.key(case["seed"] + 1), (n, d)), np.float32)
    z0[np.asarray(case["saturate"])] *= 1e4  # tanh saturated: exactly zero gradient
    t = np.asarray(case["targets"], np.int32)
    gain = np.float32(case["gain"])
    cut = np.float32(NPIX / 2 if case["poison"] else np.inf)  # poison: NaN logits on ~half the image space
    out = {}
    for schedule in ("compact", "vmap"):
        res = _batch_fn(schedule, steps, thr, case["early"])(W1, W2, gain, cut, z0, t)
        r = _np(res)
        ref = _reference(W1, W2, gain, cut, jnp.asarray(r["z"]), t)
        _check_attack_invariants(r, z0, t, steps, thr, ref, cut)
        # a lane already past the threshold at z0 takes 0 steps and is a success
        _, p0, fin0, _, _ = (np.asarray(a) for a in _reference(W1, W2, gain, cut, jnp.asarray(z0), t))
        past = fin0 & (p0 >= thr + 1e-5)
        assert np.all(r["success"][past]) and np.all(r["steps_taken"][past] == 0), (p0, r["steps_taken"])
        out[schedule] = r
    for code in np.unique(out["vmap"]["status"]):  # visible with --hypothesis-show-statistics
        event(f"status {atk.STATUS_NAMES[int(code)]}")
    a, b = out["compact"], out["vmap"]
    np.testing.assert_array_equal(a["status"], b["status"])
    np.testing.assert_array_equal(a["steps_taken"], b["steps_taken"])
    np.testing.assert_array_equal(a["success"], b["success"])
    np.testing.assert_allclose(a["z"], b["z"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a["x"], b["x"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["target_prob"], b["target_prob"], rtol=1e-5, atol=1e-7, equal_nan=True)


@settings(max_examples=6, **FAST)
@given(
    case=attack_cases(max_n=5, dims=(3,), steps_choices=(6, 12)),
    record_every=st.sampled_from([1, 2, 3, 6]),
)
def test_attack_trajectory_is_consistent_and_recording_changes_nothing(case, record_every):
    """``jax.vmap(attack)`` with a trajectory: frame 0 is decode(z0), the last frame is the
    result, frames freeze once the threshold is crossed, and the per-lane results are the
    ones the (unrecorded) compacted batch schedule gives."""
    n, d, steps, thr = case["n"], case["d"], case["steps"], case["threshold"]
    W1, W2 = _weights(case["seed"], d)
    z0 = np.array(jax.random.normal(jax.random.key(case["seed"] + 1), (n, d)), np.float32)
    t = np.asarray(case["targets"], np.int32)
    gain = np.float32(case["gain"])
    r = _np(_single_traj_fn(steps, thr, record_every)(W1, W2, gain, z0, t))
    ref = _reference(W1, W2, gain, np.float32(np.inf), jnp.asarray(r["z"]), t)
    _check_attack_invariants(r, z0, t, steps, thr, ref)
    T = steps // record_every + 1
    assert r["trajectory"].shape == (n, T, *IMG) and r["trajectory_probs"].shape == (n, T)
    x0_ref = np.asarray(_reference(W1, W2, gain, np.float32(np.inf), jnp.asarray(z0), t)[0])
    np.testing.assert_allclose(r["trajectory"][:, 0], x0_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(r["trajectory"][:, -1], r["x"])
    np.testing.assert_allclose(r["trajectory_probs"][:, -1], r["target_prob"], rtol=1e-6, atol=1e-7)
    for i in range(n):
        probs = r["trajectory_probs"][i]
        crossed = np.flatnonzero(probs >= np.float32(thr))
        if crossed.size:  # frozen from the first recorded frame past the threshold on
            j = crossed[0]
            for k in range(j + 1, T):
                np.testing.assert_array_equal(r["trajectory"][i, k], r["trajectory"][i, j])
            assert bool(r["success"][i]) and r["steps_taken"][i] <= j * record_every
        else:
            assert not bool(r["success"][i])
    # recording the trajectory does not change the attack
    c = _np(_batch_fn("compact", steps, thr, 10)(W1, W2, gain, np.float32(np.inf), z0, t))
    np.testing.assert_array_equal(r["steps_taken"], c["steps_taken"])
    np.testing.assert_array_equal(r["status"], c["status"])
    np.testing.assert_allclose(r["z"], c["z"], rtol=1e-5, atol=1e-5)


@settings(max_examples=6, **FAST)
@given(
    n=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    steps=st.sampled_from([1, 10]),
    threshold=st.floats(0.05, 0.95),
    gain=st.floats(0.5, 8.0),
    schedule=st.sampled_from(["compact", "vmap"]),
    data=st.data(),
)
def test_pixel_attack_stays_in_the_box(n, seed, steps, threshold, gain, schedule, data):
    targets = np.asarray(data.draw(st.lists(st.integers(0, K - 1), min_size=n, max_size=n)), np.int32)
    _, W2 = _weights(seed, 2)
    x0 = np.asarray(jax.random.uniform(jax.random.key(seed + 2), (n, *IMG)), np.float32)
    r = _np(_pixel_fn(schedule, steps, threshold)(W2, np.float32(gain), x0, targets))
    assert np.all(np.isfinite(r["x"])) and np.all(np.isfinite(r["target_prob"]))
    assert r["x"].min() >= 0.0 and r["x"].max() <= 1.0
    np.testing.assert_array_equal(r["z"], r["x"])  # the pixel attack's "latent" is the image
    assert np.all((r["steps_taken"] >= 0) & (r["steps_taken"] <= steps))
    np.testing.assert_array_equal(r["x"][r["steps_taken"] == 0], x0[r["steps_taken"] == 0])
    p_ref = np.asarray(jax.vmap(lambda x, tt: jax.nn.softmax(_logits(W2, gain, jnp.inf, x))[tt])(r["x"], targets))
    np.testing.assert_allclose(r["target_prob"], p_ref, rtol=1e-4, atol=1e-6)
    assert np.array_equal(r["success"], r["target_prob"] >= np.float32(threshold))
    assert np.array_equal(r["success"], r["status"] == atk.SUCCESS)
    assert np.all(np.isin(r["status"], [atk.SUCCESS, atk.BUDGET, atk.ZERO_GRAD]))  # finite logits: never NON_FINITE
    assert np.all(r["steps_taken"][r["status"] == atk.BUDGET] == steps)


# ---------------------------------------------------------------------------------- reflection

_REFLECT_JIT: dict = {}


def _reflect(F, W, b, s, t, solver, maxiter=100, tol=1e-5):
    key = (solver, maxiter, tol)
    if key not in _REFLECT_JIT:
        _REFLECT_JIT[key] = jax.jit(lambda F, W, b, s, t: mr.reflect(F, W, b, s, t, solver=solver, maxiter=maxiter, tol=tol))
    return _REFLECT_JIT[key](F, W, b, jnp.int32(s), jnp.int32(t))


def _head(seed, h, w, c, k, scale):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    F = jax.random.normal(k1, (h, w, c))
    W = scale * jax.random.normal(k2, (k, c)) / np.sqrt(c)
    b = scale * 0.3 * jax.random.normal(k3, (k,))
    return np.asarray(F, np.float32), np.asarray(W, np.float32), np.asarray(b, np.float32)


def _lg(F, W, b):
    """float64 logits of GAP(F)."""
    return np.asarray(W, np.float64) @ np.asarray(F, np.float64).mean((0, 1)) + np.asarray(b, np.float64)


@settings(max_examples=12, **FAST)
@given(
    seed=st.integers(0, 2**16),
    hw=st.sampled_from([(1, 1), (3, 2)]),
    c=st.sampled_from([4, 8]),
    k=st.sampled_from([2, 3, 6]),
    scale=st.sampled_from([0.05, 1.0, 20.0]),
    data=st.data(),
)
def test_exact_reflection_swaps_the_margin(seed, hw, c, k, scale, data):
    s = data.draw(st.integers(0, k - 1), label="source")
    t = (s + data.draw(st.integers(1, k - 1), label="target offset")) % k  # any other class
    F, W, b = _head(seed, *hw, c, k, scale)
    r = _reflect(F, W, b, s, t, "exact")
    for name in ("F_r", "F_reflect", "target_logits"):
        assert np.all(np.isfinite(np.asarray(getattr(r, name)))), name
    assert np.isfinite(float(r.residual))
    assert np.asarray(r.converged).dtype == np.bool_ and np.asarray(r.converged).shape == ()
    assert int(r.iterations) == 0
    l0 = _lg(F, W, b)
    tol = 1e-4 * (1.0 + np.abs(l0).max())
    # the plain reflection negates the s/t margin (for any head)
    lr = _lg(r.F_reflect, W, b)
    np.testing.assert_allclose(lr[t] - lr[s], -(l0[t] - l0[s]), atol=tol)
    q = l0.copy()
    q[[s, t]] = q[[t, s]]
    np.testing.assert_allclose(np.asarray(r.target_logits), q, atol=tol)
    l1 = _lg(r.F_r, W, b)
    np.testing.assert_allclose(float(r.residual), np.linalg.norm(l1 - q), atol=tol)
    if k <= c:  # full row rank: q is reached exactly, so the margin is swapped and nothing else moves
        assert bool(r.converged)
        np.testing.assert_allclose(l1, q, atol=tol)
        np.testing.assert_allclose(l1[t] - l1[s], -(l0[t] - l0[s]), atol=tol)
        # the refinement is a uniform per-channel shift of the reflection
        shift = np.asarray(r.F_r, np.float64) - np.asarray(r.F_reflect, np.float64)
        np.testing.assert_allclose(shift, np.broadcast_to(shift[:1, :1], shift.shape), atol=1e-5 * (1 + np.abs(F).max()))
    else:  # more classes than channels: a least-squares shift, reported honestly
        assert bool(r.converged) == (float(r.residual) <= 1e-4 * (1.0 + float(np.linalg.norm(np.asarray(r.target_logits)))))


@settings(max_examples=6, **FAST)
@given(seed=st.integers(0, 2**16), solver=st.sampled_from(list(mr.SOLVERS)), data=st.data())
def test_reflect_vmapped_equals_per_example(seed, solver, data):
    m, (h, w, c), k = 3, (2, 3, 6), 4
    src = np.asarray(data.draw(st.lists(st.integers(0, k - 1), min_size=m, max_size=m), label="src"), np.int32)
    off = np.asarray(data.draw(st.lists(st.integers(1, k - 1), min_size=m, max_size=m), label="offsets"), np.int32)
    tgt = (src + off) % k  # any other class
    _, W, b = _head(seed, h, w, c, k, 1.0)
    Fs = np.asarray(jax.random.normal(jax.random.key(seed + 7), (m, h, w, c)), np.float32)
    key = ("vmap", solver)
    if key not in _REFLECT_JIT:
        _REFLECT_JIT[key] = jax.jit(jax.vmap(lambda F, W, b, s, t: mr.reflect(F, W, b, s, t, solver=solver), in_axes=(0, None, None, 0, 0)))
    batched = _REFLECT_JIT[key](Fs, W, b, src, tgt)
    assert np.asarray(batched.converged).dtype == np.bool_ and batched.converged.shape == (m,)
    for i in range(m):
        one = _reflect(Fs[i], W, b, int(src[i]), int(tgt[i]), solver)
        assert np.all(np.isfinite(np.asarray(one.F_r)))
        np.testing.assert_allclose(batched.F_r[i], one.F_r, atol=2e-4)
        np.testing.assert_allclose(batched.F_reflect[i], one.F_reflect, atol=1e-5)
        np.testing.assert_allclose(batched.residual[i], one.residual, atol=2e-4)
        assert bool(batched.converged[i]) == bool(one.converged)
        if bool(one.converged):  # every solver, once converged, swaps the s/t logits
            l0, l1 = _lg(Fs[i], W, b), _lg(one.F_r, W, b)
            s, t = int(src[i]), int(tgt[i])
            np.testing.assert_allclose(l1[t] - l1[s], -(l0[t] - l0[s]), atol=1e-3)


# ------------------------------------------------------------------------------ explain_dataset


def _sum_step(acc, batch, mask):
    """Masked sums (int and float), the unmasked int sum (to see the padding), row count;
    per-example outputs are the rows themselves."""
    xi, xf = batch["xi"], batch["xf"]
    return {
        "si": acc["si"] + jnp.sum(jnp.where(mask[:, None], xi, 0), axis=0),
        "sf": acc["sf"] + jnp.sum(xf * mask[:, None].astype(xf.dtype), axis=0),
        "raw": acc["raw"] + jnp.sum(xi, axis=0),
        "n": acc["n"] + jnp.sum(mask.astype(jnp.int32)),
    }, {"xi": xi, "id": batch["id"]}


def _sum_init():
    return {"si": np.zeros(3, np.int32), "sf": np.zeros(3, np.float32), "raw": np.zeros(3, np.int32), "n": np.zeros((), np.int32)}


_MESHES: dict = {}


def _mesh(n_dev):
    if n_dev not in _MESHES:
        _MESHES[n_dev] = parallel.data_mesh(jax.devices()[:n_dev])
    return _MESHES[n_dev]


@settings(max_examples=25, **FAST)
@given(
    n=st.integers(1, 50),
    chunk=st.sampled_from([8, 16, 24]),
    n_dev=st.sampled_from([1, 4]),
    seed=st.integers(0, 2**16),
    huge_pad_row=st.booleans(),
    write=st.booleans(),
)
def test_explain_dataset_sums_real_rows_exactly(n, chunk, n_dev, seed, huge_pad_row, write):
    """Integer (and integer-valued float) data: the accumulated sums equal numpy's over the
    real rows exactly, on 1 or 4 devices, whatever the padding of the last chunk. With a huge
    first row in the last chunk (the row its padding repeats, ``pad_to``) any leak of a
    padded row would show by millions."""
    assert jax.device_count() >= 4
    rng = np.random.default_rng(seed)
    xi = rng.integers(-1000, 1000, (n, 3)).astype(np.int32)
    n_chunks = math.ceil(n / chunk)
    pad_src = (n_chunks - 1) * chunk  # the last chunk's first row: the row its padding repeats
    if huge_pad_row:
        xi[pad_src] = [1_000_000, -2_000_000, 3_000_000]
    data = {"xi": xi, "xf": xi.astype(np.float32), "id": np.arange(n, dtype=np.int32)}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "out" if write else None
        acc = parallel.explain_dataset(_sum_step, _sum_init(), data, chunk_size=chunk, mesh=_mesh(n_dev), outputs_dir=out_dir, progress=False)
        if write:
            files = sorted(out_dir.glob("chunk_*.npz"))
            assert len(files) == math.ceil(n / chunk)
            got = [np.load(f) for f in files]
            np.testing.assert_array_equal(np.concatenate([g["id"] for g in got]), np.arange(n))  # padding never written
            np.testing.assert_array_equal(np.concatenate([g["xi"] for g in got]), xi)
    np.testing.assert_array_equal(acc["si"], xi.sum(0))
    np.testing.assert_array_equal(acc["sf"], xi.sum(0).astype(np.float32))  # integer-valued: exact in float32
    assert int(acc["n"]) == n
    # the padding is really there (the last chunk's row 0 repeated) and only the mask keeps it out
    n_pad = n_chunks * chunk - n
    np.testing.assert_array_equal(acc["raw"], xi.sum(0) + n_pad * xi[pad_src])
