"""Losses: soft Dice + cross-entropy (labels) or soft Dice + BCE on sigmoid outputs (regions), or soft
Dice + focal loss, optionally weighted per region or class, and deep supervision over the decoder's outputs.

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

from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.recipes import LossChoice

SMOOTH = 1e-5
DICE_FORMS = ("log", "linear")


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_reduce
        return all_reduce(t)
    return t


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, batch_dice: bool, smooth: float = SMOOTH,
                   form: str = "linear", weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over channels (and samples unless ``batch_dice``) of 1 - soft Dice, or with ``form="log"``
    of -log(soft Dice) where the target has the channel; ``weights`` (c,) make the channel mean a weighted
    one. Inputs (b, c, *spatial)."""
    axes = tuple(range(2, probs.ndim))
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = (_sum_over_ranks(t.sum(0)) for t in (intersect, sum_pred, sum_gt))
    dice = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, min=1e-8)
    if form == "linear" and weights is None:
        return 1 - dice.mean()   # nnU-Net's exact arithmetic (the default recipe's weights are bit-identical)
    term = 1 - dice if form == "linear" else torch.where(sum_gt > 0, -torch.log(torch.clip(dice, min=1e-8)), 1 - dice)
    if weights is None:
        return term.mean()
    return ((term * weights).sum(-1) / weights.sum()).mean()


def _channel_view(weights: torch.Tensor, ndim: int) -> torch.Tensor:
    return weights.view(1, -1, *([1] * (ndim - 2)))


def binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                         gamma: float | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of independent sigmoid outputs (b, c, *spatial); with ``gamma`` the focal loss
    ``(1 - p_t) ** gamma * BCE`` (Lin et al. 2017, no alpha); ``weights`` (c,) make the channel mean weighted."""
    if gamma is None and weights is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if gamma is not None:
        loss = (1 - torch.exp(-loss)) ** gamma * loss
    if weights is None:
        return loss.mean()
    return (loss * _channel_view(weights, loss.ndim)).mean() * (len(weights) / weights.sum())


def cross_entropy(logits: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None = None,
                  gamma: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of softmax outputs against class indices (b, *spatial); with ``gamma`` the focal loss;
    ``weights`` (one per class) give each voxel its class's weight in a weighted mean (as torch's ``weight``)."""
    if gamma is None:
        return F.cross_entropy(logits, index, weight=weights)
    ce = F.cross_entropy(logits, index, reduction="none")
    loss = (1 - torch.exp(-ce)) ** gamma * ce
    if weights is None:
        return loss.mean()
    w = weights[index]
    return (loss * w).sum() / w.sum()


def _check_form(dice: str) -> str:
    if dice not in DICE_FORMS:
        raise ValueError(f"unknown Dice form {dice!r}; use one of {', '.join(DICE_FORMS)}")
    return dice


def pattern_lookup(patterns: torch.Tensor) -> torch.Tensor:
    """(2**R,) long: a voxel's region code ``sum_r target_r * 2**r`` -> the index of its label pattern
    (``patterns``: (R, K) bool, :func:`autoseg.network.regions.region_patterns`); -100 (ignored) for a code no
    label has, which a max-pooled coarse target of non-nested regions may hold."""
    n_regions = patterns.shape[0]
    lut = torch.full((2 ** n_regions,), -100, dtype=torch.long)
    powers = 2 ** torch.arange(n_regions)
    for k in range(patterns.shape[1]):
        lut[int((patterns[:, k].long() * powers).sum())] = k
    return lut


