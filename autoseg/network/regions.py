"""Nested region outputs: a softmax over the label patterns, read out as one logit per region.

BraTS regions are unions of labels (whole tumour 1+2+4 contains tumour core 1+4 contains enhancing
4). nnU-Net trains one independent sigmoid per region. Those heads disagree where regions differ:
an oedema voxel is positive for the whole tumour and a hard negative for the core and enhancing
heads, whose soft-Dice gradients are larger per voxel (Dice normalises by the region's size). While
the small regions are being learned they pull the shared features at such voxels towards
"negative", and the whole tumour is unlearned (measured: docs/accuracy.md).

Here the network instead predicts a softmax over the *patterns* of region membership that labels
have (BraTS: background, oedema only, core, enhancing), and a region's probability is the sum over
the patterns inside it. Regions are then nested by construction, and raising the core on a core
voxel never asks the oedema voxels to lower the whole tumour. The module emits
``log p(R) - log(1 - p(R))`` per region, exactly the logit whose sigmoid is that probability, so the
loss (Dice + BCE on sigmoid outputs), sliding-window inference, ensembling and label painting are
the same for both heads.

A region loss alone leaves a pattern that is no region's own, such as necrosis (core but not enhancing),
without a pull once it is unlikely: a region's logit reaches each pattern inside it in proportion to that
pattern's share, so a near-zero pattern gets near-zero gradient and stays dead (measured: necrosis was
never predicted, docs/accuracy.md). In training mode the network therefore also returns the pattern logits,
after the region logits in the channel dimension, and the loss adds the patterns' cross-entropy and soft Dice
(:class:`autoseg.training.losses.DiceBCELoss`); in eval mode (validation, inference) it returns the regions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def region_patterns(regions: Sequence[Sequence[int]], label_values: Sequence[int]) -> torch.Tensor:
    """(R, K) bool: column k is the region membership of the k-th distinct label pattern.

    Background (a voxel in no region) is always the first pattern; labels with the same membership
    share one pattern, so K <= number of labels.
    """
    patterns = [tuple(False for _ in regions)]
    for value in label_values:
        p = tuple(value in r for r in regions)
        if p not in patterns:
            patterns.append(p)
    return torch.tensor(patterns, dtype=torch.bool).T.contiguous()


class RegionLogits(nn.Module):
    """(b, K, *spatial) pattern logits -> (b, R, *spatial) region logits, computed in float32.

    No parameters and a non-persistent buffer: a network's state_dict is the same with or without it.
    """

    def __init__(self, membership: torch.Tensor) -> None:
        super().__init__()
        if membership.ndim != 2 or membership[:, 0].any() or not membership.any(1).all():
            raise ValueError("membership must be (regions, patterns): background first, every region non-empty")
        self.register_buffer("membership", membership.clone(), persistent=False)

    @property
    def num_patterns(self) -> int:
        return self.membership.shape[1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        out = []
        for inside in self.membership:
            out.append(torch.logsumexp(z[:, inside], 1) - torch.logsumexp(z[:, ~inside], 1))
        return torch.stack(out, 1)


def _region_outputs(module: nn.Module, args: object, outputs: torch.Tensor | list[torch.Tensor]) -> object:
    to_regions = module.to_regions

    def convert(z: torch.Tensor) -> torch.Tensor:
        regions = to_regions(z)
        return torch.cat([regions, z.float()], 1) if module.training else regions

    if isinstance(outputs, (list, tuple)):
        return [convert(o) for o in outputs]
    return convert(outputs)


def attach_region_logits(net: nn.Module, membership: torch.Tensor) -> nn.Module:
    """Make ``net`` (built with ``membership.shape[1]`` outputs, the label patterns) return region logits:
    every output it returns, a tensor or a deep-supervision list, goes through :class:`RegionLogits`.

    Done with a forward hook and a parameter-free submodule ``to_regions``, so any network, built in or
    registered, gets the nested head without a wrapper, and its state_dict keys stay its own."""
    if hasattr(net, "to_regions"):
        raise ValueError(f"{type(net).__name__} already has an attribute 'to_regions'")
    net.add_module("to_regions", RegionLogits(membership))
    net.register_forward_hook(_region_outputs)
    return net
