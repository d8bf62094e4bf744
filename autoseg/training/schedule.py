"""Learning-rate schedule: nnU-Net's polynomial decay, stepped once per epoch."""

from __future__ import annotations

import torch


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = 0.9) -> float:
    """``initial_lr * (1 - epoch / max_epochs) ** exponent`` (epoch counted from 0)."""
    return initial_lr * max(0.0, 1 - epoch / max_epochs) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
