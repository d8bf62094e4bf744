"""Networks: the U-Nets that a plan describes (plain ``unet`` and residual-encoder ``resenc_unet``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from autoseg.context import input_channels
from autoseg.network.regions import RegionLogits, region_patterns
from autoseg.network.unet import ARCHS, UNet, check_network_plan
from autoseg.plans import REGION_HEADS, NetworkPlan

if TYPE_CHECKING:
    from autoseg.dataset import DatasetInfo


def build_network(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool = True,
                  region_membership: torch.Tensor | None = None) -> nn.Module:
    """The network for ``plan`` with He-initialised weights; ``deep_supervision`` is settable later.

    ``region_membership`` (regions x label patterns, :func:`region_patterns`) makes the outputs nested
    region logits read from a softmax over the patterns; without it each output is its own logit."""
    return UNet(plan, in_channels, out_channels, deep_supervision, region_membership)


def network_for_dataset(plan: NetworkPlan, info: DatasetInfo, deep_supervision: bool = True) -> nn.Module:
    """The network of ``plan`` for a dataset: ``info.num_outputs`` outputs, with the plan's region head."""
    if plan.region_head not in REGION_HEADS:
        from autoseg.errors import fail
        raise fail(None, f"network plan: unknown region_head {plan.region_head!r}",
                   f"use one of {', '.join(REGION_HEADS)} (or rerun autoseg-plan)")
    membership = None
    if info.region_based and plan.region_head == "softmax":
        membership = region_patterns(info.regions, info.label_values)
    return build_network(plan, input_channels(info.num_channels, plan.context_slices), info.num_outputs,
                         deep_supervision, membership)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = ["ARCHS", "RegionLogits", "UNet", "build_network", "check_network_plan", "count_parameters",
           "network_for_dataset", "region_patterns"]
