"""Learning-rate schedules, stepped once per epoch: nnU-Net's polynomial decay, and linear warm-up then
cosine decay (the schedule of MONAI's SegResNet recipes)."""

from __future__ import annotations

import math

import torch

from autoseg.recipes import ScheduleChoice


def poly_lr(epoch: int, max_epochs: int, initial_lr: float, exponent: float = 0.9) -> float:
    """``initial_lr * (1 - epoch / max_epochs) ** exponent`` (epoch counted from 0)."""
    return initial_lr * max(0.0, 1 - epoch / max_epochs) ** exponent


def warmup_epochs(warmup: float, max_epochs: int) -> int:
    """Epochs of warm-up for a ``warmup`` share of ``max_epochs``: rounded, at least 1 when the share is above 0,
    and always leaving one epoch of cosine decay."""
    if warmup <= 0 or max_epochs < 2:
        return 0
    return min(max(1, round(warmup * max_epochs)), max_epochs - 1)


def warmup_cosine_lr(epoch: int, max_epochs: int, initial_lr: float, warmup: float = 0.05, min_lr: float = 0.0) -> float:
    """Warm-up epochs ``e < w`` (:func:`warmup_epochs`): ``initial_lr * (e + 1) / (w + 1)``, rising linearly
    towards ``initial_lr``; then ``min_lr + (initial_lr - min_lr) * (1 + cos(pi * (e - w) / (max_epochs - w))) / 2``,
    which is ``initial_lr`` at ``e = w`` and reaches ``min_lr`` at ``e = max_epochs``."""
    w = warmup_epochs(warmup, max_epochs)
    if epoch < w:
        return initial_lr * (epoch + 1) / (w + 1)
    progress = min(1.0, (epoch - w) / max(1, max_epochs - w))
    return min_lr + (initial_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_lr(schedule: ScheduleChoice, epoch: int, max_epochs: int, initial_lr: float) -> float:
    """The learning rate of ``epoch`` under a recipe's schedule."""
    if schedule.name == "poly":
        return poly_lr(epoch, max_epochs, initial_lr, schedule.exponent)
    if schedule.name == "warmup_cosine":
        return warmup_cosine_lr(epoch, max_epochs, initial_lr, schedule.warmup, schedule.min_lr)
    raise ValueError(f"unknown schedule {schedule.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
