"""Every signature the documentation shows runs (issue 37 item 6).

* the calls in ``cfjax/__init__.py``'s docstring run as written, on tiny models bound to the
  names the docstring uses;
* every ```python block of ``docs/*.md`` runs, or is compiled and skipped with the reason it
  cannot run here quickly (it trains for minutes, or needs a cluster library). docs/byom.md's
  blocks build on each other and run in order in ``tests/test_examples.py``.
"""

import importlib.util
import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfjax as cf

ROOT = Path(__file__).resolve().parent.parent

K, C, D = 3, 4, 8


def _package_block() -> str:
    """The ``::`` code block after "The flat public API" in the package docstring."""
    doc = cf.__doc__
    part = doc.split("The flat public API", 1)[1].split("::\n", 1)[1]
    lines = []
    for line in part.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"


def _tiny_world() -> dict:
    """The names the package docstring uses, bound to tiny single-example models."""
    kW, kA, kx, kz = jax.random.split(jax.random.key(0), 4)
    W = jax.random.normal(kW, (K, C))
    b = jnp.zeros(K)
    A = jax.random.normal(kA, (D, 2 * 2 * C)) * 0.5

    def feature_maps(x):  # x [2, 2, C] -> [F]: the image is its own last map
        return [x]

    def logits(x):  # the classifier: a GAP-linear head on the maps
        return W @ x.mean((0, 1)) + b

    def decode(z):  # z [D] -> x [2, 2, C] in [0, 1]
        return jax.nn.sigmoid(z @ A).reshape(2, 2, C)

    def mirror_decode(F_k, skips, source, target, k):  # the identity "decoder"
        return F_k

    x = jax.random.uniform(kx, (2, 2, C))
    source = int(jnp.argmax(logits(x)))
    z0 = jax.random.normal(kz, (D,))
    data = {"x": np.asarray(jax.random.uniform(kx, (10, 2, 2, C)))}

    def step(acc, batch, mask):  # a streamed sum: the mean pixel of every real row
        return acc + jnp.sum(batch["x"].mean((1, 2, 3)) * mask), None

    return dict(cf=cf, W=W, b=b, feature_maps=feature_maps, logits=logits, decode=decode, mirror_decode=mirror_decode, x=x,
                F=feature_maps(x)[-1], source=source, target=(source + 1) % K, z0=z0, data=data, step=step,
                init=jnp.zeros(()))


def test_package_docstring_calls_run():
    block = _package_block()
    calls = re.findall(r"\bcf\.(\w+)\(", block)
    assert {"attack", "mirror_cfe", "reflect", "explain_dataset"} <= set(calls), calls
    ns = _tiny_world()
    exec(compile(block, "cfjax/__init__.py docstring", "exec"), ns)  # noqa: S102 - the documentation's own code
    assert isinstance(ns["r"], cf.AttackResult) and ns["r"].x.shape == (2, 2, C)
    assert isinstance(ns["m"], cf.MirrorResult) and ns["m"].x_path.shape[1:] == (2, 2, C)
    assert isinstance(ns["f"], cf.ReflectResult) and bool(ns["f"].converged)
    np.testing.assert_allclose(float(ns["acc"]), float(ns["data"]["x"].mean((1, 2, 3)).sum()), rtol=1e-5)


def test_every_call_in_the_package_docstring_binds_to_its_signature():
    """Outside the example block too: each ``cf.name(...)`` the docstring shows names a public
    function and its arguments bind (no runs: the signature alone)."""
    for m in re.finditer(r"\bcf\.(\w+)\(([^()]*)\)", cf.__doc__):
        name, args = m.groups()
        fn = getattr(cf, name)
        pos, kw = [], {}
        for a in (a.strip() for a in args.split(",") if a.strip()):
            if "=" in a:
                kw[a.split("=", 1)[0].strip()] = None
            else:
                pos.append(None)
        inspect.signature(fn).bind(*pos, **kw)  # TypeError when the docstring is wrong


def _doc_blocks():
    out = []
    for f in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", f.read_text(), flags=re.S)):
            out.append(pytest.param(f.name, i, block, id=f"{f.stem}-{i}"))
    return out


# blocks that cannot run here quickly: (file, reason); every other block runs
SKIP = {
    "byom.md": "its blocks build on each other (and one trains a classifier and a decoder for minutes): "
               "tests/test_examples.py::test_byom_doc_code_runs runs them in order in one namespace",
    "scale.md": "starts a Ray cluster and runs two smoke global attacks plus a merge (minutes; ray is not a dependency)",
}


@pytest.mark.parametrize("name, i, block", _doc_blocks())
def test_docs_python_blocks_run(name, i, block):
    code = compile(block, f"docs/{name} block {i}", "exec")  # every block is at least valid Python
    if name in SKIP:
        if name == "byom.md":
            import test_examples

            assert callable(test_examples.test_byom_doc_code_runs)
        pytest.skip(SKIP[name])
    for mod in re.findall(r"^\s*(?:import|from) (\w+)", block, flags=re.M):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod}")
    exec(code, {"__name__": f"docs_{name}_{i}"})  # noqa: S102 - the documentation's own code


def test_mirror_docs_name_the_real_defaults():
    """docs/mirror_cfe.md and ``reflection_target``'s docstring once called T = 5, weight averaging
    and the mirrored path the defaults (issue 34); the defaults are the paper's: T = 1, no
    averaging, the ``keep`` path. A sentence or heading that calls one of the robust preset's
    settings (or T = 5) the default is refused."""
    from cfjax.methods import mirror as mr
    from cfjax.training.mirror_decoder import MirrorDecoderConfig

    cfg = MirrorDecoderConfig()
    assert (cfg.cls_temperature, cfg.ema_decay, cfg.reflect_others) == (1.0, 0.0, "keep")
    text = (ROOT / "docs" / "mirror_cfe.md").read_text() + "\n" + mr.reflection_target.__doc__
    stale = [
        r"A (second )?default that is not in the paper",
        r"Weight averaging \(default\)",
        r"default `reflect_others=\"mirror\"`",
        r"`mirror` \(default\)",
        r"5 \(default",
        r"the default T = 5",
        r"default path of cfjax's decoders",
        r"the default path since",
    ]
    hits = [p for p in stale if re.search(p, text)]
    assert not hits, hits
