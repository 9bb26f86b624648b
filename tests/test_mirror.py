"""Mirror-CFE core: reflection, the three refinement solvers, transitions, CSP masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cfjax.methods import mirror as mr
from cfjax.errors import InputError

K, C, H, W_ = 10, 32, 4, 4


def _problem(seed=0, k=K, c=C, h=H, w=W_):
    """A random GAP head and a non-negative (post-ReLU-like) feature map."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    F = jax.nn.relu(jax.random.normal(k1, (h, w, c)) + 0.5)
    Wm = jax.random.normal(k2, (k, c)) / np.sqrt(c)
    b = 0.1 * jax.random.normal(k3, (k,))
    return F, Wm, b


def _logits(F, Wm, b):
    return Wm @ F.mean((0, 1)) + b


_JIT: dict = {}


def _reflect(F, Wm, b, s, t, solver, maxiter=100, tol=1e-5):
    """One jitted reflect per (solver, maxiter, tol): classes are traced, so no recompiles."""
    key = (solver, maxiter, tol)
    if key not in _JIT:
        _JIT[key] = jax.jit(lambda F, W, b, s, t: mr.reflect(F, W, b, s, t, solver=solver, maxiter=maxiter, tol=tol))
    return _JIT[key](F, Wm, b, jnp.int32(s), jnp.int32(t))


def test_reflect_map_matches_closed_form_and_negates_margin():
    F, Wm, b = _problem()
    w_m, b_m = mr.mirror_plane(Wm, b, 3, 8)
    np.testing.assert_allclose(w_m, Wm[8] - Wm[3])
    R = mr.reflect_map(F, w_m, b_m)
    # closed form with the squared norm, position by position
    f = np.asarray(F, np.float64).reshape(-1, C)
    wm, bm = np.asarray(w_m, np.float64), float(b_m)
    p = f - ((f @ wm + bm) / (wm @ wm))[:, None] * wm
    np.testing.assert_allclose(np.asarray(R).reshape(-1, C), 2 * p - f, rtol=1e-5, atol=1e-5)
    # the margin w_m . x + b_m is negated at every position ...
    np.testing.assert_allclose(np.asarray(R @ w_m + b_m), -np.asarray(F @ w_m + b_m), rtol=1e-4, atol=1e-4)
    # ... and GAP(F_r) is the plane reflection of z (GAP is linear)
    z = F.mean((0, 1))
    np.testing.assert_allclose(R.mean((0, 1)), mr.reflect_map(z, w_m, b_m), rtol=1e-5, atol=1e-5)
    # so the s/t logit difference flips sign: l_t - l_s -> -(l_t - l_s)
    l0, l1 = _logits(F, Wm, b), _logits(R, Wm, b)
    np.testing.assert_allclose(l1[8] - l1[3], -(l0[8] - l0[3]), rtol=1e-4, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0))
def test_reflection_is_an_isometric_involution(seed, scale):
    F, Wm, b = _problem(seed)
    w_m, b_m = mr.mirror_plane(Wm * scale, b, 0, 1)  # not a unit normal: the squared norm matters
    R = mr.reflect_map(F, w_m, b_m)
    np.testing.assert_allclose(mr.reflect_map(R, w_m, b_m), F, rtol=1e-4, atol=1e-4)
    # the midpoint lies on the plane
    mid = (F + R) / 2
    np.testing.assert_allclose(mid @ w_m + b_m, 0.0, atol=1e-3 * max(1.0, scale))


