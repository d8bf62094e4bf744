"""autoseg-demo: the whole path on a small synthetic BraTS-like dataset, on CPU, in minutes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_home, parser
from autoseg.demo import DemoOptions, DemoSettings, run_demo
from autoseg.errors import fail, run_cli
from autoseg.paths import data_root


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-demo", "Generate a small synthetic BraTS-like dataset, then convert, plan, preprocess, "
                               "train one fold, predict, evaluate and draw overlays, all on CPU.")
    add_home(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for the demo's synthetic source data, predictions, metrics and pictures "
                        "(default: HOME/demo)")
    p.add_argument("--minutes-budget", type=float, default=10.0, metavar="MIN",
                   help="wall-time budget; the number of training epochs is fitted into it (default: 10)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (about a minute) to check an install; its Dice is meaningless")
    p.add_argument("-np", "--workers", type=int, default=2, metavar="W",
                   help="worker processes for conversion, preprocessing and data loading (default: 2)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="torch CPU threads (default: the CPU cores left after the workers, at least 1; "
                        "more threads than cores make training several times slower)")
    args = p.parse_args(argv)
    if args.minutes_budget <= 0:
        raise fail(None, f"--minutes-budget {args.minutes_budget} must be positive", "e.g. --minutes-budget 10")
    if args.threads is not None and args.threads < 1:
        raise fail(None, f"--threads {args.threads} must be at least 1", "e.g. --threads 1")
    import torch  # here, not at the top: --help answers without loading torch

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.workers))
    home = data_root(args.home)
    opts = DemoOptions(home=home, out=args.out or home / "demo",
                       settings=DemoSettings.quick() if args.quick else DemoSettings.full(),
                       minutes_budget=args.minutes_budget, workers=max(1, args.workers))
    result = run_demo(opts, say=print)
    print(result.describe())
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-demo", _main, argv)
