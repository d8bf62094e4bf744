"""autoseg-evaluate: Dice, HD95, sensitivity and specificity of predicted segmentations against references;
optionally normalised surface Dice and the BraTS 2023 lesion-wise Dice and HD95. With --crossval: a trained
configuration's folds, validated in the raw images' space, merged into one cross-validation summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from autoseg.cli._common import add_dataset, dataset_paths, number, parser, workers_arg
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError, fail, run_cli
from autoseg.evaluation.calibration import summary_lines
from autoseg.evaluation.evaluate import EvalCase, brats_info_for, endings_for, evaluate_folder, find_eval_cases
from autoseg.evaluation.lesions import LesionSettings
from autoseg.input_forms import nifti_for_evaluation
from autoseg.io import read_image
from autoseg.paths import run_folder_name
from autoseg.postprocessing import determine_postprocessing
from autoseg.recipes import recipe_name


def resolve_info(args: argparse.Namespace) -> DatasetInfo:
    """dataset.json from --dataset-json, else -d, else BraTS names in the reference folder, else the only dataset."""
    if args.dataset_json:
        return DatasetInfo.load(args.dataset_json)
    if args.dataset is None and (info := brats_info_for(args.ref)) is not None:
        return info
    try:
        return DatasetInfo.load(dataset_paths(args).dataset_json)
    except AutosegError as e:
        raise fail(args.ref, f"cannot tell which labels/regions to evaluate ({e})",
                   "give -d NUMBER or --dataset-json FILE") from None


def _pairs(cases: list[EvalCase]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for c in cases:
        yield read_image(c.pred)[0], read_image(c.ref)[0]


def _mean_line(name: str, m: dict[str, float]) -> str:
    line = (f"{name:>18}: Dice {m['dice']:.4f}  HD95 {m['hd95']:.2f} mm  sens {m['sensitivity']:.4f}  "
            f"spec {m['specificity']:.4f}")
    if "nsd" in m:
        line += f"  NSD {m['nsd']:.4f}"
    if "lesion_dice" in m:
        line += f"  lesion-wise Dice {m['lesion_dice']:.4f}  HD95 {m['lesion_hd95']:.2f} mm"
    return line


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-evaluate", "Score CASE.nii.gz predictions against references (CASE.nii.gz or BraTS case "
               "folders): per-case metrics.csv and summary.json (mean, median, std).")
    p.add_argument("-p", "--pred", default=None,
                   help="(required unless --crossval) folder of predicted CASE.nii.gz (or the dataset's file ending, "
                        ".nii, .mha, .mhd, .nrrd), "
                        "or of PNG/TIFF masks as autoseg-predict writes them for PNG/TIFF input")
    p.add_argument("-r", "--ref", default=None,
                   help="(required unless --crossval) folder of reference CASE.nii.gz (same endings), BraTS case "
                        "folders, or PNG/TIFF masks "
                        "(PATIENT/001.png ... or CASE.png; grey values as dataset.json's autoseg_mask_values)")
    add_dataset(p)
    p.add_argument("--dataset-json", default=None, help="dataset.json declaring labels/regions (instead of -d)")
    p.add_argument("-o", "--output", default=None, help="folder for metrics.csv and summary.json (default: -p)")
    p.add_argument("-np", "--workers", type=workers_arg(), default=1, help="worker processes")
    p.add_argument("--png", action="store_true", help="also write prediction-vs-reference overlays (overlays/)")
    p.add_argument("--report", action="store_true", help="also write report.html with tables and overlays")
    p.add_argument("--lesion-wise", action="store_true",
                   help="also the BraTS 2023 lesion-wise Dice and HD95 of each declared label/region, and NSD")
    p.add_argument("--nsd-tolerance", type=number(float, "--nsd-tolerance 1", low=0.0), default=None, metavar="MM",
                   help="normalised surface Dice at this tolerance in mm (default 1 with --lesion-wise, else off)")
    p.add_argument("--lesion-dilation", type=number(int, "--lesion-dilation 3", low=0), default=3, metavar="N",
                   help="lesion matching dilation in voxels (BraTS 2023 GLI/SSA/PED: 3, the default; MEN, MET: 1)")
    p.add_argument("--lesion-min-volume", type=number(float, "--lesion-min-volume 50", low=0.0), default=50.0,
                   metavar="MM3", help="reference lesions of at most this volume are not scored "
                   "(BraTS 2023 GLI/SSA/PED/MEN: 50, the default; MET: 2)")
    p.add_argument("--calibration", action="store_true",
                   help="also the expected calibration error and a reliability diagram per label/region, from the "
                        "probability files PRED/CASE.npz that autoseg-predict writes when asked to save probabilities")
    p.add_argument("--uncertainty", action="store_true",
                   help="also how the per-case score of autoseg-predict --uncertainty ranks the cases (Spearman "
                        "with Dice per label/region)")
    p.add_argument("--determine-postprocessing", default=None, metavar="FILE",
                   help="on cross-validation predictions: decide largest-component postprocessing, save it to FILE")
    p.add_argument("--crossval", action="store_true",
                   help="instead of -p/-r: merge the raw-space validation of every fold of -c CONFIG [--recipe R] "
                        "(fold_N/validation_raw) into results/DATASET/[RECIPE__]CONFIG/crossval/; names missing folds")
    p.add_argument("-c", "--configuration", default=None, help="with --crossval: the trained configuration")
    p.add_argument("--recipe", default=None, metavar="NAME|FILE.json",
                   help="with --crossval: the recipe the folds were trained with (default nnunet)")
    args = p.parse_args(argv)
    if args.crossval:
        if args.configuration is None or args.pred is not None or args.ref is not None:
            p.error("--crossval takes -c CONFIG (and --recipe), not -p/-r; e.g. autoseg-evaluate --crossval -d 1 "
                    "-c 3d_fullres")
        return _crossval(args)
    if args.pred is None or args.ref is None:
        p.error("-p PRED and -r REF are required (or --crossval -c CONFIG)")
    info = resolve_info(args)
    lesions = LesionSettings(args.lesion_dilation, args.lesion_min_volume) if args.lesion_wise else None
    nsd_tolerance = args.nsd_tolerance if args.nsd_tolerance is not None else (1.0 if args.lesion_wise else None)
    with nifti_for_evaluation(args.pred, args.ref, info) as (pred, ref):   # PNG/TIFF masks: as label NIfTI
        result = evaluate_folder(pred, ref, info, args.output or args.pred, args.workers, args.png, args.report,
                                 nsd_tolerance=nsd_tolerance, lesions=lesions, calibration=args.calibration,
                                 uncertainty=args.uncertainty)
    for line in result.failed:
        print(f"failed: {line}", file=sys.stderr)
    out = Path(args.output or args.pred)
    if not result.per_case:
        raise fail(args.pred, f"none of the {len(result.failed)} case(s) could be evaluated (see the lines above)",
                   f"fix them and rerun; nothing was written to {out}")
    for name, m in result.summary["mean"].items():
        print(_mean_line(name, m))
    for line in summary_lines(result.summary):
        print(line)
    print(f"{result.summary['num_cases']} case(s) evaluated -> {out / 'summary.json'}", file=sys.stderr)
    if args.determine_postprocessing:
        cases = [c for c in find_eval_cases(args.pred, args.ref, endings_for(info))[0] if c.case_id in result.per_case]
        plan = determine_postprocessing(_pairs(cases), info, len(cases))
        plan.save(args.determine_postprocessing)
        steps = (["foreground"] if plan.foreground_largest_component else []) + list(plan.largest_component)
        print(f"postprocessing: keep the largest component of {', '.join(steps) or 'nothing (no gain)'} "
              f"-> {args.determine_postprocessing}", file=sys.stderr)
    return 2 if result.failed else 0


def _crossval(args: argparse.Namespace) -> int:
    """Merge the folds; print the means and each missing fold; exit 2 while folds are missing."""
    from autoseg.selection import CROSSVAL, crossval   # (the trainer's modules: loaded for --crossval only)
    paths = dataset_paths(args)
    folder = run_folder_name(args.configuration, recipe_name(args.recipe))
    result = crossval(paths, folder)
    for line in result.missing:
        print(f"missing: {line}", file=sys.stderr)
    if not result.summary:
        raise fail(paths.results / folder, "no fold has a raw-space validation yet (see the lines above)",
                   "train the folds, or rerun autoseg-train for finished ones (they are then only validated)")
    for name, m in result.summary["mean"].items():
        print(_mean_line(name, m))
    print(f"{result.summary['num_cases']} case(s) of fold(s) {', '.join(map(str, result.fold_dirs))} -> "
          f"{paths.results / folder / CROSSVAL / 'summary.json'}", file=sys.stderr)
    return 2 if result.missing else 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-evaluate", _main, argv)
