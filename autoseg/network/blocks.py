"""Building blocks of the U-Nets: conv -> InstanceNorm(affine) -> LeakyReLU, and the residual block.

Dimensionality (2d or 3d) is chosen by the length of the kernel size; every op is looked up from
:func:`ops` so the same code builds both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

NEG_SLOPE = 0.01
NORM_EPS = 1e-5


@dataclass(frozen=True)
class Ops:
    """The torch layer classes for one dimensionality."""

    conv: type[nn.Module]
    transposed_conv: type[nn.Module]
    norm: type[nn.Module]


def ops(ndim: int) -> Ops:
    """Layer classes for 2d or 3d."""
    if ndim == 2:
        return Ops(nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d)
    if ndim == 3:
        return Ops(nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d)
    raise ValueError(f"only 2d and 3d networks exist, not {ndim}d")


def _padding(kernel: Sequence[int]) -> list[int]:
    return [(k - 1) // 2 for k in kernel]


class ConvNormAct(nn.Sequential):
    """conv (same padding, optional stride) -> InstanceNorm(affine) -> LeakyReLU(0.01)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] | int = 1) -> None:
        o = ops(len(kernel))
        super().__init__(
            o.conv(in_ch, out_ch, list(kernel), stride=stride, padding=_padding(kernel), bias=True),
            o.norm(out_ch, eps=NORM_EPS, affine=True),
            nn.LeakyReLU(NEG_SLOPE, inplace=True),
        )


def conv_stack(in_ch: int, out_ch: int, kernel: Sequence[int], n: int, stride: Sequence[int] | int = 1) -> nn.Sequential:
    """``n`` ConvNormAct blocks; only the first one changes channels and applies the stride."""
    layers = [ConvNormAct(in_ch, out_ch, kernel, stride)]
    layers += [ConvNormAct(out_ch, out_ch, kernel) for _ in range(n - 1)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Basic residual block (two convs) as in nnU-Net's ResEnc: conv-norm-act-conv-norm + skip, then act.

    When the block changes the shape (stride > 1 or new channel count) the skip is projected by a
    strided 1x1 conv followed by InstanceNorm, otherwise it is the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int] | int = 1) -> None:
        super().__init__()
        o = ops(len(kernel))
        strides = [stride] * len(kernel) if isinstance(stride, int) else list(stride)
        self.conv1 = ConvNormAct(in_ch, out_ch, kernel, strides)
        self.conv2 = o.conv(out_ch, out_ch, list(kernel), padding=_padding(kernel), bias=True)
        self.norm2 = o.norm(out_ch, eps=NORM_EPS, affine=True)
        self.act = nn.LeakyReLU(NEG_SLOPE, inplace=True)
        self.skip: nn.Module
        if in_ch != out_ch or any(s != 1 for s in strides):
            self.skip = nn.Sequential(o.conv(in_ch, out_ch, 1, stride=strides, bias=False),
                                      o.norm(out_ch, eps=NORM_EPS, affine=True))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


def residual_stack(in_ch: int, out_ch: int, kernel: Sequence[int], n: int, stride: Sequence[int] | int = 1) -> nn.Sequential:
    """``n`` residual blocks; the first one changes channels and applies the stride."""
    blocks = [ResidualBlock(in_ch, out_ch, kernel, stride)]
    blocks += [ResidualBlock(out_ch, out_ch, kernel) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def init_he(module: nn.Module) -> None:
    """He-normal init (a=0.01, matching LeakyReLU) for every (transposed) conv, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=NEG_SLOPE)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
