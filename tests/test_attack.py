"""Counterfactual Attacks: the scan loop against a plain Python loop, masks, flags, schedules,
the pixel baseline on a trained classifier."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax.errors import InputError

from cfjax.methods import attack as atk  # noqa: E402

D, K = 6, 4
_W1 = jax.random.normal(jax.random.key(0), (D, 12)) * 0.7
_W2 = jax.random.normal(jax.random.key(1), (12, K))


def decode(z):  # a tiny nonlinear "decoder" to a 3x4x1 image in [0, 1]
    return jax.nn.sigmoid(jnp.tanh(z @ _W1)).reshape(3, 4, 1)


def logits(x):
    return x.reshape(-1) @ _W2 * 3.0


def prob(z, t):
    return float(jax.nn.softmax(logits(decode(z)))[t])


def reference_attack(z0, target, steps, lr, threshold, optimizer=None):
    """Obviously-correct Python loop with optax: check, then step; stop once crossed."""
    tx = optimizer or optax.adam(lr)
    z = jnp.asarray(z0)
    s = tx.init(z)
    traj, n = [decode(z)], 0
    for _ in range(steps):
        if prob(z, target) >= threshold:
            break
        g = jax.grad(lambda z: -jax.nn.softmax(logits(decode(z)))[target])(z)
        u, s = tx.update(g, s, z)
        z = optax.apply_updates(z, u)
        n += 1
        traj.append(decode(z))
    p = prob(z, target)
    return z, p, n, p >= threshold, traj


@pytest.mark.parametrize("early", [0, 5])
def test_scan_matches_python_loop(early):
    z0 = jax.random.normal(jax.random.key(2), (D,))
    for target, thr in [(0, 0.6), (2, 0.5), (3, 0.97)]:
        r = atk.attack(decode, logits, z0, target, steps=40, learning_rate=0.1, threshold=thr, early_exit_every=early)
        z, p, n, ok, _ = reference_attack(z0, target, 40, 0.1, thr)
        np.testing.assert_allclose(r.z, z, rtol=1e-5, atol=1e-6)
        assert int(r.steps_taken) == n and bool(r.success) == ok
        assert int(r.status) == (atk.SUCCESS if ok else atk.BUDGET)
        np.testing.assert_allclose(float(r.target_prob), p, rtol=1e-5)


def test_trajectory_matches_reference_and_freezes():
    z0 = jax.random.normal(jax.random.key(3), (D,))
    t = 3  # starts at p ~ 0, crosses 0.6 after ~30 steps
    r = atk.attack(decode, logits, z0, t, steps=40, threshold=0.6, record_every=2)
    _, _, n, ok, traj = reference_attack(z0, t, 40, 0.1, 0.6)
    assert ok and 2 < n < 40
    assert r.trajectory.shape == (21, 3, 4, 1) and r.trajectory_probs.shape == (21,)
    for j in range(21):  # image after 2j steps; frozen at the last one once done
        np.testing.assert_allclose(r.trajectory[j], traj[min(2 * j, n)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.trajectory[-1], r.x, rtol=1e-6)
    np.testing.assert_allclose(r.trajectory_probs, jax.vmap(lambda x: jax.nn.softmax(logits(x))[t])(r.trajectory), rtol=1e-5)


def test_other_optimizers_match_reference():
    z0 = jax.random.normal(jax.random.key(9), (D,))
    sgd = optax.sgd(0.5)
    r = atk.attack(decode, logits, z0, 1, steps=30, threshold=0.7, optimizer=sgd)
    z, _, n, ok, _ = reference_attack(z0, 1, 30, None, 0.7, optimizer=sgd)
    np.testing.assert_allclose(r.z, z, rtol=1e-5, atol=1e-6)
    assert int(r.steps_taken) == n and bool(r.success) == ok
    r = atk.attack(decode, logits, z0, 1, steps=30, threshold=0.7, optimizer="sgd-normalized", learning_rate=0.2)
    z, _, n, ok, _ = reference_attack(z0, 1, 30, None, 0.7, optimizer=atk.normalized_sgd(0.2))
    np.testing.assert_allclose(r.z, z, rtol=1e-4, atol=1e-4)  # 30 unit-length steps: float drift
    assert int(r.steps_taken) == n


def test_done_mask_freezes_an_example_past_the_threshold():
    z0 = jax.random.normal(jax.random.key(4), (D,))
    pred = int(jnp.argmax(logits(decode(z0))))
    p = prob(z0, pred)
    r = atk.attack(decode, logits, z0, pred, steps=30, threshold=min(p, 0.99) - 1e-3, record_every=10)
    assert int(r.steps_taken) == 0 and bool(r.success) and int(r.status) == atk.SUCCESS
    np.testing.assert_array_equal(r.z, z0)
    np.testing.assert_array_equal(r.trajectory, jnp.broadcast_to(decode(z0), r.trajectory.shape))


def test_unreachable_target_is_reported_unsuccessful():
    z0 = jax.random.normal(jax.random.key(5), (D,))
    r = atk.attack(decode, logits, z0, 1, steps=5, learning_rate=1e-4, threshold=0.999)
    assert not bool(r.success) and int(r.status) == atk.BUDGET and int(r.steps_taken) == 5
    assert float(r.target_prob) < 0.999


def test_zero_and_nonfinite_gradients_are_failures():
    z0 = jnp.ones(D)
    r = atk.attack(decode, lambda x: jnp.zeros(K), z0, 1, steps=10, threshold=0.6)  # constant classifier
    assert not bool(r.success) and int(r.status) == atk.ZERO_GRAD and int(r.steps_taken) == 0
    r = atk.attack(decode, logits, jnp.full(D, 1e4), 1, steps=10, threshold=0.9)  # saturated decoder
    assert not bool(r.success) and int(r.status) == atk.ZERO_GRAD
    r = atk.attack(decode, lambda x: logits(x) * jnp.nan, z0, 1, steps=10, threshold=0.6)
    assert not bool(r.success) and int(r.status) == atk.NON_FINITE and int(r.steps_taken) == 0
    # a classifier already past the threshold with a zero gradient is a success, not a failure
    r = atk.attack(decode, lambda x: jnp.array([0.0, 5.0, 0.0, 0.0]), z0, 1, steps=10, threshold=0.6)
    assert bool(r.success) and int(r.status) == atk.SUCCESS


def test_success_on_the_very_last_step_counts():
    z0 = jax.random.normal(jax.random.key(6), (D,))
    t = 3  # starts at p ~ 0.01, crosses 0.6 after ~40 steps
    full = atk.attack(decode, logits, z0, t, steps=200, threshold=0.6)
    n = int(full.steps_taken)
    assert bool(full.success) and n > 4 and n % 4 == 0, n
    for early in (0, 4):
        r = atk.attack(decode, logits, z0, t, steps=n, threshold=0.6, early_exit_every=early)  # crosses after the last step
        assert bool(r.success) and int(r.steps_taken) == n and int(r.status) == atk.SUCCESS


def _mixed_batch():
    """Lanes that: start past the threshold, flip fast, flip slowly, never flip, have a zero gradient."""
    z0 = jax.random.normal(jax.random.key(7), (12, D))
    z0 = z0.at[11].set(jnp.full(D, 1e4))  # saturated: zero gradient
    t = jnp.array([0, 1, 2, 3, 1, 2, 3, 0, 1, 2, 3, 1])
    first = int(jnp.argmax(logits(decode(z0[0]))))
    t = t.at[0].set(first)  # already the most likely class
    return z0, t


@pytest.mark.parametrize("schedule", ["compact", "vmap"])
def test_batch_equals_per_example(schedule):
    z0, t = _mixed_batch()
    kw = dict(steps=60, threshold=0.45, learning_rate=0.1)
    b = atk.attack_batch(decode, logits, z0, t, schedule=schedule, block=3, min_width=2, **kw)
    statuses = set()
    single = jax.jit(lambda z, tt: atk.attack(decode, logits, z, tt, **kw))  # one example, compiled once
    for i in range(len(t)):
        one = single(z0[i], t[i])
        np.testing.assert_allclose(b.z[i], one.z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b.x[i], one.x, rtol=1e-5, atol=1e-6)
        assert int(b.steps_taken[i]) == int(one.steps_taken), i
        assert bool(b.success[i]) == bool(one.success) and int(b.status[i]) == int(one.status)
        statuses.add(int(one.status))
    assert {atk.SUCCESS, atk.BUDGET, atk.ZERO_GRAD} <= statuses  # the batch really is mixed
    assert int(b.steps_taken[0]) == 0


def test_attack_batch_jits_and_traces():
    z0, t = _mixed_batch()
    f = jax.jit(functools.partial(atk.attack_batch, decode, logits, steps=30, threshold=0.5))
    a, b = f(z0, t), atk.attack_batch(decode, logits, z0, t, steps=30, threshold=0.5)
    np.testing.assert_allclose(a.z, b.z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.steps_taken, b.steps_taken)
    v = jax.jit(jax.vmap(lambda z, tt: atk.attack(decode, logits, z, tt, steps=30, threshold=0.5)))(z0, t)
    np.testing.assert_array_equal(v.steps_taken, b.steps_taken)


def test_sigmoid_objective_both_directions():
    w = jnp.arange(12.0) / 12 - 0.4
    for shape in [(), (1,)]:

        def lg(x):
            return jnp.reshape(jnp.dot(x.reshape(-1), w) * 4, shape)

        z0 = jnp.zeros(D)
        up = atk.attack(decode, lg, z0, 1, steps=300, threshold=0.75, objective="sigmoid")
        down = atk.attack(decode, lg, z0, 0, steps=300, threshold=0.75, objective="sigmoid")
        assert bool(up.success) and bool(down.success)
        assert float(jax.nn.sigmoid(lg(up.x)).squeeze()) >= 0.75 and float(jax.nn.sigmoid(lg(down.x)).squeeze()) <= 0.25
        np.testing.assert_allclose(float(down.target_prob), 1 - float(jax.nn.sigmoid(lg(down.x)).squeeze()), rtol=1e-6)


def test_pixel_attack_is_projected():
    z0 = jax.random.normal(jax.random.key(8), (D,))
    x0 = decode(z0)
    p = atk.attack_pixels(logits, x0, 3, steps=50, learning_rate=0.2, threshold=0.9)
    assert float(p.x.min()) >= 0 and float(p.x.max()) <= 1
    np.testing.assert_array_equal(p.z, p.x)
    pb = atk.attack_pixels_batch(logits, jnp.stack([x0, x0]), jnp.array([3, 1]), steps=50, learning_rate=0.2, threshold=0.9)
    np.testing.assert_allclose(pb.x[0], p.x, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    z0 = jnp.zeros(D)
    cases = [
        (lambda: atk.attack(decode, logits, z0, 7), "target"),
        (lambda: atk.attack(decode, logits, z0, -1), "target"),
        (lambda: atk.attack(decode, logits, z0, 1.5), "target"),
        (lambda: atk.attack(decode, logits, z0, 1, threshold=1.5), "threshold"),
        (lambda: atk.attack(decode, logits, z0, 1, threshold=0.0), "threshold"),
        (lambda: atk.attack(decode, logits, z0, 1, steps=0), "steps"),
        (lambda: atk.attack(decode, logits, z0, 1, steps=10, record_every=-3), "record_every"),
        (lambda: atk.attack(decode, logits, z0.at[0].set(jnp.nan), 1), "z0"),
        (lambda: atk.attack(decode, logits, jnp.zeros(D + 1), 1), "z0"),
        (lambda: atk.attack(decode, logits, z0, 1, optimizer="lbfgs"), "optimizer"),
        (lambda: atk.attack(decode, logits, z0, 1, objective="hinge"), "objective"),
        (lambda: atk.attack(decode, logits, z0, 1, objective="sigmoid"), "logits"),
        (lambda: atk.attack(decode, lambda x: x.reshape(1, -1), z0, 0), "logits"),
        (lambda: atk.attack(decode, logits, z0, jnp.array([1, 2])), "target"),
        (lambda: atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 2]), source=jnp.array([1, 0])), "target == source"),
        (lambda: atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 2, 3])), "target"),
        (lambda: atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 4])), "target"),
        (lambda: atk.attack_batch(decode, logits, jnp.zeros((0, D)), jnp.zeros((0,), int)), "z0"),
        (lambda: atk.attack_batch(decode, logits, jnp.zeros((2, D)), jnp.array([1, 2]), schedule="fast"), "schedule"),
    ]
    for fn, match in cases:
        with pytest.raises(InputError, match=match):
            fn()


@pytest.fixture(scope="module")
def tiny_classifier(mnist_small):
    """A small undefended GAP-CNN trained for two epochs on the 4,000 real MNIST-sample digits."""
    from cfjax import data as cdata
    from cfjax.training import loop as ct
    from cfjax.models import bind_classifier

    _, te = mnist_small
    tr = cdata.load("mnist5k", "train")
    res = ct.train_classifier(tr, te, ct.ClassifierConfig(num_classes=10, widths=(16, 32, 32)), ct.TrainConfig(epochs=2, batch_size=32, learning_rate=3e-3, schedule="constant"), progress=False)
    return bind_classifier(res.module, res.params), te, res.metrics["accuracy"]


def test_pixel_baseline_flips_a_trained_classifier_with_small_noise(tiny_classifier):
    clf, te, acc = tiny_classifier
    assert acc > 0.6
    blog = jax.jit(jax.vmap(clf.logits))
    pred = np.argmax(np.asarray(blog(te.images)), -1)
    idx = np.flatnonzero(pred == te.labels)[:8]
    x = jnp.asarray(te.images[idx])
    tgt = jnp.asarray((te.labels[idx] + 1) % 10)
    r = atk.attack_pixels_batch(clf.logits, x, tgt, steps=100, threshold=0.5)
    assert float(np.mean(r.success)) >= 0.75
    ok = np.asarray(r.success)
    np.testing.assert_array_equal(np.argmax(np.asarray(blog(r.x[ok])), -1), np.asarray(tgt)[ok])  # really flipped
    l2 = np.sqrt(np.sum((np.asarray(r.x) - np.asarray(x)) ** 2, axis=(1, 2, 3)))[ok]
    # "small": far less than the distance to a real digit of the target class
    ref = np.array([np.min(np.sqrt(np.sum((te.images[te.labels == t] - np.asarray(x[i])) ** 2, axis=(1, 2, 3)))) for i, t in enumerate(np.asarray(tgt)) if ok[i]])
    assert np.median(l2) < 0.6 * np.median(ref) and np.all(l2 < ref), (l2, ref)
    assert float(np.max(np.abs(np.asarray(r.x) - np.asarray(x)))) <= 1.0


def test_cpu_friendly_rewrite_keeps_values_and_gradients():
    """The XLA:CPU gradient rewrite: same values and input-gradients as the original function
    for strided/grouped/dilated convolutions, transposed convs, max-pooling with odd sizes,
    SAME padding and ties (select_and_scatter's first-max choice), nested jit."""
    import flax.linen as nn

    from cfjax.models import Classifier, bind_classifier

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
            h = nn.Conv(4, (3, 3), feature_group_count=2, kernel_dilation=(2, 2))(h)
            h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2), padding="SAME")  # 7x7 -> 4x4, ties at 0
            h = nn.ConvTranspose(3, (3, 3), strides=(2, 2))(h)
            h = jax.jit(lambda a: nn.max_pool(a, (3, 3), strides=(1, 1)))(h)  # overlapping: left alone
            return jnp.round(h * 4) / 4 + 0.01 * h  # plateaus: exact ties in later pools

    x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
    net = Net()
    params = net.init(jax.random.key(1), x[:1])
    f = lambda x: net.apply(params, x[None])[0]  # noqa: E731
    clf = Classifier(num_classes=10, widths=(8, 16, 16))
    cp = clf.init(jax.random.key(2), x[:1])
    g = bind_classifier(clf, cp).logits
    for fn in (f, g):
        fast = atk.cpu_friendly(fn)
        np.testing.assert_array_equal(jax.vmap(fast)(x), jax.vmap(fn)(x))
        loss = lambda h: lambda x: jnp.sum(jnp.sin(h(x)))  # noqa: E731
        a = jax.jit(jax.vmap(jax.grad(loss(fn))))(x)
        b = jax.jit(jax.vmap(jax.grad(loss(fast))))(x)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        # and inside a scan, where the speed-up matters
        step = lambda h: lambda c, _: (c - 0.1 * jax.vmap(jax.grad(loss(h)))(c), None)  # noqa: E731
        sa = jax.jit(lambda c: jax.lax.scan(step(fn), c, None, length=3)[0])(x)
        sb = jax.jit(lambda c: jax.lax.scan(step(fast), c, None, length=3)[0])(x)
        np.testing.assert_allclose(sb, sa, rtol=1e-4, atol=1e-5)
    # a pooled image with exact ties: the gradient goes to the first maximum only
    pool = lambda a: nn.max_pool(a[None], (2, 2), strides=(2, 2))[0].sum()  # noqa: E731
    tie = jnp.ones((4, 4, 1))
    np.testing.assert_array_equal(jax.grad(atk.cpu_friendly(pool))(tie), jax.grad(pool)(tie))



