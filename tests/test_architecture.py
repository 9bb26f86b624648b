"""The shape of the package: layers without back-edges, no import circle (inside a layer
either), no shadowed submodules, nothing cited from outside the repository, and argument checks
before any work."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "cfjax"

# rank of each part: a module may import only modules of a rank <= its own. methods and eval
# share a rank: neither imports the other (eval needs only the utilities), so neither is above.
# Inside a rank imports are allowed, circles are not (test_no_import_circle).
LAYERS = {
    "cfjax.errors": 0, "cfjax._checks": 0, "cfjax.io": 0, "cfjax.checkpoint": 0, "cfjax.flops": 0, "cfjax.reduce": 0,
    "cfjax.placement": 0, "cfjax.parallel": 0, "cfjax.progress": 0,
    "cfjax.data": 1, "cfjax.models": 2, "cfjax.interop": 2, "cfjax.methods": 3, "cfjax.eval": 3, "cfjax.training": 5, "cfjax.jobs": 6, "cfjax.cli": 7,
    "cfjax.__main__": 8,
}


def _layer(mod: str) -> int | None:
    best = None
    for prefix, rank in LAYERS.items():
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def _modules():
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), f


def _imports(f: Path, mod: str) -> set[str]:
    """Every cfjax module a file imports, at any depth (function-local imports included)."""
    out = set()
    is_pkg = f.name == "__init__.py"
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cfjax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if base.startswith("cfjax"):
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names if (PKG.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                        or (PKG.parent / f"{base}.{a.name}".replace(".", "/")).is_dir()}
    return out


def test_every_module_has_a_layer():
    missing = [m for m, _ in _modules() if m != "cfjax" and _layer(m) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_no_import_goes_up_a_layer():
    """data -> models -> methods -> eval -> training -> jobs -> cli, never backwards (the
    package ``cfjax/__init__`` re-exports from the lower layers and loads upper ones lazily)."""
    bad = []
    for mod, f in _modules():
        if mod == "cfjax":
            continue
        mine = _layer(mod)
        for imp in _imports(f, mod):
            theirs = _layer(imp)
            if theirs is not None and theirs > mine:
                bad.append(f"{mod} (layer {mine}) imports {imp} (layer {theirs})")
    assert not bad, "\n".join(bad)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the cfjax modules it imports (function-local imports included). An import of a
    module's own parent package is left out: loading a submodule loads its parents first, so
    that edge is Python's, not the code's."""
    mods = dict(_modules())
    graph = {}
    for mod, f in mods.items():
        graph[mod] = {i for i in _imports(f, mod) if i in mods and i != mod and not mod.startswith(i + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_circle_finder_finds_a_circle_inside_a_layer():
    g = {"cfjax.methods.a": {"cfjax.methods.b"}, "cfjax.methods.b": {"cfjax.methods.c"}, "cfjax.methods.c": {"cfjax.methods.a"},
         "cfjax.methods.d": {"cfjax.methods.a"}, "cfjax.errors": set()}
    assert _circles(g) == [["cfjax.methods.a", "cfjax.methods.b", "cfjax.methods.c"]]
    assert _circles({"cfjax.methods.a": {"cfjax.methods.b"}, "cfjax.methods.b": set()}) == []


def test_no_import_circle():
    """No two cfjax modules import each other, directly or through others, at any depth (a
    function-local import counts: it only hides the circle), inside a layer too."""
    circles = _circles(_import_graph())
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_methods_and_eval_rank_by_their_imports():
    """One of ``methods``/``eval`` is ranked above the other only if it imports the other."""
    graph = _import_graph()

    def imports(upper: str, lower: str) -> bool:
        return any(i == lower or i.startswith(lower + ".") for m in graph if m == upper or m.startswith(upper + ".") for i in graph[m])

    for upper, lower in (("cfjax.eval", "cfjax.methods"), ("cfjax.methods", "cfjax.eval")):
        if LAYERS[upper] > LAYERS[lower]:
            assert imports(upper, lower), f"{upper} is ranked above {lower} but imports nothing from it"


@pytest.mark.parametrize("path", ["cfjax/_checks.py", "cfjax/data/medmnist.py", "cfjax/methods/mirror_checks.py"])
def test_no_dead_public_names(path):
    """Every public top-level function and constant of these modules is used somewhere in cfjax
    besides its own definition (dead checks and tables go rather than wait for a caller)."""
    import re

    tree = ast.parse((ROOT / path).read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
    names += [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name) and not t.id.startswith("_") and t.id != "__all__"]
    text = re.sub(r"__all__ = \[.*?\]", "", "\n".join(f.read_text() for f in PKG.rglob("*.py")), flags=re.S)  # a listing is no use
    dead = [n for n in names if len(re.findall(rf"\b{n}\b", text)) < 2]
    assert not dead, f"{path}: defined but never used in cfjax: {dead}"


# files still importing cfjax.errors inside functions; shrink this set, never grow it
LOCAL_ERRORS_IMPORTS_LEFT: set[str] = set()


def test_errors_are_imported_at_module_top():
    """``from cfjax.errors import ...`` inside a function hides the import graph for no gain
    (errors is a leaf module: importing it at the top costs nothing and closes no circle)."""
    bad = []
    for mod, f in _modules():
        rel = str(f.relative_to(ROOT))
        if rel in LOCAL_ERRORS_IMPORTS_LEFT:
            continue
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.module == "cfjax.errors":
                        bad.append(f"{rel}:{node.lineno} (in {fn.name})")
    assert not bad, "function-local cfjax.errors imports: " + ", ".join(sorted(set(bad)))


def _loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(__import__('json').dumps(sorted(m for m in sys.modules if m.startswith('cfjax'))))"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "stmt, forbidden",
    [
        ("import cfjax", ("cfjax.training", "cfjax.jobs", "cfjax.cli")),
        ("import cfjax.methods.mirror", ("cfjax.training", "cfjax.jobs", "cfjax.cli")),
        ("import cfjax.eval.evaluators", ("cfjax.training", "cfjax.jobs", "cfjax.cli")),
        ("import cfjax.training.mirror_decoder", ("cfjax.jobs", "cfjax.cli")),
        ("import cfjax.jobs.attack, cfjax.jobs.mirror", ("cfjax.cli",)),
    ],
)
def test_fresh_interpreter_loads_no_upper_layer(stmt, forbidden):
    loaded = _loaded_after(stmt)
    hit = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
    assert not hit, f"{stmt!r} loaded {hit}"


def test_no_public_submodule_is_shadowed():
    import importlib

    import cfjax

    for mod, f in _modules():
        if mod.count(".") < 1 or mod.split(".")[-1].startswith("_"):
            continue
        parent, name = mod.rsplit(".", 1)
        m = importlib.import_module(mod)
        attr = getattr(importlib.import_module(parent), name, m)
        assert attr is m, f"{parent}.{name} is {type(attr).__name__}, not the submodule {mod}"
    import cfjax.methods.attack as A  # the module, not the function cfjax.attack

    assert A.cpu_friendly is not None and callable(cfjax.attack) and callable(cfjax.mirror_cfe)
    assert cfjax.MirrorDecoder is not None and cfjax.Evaluator is not None and callable(cfjax.train_mirror_decoder)


def test_nothing_refers_to_files_outside_the_repo():
    hits = []
    for f in [*PKG.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "experiments").glob("*.py"), *ROOT.glob("*.md"),
              *(ROOT / "docs").rglob("*.md")]:
        if f.name == "test_architecture.py":
            continue
        text = f.read_text()
        # the needles are spelled in pieces so this test does not itself cite the outside files
        for needle in ("DESIGN" + ".md", ".." + "/shared", "shared" + "/DESIGN"):
            if needle in text:
                hits.append(f"{f.relative_to(ROOT)}: {needle}")
    assert not hits, hits