class DiceBCELoss(nn.Module):
    """Regions: BCE (or focal, ``gamma``) with logits + soft Dice on sigmoid outputs, 1:1.
    Target (b, R, *spatial) in {0, 1}; ``weights`` one per region.

    With ``patterns`` (the nested softmax head's regions x label patterns) logits that carry the K pattern logits
    after the R region logits (the head in training mode) add the patterns' cross-entropy and soft Dice, so a
    pattern that is no region's own (necrosis: core, not enhancing) keeps a pull of order one
    (:mod:`autoseg.network.regions`); ``patterns_term`` False leaves that term out (the pattern logits are dropped);
    ``patterns_dice`` is that term's Dice form (None: ``dice``).
    """

    def __init__(self, batch_dice: bool, dice: str = "linear", weights: Sequence[float] | None = None,
                 gamma: float | None = None, patterns: torch.Tensor | None = None, patterns_term: bool = True,
                 patterns_dice: str | None = None) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.dice = _check_form(dice)
        self.patterns_dice = _check_form(patterns_dice or dice)
        self.gamma = gamma
        self.register_buffer("weights", None if weights is None else torch.tensor(weights, dtype=torch.float32),
                             persistent=False)
        self.n_patterns = 0 if patterns is None else patterns.shape[1]
        self.patterns_term = patterns_term
        self.register_buffer("lookup", None if patterns is None else pattern_lookup(patterns), persistent=False)
        self.register_buffer("powers", None if patterns is None else 2 ** torch.arange(patterns.shape[0]),
                             persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()  # no copies when already float32
        n_regions = target.shape[1]
        pattern_logits = None
        if self.n_patterns and logits.shape[1] == n_regions + self.n_patterns:
            pattern_logits, logits = logits[:, n_regions:], logits[:, :n_regions]
        dice = soft_dice_loss(torch.sigmoid(logits), target, self.batch_dice, form=self.dice, weights=self.weights)
        loss = binary_cross_entropy(logits, target, self.weights, self.gamma) + dice
        if pattern_logits is not None and self.patterns_term:
            loss = loss + self._patterns_loss(pattern_logits, target)
        return loss

    def describe(self) -> str:
        """The Dice forms, for the training log."""
        both = self.n_patterns and self.patterns_term
        return f"{self.dice} Dice on regions" + (f", {self.patterns_dice} Dice on label patterns" if both else "")

    def _patterns_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy + soft Dice of the label patterns (background's Dice left out), as nnU-Net trains labels;
        voxels whose region code no label has are left out of both."""
        codes = (target.long() * _channel_view(self.powers, target.ndim)).sum(1)
        index = self.lookup[codes]
        valid = (index >= 0).unsqueeze(1).float()
        probs = torch.softmax(logits, 1)
        onehot = F.one_hot(index.clamp(min=0), logits.shape[1]).movedim(-1, 1).float()
        dice = soft_dice_loss(probs[:, 1:] * valid, onehot[:, 1:] * valid, self.batch_dice, form=self.patterns_dice)
        return F.cross_entropy(logits, index, ignore_index=-100) + dice


class DiceCELoss(nn.Module):
    """Labels: cross-entropy (or focal, ``gamma``) + soft Dice on softmax outputs without background, 1:1.
    Target (b, 1, *spatial); ``weights`` one per foreground class (background weighs 1 in the cross-entropy)."""

    def __init__(self, batch_dice: bool, dice: str = "linear", weights: Sequence[float] | None = None,
                 gamma: float | None = None) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.dice = _check_form(dice)
        self.gamma = gamma
        self.register_buffer("weights", None if weights is None else torch.tensor([1.0, *weights], dtype=torch.float32),
                             persistent=False)

    def describe(self) -> str:
        """The Dice form, for the training log."""
        return f"{self.dice} Dice on labels"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        idx = target[:, 0].long()
        logits = logits.float()
        probs = torch.softmax(logits, 1)
        onehot = F.one_hot(idx, logits.shape[1]).movedim(-1, 1).float()
        fg_weights = None if self.weights is None else self.weights[1:]
        dice = soft_dice_loss(probs[:, 1:], onehot[:, 1:], self.batch_dice, form=self.dice, weights=fg_weights)
        return cross_entropy(logits, idx, self.weights, self.gamma) + dice


def segmentation_loss(region_based: bool, batch_dice: bool, dice: str = "log", weights: Sequence[float] | None = None,
                      gamma: float | None = None, patterns: torch.Tensor | None = None,
                      patterns_term: bool = True, patterns_dice: str | None = None) -> nn.Module:
    """The loss of a dataset: Dice + BCE on regions, Dice + CE on labels; ``dice`` "log" or "linear" (nnU-Net);
    ``gamma`` turns the cross-entropy into the focal loss; ``weights`` one per region or foreground class;
    ``patterns``: the nested softmax head's (regions, patterns) membership, for its patterns' cross-entropy and
    soft Dice (form ``patterns_dice``, None: ``dice``)."""
    if region_based:
        return DiceBCELoss(batch_dice, dice, weights, gamma, patterns, patterns_term, patterns_dice)
    return DiceCELoss(batch_dice, dice, weights, gamma)


def recipe_loss(choice: LossChoice, info: DatasetInfo, batch_dice: bool, where: str | None = "the recipe",
                patterns: torch.Tensor | None = None) -> nn.Module:
    """The loss a recipe names, for a dataset: region or class names in ``choice.weights`` must be the dataset's;
    ``patterns`` as :func:`segmentation_loss` takes them."""
    if choice.name == "dice_bce" and not info.region_based:
        raise fail(where, "loss dice_bce needs a region-based dataset, and this one has labels",
                   'use "name": "dice_ce" (softmax cross-entropy) or "dice_focal"')
    names = list(info.foreground_names)
    unknown = [n for n in choice.weights if n not in names]
    if unknown:
        raise fail(where, f"loss.weights names {unknown[0]!r}, which this dataset does not have",
                   f"use its regions or labels: {', '.join(names)}")
    weights = [float(choice.weights.get(n, 1.0)) for n in names] if choice.weights else None
    if weights is not None and not any(weights):
        raise fail(where, "loss.weights are all 0", "give at least one region or class a weight above 0")
    gamma = choice.focal_gamma if choice.name == "dice_focal" else None
    return segmentation_loss(info.region_based, batch_dice, choice.dice, weights, gamma, patterns, choice.patterns,
                             choice.patterns_dice)


def deep_supervision_weights(n_outputs: int, mode: str | Sequence[float] = "halving") -> list[float]:
    """One weight per output, full resolution first. ``"halving"``: nnU-Net's 1, 1/2, 1/4, ... with the lowest
    resolution at 0, normalised to sum 1; ``"off"``: the full resolution only; a list: as given, 0 for the
    outputs it does not reach (more weights than outputs is a one-line error)."""
    if mode == "off":
        return [1.0] + [0.0] * (n_outputs - 1)
    if not isinstance(mode, str):
        if len(mode) > n_outputs:
            raise fail(None, f"deep_supervision has {len(mode)} weights, but the network has {n_outputs} output(s)",
                       f"give at most {n_outputs} weights in the recipe, full resolution first")
        return [float(x) for x in mode] + [0.0] * (n_outputs - len(mode))
    if mode != "halving":
        raise ValueError(f"unknown deep supervision {mode!r}")
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
    """Weighted sum of ``loss`` over the outputs (full resolution first), targets downsampled to each;
    ``weights`` as :func:`deep_supervision_weights` takes them.

    An output of weight 0 is not scored but kept in the graph with a zero term, so every head takes part
    (DistributedDataParallel then needs no ``find_unused_parameters``); its gradient is exactly 0 either way.
    """

    def __init__(self, loss: nn.Module, region_based: bool, weights: str | Sequence[float] = "halving") -> None:
        super().__init__()
        self.loss = loss
        self.region_based = region_based
        self.weights = weights

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = deep_supervision_weights(len(outputs), self.weights)
        scored = [i for i, w in enumerate(weights) if w]
        targets = downsample_targets(target, [outputs[i].shape[2:] for i in scored], self.region_based)
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for i, t in zip(scored, targets):
            total = total + weights[i] * self.loss(outputs[i], t)
        for i in (i for i, w in enumerate(weights) if not w):
            total = total + 0.0 * outputs[i].float().sum()
        return total