@pytest.mark.parametrize("pair", [(0, 1), (3, 8), (9, 2)])
def test_three_solvers_agree_exact_is_oracle(pair):
    s, t = pair
    F, Wm, b = _problem(s * 10 + t)
    q = mr.swapped_logits(_logits(F, Wm, b), s, t)
    out = {sv: _reflect(F, Wm, b, s, t, sv, maxiter=200, tol=1e-6) for sv in mr.SOLVERS}
    ex = out["exact"]
    np.testing.assert_allclose(ex.target_logits, q, rtol=1e-6)
    # the oracle: min-norm uniform per-channel shift in the row space of W reaching q exactly
    shift = np.asarray(ex.F_r - ex.F_reflect)
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:1, :1], shift.shape), atol=1e-5)
    row_space_proj = np.linalg.pinv(np.asarray(Wm)) @ np.asarray(Wm)
    np.testing.assert_allclose(row_space_proj @ shift[0, 0], shift[0, 0], atol=1e-4)
    assert float(ex.residual) < 1e-4 and bool(ex.converged) and int(ex.iterations) == 0
    for sv in ("jaxopt", "optax"):
        r = out[sv]
        assert bool(r.converged), sv
        assert 0 < int(r.iterations) <= 200
        assert float(r.residual) < 1e-3, (sv, float(r.residual))
        np.testing.assert_allclose(_logits(r.F_r, Wm, b), q, atol=1e-3)
        np.testing.assert_allclose(r.F_r.mean((0, 1)), ex.F_r.mean((0, 1)), atol=1e-3)
        # gradient steps on a GAP loss are uniform per-channel shifts in the row space of W:
        # from the same start they reach the oracle's map itself, not just its GAP
        np.testing.assert_allclose(r.F_r, ex.F_r, atol=1e-3)
        np.testing.assert_allclose(r.F_reflect, ex.F_reflect)


def test_nonconvergence_is_reported_not_hidden():
    F, Wm, b = _problem(1)
    for sv in ("jaxopt", "optax"):
        r = _reflect(F, Wm, b, 0, 5, sv, maxiter=1, tol=1e-9)
        assert not bool(r.converged), sv
        assert int(r.iterations) == 1
        assert float(r.residual) > 0


@pytest.mark.parametrize("solver", mr.SOLVERS)
def test_vmapped_equals_per_example_and_traced_classes(solver):
    Fs = jnp.stack([_problem(i)[0] for i in range(4)])
    _, Wm, b = _problem(0)
    src = jnp.array([0, 3, 5, 9])
    tgt = jnp.array([1, 8, 6, 4])
    batched = jax.jit(jax.vmap(lambda F, s, t: mr.reflect(F, Wm, b, s, t, solver=solver)))(Fs, src, tgt)
    if solver == "exact":  # un-jitted with Python ints: the same answer
        np.testing.assert_allclose(mr.reflect(Fs[1], Wm, b, 3, 8, solver=solver).F_r, batched.F_r[1], atol=2e-4)
    for i in range(4):
        one = _reflect(Fs[i], Wm, b, int(src[i]), int(tgt[i]), solver)
        np.testing.assert_allclose(batched.F_r[i], one.F_r, atol=2e-4)
        np.testing.assert_allclose(batched.residual[i], one.residual, atol=2e-4)
        assert bool(batched.converged[i]) == bool(one.converged)


def test_logits_interpolate_linearly_boundary_at_half():
    F, Wm, b = _problem(2)
    s, t = 4, 9
    r = _reflect(F, Wm, b, s, t, "exact")
    ks = mr.default_k_grid(0.05)
    assert ks.shape == (21,) and float(ks[0]) == 0.0 and float(ks[-1]) == 1.0
    Fk = mr.transitions(F, r.F_r, ks)
    np.testing.assert_allclose(Fk[7], mr.transition(F, r.F_r, ks[7]), atol=1e-6)
    la = mr.logits_along(Wm, b, F, r.F_r, ks)
    direct = jax.vmap(lambda f: _logits(f, Wm, b))(Fk)
    np.testing.assert_allclose(la, direct, atol=1e-4)
    # exactly linear: second differences vanish
    np.testing.assert_allclose(la[2:] - 2 * la[1:-1] + la[:-2], 0.0, atol=1e-4)
    l0 = _logits(F, Wm, b)
    np.testing.assert_allclose(la[0], l0, atol=1e-5)
    np.testing.assert_allclose(la[-1], r.target_logits, atol=1e-4)  # k = 1 swaps s and t
    half = la[10]
    np.testing.assert_allclose(half[s], half[t], atol=1e-4)  # k = 0.5 is on the boundary


