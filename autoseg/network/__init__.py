"""Networks: the registry of architectures a plan names (:mod:`autoseg.network.registry`) and the one entry
point the trainer and the predictor call, :func:`network_for_dataset`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from autoseg.cascade import network_in_channels
from autoseg.errors import fail
from autoseg.network.regions import RegionLogits, region_patterns
from autoseg.network.registry import (ENTRY_POINT_GROUP, NetworkSpec, adapt_network_plan, build_network,
                                      check_network_plan, estimate_memory, network_names, network_spec,
                                      output_layers, parameter_count)
from autoseg.network.unet import UNet
from autoseg.plans import REGION_HEADS, NetworkPlan

if TYPE_CHECKING:
    from autoseg.dataset import DatasetInfo


def _membership(plan: NetworkPlan, info: DatasetInfo) -> torch.Tensor | None:
    """(regions, label patterns) for the nested softmax region head, None for independent outputs."""
    if plan.region_head not in REGION_HEADS:
        raise fail(None, f"network plan: unknown region_head {plan.region_head!r}",
                   f"use one of {', '.join(REGION_HEADS)} (or rerun autoseg-plan)")
    if info.region_based and plan.region_head == "softmax":
        return region_patterns(info.regions, info.label_values)
    return None


def network_for_dataset(plan: NetworkPlan, info: DatasetInfo, deep_supervision: bool = True) -> nn.Module:
    """The network of ``plan`` (any registered arch) for a dataset: ``info.num_outputs`` outputs, with the
    plan's region head; its inputs are the image channels, with 2.5D neighbours and a cascade's prior."""
    return build_network(plan, network_in_channels(info.num_channels, plan), info.num_outputs,
                         deep_supervision, _membership(plan, info))


def output_layers_for_dataset(plan: NetworkPlan, info: DatasetInfo) -> frozenset[str]:
    """The state_dict keys of :func:`network_for_dataset`'s network that depend on the dataset's outputs."""
    membership = _membership(plan, info)
    return output_layers(plan, network_in_channels(info.num_channels, plan),
                         info.num_outputs if membership is None else membership.shape[1])


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = ["ENTRY_POINT_GROUP", "NetworkSpec", "RegionLogits", "UNet", "adapt_network_plan", "build_network",
           "check_network_plan", "count_parameters", "estimate_memory", "network_for_dataset", "network_names",
           "network_spec", "output_layers", "output_layers_for_dataset", "parameter_count", "region_patterns"]
