"""autoseg-train CONFIG FOLD [--recipe NAME|FILE.json]: train one fold (or all) of a preprocessed dataset with a
recipe (default nnunet), single recipe fields overridden by options; resumable. --list-recipes lists them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from autoseg.cli._common import add_dataset, dataset_paths, number, parser
from autoseg.data.device_augmentation import AUGMENT_ON
from autoseg.errors import run_cli
from autoseg.recipes import FOREGROUND_MODES, load_recipe, recipe_lines
from autoseg.precision import PRECISIONS
from autoseg.training import TrainOptions, train_fold
from autoseg.training.loggers import LOGGERS, check_logger

_DEFAULTS = TrainOptions()


def _main(argv: Sequence[str] | None) -> int:
    p = parser("autoseg-train", "Train one cross-validation fold (fold0..fold4) or all cases (all). "
                                "Under torchrun --nproc_per_node N the same command trains with N processes (DDP).")
    p.add_argument("configuration", nargs="?",
                   help="configuration of the plan: 3d_fullres, 2d, 3d_lowres or 3d_cascade_fullres (after all five "
                        "3d_lowres folds)")
    p.add_argument("fold", nargs="?", help="fold0..fold4, 0..4, or all")
    add_dataset(p)
    p.add_argument("--recipe", default=None, metavar="NAME|FILE.json",
                   help="how to train: a shipped recipe (--list-recipes) or your own JSON file (docs/recipes.md); "
                        "default nnunet. Folds go to results/DATASET/RECIPE__CONFIG/ (nnunet: results/DATASET/CONFIG/)")
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipes, one line each, and exit")
    p.add_argument("--epochs", type=number(int, "--epochs 1000", low=1), default=None,
                   help="total epochs (default: the recipe's, nnunet 1000; a larger value extends a finished run)")
    p.add_argument("--iters-per-epoch", type=number(int, "--iters-per-epoch 250", low=1),
                   default=None, help="optimiser steps per epoch (default: the recipe's, nnunet 250)")
    p.add_argument("--val-iters", type=number(int, "--val-iters 50", low=0), default=_DEFAULTS.val_iters,
                   help="validation batches per epoch (pseudo-Dice)")
    p.add_argument("--lr", type=number(float, "--lr 0.01", above=0.0), default=None,
                   help="initial learning rate of the recipe's schedule (nnunet: 0.01, poly decay)")
    p.add_argument("--foreground", type=number(float, "--foreground 0.5", low=0.0, high=1.0), default=None,
                   metavar="P", help="share of patches centred on foreground (default: the recipe's, else the plan's 0.33)")
    p.add_argument("--foreground-mode", default=None, choices=FOREGROUND_MODES,
                   help="batch = the last round(batch x P) samples of each batch (nnU-Net); sample = each sample with "
                        "probability P (default: the recipe's)")
    p.add_argument("--accumulate", type=number(int, "--accumulate 2", low=1), default=None, metavar="N",
                   help="batches whose gradients add up to one optimiser step (default: the recipe's, nnunet 1)")
    p.add_argument("--device", default=_DEFAULTS.device, choices=["auto", "cuda", "cpu"], help="where to train")
    p.add_argument("--precision", default=_DEFAULTS.precision, choices=PRECISIONS,
                   help="network arithmetic: auto = fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt in the fold folder")
    p.add_argument("--pretrained", type=Path, default=None, help="initialise from this checkpoint (same network)")
    p.add_argument("--workers", type=number(int, "--workers 2", low=0), default=_DEFAULTS.workers,
                   help="data augmentation processes (0 = in process)")
    p.add_argument("--seed", type=number(int, "--seed 0", low=0, high=2 ** 32 - 1), default=_DEFAULTS.seed,
                   help="seed of weights and sampling (resume needs the same)")
    p.add_argument("--dice", default=None, choices=["log", "linear"],
                   help="Dice term where a region is present: log = -log(Dice), which keeps a dying region's head "
                        "learning (the shipped recipes' default); linear = 1 - Dice, nnU-Net's (the regions' term; "
                        "the label patterns' is the recipe's loss.patterns_dice)")
    p.add_argument("--no-augmentation", action="store_true", help="train on plain patches (for debugging)")
    p.add_argument("--augment-on", default=_DEFAULTS.augment_on, choices=AUGMENT_ON,
                   help="where augmentation runs: cpu = in the --workers processes (default); device = batched on the "
                        "training device (GPU), the workers only cut patches; same transforms and probabilities")
    p.add_argument("--modality-dropout", type=number(float, "--modality-dropout 0.3", low=0.0, high=1.0),
                   default=_DEFAULTS.modality_dropout, metavar="P",
                   help="share of training samples that lose a random subset (never all) of their channels, so the "
                        "model can predict with a sequence missing (autoseg-predict --missing); default 0 (off)")
    p.add_argument("--no-validation", action="store_true", help="skip the sliding-window validation at the end")
    p.add_argument("--logger", type=check_logger, default=_DEFAULTS.logger, metavar="{" + ",".join(LOGGERS) + "}",
                   help="also send log.txt's numbers and progress.png to TensorBoard (FOLD/tensorboard), W&B or MLflow; "
                        "each needs its extra, e.g. pip install 'autoseg[tensorboard]'")
    args = p.parse_args(argv)
    if args.list_recipes:
        print("\n".join(recipe_lines()))
        return 0
    if args.configuration is None or args.fold is None:
        p.error("the configuration and the fold are required; e.g. autoseg-train 3d_fullres fold0")
    options = TrainOptions(recipe=load_recipe(args.recipe), epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
                           oversample=args.foreground, foreground_mode=args.foreground_mode,
                           accumulation=args.accumulate, val_iters=args.val_iters, lr=args.lr, device=args.device, precision=args.precision, workers=args.workers,
                           seed=args.seed, pretrained=args.pretrained, resume=args.resume,
                           augment=not args.no_augmentation, augment_on=args.augment_on, validate=not args.no_validation,
                           modality_dropout=args.modality_dropout, dice=args.dice, logger=args.logger)
    fold_dir = train_fold(dataset_paths(args), args.configuration, args.fold, options)
    print(f"autoseg-train: done; checkpoints, log.txt and progress.png in {fold_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    run_cli("autoseg-train", _main, argv,
            resume_hint="rerun the same command with --resume to continue from the last finished epoch")