def test_first_counterfactual_picks_smallest_k_above_half():
    ks = mr.default_k_grid(0.05)
    m = ks.shape[0]
    logits = jnp.zeros((m, 3)).at[:, 0].set(1.0)
    # decoded image says "target 2" at k=0.3 (ignored: not > 0.5) and from k=0.65 on
    on = (jnp.abs(ks - 0.3) < 1e-6) | (ks > 0.64)
    logits = logits.at[:, 2].set(jnp.where(on, 5.0, 0.0))
    k, idx, found = mr.first_counterfactual(logits, ks, 2)
    assert bool(found) and int(idx) == 13 and abs(float(k) - 0.65) < 1e-6
    k, idx, found = mr.first_counterfactual(jnp.zeros((m, 3)).at[:, 0].set(1.0), ks, 2)
    assert not bool(found) and int(idx) == m - 1 and np.isnan(float(k))
    # k = 0.5 itself does not count
    only_half = jnp.zeros((m, 3)).at[:, 0].set(1.0).at[10, 2].set(9.0)
    assert not bool(mr.first_counterfactual(only_half, ks, 2)[2])


def test_first_counterfactual_threshold_matches_a_loop():
    ks = mr.default_k_grid(0.05)
    m = ks.shape[0]
    rng = np.random.default_rng(0)
    for trial in range(20):
        logits = rng.normal(size=(m, 4)).astype(np.float32) * 2.0
        t = int(rng.integers(0, 4))
        for thr in (None, 0.4, 0.6, 0.9):
            # the obvious loop: walk k upwards, take the first k > 0.5 that is argmax-t and confident enough
            ref = None
            for i in range(m):
                p = np.exp(logits[i] - logits[i].max())
                p = p / p.sum()
                if float(ks[i]) > 0.5 + 1e-6 and int(np.argmax(logits[i])) == t and (thr is None or p[t] >= thr):
                    ref = i
                    break
            k, idx, found = mr.first_counterfactual(jnp.asarray(logits), ks, t, threshold=thr)
            assert bool(found) == (ref is not None), (trial, thr)
            assert int(idx) == (m - 1 if ref is None else ref), (trial, thr)
    # a higher threshold never picks an earlier k
    logits = jnp.zeros((m, 3)).at[:, 2].set(jnp.linspace(-3.0, 6.0, m))
    idx = [int(mr.first_counterfactual(logits, ks, 2, threshold=th)[1]) for th in (None, 0.6, 0.8, 0.95)]
    assert idx == sorted(idx) and idx[0] < idx[-1]
    with pytest.raises(InputError, match="threshold"):
        mr.mirror_cfe(lambda v: [v], jnp.eye(3, 4), jnp.zeros(3), lambda F, *a: F, jnp.ones((2, 2, 4)), 0, 1, threshold=1.5)


def test_cams_and_csp_mask_shapes_bounds_monotone():
    F, Wm, b = _problem(3)
    cams = mr.class_activation_maps(F, Wm)
    assert cams.shape == (H, W_, K)
    np.testing.assert_allclose(cams, jnp.einsum("hwc,kc->hwk", F, Wm), atol=1e-5)
    assert float(mr.csp_rho(0.0, 0.1, 0.5)) == 0.5 and abs(float(mr.csp_rho(1.0, 0.1, 0.5)) - 0.1) < 1e-7
    assert abs(float(mr.csp_rho(0.7, 0.1, 0.5)) - 0.3) < 1e-6
    prev = None
    for k in (0.0, 0.3, 0.6, 1.0):
        for hw in ((4, 4), (7, 7), (14, 14), (28, 28)):
            m = mr.csp_mask(F, Wm, 2, 7, k, 0.1, 0.5, hw)
            assert m.shape == (*hw, 1)
            assert set(np.unique(np.asarray(m)).tolist()) <= {0.0, 1.0}
        m = np.asarray(mr.csp_mask(F, Wm, 2, 7, k, 0.1, 0.5, (28, 28)))
        assert m.sum() > 0  # the CAM maximum always exceeds rho < 1
        if prev is not None:
            assert np.all(m >= prev)  # a larger k lowers rho: the editable region only grows
        prev = m