def test_mirror_source_equal_target_exits_2_fast_and_writes_nothing(tmp_path):
    """Measured as the child's CPU time (user + sys), which a busy machine does not inflate the
    way it inflates wall time; the issue's budget is 5 s (measured ~3 s on an idle 2-core box)."""
    import resource

    out = tmp_path / "X"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([sys.executable, "-m", "cfjax", "explain", "--method", "mirror", "--data", "mnist5k", "--source", "3", "--target", "3",
                        "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert r.returncode == 2, r.stderr
    assert "target" in r.stderr and "expected" in r.stderr
    assert not out.exists()
    assert cpu < 5.0, cpu


@pytest.mark.parametrize(
    "argv, name",
    [
        (["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "12"], "target"),
        (["global", "mirror", "--data", "mnist5k", "--pairs", "3,3"], "pairs"),
        (["global", "mirror", "--data", "imagenet"], "data"),
        (["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--k-step", "0.3"], "k_step"),
        (["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--chunk-size", "0"], "--batch-size"),  # --chunk-size is an alias
        (["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--cf-threshold", "1.2"], "cf_threshold"),
        (["explain", "attack", "--data", "mnist5k", "--threshold", "1.5"], "threshold"),
        (["global", "attack", "--data", "mnist5k", "--targets", "10"], "targets"),
        (["train", "mirror-decoder", "--data", "mnist5k", "--pair", "3,3"], "--pair"),
        (["explain", "attack", "--data", "mnist5k", "--lpips-weights", "/nonexistent.ckpt"], "--lpips-weights"),
        (["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--inception-weights", "/nonexistent.pth"], "inception_weights"),
    ],
)
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, argv, name):
    from cfjax.cli import main

    out = tmp_path / "o"
    t0 = time.process_time()
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert name in err and "expected" in err, err
    assert not out.exists()  # nothing written: the check ran before the output folder was made
    assert time.process_time() - t0 < 5.0  # CPU seconds: no data was loaded, nothing trained


def test_old_and_new_cli_spellings_parse_the_same():
    from cfjax.cli import _rewrite_aliases

    assert _rewrite_aliases(["explain", "--method", "mirror", "--source", "3"]) == ["explain", "mirror", "--source", "3"]
    assert _rewrite_aliases(["explain", "--data", "x"]) == ["explain", "attack", "--data", "x"]
    assert _rewrite_aliases(["--debug-nans", "global", "--method=mirror"]) == ["--debug-nans", "global", "mirror"]
    assert _rewrite_aliases(["mirror", "--source", "3"]) == ["explain", "mirror", "--source", "3"]
    assert _rewrite_aliases(["train-mirror-decoder", "--data", "x"]) == ["train", "mirror-decoder", "--data", "x"]
    assert _rewrite_aliases(["explain", "attack", "--data", "x"]) == ["explain", "attack", "--data", "x"]


def test_reflect_others_flag_reaches_the_decoder_config():
    """``--reflect-others mirror`` sets the decoder's path to cfjax's mirrored one (the job walks it
    too); absent, the preset's: ``keep`` (the paper's, default preset) or ``mirror`` (``--preset robust``)."""
    from cfjax.cli import build_parser, mirror_config

    p = build_parser()
    a = p.parse_args(["explain", "mirror", "--data", "mnist5k", "--source", "3", "--target", "8", "--out", "o", "--reflect-others", "mirror"])
    assert mirror_config(a).decoder.reflect_others == "mirror" and mirror_config(a).preset == "paper"
    a = p.parse_args(["global", "mirror", "--data", "mnist5k", "--out", "o"])
    assert mirror_config(a).decoder.reflect_others == "keep" and mirror_config(a).preset == "paper"
    a = p.parse_args(["global", "mirror", "--data", "mnist5k", "--out", "o", "--preset", "robust"])
    assert mirror_config(a).decoder.reflect_others == "mirror" and mirror_config(a).preset == "robust"
    a = p.parse_args(["train", "mirror-decoder", "--data", "mnist5k", "--out", "o", "--preset", "robust", "--reflect-others", "keep"])
    assert a.preset == "robust" and a.reflect_others == "keep"
    with pytest.raises(SystemExit):
        p.parse_args(["train", "mirror-decoder", "--data", "mnist5k", "--out", "o", "--reflect-others", "lower"])
