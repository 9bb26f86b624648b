"""Issue 26, the attack side: errors that name the failing callable (not ``z0``), dtype and
value guards before any trace, int32 targets cast on the host (no second compile), a public
compile count, status 3 for non-finite points under the caller's own ``jit``, and the one
jaxpr interpreter shared by the CPU gradient rewrite and the mixed-precision wrapper."""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cfjax.errors import InputError
from cfjax.methods import attack as atk
from cfjax.methods import jaxpr_rewrite

from tiny_attack import D, K, SOURCE, TARGET, WC, WD, Z0, decode, logits  # noqa: F401  (the shared tiny models)
X0 = jnp.full((2, 4, 4, 1), 0.5)


def _raises(fn, name: str, *fragments: str) -> str:
    """``fn()`` raises an InputError whose message starts with ``name:`` and holds every fragment."""
    with pytest.raises(InputError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith(f"{name}: expected ") and ", got " in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# ------------------------------------------------------------------ errors name the callable


def _conv_logits(x):  # a channels-last conv classifier: takes [H, W, 1] only
    k = jnp.ones((3, 3, 1, K))
    h = jax.lax.conv_general_dilated(x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return h.mean((0, 1, 2))


class _BatchNormClf(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1))  # train mode: updates batch_stats
        return nn.Dense(K)(h)


_BN = _BatchNormClf()
_BN_VARS = _BN.init(jax.random.key(3), jnp.zeros((1, 4, 4, 1)))


def _bn_logits(x):  # forgot mutable=["batch_stats"] (or use_running_average=True)
    return _BN.apply(_BN_VARS, x[None])[0]


@pytest.mark.parametrize(
    "dec, lg, kw, name, fragments",
    [
        # decode cannot take the latent: the shape it was called on, and the error
        (lambda z: (z @ jnp.ones((5, 16))).reshape(4, 4, 1), logits, {}, "decode", ("shape (4,) float32, one latent of z0", "TypeError")),
        # decode returns (x, something)
        (lambda z: (decode(z), z), logits, {}, "decode", ("tuple of 2 arrays", "shape (4,) float32")),
        # decode returns NCHW: the channels-last classifier fails on what decode returned
        (lambda z: jnp.transpose(decode(z), (2, 0, 1)), _conv_logits, {}, "logits", ("shape (1, 4, 4) float32", "what decode returned")),
        # decode keeps a batch axis: the classifier fails on [1, H, W, C]
        (lambda z: decode(z)[None], _conv_logits, {}, "logits", ("shape (1, 4, 4, 1) float32", "what decode returned")),
        # BatchNorm left in train mode: flax refuses to update an immutable collection
        (decode, _bn_logits, {}, "logits", ("shape (4, 4, 1) float32", "batch_stats")),
        # a classifier returning integer scores
        (decode, lambda x: jnp.argsort(logits(x)), {}, "logits", ("dtype int32",)),
        (decode, logits, dict(objective=lambda l, t: l[t, 0]), "objective", ("IndexError", "logits shape (3,) float32", "target shape () int32")),
        (decode, logits, dict(objective=lambda l, t: -l), "objective", ("shape (3,) float32",)),
        (decode, logits, dict(success_fn=lambda l, t: jax.nn.softmax(l)), "success_fn", ("shape (3,) float32",)),
        (decode, logits, dict(success_fn=lambda l, t: l["a"]), "success_fn", ("logits shape (3,) float32",)),
        (decode, logits, dict(proximity=lambda d: d @ jnp.ones(7), proximity_weight=0.1), "proximity", ("shape (4,) float32", "z - z0")),
    ],
)
def test_a_failing_callable_is_named_not_z0(dec, lg, kw, name, fragments):
    for call in (
        lambda: atk.attack_batch(dec, lg, Z0, TARGET, steps=3, **kw),
        lambda: atk.attack(dec, lg, Z0[0], TARGET[0], steps=3, **kw),
        lambda: atk.make_attack(dec, lg, steps=3, **kw)(Z0, TARGET),
        lambda: jax.jit(lambda z, t: atk.attack_batch(dec, lg, z, t, steps=3, **kw))(Z0, TARGET),  # traced arguments too
    ):
        _raises(call, name, *fragments)


def test_a_wrong_latent_shape_names_decode_and_the_shape():
    msg = _raises(lambda: atk.attack_batch(decode, logits, jnp.zeros((2, D + 1)), TARGET[:2], steps=3), "decode",
                  "shape (5,) float32, one latent of z0", "TypeError")
    assert "dot_general" in msg  # the underlying error, not only its type


def test_the_pixel_attack_names_x0_and_logits():
    bad = lambda x: x.reshape(3, -1).sum(0)  # noqa: E731 - 16 pixels do not split in 3
    for call in (
        lambda: atk.attack_pixels_batch(bad, X0, jnp.array([0, 1]), steps=3),
        lambda: atk.attack_pixels(bad, X0[0], 1, steps=3),
        lambda: atk.make_pixel_attack(bad, steps=3)(X0, jnp.array([0, 1])),
    ):
        msg = _raises(call, "logits", "shape (4, 4, 1) float32, one image of x0")
        assert "z0" not in msg and "decode" not in msg, msg
    for call in (
        lambda: atk.attack_pixels_batch(logits, X0.astype(jnp.float16), jnp.array([0, 1]), steps=3),
        lambda: atk.attack_pixels(logits, X0[0].astype(jnp.bfloat16), 1, steps=3),
        lambda: atk.make_pixel_attack(logits, steps=3)(X0.astype(jnp.float16), jnp.array([0, 1])),
    ):
        msg = _raises(call, "x0", "float")
        assert "z0" not in msg and "latent" not in msg, msg
    _raises(lambda: atk.attack_pixels(logits, X0[0], 1, steps=3, project=lambda x: x), "project")
    _raises(lambda: atk.attack_pixels_batch(logits, X0, jnp.array([0, 1]), stepz=3), "options", "stepz")


# ------------------------------------------------------------------ dtype and value guards


@pytest.mark.parametrize("dtype, fragment", [(jnp.float16, "float16"), (jnp.bfloat16, "bfloat16"), (jnp.int32, "int32"), (jnp.bool_, "bool")])
def test_low_precision_and_integer_starts_are_refused(dtype, fragment):
    z = Z0.astype(dtype)
    for call in (
        lambda: atk.attack_batch(decode, logits, z, TARGET, steps=3),
        lambda: atk.attack(decode, logits, z[0], TARGET[0], steps=3),
        lambda: atk.make_attack(decode, logits, steps=3)(z, TARGET),
        lambda: atk.make_attack(decode, logits, batched=False, steps=3)(z[0], TARGET[0]),
        lambda: jax.jit(lambda zz, t: atk.attack_batch(decode, logits, zz, t, steps=3))(z, TARGET),  # checked on the dtype
    ):
        _raises(call, "z0", f"dtype {fragment}", "float32")


def test_float32_start_runs_and_the_low_precision_policy_is_compute_dtype():
    # the documented route for low-precision arithmetic: a float32 z0 with compute_dtype
    r = atk.attack_batch(decode, logits, Z0, TARGET, steps=60, compute_dtype=jnp.bfloat16)
    assert r.z.dtype == jnp.float32 and bool(r.success.any())


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf"), True, "0.1", None, jnp.array([0.1, 0.2])])
def test_learning_rate_must_be_finite_and_positive(lr):
    for call in (
        lambda: atk.attack_batch(decode, logits, Z0, TARGET, steps=3, learning_rate=lr),
        lambda: atk.attack(decode, logits, Z0[0], TARGET[0], steps=3, learning_rate=lr),
        lambda: atk.attack_batch(decode, logits, Z0, TARGET, steps=3, learning_rate=lr, optimizer="sgd-normalized"),
        lambda: atk.make_attack(decode, logits, steps=3, learning_rate=lr),
        lambda: atk.make_pixel_attack(logits, steps=3, learning_rate=lr),
        lambda: atk.attack_pixels_batch(logits, X0, jnp.array([0, 1]), steps=3, learning_rate=lr),
    ):
        _raises(call, "learning_rate", "a finite number > 0")


def test_learning_rate_is_not_checked_when_an_optax_optimizer_ignores_it():
    r = atk.attack_batch(decode, logits, Z0, TARGET, steps=40, optimizer=optax.adam(0.1), learning_rate=0.0)
    ref = atk.attack_batch(decode, logits, Z0, TARGET, steps=40, learning_rate=0.1)
    np.testing.assert_array_equal(r.steps_taken, ref.steps_taken)


@pytest.mark.parametrize(
    "source, fragment",
    [
        (lambda s: s.at[0].set(K), f", {K}]"),
        (lambda s: s.at[1].set(-1), "values in [-1,"),
        (lambda s: s.astype(jnp.float32), "dtype float32"),
    ],
)
def test_source_must_be_integer_classes_in_range(source, fragment):
    s = source(SOURCE)
    if fragment.startswith("values"):  # keep target != source so that only the range is wrong
        s = jnp.where(s == TARGET, (TARGET + 2) % K, s)
    for call in (
        lambda: atk.attack_batch(decode, logits, Z0, TARGET, steps=3, source=s),
        lambda: atk.make_attack(decode, logits, steps=3)(Z0, TARGET, source=s),
    ):
        _raises(call, "source", fragment, "expected " + ("integer class indices" if "dtype" in fragment else f"class indices in [0, {K - 1}]"))
    run = atk.make_attack(decode, logits, steps=3)
    run(Z0, TARGET, source=SOURCE)  # a good source passes


def _attack_compiles(caplog, fn) -> int:
    """How many attack programs XLA compiled while ``fn`` ran, from JAX's own compile log
    (independent of ``Attack.compile_count``)."""
    caplog.clear()
    jax.config.update("jax_log_compiles", True)
    cached = jax.config.jax_enable_compilation_cache  # a persistent-cache hit logs no compile
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            fn()
    finally:
        jax.config.update("jax_log_compiles", False)
        jax.config.update("jax_enable_compilation_cache", cached)
    return sum("Finished XLA compilation of jit(_attack_program)" in r.getMessage() for r in caplog.records)


def test_targets_are_cast_to_int32_on_the_host_no_second_compile(caplog):
    run = atk.make_attack(decode, logits, steps=30)
    assert run.compile_count == 0
    ref = run(Z0, TARGET)
    assert run.compile_count == 1
    outs = []
    compiled = _attack_compiles(caplog, lambda: outs.extend(
        run(Z0, t) for t in (TARGET.astype(jnp.uint8), np.asarray(TARGET, np.int64), np.asarray(TARGET, np.uint8), np.asarray(TARGET, np.int16),
                             [int(v) for v in TARGET])))
    assert run.compile_count == 1
    assert compiled == 0  # XLA built no second attack program
    for r in outs:
        np.testing.assert_array_equal(r.steps_taken, ref.steps_taken)
        np.testing.assert_array_equal(r.status, ref.status)
    # the single-example attack too
    one = atk.make_attack(decode, logits, batched=False, steps=30)
    a = one(Z0[0], TARGET[0])
    b = one(Z0[0], np.uint8(TARGET[0]))
    c = one(Z0[0], int(TARGET[0]))
    assert one.compile_count == 1 and int(a.steps_taken) == int(b.steps_taken) == int(c.steps_taken)


def test_compile_count_counts_programs(caplog):
    run = atk.make_attack(decode, logits, steps=20)
    assert _attack_compiles(caplog, lambda: run(Z0, TARGET)) == 1 and run.compile_count == 1  # the count is a real compile
    run(Z0 + 0.5, (TARGET + 1) % K)
    run(np.asarray(Z0), TARGET, source=SOURCE)  # numpy input of the same shape: the same program
    assert run.compile_count == 1
    assert _attack_compiles(caplog, lambda: run(Z0[:3], TARGET[:3])) == 1  # a new shape: one more program
    assert run.compile_count == 2
    run(Z0[3:], TARGET[3:])
    assert run.compile_count == 2
    px = atk.make_pixel_attack(logits, steps=10)
    assert px.compile_count == 0
    px(X0, jnp.array([0, 1]))
    px(X0 * 0.5, jnp.array([2, 1]))
    assert px.compile_count == 1
    with pytest.raises(InputError):  # a refused call compiles nothing
        run(Z0.at[0, 0].set(jnp.nan), TARGET)
    assert run.compile_count == 2


# ------------------------------------------------------------------ status 3 under the caller's jit


def _nan_blind_decode(z):  # maps a NaN latent to a finite image: only the check on z sees it
    return decode(jnp.where(jnp.isnan(z), 0.0, z))


def _holed_decode(z):  # one NaN pixel that does not depend on z (its gradient stays finite)
    return decode(z).at[0, 0, 0].set(jnp.nan)


def _nan_blind_logits(x):  # finite logits from a NaN image: only the check on x sees it
    return logits(jnp.nan_to_num(x, nan=0.5))


def _relu_decode(z):  # a relu model: XLA:CPU's max may turn NaN into 0
    return jax.nn.sigmoid(jax.nn.relu(z) @ WD).reshape(4, 4, 1)


@pytest.mark.parametrize("schedule", ["compact", "vmap"])
def test_a_nan_start_under_the_callers_jit_ends_with_status_3(schedule):
    z0 = Z0.at[1].set(jnp.nan).at[4, 2].set(jnp.inf)
    for dec in (_nan_blind_decode, _relu_decode, decode):
        run = jax.jit(lambda z, t, dec=dec: atk.attack_batch(dec, logits, z, t, steps=30, schedule=schedule))
        r = run(z0, TARGET)
        assert int(r.status[1]) == atk.NON_FINITE and int(r.status[4]) == atk.NON_FINITE, (dec.__name__, r.status)
        assert not bool(r.success[1]) and not bool(r.success[4])
        ok = np.array([0, 2, 3, 5])
        ref = atk.attack_batch(dec, logits, Z0[ok], TARGET[ok], steps=30, schedule=schedule)
        np.testing.assert_array_equal(np.asarray(r.status)[ok], ref.status)  # the other lanes are untouched
    single = jax.jit(lambda z, t: atk.attack(_nan_blind_decode, logits, z, t, steps=30))
    assert int(single(z0[1], TARGET[1]).status) == atk.NON_FINITE


def test_a_non_finite_image_with_finite_logits_is_status_3():
    z0 = Z0[:3]
    lg = jax.vmap(lambda z: _nan_blind_logits(_holed_decode(z)))(z0)
    g = jax.vmap(jax.grad(lambda z, t: -jax.nn.softmax(_nan_blind_logits(_holed_decode(z)))[t]))(z0, TARGET[:3])
    assert bool(jnp.all(jnp.isfinite(lg))) and bool(jnp.all(jnp.isfinite(g))) and bool(jnp.any(g != 0))  # only x is bad
    for schedule in ("compact", "vmap"):
        r = atk.attack_batch(_holed_decode, _nan_blind_logits, z0, TARGET[:3], steps=20, schedule=schedule)
        assert np.all(np.asarray(r.status) == atk.NON_FINITE) and not bool(r.success.any()), r.status


# ------------------------------------------------------------------ one jaxpr interpreter


def test_cpu_rewrite_and_mixed_precision_share_one_interpreter(monkeypatch):
    calls = []
    real = jaxpr_rewrite.eval_jaxpr

    def counting(jaxpr, consts, args, rule):
        calls.append(getattr(rule, "func", rule).__name__)
        return real(jaxpr, consts, args, rule)

    monkeypatch.setattr(jaxpr_rewrite, "eval_jaxpr", counting)

    @jax.jit
    def inner(x):  # a nested jit: walked with the same rule
        return _conv_logits(x)

    def f(x):
        return jnp.tanh(inner(x)) @ jnp.ones((K, 2))

    x = X0[0] * 0.3 + 0.1
    g_ref = jax.grad(lambda v: f(v).sum())(x)
    np.testing.assert_allclose(jaxpr_rewrite.cpu_friendly(f)(x), f(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jaxpr_rewrite.cpu_friendly(f)(v).sum())(x), g_ref, rtol=1e-5, atol=1e-6)
    low = atk.mixed_precision(f, jnp.bfloat16)
    np.testing.assert_allclose(low(x), f(x), rtol=2e-2, atol=2e-2)
    assert "bf16" in str(jax.make_jaxpr(low)(x))  # the conv inside the nested jit got bfloat16 operands
    assert "_cpu_rule" in calls and "_low_precision_rule" in calls, calls
    # nested jits recurse through the same function (more calls than top-level wrappers)
    assert calls.count("_cpu_rule") >= 2 and calls.count("_low_precision_rule") >= 2, calls


# ------------------------------------------------------------------ issue 37: traced targets, number options, bfloat16


def test_an_out_of_range_target_under_the_callers_jit_is_non_finite_never_a_success():
    """The host cannot see a traced target's value: an index outside [0, K) (too large, or
    negative, which JAX indexing would wrap) gets no score: NaN target_prob, status 3."""
    bad = TARGET.at[1].set(K + 2).at[4].set(-1)
    ref = atk.attack_batch(decode, logits, Z0, TARGET, steps=20)
    ok = np.array([i not in (1, 4) for i in range(len(TARGET))])
    for schedule in ("compact", "vmap"):
        r = jax.jit(lambda z, t: atk.attack_batch(decode, logits, z, t, steps=20, schedule=schedule))(Z0, bad)
        status, prob = np.asarray(r.status), np.asarray(r.target_prob)
        assert list(status[~ok]) == [atk.NON_FINITE] * 2 and np.isnan(prob[~ok]).all() and not bool(r.success[~ok].any()), (status, prob)
        np.testing.assert_array_equal(np.asarray(r.steps_taken)[~ok], 0)  # z never moved
        np.testing.assert_array_equal(status[ok], np.asarray(ref.status)[ok])  # the other lanes are untouched
        np.testing.assert_allclose(np.asarray(r.z)[ok], np.asarray(ref.z)[ok], rtol=1e-5, atol=1e-6)
    one = jax.jit(lambda z, t: atk.attack(decode, logits, z, t, steps=20))(Z0[0], jnp.int32(K))
    assert int(one.status) == atk.NON_FINITE and np.isnan(float(one.target_prob)) and not bool(one.success)
    run = atk.make_attack(decode, logits, steps=20)
    r = jax.jit(lambda z, t: run(z, t))(Z0, bad)  # a compiled Attack inside the caller's jit
    assert list(np.asarray(r.status)[~ok]) == [atk.NON_FINITE] * 2
    sig = jax.jit(lambda z, t: atk.attack(decode, lambda x: logits(x)[:1], z, t, steps=5, objective="sigmoid"))(Z0[0], jnp.int32(2))
    assert int(sig.status) == atk.NON_FINITE and np.isnan(float(sig.target_prob))


@pytest.mark.parametrize("name", ["steps", "record_every", "early_exit_every", "block", "min_width"])
def test_a_huge_integer_option_is_an_input_error_not_an_overflow(name):
    for call in (
        lambda: atk.attack_batch(decode, logits, Z0, TARGET, **{"steps": 3, name: 2**40}),
        lambda: atk.make_attack(decode, logits, **{"steps": 3, name: 2**40}),
    ):
        _raises(call, name, "2**31 - 1", str(2**40))
    if name not in ("block", "min_width"):
        _raises(lambda: atk.attack(decode, logits, Z0[0], TARGET[0], **{"steps": 3, name: 2**40}), name, "2**31 - 1")


def test_concrete_numpy_and_jax_scalars_are_accepted_as_options():
    ref = atk.attack_batch(decode, logits, Z0, TARGET, steps=30, threshold=0.5, proximity_weight=0.25)
    for steps, threshold, weight in [(np.int32(30), np.float32(0.5), np.float64(0.25)), (jnp.int32(30), jnp.float32(0.5), jnp.float32(0.25))]:
        r = atk.attack_batch(decode, logits, Z0, TARGET, steps=steps, threshold=threshold, proximity_weight=weight)
        np.testing.assert_array_equal(r.steps_taken, ref.steps_taken)
        np.testing.assert_allclose(r.z, ref.z, rtol=1e-5, atol=1e-6)
    run = atk.make_attack(decode, logits, steps=jnp.int32(30), threshold=jnp.float32(0.5))
    np.testing.assert_array_equal(run(Z0, TARGET).steps_taken, atk.attack_batch(decode, logits, Z0, TARGET, steps=30).steps_taken)


@pytest.mark.parametrize("name, value", [("threshold", 0.5), ("steps", 30), ("proximity_weight", 0.1)])
def test_a_traced_option_is_refused_saying_why(name, value):
    def f(v):
        return atk.attack_batch(decode, logits, Z0, TARGET, **{"steps": 3, name: v}).status

    _raises(lambda: jax.jit(f)(value), name, "a concrete number", "traced", "outside jax.jit")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_is_refused_on_both_sides_with_the_compute_dtype_route(dtype):
    """One policy for 16-bit floats: a start point, an image from decode and logits from the
    classifier are refused alike, each message naming its argument and the compute_dtype
    route; with compute_dtype the attack runs and returns float32."""
    name = jnp.dtype(dtype).name
    calls = {
        "z0": lambda: atk.attack_batch(decode, logits, Z0.astype(dtype), TARGET, steps=3),
        "decode": lambda: atk.attack_batch(lambda z: decode(z).astype(dtype), logits, Z0, TARGET, steps=3),
        "logits": lambda: atk.attack_batch(decode, lambda x: logits(x).astype(dtype), Z0, TARGET, steps=3),
    }
    for arg, call in calls.items():
        _raises(call, arg, name, "float32", "compute_dtype")
    _raises(lambda: atk.attack(lambda z: decode(z).astype(dtype), logits, Z0[0], TARGET[0], steps=3), "decode", name, "compute_dtype")
    _raises(lambda: atk.make_attack(lambda z: decode(z).astype(dtype), logits, steps=3)(Z0, TARGET), "decode", name, "compute_dtype")
    _raises(lambda: atk.attack_pixels_batch(lambda x: logits(x).astype(dtype), X0, jnp.array([0, 1]), steps=3), "logits", name, "compute_dtype")
    r = atk.attack_batch(decode, logits, Z0, TARGET, steps=20, compute_dtype=dtype)
    assert r.x.dtype == r.z.dtype == r.target_prob.dtype == jnp.float32
