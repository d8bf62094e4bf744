"""Training options: the recipe (how to train, :mod:`autoseg.recipes`), single recipe fields overridden from the
command line or the Python API, and how to run (device, workers, seed, precision, ...)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoseg.recipes import Recipe


@dataclass(frozen=True)
class TrainOptions:
    """How to train one fold. ``recipe`` None is the default recipe (nnunet). The fields from ``epochs`` to
    ``accumulation`` override the recipe's when not None (``oversample``: its foreground share)."""

    recipe: Recipe | None = None
    epochs: int | None = None
    iters_per_epoch: int | None = None
    lr: float | None = None
    dice: str | None = None         # "log": -log(Dice) where a region is present (autoseg), "linear": 1 - Dice (nnU-Net)
    oversample: float | None = None
    foreground_mode: str | None = None
    accumulation: int | None = None
    val_iters: int = 50
    grad_clip: float = 12.0
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    precision: str = "auto"         # autoseg.precision: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
    pretrained: Path | None = None
    resume: bool = False
    augment: bool = True
    augment_on: str = "cpu"         # where augmentation runs: cpu (loader workers) or device (batched, data.device_augmentation)
    modality_dropout: float = 0.0   # share of training samples with some (never all) channels zeroed
    validate: bool = True           # sliding-window validation of the held-out cases at the end
    logger: str = "none"             # experiment tracking: none, tensorboard, wandb, mlflow (training.loggers)
    progress: bool = True           # tqdm bar

    def effective_recipe(self) -> Recipe:
        """The recipe with this run's overrides applied (checked like a recipe file)."""
        return (self.recipe or Recipe()).with_overrides(
            epochs=self.epochs, iters_per_epoch=self.iters_per_epoch, lr=self.lr, dice=self.dice,
            foreground=self.oversample, foreground_mode=self.foreground_mode, accumulation=self.accumulation)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints, which are loaded with weights_only=True); the recipe by name
        (checkpoints store the effective recipe whole, beside these)."""
        d = asdict(self)
        d["recipe"] = self.recipe.name if self.recipe else None
        d["pretrained"] = str(self.pretrained) if self.pretrained else None
        return d
