"""Losses: soft Dice + cross-entropy (labels) or soft Dice + BCE on sigmoid outputs (regions),
and deep supervision over the decoder's outputs.

Dice follows nnU-Net's memory-efficient soft Dice: smooth 1e-5, background excluded for softmax
outputs, every region included for sigmoid outputs; ``batch_dice`` sums over the batch (and, under
DistributedDataParallel, over every rank with a differentiable all-reduce) before dividing.

One change to nnU-Net's method, ``dice="log"`` (the default): where a region is present in the
target its term is ``-log(Dice)`` instead of ``1 - Dice``. Soft Dice's gradient reaches a logit
through the sigmoid's (or softmax's) derivative ``p(1 - p)``, so once a region's probability has
been pushed to near zero on its own voxels the gradient vanishes and the head stays dead (measured
on real BraTS cases: docs/accuracy.md). ``-log(Dice)`` divides that gradient by the Dice: it is
the same as ``1 - Dice`` near a good fit and keeps a pull of order one, spread over the region's
voxels, however dead the head is. Where the region is absent the term stays ``1 - Dice``: a log
there would push hard towards zero on every patch that lacks a small region.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5
DICE_FORMS = ("log", "linear")


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(t)
    return t


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, batch_dice: bool, smooth: float = SMOOTH,
                   form: str = "linear") -> torch.Tensor:
    """Mean over channels (and samples unless ``batch_dice``) of 1 - soft Dice, or with ``form="log"``
    of -log(soft Dice) where the target has the channel. Inputs (b, c, *spatial)."""
    axes = tuple(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = (_sum_over_ranks(t.sum(0)) for t in (intersect, sum_pred, sum_gt))
    dice = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, min=1e-8)
    if form == "linear":
        return 1 - dice.mean()
    present = sum_gt > 0
    return torch.where(present, -torch.log(torch.clip(dice, min=1e-8)), 1 - dice).mean()


def _check_form(dice: str) -> str:
    if dice not in DICE_FORMS:
        raise ValueError(f"unknown Dice form {dice!r}; use one of {', '.join(DICE_FORMS)}")
    return dice


class DiceBCELoss(nn.Module):
    """Regions: BCE with logits + soft Dice on sigmoid outputs, 1:1. Target (b, R, *spatial) in {0, 1}."""

    def __init__(self, batch_dice: bool, dice: str = "linear") -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.dice = _check_form(dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()  # no copies when already float32
        dice = soft_dice_loss(torch.sigmoid(logits), target, self.batch_dice, form=self.dice)
        return F.binary_cross_entropy_with_logits(logits, target) + dice


class DiceCELoss(nn.Module):
    """Labels: cross-entropy + soft Dice on softmax outputs without background, 1:1. Target (b, 1, *spatial)."""

    def __init__(self, batch_dice: bool, dice: str = "linear") -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.dice = _check_form(dice)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        idx = target[:, 0].long()
        logits = logits.float()
        probs = torch.softmax(logits, 1)
        onehot = F.one_hot(idx, logits.shape[1]).movedim(-1, 1).float()
        dice = soft_dice_loss(probs[:, 1:], onehot[:, 1:], self.batch_dice, form=self.dice)
        return F.cross_entropy(logits, idx) + dice


def segmentation_loss(region_based: bool, batch_dice: bool, dice: str = "log") -> nn.Module:
    """The loss of a dataset: Dice + BCE on regions, Dice + CE on labels; ``dice`` "log" or "linear" (nnU-Net)."""
    return DiceBCELoss(batch_dice, dice) if region_based else DiceCELoss(batch_dice, dice)


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights: 1, 1/2, 1/4, ... with the lowest resolution at 0, normalised to sum 1."""
    w = [1 / 2**i for i in range(n_outputs)]
    if n_outputs > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, size: Sequence[int], region_based: bool) -> torch.Tensor:
    """Target at a coarser output's size: max-pooling for region masks (a region stays visible),
    nearest neighbour for class indices. Integer factors take the cheap exact route (max_pool with
    kernel = stride, strided slicing), others the adaptive/interpolating one."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    shape = target.shape[2:]
    if all(s % n == 0 for s, n in zip(shape, size)):
        factors = [s // n for s, n in zip(shape, size)]
        if not region_based:
            return target[(slice(None), slice(None), *(slice(None, None, f) for f in factors))]
        pool = F.max_pool3d if len(size) == 3 else F.max_pool2d
        return pool(target.float(), factors, factors)
    if region_based:
        return F.adaptive_max_pool3d(target.float(), size) if len(size) == 3 else F.adaptive_max_pool2d(target.float(), size)
    return F.interpolate(target.float(), size=tuple(size), mode="nearest")


def downsample_targets(target: torch.Tensor, sizes: Sequence[Sequence[int]], region_based: bool) -> list[torch.Tensor]:
    """The target at every size (finest first), each level pooled from the previous one: max over
    nested windows is the max over the whole window, nearest of nearest is nearest, so the result
    equals downsampling the full target for integer factors, at a fraction of the reads."""
    out, current = [], target.float() if region_based else target
    for size in sizes:
        prev = current
        if not all(s % n == 0 for s, n in zip(prev.shape[2:], size)):
            prev = target.float() if region_based else target
        current = downsample_target(prev, size, region_based)
        out.append(current)
    return out


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the outputs (full resolution first), targets downsampled to each.

    A zero weight is still multiplied in, so every head stays in the graph (DistributedDataParallel
    then needs no ``find_unused_parameters``).
    """

    def __init__(self, loss: nn.Module, region_based: bool) -> None:
        super().__init__()
        self.loss = loss
        self.region_based = region_based

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = deep_supervision_weights(len(outputs))
        targets = downsample_targets(target, [out.shape[2:] for out in outputs], self.region_based)
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for w, out, t in zip(weights, outputs, targets):
            total = total + w * self.loss(out, t)
        return total