# ------------------------------------------------------------------ options against the Python-loop reference


def reference_general(z0, target, steps, lr, threshold, *, dec=decode, lg=logits, loss_fn=None, score_fn=None, prox=None, weight=0.0,
                      rule=">=", on_zero="fail", record_every=0):
    """The obviously-correct Python loop with every option: check the score, then the
    gradient (non-finite / zero), then step. Returns the final point, score, steps, status and
    the images after each step."""
    score_fn = score_fn or (lambda l, t: jax.nn.softmax(l)[t])

    def total(z):
        l = lg(dec(z))
        v = -score_fn(l, target) if loss_fn is None else loss_fn(l, target)
        if prox is not None:
            v = v + weight * prox(z - z0)
        return v

    vg = jax.jit(jax.value_and_grad(total))
    score = jax.jit(lambda z: (score_fn(lg(dec(z)), target), jnp.all(jnp.isfinite(lg(dec(z))))))
    past = (lambda p: p > threshold) if rule == ">" else (lambda p: p >= threshold)
    tx = optax.adam(lr)
    z = jnp.asarray(z0)
    s = tx.init(z)
    traj, n, status = [dec(z)], 0, atk.BUDGET
    for _ in range(steps):
        p, ok = score(z)
        if ok and np.isfinite(p) and past(float(p)):
            status = atk.SUCCESS
            break
        v, g = vg(z)
        if not (ok and np.isfinite(p) and np.isfinite(v) and np.all(np.isfinite(g))):
            status = atk.NON_FINITE
            break
        if on_zero == "fail" and float(jnp.sqrt(jnp.sum(g * g))) == 0.0:
            status = atk.ZERO_GRAD
            break
        u, s = tx.update(g, s, z)
        z = optax.apply_updates(z, u)
        n += 1
        traj.append(dec(z))
    p, ok = score(z)
    success = bool(ok) and bool(np.isfinite(p)) and past(float(p))
    if success:
        status = atk.SUCCESS
    elif status == atk.SUCCESS:
        status = atk.BUDGET
    return {"z": z, "p": float(p), "n": n, "success": success, "status": status, "traj": traj}


