"""autoseg-predict: segment new cases with trained folds (sliding window, mirroring TTA, fold ensemble)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch

from autoseg.cli._common import THREADS, add_dataset, dataset_paths, fold_arg, number, parser, shard_arg
from autoseg.errors import run_cli
from autoseg.inference.cascade import predictor_for
from autoseg.inference.predictor import CHECKPOINTS, PredictionReport, channel_indices, predict_folder
from autoseg.postprocessing import PostprocessingPlan
from autoseg.precision import PRECISIONS
from autoseg.provenance import stale_summary
from autoseg.recipes import recipe_name


def print_report(report: PredictionReport, out: str) -> int:
    """Summary line on stderr (with how many of the written cases were stale and why), one line per failed case;
    exit code 2 if any case failed."""
    for line in report.failed:
        print(f"failed: {line}", file=sys.stderr)
    stale = stale_summary({c: why for c, why in report.stale.items() if c in report.written})
    written = f"{len(report.written)} written" + (f" ({stale})" if stale else "")
    print(f"{written}, {len(report.skipped)} already done, {len(report.failed)} failed -> {out}", file=sys.stderr)
    return 2 if report.failed else 0


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-predict", "Segment every case of a folder (raw layout CASE_0000.nii.gz ... or BraTS case "
               "folders) with the trained folds; outputs keep each input's geometry and label convention.")
    p.add_argument("-i", "--input", required=True, help="folder of cases to predict")
    p.add_argument("-o", "--output", required=True, help="folder for CASE.nii.gz (and CASE.npz)")
    add_dataset(p)
    p.add_argument("-c", "--configuration", default=None,
                   help="trained configuration (default: the plan's, 3d_fullres or the only one planned such as 2d; "
                        "with --model, the model's only one)")
    p.add_argument("-f", "--folds", nargs="+", type=fold_arg, default=None,
                   help="folds to average (0 1 2 3 4, or all); default: every trained fold_N (fold_all if none)")
    p.add_argument("--recipe", default=None, metavar="NAME|FILE.json",
                   help="the recipe the folds were trained with (default nnunet); everything else is read from their "
                        "checkpoints")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default=None,
                   help="which checkpoint of each fold (default: final; with --model, the one it holds)")
    p.add_argument("--model", default=None, metavar="ZIP|DIR",
                   help="predict with a model written by autoseg-export (the .zip or its unpacked folder) instead of "
                        "a data root's folds; its postprocessing.json is applied unless --no-postprocess")
    p.add_argument("--no-postprocess", action="store_true", help="with --model: skip the model's postprocessing")
    p.add_argument("--no-tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    p.add_argument("--step", type=number(float, "--step 0.5", above=0.0, high=1.0), default=0.5,
                   help="window step as a fraction of the patch (0.5 = half overlap)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic: auto = bf16 on CPUs that support it, fp16 on CUDA, else fp32")
    p.add_argument("--batch-size", type=number(int, "--batch-size 2", low=1), default=1,
                   help="windows per forward pass")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks: ~1.6x less CPU time per window after a one-off compile "
                        "(about 1-2 min, cached on disk); worth it for TTA or many cases")
    p.add_argument("--save-probabilities", action="store_true", help="also write CASE.npz for autoseg-ensemble")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write per-voxel entropy and ensemble-variance maps (folds x mirrorings) and a per-case "
                        "score to OUT/uncertainty/")
    p.add_argument("--missing", nargs="+", default=(), metavar="CHANNEL",
                   help="predict without these channels (names from dataset.json such as FLAIR, or numbers); their "
                        "files may be absent. Best with a model trained with --modality-dropout")
    p.add_argument("--postprocess", default=None, metavar="FILE", help="postprocessing.json to apply")
    p.add_argument("--shard", type=shard_arg, default=(0, 1),
                   help="i/n: only every n-th case starting at i (0-based), for job arrays")
    p.add_argument("--png", action="store_true", help="also write an overlay CASE.png per case")
    p.add_argument("--threads", type=THREADS, default=None, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    post = PostprocessingPlan.load(args.postprocess) if args.postprocess else None
    run = dict(device=args.device, precision=args.precision, mirroring=not args.no_tta, step=args.step,
               batch_size=args.batch_size, compile=args.compile)
    if args.model is not None:
        if args.dataset is not None or args.home is not None:
            p.error("--model replaces the data root: leave out -d and --home")
        from autoseg.packaging import predictor_from_model
        predictor, packaged = predictor_from_model(args.model, args.configuration, getattr(args, "recipe", None),
                                                   args.folds, args.checkpoint, **run)
        if post is None and packaged is not None and not args.no_postprocess:
            post = packaged
            print("autoseg-predict: applying the model's postprocessing.json (--no-postprocess to skip)",
                  file=sys.stderr)
    else:
        predictor = predictor_for(dataset_paths(args), args.configuration, args.folds, args.checkpoint or "final",
                                  recipe_name(args.recipe), **run)   # a cascade: its previous stage's folds too
    if args.uncertainty and predictor.num_members == 1:
        print("autoseg-predict: one ensemble member (one fold, --no-tta): the variance maps will be 0", file=sys.stderr)
    predictor.missing_channels = channel_indices(args.missing, predictor.info)
    report = predict_folder(predictor, args.input, args.output, args.save_probabilities, post, args.shard, args.png,
                            uncertainty=args.uncertainty)
    return print_report(report, args.output)


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-predict", _main, argv)
