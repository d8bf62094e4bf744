"""autoseg-import: add a model written by autoseg-export to a data root (then autoseg-predict -d N works)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_home, parser
from autoseg.errors import run_cli
from autoseg.packaging import import_model
from autoseg.paths import data_root


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-import", "Add a model (the .zip of autoseg-export, or its unpacked folder) to a data root: "
               "its folds under results/, its plan and dataset.json under preprocessed/. Nothing is overwritten; "
               "importing the same model twice changes nothing.")
    p.add_argument("model", type=Path, help="MODEL.zip or its unpacked folder")
    add_home(p)
    args = p.parse_args(argv)
    report = import_model(args.model, data_root(args.home))
    folds = "; ".join(f"{t.describe()} folds {' '.join(t.folds)}" for t in report.manifest.models)
    number = int(report.paths.name[7:10])
    print(f"autoseg-import: {report.paths.name}: {folds}; {len(report.written)} file(s) written, "
          f"{len(report.unchanged)} already there. Predict with: autoseg-predict -d {number} -i IN -o OUT")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-import", _main, argv)
