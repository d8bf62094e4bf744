"""autoseg-demo: the whole path on a small synthetic dataset, on CPU, in minutes: BraTS-like MRI (default) or
stroke CT as PNG patient folders (``--task stroke-ct``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from autoseg.cli._common import THREADS, add_home, number, parser, workers_arg
from autoseg.demo import DemoOptions, DemoSettings, run_demo
from autoseg.demo_stroke import StrokeOptions, StrokeSettings, run_stroke_demo
from autoseg.errors import run_cli
from autoseg.parallel import available_cores
from autoseg.paths import data_root
from autoseg.precision import PRECISIONS


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-demo", "Generate a small synthetic dataset (BraTS-like MRI, or stroke CT as PNG patient "
                               "folders with --task stroke-ct), then convert, plan, preprocess, train one fold, "
                               "predict, evaluate and draw overlays, all on CPU.")
    add_home(p)
    p.add_argument("--task", choices=("brats", "stroke-ct"), default="brats",
                   help="brats: four MRI channels, 3d_fullres (default); stroke-ct: 16-bit PNG CT slices, brain window "
                        "40/80, 2d with context slices, predicted back to PNG masks")
    p.add_argument("--context-slices", type=number(int, "--context-slices 2", low=0), default=2, metavar="K",
                   help="stroke-ct: slices on each side the 2d network sees (default: 2; 0 = one slice)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for the demo's synthetic source data, predictions, metrics and pictures "
                        "(default: HOME/demo, or HOME/demo_stroke for stroke-ct)")
    p.add_argument("--epochs", type=number(int, "--epochs 12", low=1), default=None, metavar="E",
                   help="training epochs of 25 iterations (default: 12 for brats, 8 for stroke-ct, meant to fit 10 "
                        "minutes on a 2-core CPU in fp32; the same on every machine, so the result does not depend "
                        "on its speed)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="training and prediction arithmetic (default: auto = bf16 on CPUs with native bf16, "
                        "else fp32; --precision fp32 shows what a CPU without bf16 gets)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (about a minute) to check an install; its Dice is meaningless")
    p.add_argument("-np", "--workers", type=workers_arg(), default=2, metavar="W",
                   help="worker processes for conversion, preprocessing and data loading (default: 2)")
    p.add_argument("--threads", type=THREADS, default=None, metavar="T",
                   help="torch CPU threads (default: every core this process may use; the loader workers "
                        "wait most of the time)")
    args = p.parse_args(argv)
    import torch  # here, not at the top: --help answers without loading torch

    torch.set_num_threads(args.threads or available_cores())
    home = data_root(args.home)
    if args.task == "stroke-ct":
        stroke = StrokeSettings.quick() if args.quick else StrokeSettings.full()
        stroke = replace(stroke, context_slices=args.context_slices, epochs=args.epochs or stroke.epochs)
        result = run_stroke_demo(StrokeOptions(home=home, out=args.out or home / "demo_stroke", settings=stroke,
                                               workers=args.workers, precision=args.precision), say=print)
        print(result.describe())
        return 0
    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    opts = DemoOptions(home=home, out=args.out or home / "demo", settings=settings, workers=args.workers,
                       precision=args.precision)
    result = run_demo(opts, say=print)
    print(result.describe())
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-demo", _main, argv)
