"""Reference plans: what the planner makes of a BraTS-like fingerprint for every VRAM class.

``plans/reference/brats_<N>gb.json`` and ``plans/presets/<N>gb.json`` (in the source tree, next to
the package) are reviewed copies; the tests fail when the planner's output or the presets drift
from them, so a change of planning policy shows up as a diff. Regenerate after an intended change::

    python -m autoseg.planning.reference --update      # rewrite the files
    python -m autoseg.planning.reference               # only check; exit 1 listing what differs
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autoseg.brats import dataset_json_for
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.fingerprint import Fingerprint
from autoseg.io import read_json, write_json_atomic
from autoseg.planning.planner import plan_dataset
from autoseg.planning.presets import PRESETS
from autoseg.plans import Plans

PLANS_DIR = Path(__file__).resolve().parents[2] / "plans"


def plans_dir(root: str | Path | None = None) -> Path:
    """The top-level ``plans/`` folder of a source checkout (absent from a non-editable install)."""
    d = Path(root) if root is not None else PLANS_DIR
    if not (d / "reference" / "brats_fingerprint.json").is_file():
        raise fail(d, "no plans/reference/brats_fingerprint.json here", "run this from a source checkout of autoseg")
    return d


def reference_plans(root: str | Path | None = None) -> dict[str, Plans]:
    """Plan the reference BraTS fingerprint for every preset class: ``{"brats_8gb": Plans, ...}``."""
    d = plans_dir(root)
    fp = Fingerprint.load(d / "reference" / "brats_fingerprint.json")
    info = DatasetInfo.from_dict(dataset_json_for("brats2020", fp.num_training, "BraTS"))
    return {f"brats_{p.name}": plan_dataset(fp, info, p.vram_gb, f"reference preset {p.name}") for p in PRESETS}


def expected_files(root: str | Path | None = None) -> dict[Path, Any]:
    """Every reference file and the content it should have."""
    d = plans_dir(root)
    files: dict[Path, Any] = {d / "presets" / f"{p.name}.json": p.to_dict() for p in PRESETS}
    files.update({d / "reference" / f"{name}.json": plans.to_dict() for name, plans in reference_plans(d).items()})
    return files


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def differences(root: str | Path | None = None) -> list[str]:
    """Files that are missing or whose content differs from what the code produces now."""
    out = []
    for path, content in expected_files(root).items():
        if not path.is_file():
            out.append(f"{path}: missing")
        elif read_json(path) != _canonical(content):
            out.append(f"{path}: differs from what the planner produces now")
    return out


def update(root: str | Path | None = None) -> list[Path]:
    """Rewrite every reference file that differs; returns the ones written."""
    written = []
    for path, content in expected_files(root).items():
        if not path.is_file() or read_json(path) != _canonical(content):
            write_json_atomic(path, content)
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autoseg.planning.reference",
                                description="Check (or --update) plans/presets and plans/reference against the planner.")
    p.add_argument("--update", action="store_true", help="rewrite the files that differ")
    p.add_argument("--root", default=None, help="the plans/ folder (default: the one next to the package)")
    args = p.parse_args(argv)
    if args.update:
        for path in update(args.root):
            print(f"wrote {path}")
        return 0
    diffs = differences(args.root)
    for line in diffs:
        print(line)
    if diffs:
        print("run: python -m autoseg.planning.reference --update (after checking the change is intended)")
    return 1 if diffs else 0


if __name__ == "__main__":
    from autoseg.errors import run_cli

    run_cli("autoseg.planning.reference", main)