def test_reflection_target_mirror_keeps_the_path_out_of_third_classes():
    """``others="keep"`` is the paper's swap; ``"mirror"`` also reflects every class above the s/t
    midpoint (slow reference: a loop over classes), and then every point of the path past
    k = 0.5 is classified as the target, which the paper's path is not (the check can fail)."""
    F, Wm, b = _problem(5, c=64)
    l = np.asarray(_logits(F, Wm, b), np.float64)
    s = int(np.argmax(l))
    t = int(np.argmin(l))  # the least likely class: every other class lies above the midpoint at first
    np.testing.assert_array_equal(mr.reflection_target(l, s, t), mr.swapped_logits(l, s, t))
    ref = l.copy()
    ref[s], ref[t] = l[t], l[s]
    m = (l[s] + l[t]) / 2
    for j in range(K):
        if j not in (s, t) and l[j] > m:
            ref[j] = 2 * m - l[j]
    np.testing.assert_allclose(np.asarray(mr.reflection_target(jnp.asarray(l, jnp.float32), s, t, "mirror")), ref, rtol=1e-5, atol=1e-5)
    assert np.sum(ref != l) > 2  # some third class was lowered
    ks = jnp.linspace(0.0, 1.0, 41)
    past = np.asarray(ks) > 0.5 + 1e-6
    for solver in ("exact", "jaxopt"):
        r = mr.reflect(F, Wm, b, s, t, solver=solver, maxiter=300, tol=1e-7, others="mirror")
        np.testing.assert_allclose(np.asarray(r.target_logits), ref, rtol=1e-4, atol=1e-4)
        la = np.asarray(mr.logits_along(Wm, b, F, r.F_r, ks))
        np.testing.assert_allclose(la[-1], ref, atol=2e-3)
        before = np.asarray(ks) < 0.5 - 1e-6  # k = 0.5 itself is a tie of s, t and the mirrored classes
        assert np.all(la[past].argmax(-1) == t) and np.all(la[before].argmax(-1) != t)
    keep = mr.reflect(F, Wm, b, s, t, solver="exact")
    la = np.asarray(mr.logits_along(Wm, b, F, keep.F_r, ks))
    assert not np.all(la[past].argmax(-1) == t)  # the paper's path passes through another class here
    # mirror_cfe threads the option through (identity decoder: the path IS F_k)
    res = mr.mirror_cfe(lambda x: [x], Wm, b, lambda Fk, sk, ss, tt, k: Fk, F, s, t, ks=ks, solver="exact", others="mirror")
    assert bool(res.found) and abs(float(res.k_cf) - float(ks[past][0])) < 1e-6
    with pytest.raises(InputError, match="others"):
        mr.reflect(F, Wm, b, s, t, others="lower")
    with pytest.raises(InputError, match="others"):
        mr.reflection_target(l, s, t, "lower")


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), others=st.sampled_from(mr.OTHERS))
@example(seed=5559, others="keep")  # a third class blocks only on (0.5, 0.50073]: shorter than 1e-3
def test_feature_crossing_matches_a_fine_grid(seed, others):
    """Slow reference: walk the path's logits on a 20,001-point grid; the first k past 0.5 whose
    argmax is the target, and the argmax just before it, equal the closed form."""
    rng = np.random.default_rng(seed)
    l = rng.normal(size=K) * 3
    s, t = rng.choice(K, 2, replace=False)
    l[s] = l.max() + 0.5  # the source is the predicted class
    k_star, blocker = mr.feature_crossing(jnp.asarray(l, jnp.float32), int(s), int(t), others)
    q = np.asarray(mr.reflection_target(jnp.asarray(l, jnp.float32), int(s), int(t), others), np.float64)
    ks = np.linspace(0.0, 1.0, 20001)
    path = l[None] + ks[:, None] * (q - l)[None]
    am = path.argmax(-1)
    i = np.flatnonzero((ks > 0.5) & (am == t))[0]
    assert abs(float(k_star) - ks[i]) <= 1e-4 + 1e-4 * abs(ks[i])
    if ks[i - 1] > 0.5:  # a third class held the argmax on the grid point just before the crossing
        assert int(blocker) == am[i - 1] and int(blocker) not in (s, t)
    else:  # the crossing is within one grid step of 0.5: only a third class too brief for the grid is possible
        assert int(blocker) == s or float(k_star) - 0.5 <= ks[1]
    if others == "mirror":
        assert float(k_star) == 0.5


def test_input_errors_name_the_argument():
    F, Wm, b = _problem()
    with pytest.raises(InputError, match="solver"):
        mr.reflect(F, Wm, b, 0, 1, solver="adam")
    with pytest.raises(InputError, match="target"):
        mr.reflect(F, Wm, b, 2, 2)
    with pytest.raises(InputError, match="source"):
        mr.reflect(F, Wm, b, 10, 2)
    with pytest.raises(InputError, match="feature_map_F"):
        mr.reflect(F[None], Wm, b, 0, 1)