def _margin_loss(l, t):
    """A Carlini-Wagner style margin: best other logit minus the target's (minimised)."""
    return jnp.max(jnp.where(jnp.arange(l.shape[0]) == t, -jnp.inf, l)) - l[t]


def _plateau_decode(z):  # flat for |z_0| < 0.5: a zero gradient on the way up
    s = 5.0 * (z[0] - jnp.clip(z[0], -0.5, 0.5))
    return jnp.full((3, 4, 1), 0.5) + s * jnp.linspace(-0.1, 0.1, 12).reshape(3, 4, 1) + 0.0 * z[1]


def _plateau_logits(x):
    return jnp.stack([0.0, 10.0 * jnp.sum(x.reshape(-1) * jnp.linspace(-0.1, 0.1, 12))])


OPTION_CASES = {
    "margin": dict(kw=dict(objective=_margin_loss), ref=dict(loss_fn=_margin_loss)),
    "margin+log_score": dict(kw=dict(objective=_margin_loss, success_fn=lambda l, t: jax.nn.log_softmax(l)[t], threshold=-0.5),
                             ref=dict(loss_fn=_margin_loss, score_fn=lambda l, t: jax.nn.log_softmax(l)[t], threshold=-0.5)),
    "l1": dict(kw=dict(proximity="l1", proximity_weight=0.02), ref=dict(prox=lambda d: jnp.sum(jnp.abs(d)), weight=0.02)),
    "l2": dict(kw=dict(proximity="l2", proximity_weight=0.05), ref=dict(prox=lambda d: jnp.sum(d * d), weight=0.05)),
    "strict": dict(kw=dict(threshold_rule=">"), ref=dict(rule=">")),
    "continue": dict(kw=dict(on_zero_gradient="continue"), ref=dict(on_zero="continue")),
}


