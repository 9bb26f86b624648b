"""Attack options in one place: :class:`cfjax.AttackOptions` is the one spelling of the attack's
options; every public entry point takes it (``options=``) and shows its fields as keywords
(derived from the dataclass, never written out by hand), and the keywords build it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax
from cfjax.errors import InputError
from cfjax.methods import attack as atk
from cfjax.methods import attack_options as ao

from tiny_attack import D, K, SOURCE, TARGET, WC, WD, Z0, decode, logits  # noqa: F401  (the shared tiny models)

ROOT = Path(__file__).resolve().parent.parent

FIELDS = [f.name for f in dataclasses.fields(cfjax.AttackOptions)]
BATCH_ONLY = {f.name for f in dataclasses.fields(cfjax.AttackOptions) if f.metadata.get("batch")}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(cfjax.AttackOptions)}

# entry point -> (fields it takes as keywords, defaults that differ from the dataclass's)
PUBLIC = {
    atk.attack: (set(FIELDS) - BATCH_ONLY, {}),
    atk.attack_batch: (set(FIELDS), {}),
    atk.make_attack: (set(FIELDS), {}),
    atk.Attack: (set(FIELDS), {}),
    atk.attack_pixels: (set(FIELDS) - BATCH_ONLY - {"project"}, {"learning_rate": 0.01}),
    atk.attack_pixels_batch: (set(FIELDS) - {"project"}, {"learning_rate": 0.01}),
    atk.make_pixel_attack: (set(FIELDS) - {"project"}, {"learning_rate": 0.01}),
}
NOT_OPTIONS = {"source", "batched"}  # keyword-only arguments that are not attack options


def test_the_fields_are_the_options():
    assert FIELDS == ["steps", "learning_rate", "optimizer", "threshold", "objective", "success_fn", "proximity", "proximity_weight",
                      "threshold_rule", "on_zero_gradient", "compute_dtype", "record_every", "project", "early_exit_every", "rewrite_grads",
                      "schedule", "block", "min_width"]
    assert BATCH_ONLY == {"schedule", "block", "min_width"}
    assert cfjax.AttackOptions is atk.AttackOptions is ao.AttackOptions and "AttackOptions" in cfjax.__all__


@pytest.mark.parametrize("fn", list(PUBLIC), ids=lambda f: f.__name__)
def test_every_public_signature_matches_the_fields(fn):
    expected, overrides = PUBLIC[fn]
    params = inspect.signature(fn).parameters
    assert "options" in params and params["options"].default is None
    options = {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in NOT_OPTIONS}
    assert set(options) == expected, sorted(set(options) ^ expected)
    for name, p in options.items():
        assert p.default == overrides.get(name, DEFAULTS[name]), (name, p.default)
    if inspect.isfunction(fn) and fn.__doc__:
        for name in expected:  # the docstring describes every option it shows
            assert f"      {name}: " in fn.__doc__ or f"      {name}, " in fn.__doc__, name
        assert "{options}" not in fn.__doc__


def test_no_public_signature_spells_an_option_by_hand():
    """The entry points' source takes ``**kw``: an option is written once, as a field."""
    for mod in ("attack", "attack_compiled"):
        tree = ast.parse((ROOT / "cfjax" / "methods" / f"{mod}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (not node.name.startswith("_") or node.name == "__init__"):
                args = node.args
                names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
                assert not names & set(FIELDS), (mod, node.name, sorted(names & set(FIELDS)))


def test_options_object_and_keywords_give_the_same_attack():
    opts = cfjax.AttackOptions(steps=30, threshold=0.6, schedule="vmap")
    by_kw = atk.attack_batch(decode, logits, Z0, TARGET, steps=30, threshold=0.6, schedule="vmap")
    by_obj = atk.attack_batch(decode, logits, Z0, TARGET, opts)
    np.testing.assert_array_equal(by_obj.z, by_kw.z)
    np.testing.assert_array_equal(by_obj.steps_taken, by_kw.steps_taken)
    # keywords override the object's fields
    over = atk.attack_batch(decode, logits, Z0, TARGET, opts, steps=5)
    assert int(over.steps_taken.max()) <= 5
    one = atk.attack(decode, logits, Z0[0], TARGET[0], options=opts)  # the schedule field is unused for one example
    assert int(one.steps_taken) == int(by_kw.steps_taken[0])
    run = atk.make_attack(decode, logits, opts)
    assert run.options == opts and "steps=30" in repr(run) and "schedule='vmap'" in repr(run)
    np.testing.assert_array_equal(run(Z0, TARGET).steps_taken, by_kw.steps_taken)


def test_options_are_frozen_checked_and_hashable():
    opts = cfjax.AttackOptions(steps=np.int64(7), threshold=np.float32(0.25))
    assert type(opts.steps) is int and type(opts.threshold) is float and opts.threshold == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.steps = 3
    assert hash(opts) == hash(cfjax.AttackOptions(steps=7, threshold=0.25)) and opts == cfjax.AttackOptions(steps=7, threshold=0.25)
    for kw, name in [({"steps": 0}, "steps"), ({"schedule": "fast"}, "schedule"), ({"threshold": 1.5}, "threshold"),
                     ({"optimizer": "lbfgs"}, "optimizer"), ({"learning_rate": -1.0}, "learning_rate"), ({"block": 0}, "block")]:
        with pytest.raises(InputError, match=f"^{name}: expected"):
            cfjax.AttackOptions(**kw)
        with pytest.raises(InputError, match=f"^{name}: expected"):
            dataclasses.replace(cfjax.AttackOptions(), **kw)  # a replaced copy is checked again


def test_bad_options_arguments_are_named():
    with pytest.raises(InputError, match="^options: expected an AttackOptions"):
        atk.attack_batch(decode, logits, Z0, TARGET, {"steps": 3})
    with pytest.raises(InputError, match="^options: expected options of attack: .*got schedule"):
        atk.attack(decode, logits, Z0[0], TARGET[0], steps=3, schedule="vmap")
    with pytest.raises(InputError, match="^options: expected options of attack_batch: .*got stepz"):
        atk.attack_batch(decode, logits, Z0, TARGET, stepz=3)
    with pytest.raises(InputError, match="^project: expected no projection"):
        atk.attack_pixels_batch(logits, jnp.full((2, 4, 4, 1), 0.5), jnp.array([0, 1]), cfjax.AttackOptions(project=lambda x: x))


def test_pixel_defaults_apply_to_keywords_only():
    x0 = jnp.full((2, 4, 4, 1), 0.5)
    run = atk.make_pixel_attack(logits, steps=5)
    assert run.options.learning_rate == 0.01 and run.options.project is not None
    a = atk.attack_pixels_batch(logits, x0, jnp.array([0, 1]), steps=5)
    b = atk.attack_pixels_batch(logits, x0, jnp.array([0, 1]), cfjax.AttackOptions(steps=5, learning_rate=0.01))
    np.testing.assert_array_equal(a.x, b.x)
