"""The built-in U-Nets of a :class:`~autoseg.plans.NetworkPlan`: plain (``unet``) or residual encoder
(``resenc_unet``), plain decoder.

Encoder stage i has ``features[i]`` channels and ``n_conv_encoder[i]`` conv blocks (``unet``) or
residual blocks (``resenc_unet``, after a one-conv stem); its first block is strided by
``strides[i]``. Decoder level i (for i = n_stages-2 .. 0) upsamples with a transposed conv
(kernel = stride = ``strides[i+1]``), concatenates the encoder skip of stage i and applies
``n_conv_decoder[i]`` conv blocks; a 1x1 conv head turns it into logits.

Deep supervision: with ``deep_supervision = True`` forward returns the logits of every decoder level,
full resolution first (length n_stages-1); otherwise only the full-resolution tensor, and only that
head runs. The coarser heads then get no gradient, so DistributedDataParallel needs
``find_unused_parameters=True`` only when training with deep supervision switched off; the default
(on) path uses every parameter. The nested region head is attached from outside, as to every registered
network (:func:`autoseg.network.regions.attach_region_logits`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from autoseg.network.blocks import ConvNormAct, conv_stack, init_he, ops, residual_stack
from autoseg.plans import NetworkPlan

UNET_BLOCKS = ([2], 2)                    # encoder blocks per stage (the last repeats), decoder convs: nnU-Net's
RESENC_BLOCKS = ([1, 3, 4, 6, 6, 6], 1)   # nnU-Net ResEnc L/XL


def unet_defaults(plan: NetworkPlan, blocks: tuple[list[int], int]) -> NetworkPlan:
    """``plan``'s topology with the block counts ``blocks`` (encoder per stage, decoder) of a U-Net family."""
    enc, dec = blocks
    n = plan.n_stages
    return replace(plan, n_conv_encoder=[enc[min(i, len(enc) - 1)] for i in range(n)], n_conv_decoder=[dec] * (n - 1))


class UNet(nn.Module):
    """Plain or residual-encoder U-Net with optional deep supervision (see the module docstring)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool = True,
                 residual_encoder: bool = False) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        f, k, s = plan.features, plan.kernel_sizes, plan.strides
        o = ops(plan.ndim)
        self.stem: nn.Module = nn.Identity()
        if residual_encoder:
            self.stem = ConvNormAct(in_channels, f[0], k[0])
            stack, first_in = residual_stack, f[0]
        else:
            stack, first_in = conv_stack, in_channels
        self.encoder = nn.ModuleList(
            stack(first_in if i == 0 else f[i - 1], f[i], k[i], plan.n_conv_encoder[i], s[i] if i > 0 else 1)
            for i in range(plan.n_stages))
        levels = range(plan.n_stages - 1)  # decoder level i outputs at the resolution of encoder stage i
        self.up = nn.ModuleList(o.transposed_conv(f[i + 1], f[i], s[i + 1], stride=s[i + 1], bias=True) for i in levels)
        self.decoder = nn.ModuleList(conv_stack(2 * f[i], f[i], k[i], plan.n_conv_decoder[i]) for i in levels)
        self.heads = nn.ModuleList(o.conv(f[i], out_channels, 1, bias=True) for i in levels)
        init_he(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        x = self.stem(x)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        outputs = []
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](torch.cat((self.up[i](x), skips[i]), dim=1))
            if self.deep_supervision or i == 0:
                outputs.append(self.heads[i](x))
        if not self.deep_supervision:
            return outputs[-1]
        return outputs[::-1]