def test_reflect_identical_head_rows_error_eagerly_and_stay_finite_under_jit():
    """Source and target with the same head row have no boundary: a clear error on concrete
    input; under jit (no value checks) F comes back unchanged and finite, never NaN."""
    F = jnp.ones((2, 2, 3))
    W = jnp.array([[1.0, 2, 3], [1, 2, 3], [0, 1, 0]])
    with pytest.raises(InputError, match="W"):
        mr.reflect(F, W, jnp.zeros(3), 0, 1, solver="exact")
    r = jax.jit(lambda W: mr.reflect(F, W, jnp.zeros(3), 0, 1, solver="exact"))(W)
    assert np.all(np.isfinite(np.asarray(r.F_r))) and np.all(np.isfinite(np.asarray(r.F_reflect)))
    np.testing.assert_array_equal(np.asarray(r.F_reflect), np.asarray(F))
    assert bool(r.converged)  # equal rows and biases: the swapped logits are the logits
    r = jax.jit(lambda b: mr.reflect(F, W, b, 0, 1, solver="exact"))(jnp.array([0.0, 1.0, 0.0]))
    assert np.all(np.isfinite(np.asarray(r.F_r))) and not bool(r.converged)  # a bias gap no shift can swap


# ------------------------------------------------------------------ mirror_cfe: the whole method


def _tiny_models(seed=0):
    from cfjax.models import Classifier, bind_classifier
    from cfjax.models.mirror_decoder import MirrorDecoder

    clf_m = Classifier(num_classes=10, widths=(8, 16, 16))
    x = jax.random.uniform(jax.random.key(seed), (6, 28, 28, 1))
    cp = clf_m.init(jax.random.key(seed + 1), x[:1])
    clf = bind_classifier(clf_m, cp)
    g = MirrorDecoder(image_shape=(28, 28, 1), widths=(8, 8), editor_width=4, fk_channels=4)
    maps = jax.vmap(clf.feature_maps)(x[:1])
    gp = g.init(jax.random.key(seed + 2), maps[-1], list(maps[:-1]), [jnp.ones((*m.shape[:3], 1)) for m in maps[:-1]])
    return clf, mr.bind_mirror_decoder(g, gp, clf.W, 0.1, 0.5, reflect_others="keep"), x


def test_mirror_cfe_vmapped_equals_per_example_and_is_self_consistent():
    clf, decode, x = _tiny_models()
    ks = mr.default_k_grid(0.1)
    src = jnp.argmax(jax.vmap(clf.logits)(x), -1).astype(jnp.int32)
    tgt = (src + 1 + jnp.arange(6, dtype=jnp.int32) % 9) % 10
    run = lambda xi, s, t: mr.mirror_cfe(clf.feature_maps, clf.W, clf.b, decode, xi, s, t, ks=ks, solver="exact")  # noqa: E731
    batched = jax.jit(jax.vmap(run))(x, src, tgt)
    for i in range(6):
        one = jax.jit(run)(x[i], src[i], tgt[i])
        for name in ("x_cf", "logits_path", "logits_features", "z_decoded", "x_path"):
            np.testing.assert_allclose(np.asarray(getattr(batched, name)[i]), np.asarray(getattr(one, name)), rtol=2e-4, atol=2e-4, err_msg=name)
        for name in ("index", "found", "status", "converged"):
            assert np.asarray(getattr(batched, name)[i]) == np.asarray(getattr(one, name)), name
    # the pieces agree with the public functions they compose
    r = jax.tree_util.tree_map(lambda a: a[0], batched)
    F = clf.feature_map(x[0])
    ref = mr.reflect(F, clf.W, clf.b, int(src[0]), int(tgt[0]), solver="exact")
    np.testing.assert_allclose(r.logits_features, mr.logits_along(clf.W, clf.b, F, ref.F_r, ks), rtol=1e-4, atol=1e-4)
    logits_dec = jax.vmap(clf.logits)(r.x_path)
    np.testing.assert_allclose(r.logits_path, logits_dec, rtol=1e-4, atol=1e-4)
    k, idx, found = mr.first_counterfactual(logits_dec, ks, int(tgt[0]))
    assert int(idx) == int(r.index) and bool(found) == bool(r.found)
    np.testing.assert_allclose(r.x_cf, r.x_path[int(r.index)], atol=1e-6)
    # status: found & converged -> 0, no flip -> 1
    assert (np.asarray(batched.status) == np.where(np.asarray(batched.found), 0, 1)).all()


