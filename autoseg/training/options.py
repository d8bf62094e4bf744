"""Training options: nnU-Net's defaults, overridable from the command line or the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainOptions:
    """How to train one fold. ``oversample`` None takes the plan's share of foreground patches (0.33)."""

    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    lr: float = 0.01
    momentum: float = 0.99
    nesterov: bool = True
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    dice: str = "log"               # -log(Dice) where a region is present (autoseg), or "linear": 1 - Dice (nnU-Net)
    oversample: float | None = None
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

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints, which are loaded with weights_only=True)."""
        d = asdict(self)
        d["pretrained"] = str(self.pretrained) if self.pretrained else None
        return d
