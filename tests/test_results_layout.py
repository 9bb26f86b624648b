"""The layout of experiments/results/ (issue 35 item 7): every results path that README.md,
BUILD_NOTES.md and docs/*.md cite exists, and every folder there says in a README.md which
command made its files."""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
DOCS = [ROOT / "README.md", ROOT / "BUILD_NOTES.md", *sorted((ROOT / "docs").glob("*.md"))]

# Written by their own studies while this layout was made; they keep their own checks.
OTHERS = ("planted", "scale", "reference_models.json")

CITED = re.compile(r"experiments/results/[^\s`'\"()\[\]]*")


def _expand_braces(path: str) -> list[str]:
    """``a_{x,y}_b`` -> ``a_x_b``, ``a_y_b`` (every brace group, as a shell would)."""
    parts = re.split(r"(\{[^{}]*\})", path)
    options = [p[1:-1].split(",") if p.startswith("{") and p.endswith("}") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*options)]


def _cited() -> dict[str, list[str]]:
    """Each cited path (with the files citing it), trailing punctuation removed."""
    out: dict[str, list[str]] = {}
    for doc in DOCS:
        for m in CITED.finditer(doc.read_text(encoding="utf-8")):
            path = m.group(0).rstrip(".,;:")
            out.setdefault(path, []).append(doc.name)
    return out


def _resolves(path: str) -> bool:
    """True when ``path`` names something that exists: a file or folder, a glob (``*``, and
    ``<placeholder>`` read as ``*``) matching at least one, or an output prefix such as
    ``--out experiments/results/mirror_presets/pareto`` (``prefix.*`` exists)."""
    pattern = re.sub(r"<[^<>/]*>", "*", path)
    full = str(ROOT / pattern)
    if any(ch in pattern for ch in "*?"):
        return bool(glob.glob(full))
    return Path(full).exists() or bool(glob.glob(glob.escape(full) + ".*"))


def _is_others(path: str) -> bool:
    rel = path.removeprefix("experiments/results/")
    return any(rel == o or rel.startswith(o + "/") for o in OTHERS)


def test_docs_cite_results_paths():
    """The regex finds the citations at all (a guard against the test passing vacuously)."""
    cited = _cited()
    assert len(cited) >= 20, sorted(cited)


def test_every_cited_results_path_exists():
    missing = []
    for path, docs in sorted(_cited().items()):
        if _is_others(path):
            continue
        for one in _expand_braces(path):
            if not _resolves(one):
                missing.append(f"{one} (cited in {', '.join(sorted(set(docs)))})")
    assert not missing, "cited results paths that do not exist:\n" + "\n".join(missing)


def test_every_results_folder_has_a_readme():
    folders = [RESULTS, *sorted(p for p in RESULTS.rglob("*") if p.is_dir())]
    lacking = [
        str(f.relative_to(ROOT)) for f in folders
        if not _is_others(str(f.relative_to(ROOT)).replace("\\", "/")) and not (f / "README.md").is_file()
    ]
    assert not lacking, "results folders without a README.md: " + ", ".join(lacking)


def test_no_loose_run_code_names_in_mirror_ablation():
    """mirror_ablation/ holds only its README and the rows/, figures/, diagnosis/ folders, whose
    files are named after their settings (the old run codes are mapped in its README)."""
    top = sorted(p.name for p in (RESULTS / "mirror_ablation").iterdir())
    assert top == ["README.md", "diagnosis", "figures", "rows"], top
    old = re.compile(r"^(abl_|diagnosis_fm_)|_(ema999|othmirror|temp\d)")
    bad = [p.name for p in (RESULTS / "mirror_ablation").rglob("*") if p.is_file() and old.search(p.name)]
    assert not bad, bad
