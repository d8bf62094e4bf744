"""autoseg-export: a trained model as one file to share (zip: folds, plan, dataset.json, postprocessing, README)
or one fold's network for deployment runtimes (ONNX)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_dataset, dataset_paths, fold_arg, parser
from autoseg.deployment import FORMATS, TOLERANCE, export_onnx
from autoseg.errors import fail, run_cli
from autoseg.packaging import CHECKPOINT_KINDS, RECIPE_RE, export_model, find_trained, fold_dir, select_trained


def recipe_arg(text: str) -> str:
    if not RECIPE_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a recipe name; e.g. --recipe segresnet")
    return text


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-export", "Write trained folds as one model zip that autoseg-predict --model uses anywhere and "
               "autoseg-import adds to another data root (weights only, plan, dataset.json, postprocessing, README), "
               "or with --format onnx one fold's network for a fixed window (docs/sharing.md).")
    p.add_argument("-o", "--output", required=True, type=Path, help="the file to write: MODEL.zip, or MODEL.onnx")
    add_dataset(p)
    p.add_argument("-c", "--configuration", nargs="+", default=None,
                   help="configurations to include (default: every trained one); --format onnx: exactly one")
    p.add_argument("--recipe", type=recipe_arg, default=None,
                   help="only folds trained with this recipe (default: every recipe of the configurations)")
    p.add_argument("-f", "--folds", nargs="+", type=fold_arg, default=None,
                   help="folds to include (default: every finished cross-validation fold, else fold all); "
                        "--format onnx: exactly one")
    p.add_argument("--checkpoint", choices=CHECKPOINT_KINDS, default="final", help="which checkpoint of each fold")
    p.add_argument("--postprocess", type=Path, default=None, metavar="FILE",
                   help="postprocessing.json to ship (default: results/DATASET/postprocessing.json when present)")
    p.add_argument("--format", choices=FORMATS, default="zip",
                   help=f"zip: the whole model; onnx: one fold's network, checked against onnxruntime (largest "
                        f"logit difference at most {TOLERANCE:g}) when it is installed")
    args = p.parse_args(argv)
    paths = dataset_paths(args)
    if args.format == "zip":
        report = export_model(paths, args.output, args.configuration, args.recipe, args.folds, args.checkpoint,
                              args.postprocess)
        for note in report.notes:
            print(f"autoseg-export: {note}", file=sys.stderr)
        held = "; ".join(f"{t.describe()} folds {' '.join(t.folds)}" for t in report.manifest.models)
        size = report.path.stat().st_size / 2**20
        print(f"autoseg-export: {held} -> {report.path} ({size:.1f} MiB); use it with "
              f"autoseg-predict --model {report.path} -i IN -o OUT")
        return 0
    found, _ = find_trained(paths, args.checkpoint)
    chosen = select_trained(found, args.configuration, args.recipe, None if args.folds is None else
                            [str(f) for f in args.folds], paths.results)
    if len(chosen) != 1 or len(chosen[0].folds) != 1:
        which = ", ".join(f"{t.folder} folds {' '.join(t.folds)}" for t in chosen)
        raise fail(paths.results, f"--format onnx exports one fold of one configuration, not {which}",
                   "choose one with -c CONFIGURATION -f FOLD")
    trained, fold = chosen[0], chosen[0].folds[0]
    done = export_onnx(fold_dir(paths, trained.folder, fold) / f"checkpoint_{args.checkpoint}.pt", args.output,
                       paths.name, fold)
    check = ("not checked: onnxruntime is not installed (pip install 'autoseg[onnx]')" if done.max_difference is None
             else f"onnxruntime matches torch on a {'x'.join(map(str, done.window))} window (largest logit "
                  f"difference {done.max_difference:.1e})")
    print(f"autoseg-export: {trained.describe()} fold {fold} -> {done.path} and {done.description.name}; {check}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-export", _main, argv)