@functools.lru_cache(maxsize=None)
def _reference_lanes(case, steps, thr):
    z0, t = _mixed_batch()
    c = OPTION_CASES[case]
    ref = dict(c["ref"])
    thr = ref.pop("threshold", thr)
    return [reference_general(z0[i], int(t[i]), steps, 0.1, thr, **ref) for i in range(len(t))]


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
@pytest.mark.parametrize("schedule", ["compact", "vmap"])
def test_options_match_python_loop_on_every_schedule(case, schedule):
    z0, t = _mixed_batch()
    steps, thr = 40, 0.45
    kw = {"threshold": thr, **OPTION_CASES[case]["kw"]}
    b = atk.attack_batch(decode, logits, z0, t, schedule=schedule, block=3, min_width=2, steps=steps, learning_rate=0.1, **kw)
    refs = _reference_lanes(case, steps, thr)
    statuses = set()
    for i, ref in enumerate(refs):
        assert int(b.steps_taken[i]) == ref["n"], (i, int(b.steps_taken[i]), ref["n"])
        assert int(b.status[i]) == ref["status"] and bool(b.success[i]) == ref["success"], i
        np.testing.assert_allclose(b.z[i], ref["z"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(b.target_prob[i]), ref["p"], rtol=1e-4, atol=1e-6)
        statuses.add(ref["status"])
    assert atk.SUCCESS in statuses and len(statuses) >= 2, statuses  # a mixed batch
    if case == "continue":  # the saturated lane keeps stepping instead of failing
        assert int(b.status[11]) == atk.BUDGET and int(b.steps_taken[11]) == steps


@pytest.mark.parametrize("schedule", ["single", "compact", "vmap"])
def test_continue_through_a_zero_gradient_plateau(schedule):
    """Adam's momentum carries z across a flat stretch: 'fail' stops there (status 2),
    'continue' crosses it and succeeds; both exactly as the Python loop."""
    z0 = jnp.array([-1.5, 0.0])
    for mode in ("fail", "continue"):
        ref = reference_general(z0, 1, 60, 0.1, 0.6, dec=_plateau_decode, lg=_plateau_logits, on_zero=mode)
        kw = dict(steps=60, learning_rate=0.1, threshold=0.6, on_zero_gradient=mode)
        if schedule == "single":
            r = atk.attack(_plateau_decode, _plateau_logits, z0, 1, **kw)
        else:
            r = jax.tree_util.tree_map(lambda a: a[0], atk.attack_batch(_plateau_decode, _plateau_logits, z0[None], jnp.array([1]), schedule=schedule, **kw))
        assert int(r.status) == ref["status"] and int(r.steps_taken) == ref["n"]
        np.testing.assert_allclose(r.z, ref["z"], rtol=1e-5, atol=1e-6)
        if mode == "fail":
            assert int(r.status) == atk.ZERO_GRAD
        else:
            assert int(r.status) == atk.SUCCESS and bool(r.success)


@pytest.mark.parametrize("schedule", ["single", "compact", "vmap"])
def test_strict_threshold_rule_at_an_exact_tie(schedule):
    """p == threshold exactly at the start (uniform logits): '>=' stops at once, '>' steps."""
    lg = lambda x: jnp.stack([0.0, jnp.sum(x * jnp.linspace(-1, 1, 12).reshape(3, 4, 1))])  # noqa: E731
    dec = lambda z: jnp.tanh(z).reshape(3, 4, 1)  # noqa: E731
    z0 = jnp.zeros(12)  # logits exactly [0, 0]
    assert float(jax.nn.softmax(lg(dec(z0)))[1]) == 0.5
    for rule, moved in ((">=", False), (">", True)):
        kw = dict(steps=20, threshold=0.5, threshold_rule=rule)
        if schedule == "single":
            r = atk.attack(dec, lg, z0, 1, **kw)
        else:
            r = jax.tree_util.tree_map(lambda a: a[0], atk.attack_batch(dec, lg, z0[None], jnp.array([1]), schedule=schedule, **kw))
        assert bool(r.success) and int(r.status) == atk.SUCCESS
        assert (int(r.steps_taken) > 0) == moved
        assert float(r.target_prob) > 0.5 if moved else float(r.target_prob) == 0.5


def test_sigmoid_preset_with_strict_rule_and_exact_tie():
    lg = lambda x: jnp.sum(x * jnp.linspace(-1, 1, 12).reshape(3, 4, 1))  # noqa: E731
    dec = lambda z: jnp.tanh(z).reshape(3, 4, 1)  # noqa: E731
    z0 = jnp.zeros(12)  # sigmoid(0) = 0.5 exactly
    a = atk.attack(dec, lg, z0, 0, steps=30, threshold=0.5, objective="sigmoid")
    b = atk.attack(dec, lg, z0, 0, steps=30, threshold=0.5, objective="sigmoid", threshold_rule=">")
    assert int(a.steps_taken) == 0 and int(b.steps_taken) > 0 and bool(b.success) and float(b.target_prob) > 0.5


def test_multi_label_custom_objective_and_score():
    """A multi-label target [K] (multi-hot): BCE loss on every logit, success when every
    wanted label's sigmoid passes the threshold; targets travel with their lane."""
    def bce(l, t):
        return jnp.sum(optax.sigmoid_binary_cross_entropy(l, t))

    def worst(l, t):  # the least satisfied label
        return jnp.min(jnp.where(t > 0, jax.nn.sigmoid(l), 1.0 - jax.nn.sigmoid(l)))

    z0 = jax.random.normal(jax.random.key(11), (5, D))
    t = jnp.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], jnp.float32)
    out = {}
    for schedule in ("compact", "vmap"):
        out[schedule] = r = atk.attack_batch(decode, logits, z0, t, schedule=schedule, steps=150, threshold=0.15, objective=bce, success_fn=worst,
                                             min_width=1, block=4)
        assert r.success.shape == (5,)
        np.testing.assert_allclose(r.target_prob, jax.vmap(lambda x, tt: worst(logits(x), tt))(r.x, t), rtol=1e-5)
    np.testing.assert_array_equal(out["compact"].steps_taken, out["vmap"].steps_taken)
    np.testing.assert_allclose(out["compact"].z, out["vmap"].z, rtol=1e-5, atol=1e-5)
    assert 2 <= int(np.sum(out["vmap"].success)) < 5
    for i in range(5):
        ref = reference_general(z0[i], t[i], 150, 0.1, 0.15, loss_fn=bce, score_fn=worst)
        assert int(out["vmap"].steps_taken[i]) == ref["n"] and int(out["vmap"].status[i]) == ref["status"]