def test_mirror_cfe_with_a_plain_feature_function_and_no_skips():
    """The contract for a user's own model: ``feature_maps(x) -> [F]`` and any decoder."""
    Wm = jax.random.normal(jax.random.key(3), (4, 6))
    b = jnp.zeros(4)
    enc = jax.random.normal(jax.random.key(4), (6, 6))
    fmaps = lambda x: [jnp.tanh(x @ enc)]  # noqa: E731  x: [2, 2, 6] "image"
    decode = lambda F, skips, s, t, k: jnp.arctanh(jnp.clip(F, -0.999, 0.999)) @ jnp.linalg.inv(enc)  # noqa: E731  exact inverse
    x = 0.3 * jax.random.normal(jax.random.key(5), (2, 2, 6))
    s = int(jnp.argmax(Wm @ jnp.tanh(x @ enc).mean((0, 1)) + b))
    ks = jnp.linspace(0, 1, 11)
    r = mr.mirror_cfe(fmaps, Wm, b, decode, x, s, (s + 1) % 4, solver="exact", ks=ks)
    assert r.x_path.shape == (11, 2, 2, 6) and r.logits_path.shape == (11, 4) and r.z_path.shape == (11, 6)
    # a perfect decoder follows the features wherever tanh is invertible on the whole map
    F = fmaps(x)[0]
    F_k = mr.transitions(F, mr.reflect(F, Wm, b, s, (s + 1) % 4, solver="exact").F_r, ks)
    inside = np.all(np.abs(np.asarray(F_k)) < 0.99, axis=(1, 2, 3))
    assert inside[0]
    np.testing.assert_allclose(np.asarray(r.logits_path)[inside], np.asarray(r.logits_features)[inside], atol=2e-2)
    with pytest.raises(InputError, match="target"):
        mr.mirror_cfe(fmaps, Wm, b, decode, x, s, s)


def test_mirror_cfe_object_compiles_once_and_checks_inputs():
    traces = []
    Wm = jax.random.normal(jax.random.key(0), (3, 4))
    b = jnp.zeros(3)

    def fmaps(x):
        traces.append(1)  # runs only while tracing
        return [x]

    run = mr.MirrorCFE(fmaps, Wm, b, lambda F, skips, s, t, k: F, solver="exact", ks=jnp.linspace(0, 1, 11))
    x = jax.random.normal(jax.random.key(1), (5, 2, 2, 4))
    s = jnp.argmax(x.mean((1, 2)) @ Wm.T + b, -1)
    r1 = run(x, s, (s + 1) % 3)
    n = len(traces)
    r2 = run(x * 1.5, s, (s + 2) % 3)  # new data, new classes, same shapes: no retrace
    assert len(traces) == n and r1.found.shape == r2.found.shape == (5,)
    with pytest.raises(InputError, match="target"):
        run(x, s, s)
    with pytest.raises(InputError, match="solver"):
        mr.MirrorCFE(fmaps, Wm, b, lambda *a: a[0], solver="newton")


def test_mirror_rows_in_decode_slices_equal_one_pass():
    """``max_decode`` bounds the images decoded at once (sequential slices); the rows are the same."""
    from cfjax.jobs.mirror import Backbone, decode_slices, mirror_rows

    clf, decode, x = _tiny_models(3)
    bb = Backbone(lambda x: [x], lambda x: x.reshape(x.shape[0], -1)[:, :8], "test")
    ks = mr.default_k_grid(0.1)
    src = jnp.argmax(jax.vmap(clf.logits)(x), -1).astype(jnp.int32)
    tgt = (src + 3) % 10
    mask = jnp.arange(6) < 5
    assert decode_slices(6, 11, 22) == 3 and decode_slices(6, 11, None) == 1 and decode_slices(6, 11, 5) == 6
    f = lambda md: jax.jit(lambda x, s, t, m: mirror_rows(clf, decode, bb, x, s, t, m, ks=ks, solver="exact", max_decode=md))(x, src, tgt, mask)  # noqa: E731
    a, b = f(None), f(22)
    for k in a:
        np.testing.assert_allclose(np.asarray(a[k], np.float64), np.asarray(b[k], np.float64), rtol=1e-4, atol=1e-5, err_msg=k)


