"""The package's layering: no module imports one of a later stage (parsed imports, no execution).

Every module of ``autoseg`` belongs to a unit: a top-level module or a subpackage. A unit may import
itself and the units listed before it in ``ORDER``. A new import of a later unit (an upward edge, the
start of a cycle) fails here; moving a unit in ``ORDER`` is a design decision, made in review.
Deferred imports inside functions count too: they hide a cycle, they do not remove it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import autoseg

PACKAGE = Path(autoseg.__file__).resolve().parent

ORDER = [
    # foundations, used by every stage
    "errors", "io", "precision", "paths", "parallel", "locks", "provenance", "orientation", "boxes", "report", "visualize",
    "synthetic", "synthetic_ct", "dataset", "brats",
    # raw data in, checked
    "raw_writer", "convert", "dicom", "slices", "verify",
    # the plan contract, read by every stage after planning, and the checkpoint that carries it
    "plans", "context", "cascade", "checkpoint", "recipes",
    # the network registry: the planner sizes patch and batch with a network's memory estimate
    "network",
    # the stages, in the order the user's path runs them
    "fingerprint", "planning", "preprocessing", "data", "postprocessing", "input_forms", "inference", "ensemble",
    "evaluation", "training",
    # choosing the model to predict with, on the cross-validation of the trained folds
    "selection",
    # sharing trained models (export and import of fold folders)
    "packaging", "deployment",
    # orchestration: the demo runs the whole path, the CLI parses arguments and calls a stage
    "demo", "demo_stroke", "cli",
]


def unit_of(module: str) -> str:
    """``autoseg.planning.stage`` -> ``planning``; ``autoseg`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every ``autoseg`` import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
    return [(line, m) for line, m in found if m == "autoseg" or m.startswith("autoseg.")]


def upward_edges() -> list[str]:
    rank = {u: i for i, u in enumerate(ORDER)}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = unit_of(module_name(path))
        if src not in rank:   # the package itself, or a unit not yet placed (the test above names it)
            continue
        for line, target in imported_modules(path):
            dst = unit_of(target)
            if dst in rank and dst != src and rank[dst] > rank[src]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({src}) imports {target} ({dst}, a later stage)")
    return bad


def test_every_unit_has_a_place_in_the_order() -> None:
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {""}
    assert units - set(ORDER) == set(), "add the new module to ORDER in tests/test_layers.py"
    assert len(ORDER) == len(set(ORDER))


def test_no_module_imports_a_later_stage() -> None:
    assert upward_edges() == []


def test_the_check_sees_an_upward_edge(tmp_path, monkeypatch) -> None:
    """The checker itself: a planning module that imports training is reported, with file and line."""
    fake = tmp_path / "autoseg"
    (fake / "planning").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "planning" / "__init__.py").write_text("")
    (fake / "planning" / "bad.py").write_text("import os\n\n\ndef f():\n    from autoseg.training import losses\n")
    (fake / "planning" / "ok.py").write_text("from autoseg.plans import Plans\nfrom .bad import f\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_edges() == ["autoseg/planning/bad.py:5 (planning) imports autoseg.training (training, a later stage)"]