@pytest.mark.parametrize("every", [7, 40, 1])
def test_record_any_every_on_both_schedules(every):
    """record_every need not divide steps (the last gap is shorter); the compact schedule
    records too, with the same frames as vmap and as the Python loop."""
    z0, t = _mixed_batch()
    steps = 40
    kw = dict(steps=steps, threshold=0.45, record_every=every)
    c = atk.attack_batch(decode, logits, z0, t, schedule="compact", block=3, min_width=2, **kw)
    v = atk.attack_batch(decode, logits, z0, t, schedule="vmap", **kw)
    times = np.minimum(np.arange(-(-steps // every) + 1) * every, steps)
    assert c.trajectory.shape == v.trajectory.shape == (12, len(times), 3, 4, 1)
    assert c.trajectory_probs.shape == (12, len(times))
    np.testing.assert_array_equal(c.steps_taken, v.steps_taken)
    np.testing.assert_allclose(c.trajectory, v.trajectory, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.trajectory_probs, v.trajectory_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c.trajectory[:, -1], c.x)
    for i in (0, 1, 3, 11):
        ref = reference_general(z0[i], int(t[i]), steps, 0.1, 0.45)
        for j, tj in enumerate(times):
            np.testing.assert_allclose(c.trajectory[i, j], ref["traj"][min(tj, ref["n"])], rtol=1e-4, atol=1e-5)
    # the recording changes nothing
    plain = atk.attack_batch(decode, logits, z0, t, steps=steps, threshold=0.45, block=3, min_width=2)
    np.testing.assert_array_equal(plain.steps_taken, c.steps_taken)
    np.testing.assert_allclose(plain.z, c.z, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ compile once, call many


def test_attack_object_compiles_once_per_shape():
    traces = {"decode": 0, "logits": 0}

    def counting_decode(z):
        traces["decode"] += 1  # a Python side effect: runs only while JAX traces
        return decode(z)

    def counting_logits(x):
        traces["logits"] += 1
        return logits(x)

    run = atk.make_attack(counting_decode, counting_logits, steps=30, threshold=0.5)
    z0, t = _mixed_batch()
    a = run(z0, t)
    first = dict(traces)
    assert first["decode"] > 0 and first["logits"] > 0
    b = run(z0 + 0.01, (t + 1) % K)  # same shapes: no trace at all
    assert traces == first, (traces, first)
    run(z0, t, source=(t + 2) % K)
    assert traces == first
    ref = atk.attack_batch(decode, logits, z0, t, steps=30, threshold=0.5)
    np.testing.assert_array_equal(a.steps_taken, ref.steps_taken)
    np.testing.assert_allclose(a.z, ref.z, rtol=1e-5, atol=1e-6)
    assert b.z.shape == a.z.shape
    assert run.compile_count == 1
    run(z0[:5], t[:5])  # a new shape compiles once more (decode itself, same per-example shape, may not re-trace)
    assert run.compile_count == 2
    second = dict(traces)
    run(z0[5:10], t[5:10])
    assert traces == second and run.compile_count == 2
    # host-side checks still name the argument, without tracing
    with pytest.raises(InputError, match="target"):
        run(z0, t.at[0].set(K))
    with pytest.raises(InputError, match="target == source"):
        run(z0, t, source=t)
    with pytest.raises(InputError, match="z0"):
        run(z0.at[0, 0].set(jnp.nan), t)
    assert traces == second


def test_attack_object_single_and_pixels():
    one = atk.make_attack(decode, logits, batched=False, steps=30, threshold=0.5)
    z0, t = _mixed_batch()
    r = one(z0[1], t[1])
    ref = atk.attack(decode, logits, z0[1], t[1], steps=30, threshold=0.5)
    assert int(r.steps_taken) == int(ref.steps_taken)
    px = atk.make_pixel_attack(logits, steps=50, learning_rate=0.2, threshold=0.9)
    x0 = jax.vmap(decode)(z0[:2])
    p = px(x0, jnp.array([3, 1]))
    q = atk.attack_pixels_batch(logits, x0, jnp.array([3, 1]), steps=50, learning_rate=0.2, threshold=0.9)
    np.testing.assert_allclose(p.x, q.x, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="x0"):
        px(x0 + 2.0, jnp.array([3, 1]))
    assert "steps=50" in repr(px)


def test_bad_new_options():
    z0 = jnp.zeros(D)
    cases = [
        (lambda: atk.attack(decode, logits, z0, 1, objective=3), "objective"),
        (lambda: atk.attack(decode, logits, z0, 1, success_fn="hinge"), "success_fn"),
        (lambda: atk.attack(decode, logits, z0, 1, threshold_rule="=>"), "threshold_rule"),
        (lambda: atk.attack(decode, logits, z0, 1, on_zero_gradient="stop"), "on_zero_gradient"),
        (lambda: atk.attack(decode, logits, z0, 1, proximity="l3", proximity_weight=1.0), "proximity"),
        (lambda: atk.attack(decode, logits, z0, 1, proximity_weight=-1.0), "proximity_weight"),
        (lambda: atk.attack(decode, logits, z0, 1, compute_dtype=jnp.int8), "compute_dtype"),
        (lambda: atk.attack(decode, logits, z0, 1, compute_dtype="bfloat17"), "compute_dtype"),
        (lambda: atk.attack(decode, logits, z0, 1, success_fn=lambda l, t: l[t], threshold=float("nan")), "threshold"),
        (lambda: atk.make_attack(decode, logits, stepz=3), "stepz"),
        (lambda: atk.make_attack(decode, logits, steps=0), "steps"),
        (lambda: atk.make_attack(decode, logits, schedule="fast"), "schedule"),
        (lambda: atk.make_attack(decode, logits, optimizer="lbfgs"), "optimizer"),
        (lambda: atk.make_attack(decode, logits)(jnp.zeros((2, D)), jnp.array([1, 2, 3])), "target"),
        (lambda: atk.make_pixel_attack(logits, project=lambda x: x), "project"),
        (lambda: atk.attack(decode, logits, z0, 1, steps=3, objective=lambda l, t: -l), "objective"),
        (lambda: atk.attack(decode, logits, z0, 1, steps=3, objective=lambda l, t: -l[t], success_fn=lambda l, t: l, threshold=2.0), "success_fn"),
    ]
    for fn, match in cases:
        with pytest.raises(InputError, match=match):
            fn()
    # a custom score accepts any finite threshold
    r = atk.attack(decode, logits, z0, 1, steps=5, success_fn=lambda l, t: l[t] - jnp.max(l), threshold=-0.1)
    assert r.target_prob.shape == ()


def test_compute_dtype_bfloat16_matmuls_keep_float32_state():
    import flax.linen as nn

    class Dec(nn.Module):
        @nn.compact
        def __call__(self, z):
            h = nn.relu(nn.Dense(32)(z)).reshape(1, 4, 4, 2)
            return nn.sigmoid(nn.ConvTranspose(1, (3, 3), strides=(2, 2))(h))[0]

    class Clf(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Conv(8, (3, 3))(x[None]))
            return nn.Dense(K)(h.mean((1, 2)))[0]

    dm, cm = Dec(), Clf()
    dp = dm.init(jax.random.key(0), jnp.zeros(D))
    cp = cm.init(jax.random.key(1), jnp.zeros((8, 8, 1)))
    dec = lambda z: dm.apply(dp, z)  # noqa: E731
    lg = lambda x: cm.apply(cp, x)  # noqa: E731
    low = atk.mixed_precision(lg, jnp.bfloat16)
    jaxpr = str(jax.make_jaxpr(low)(jnp.zeros((8, 8, 1))))
    assert "bf16" in jaxpr and "preferred_element_type=float32" in jaxpr
    x = jax.random.uniform(jax.random.key(2), (8, 8, 1))
    assert low(x).dtype == jnp.float32
    np.testing.assert_allclose(low(x), lg(x), rtol=0.05, atol=0.05)
    assert not np.array_equal(np.asarray(low(x)), np.asarray(lg(x)))  # really rounded
    z0 = jax.random.normal(jax.random.key(3), (6, D))
    t = jnp.arange(6) % K
    for schedule in ("compact", "vmap"):
        r = atk.attack_batch(dec, lg, z0, t, schedule=schedule, steps=60, threshold=0.3, compute_dtype=jnp.bfloat16)
        f = atk.attack_batch(dec, lg, z0, t, schedule=schedule, steps=60, threshold=0.3)
        assert r.z.dtype == jnp.float32 and r.x.dtype == jnp.float32 and r.target_prob.dtype == jnp.float32
        assert not np.array_equal(np.asarray(r.z), np.asarray(f.z))
        assert np.abs(np.asarray(r.steps_taken) - np.asarray(f.steps_taken)).max() <= 10
    # float32 means "no change"
    same = atk.attack_batch(dec, lg, z0, t, steps=60, threshold=0.3, compute_dtype=jnp.float32)
    np.testing.assert_array_equal(same.z, f.z)


def test_compact_rounds_capped_at_the_step_budget_change_no_result():
    """A round of the compacted schedule never runs more steps than the budget (a 2-step budget
    used to compute whole 5-step rounds): results equal those of 1-step rounds for budgets below,
    at and above ``block``."""
    W = jax.random.normal(jax.random.key(0), (4, 4))
    decode = lambda z: jnp.tanh(z).reshape(2, 2, 1) * 0.5 + 0.5  # noqa: E731
    logits = lambda x: W @ x.reshape(-1)  # noqa: E731
    z0 = jax.random.normal(jax.random.key(1), (12, 4))
    t = jnp.arange(12) % 4
    for steps in (2, 5, 7):
        a = atk.attack_batch(decode, logits, z0, t, steps=steps, block=5, threshold=0.9)
        b = atk.attack_batch(decode, logits, z0, t, steps=steps, block=1, threshold=0.9)
        np.testing.assert_allclose(np.asarray(a.z), np.asarray(b.z), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(a.steps_taken), np.asarray(b.steps_taken))
        assert int(np.max(np.asarray(a.steps_taken))) <= steps