def test_compose_residual_keeps_the_source_at_k0_and_adds_only_the_decoders_change():
    x = jax.random.uniform(jax.random.key(0), (5, 5, 1))
    path = jax.random.uniform(jax.random.key(1), (4, 5, 5, 1))
    out = np.asarray(mr.compose_residual(x, path))
    np.testing.assert_allclose(out[0], np.asarray(x), atol=1e-7)
    # an obviously correct loop: per k and pixel, clip(x + path_k - path_0) to [0, 1]
    xn, pn = np.asarray(x), np.asarray(path)
    for k in range(4):
        ref = np.minimum(np.maximum(xn + pn[k] - pn[0], 0.0), 1.0)
        np.testing.assert_allclose(out[k], ref, atol=1e-6)
    # through mirror_cfe: with an image-valued "decoder" offset by a constant (a reconstruction
    # error), the residual path equals the source at k = 0 and the offset never reaches x_cf
    Wm = jax.random.normal(jax.random.key(3), (3, 4))
    b = jnp.zeros(3)
    xi = 0.2 + 0.3 * jax.random.uniform(jax.random.key(4), (2, 2, 4))
    s = int(jnp.argmax(Wm @ xi.mean((0, 1)) + b))
    fmaps = lambda v: [v]  # noqa: E731
    dec = lambda F, skips, so, ta, k: F + 0.1  # noqa: E731
    r = mr.mirror_cfe(fmaps, Wm, b, dec, xi, s, (s + 1) % 3, solver="exact", compose="residual", ks=jnp.linspace(0, 1, 5))
    np.testing.assert_allclose(np.asarray(r.x_path[0]), np.asarray(xi), atol=1e-6)
    with pytest.raises(InputError, match="compose"):
        mr.mirror_cfe(fmaps, Wm, b, dec, xi, s, (s + 1) % 3, compose="blend")


def test_real_target_ceilings_match_a_per_image_loop():
    from types import SimpleNamespace

    from cfjax.eval import metrics
    from cfjax.jobs.mirror import real_target_ceilings

    rng = np.random.default_rng(0)
    imgs = rng.uniform(size=(40, 6, 6, 1)).astype(np.float32)
    imgs[::3] = 0.0  # some flat images: ties go to class 0
    labels = rng.integers(0, 3, 40)
    Wc = jnp.asarray(rng.normal(size=(36, 3)).astype(np.float32))
    clf = SimpleNamespace(module=SimpleNamespace(apply=lambda p, v: v.reshape(v.shape[0], -1) @ p), params=Wc,
                          logits_batch=lambda v: v.reshape(v.shape[0], -1) @ Wc)  # both spellings of a trained classifier
    test = SimpleNamespace(images=imgs, labels=labels, class_names=["a", "b", "c"])
    got = real_target_ceilings(test, clf, None, (0, 2))
    for t, name in ((0, "a"), (2, "c")):
        real = imgs[labels == t]
        clean = np.array([int(np.argmax(v.reshape(-1) @ np.asarray(Wc))) == t for v in real])
        blur = np.array([int(np.argmax(np.asarray(metrics.gaussian_blur(jnp.asarray(v[None]), 1.0))[0].reshape(-1) @ np.asarray(Wc))) == t
                         for v in real])
        row = got[name]
        assert row["n"] == len(real) and "oracle_validity" not in row
        assert row["validity"] == pytest.approx(clean.mean()) and row["denoised_validity"] == pytest.approx(blur.mean())
        assert row["denoised_validity_given_valid"] == pytest.approx(blur[clean].mean())


def test_job_config_refuses_an_unknown_compose_mode_or_threshold():
    from cfjax.jobs.mirror import MirrorJobConfig

    MirrorJobConfig(compose="residual").validate()
    with pytest.raises(InputError, match="compose"):
        MirrorJobConfig(compose="blend").validate()
    MirrorJobConfig(cf_threshold=0.8).validate()
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(InputError, match="cf_threshold"):
            MirrorJobConfig(cf_threshold=bad).validate()
