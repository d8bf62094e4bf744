"""Networks: the U-Nets that a plan describes (plain ``unet`` and residual-encoder ``resenc_unet``)."""

from __future__ import annotations

from torch import nn

from autoseg.network.unet import ARCHS, UNet, check_network_plan
from autoseg.planning.plans import NetworkPlan


def build_network(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool = True) -> nn.Module:
    """The network for ``plan`` with He-initialised weights; ``deep_supervision`` is settable later."""
    return UNet(plan, in_channels, out_channels, deep_supervision)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = ["ARCHS", "UNet", "build_network", "check_network_plan", "count_parameters"]
