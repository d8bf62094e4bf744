"""autoseg-ensemble: average the saved probabilities of several configurations or folds."""

from __future__ import annotations

from collections.abc import Sequence

from autoseg.cli._common import parser
from autoseg.cli.predict import print_report
from autoseg.ensemble import ensemble_folders
from autoseg.errors import run_cli
from autoseg.postprocessing import PostprocessingPlan


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-ensemble", "Average CASE.npz probabilities written by autoseg-predict --save-probabilities "
               "in two or more folders and write CASE.nii.gz segmentations.")
    p.add_argument("-i", "--inputs", nargs="+", required=True, help="folders of CASE.npz (two or more)")
    p.add_argument("-o", "--output", required=True, help="folder for the ensembled CASE.nii.gz")
    p.add_argument("--postprocess", default=None, metavar="FILE", help="postprocessing.json to apply")
    p.add_argument("--save-probabilities", action="store_true", help="also write the averaged CASE.npz")
    args = p.parse_args(argv)
    post = PostprocessingPlan.load(args.postprocess) if args.postprocess else None
    report = ensemble_folders(args.inputs, args.output, post, args.save_probabilities)
    return print_report(report, args.output)


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-ensemble", _main, argv)
