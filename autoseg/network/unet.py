"""The U-Net built from a :class:`~autoseg.plans.NetworkPlan`: plain or residual encoder, plain decoder.

Encoder stage i has ``features[i]`` channels and ``n_conv_encoder[i]`` conv blocks (``unet``) or
residual blocks (``resenc_unet``, after a one-conv stem); its first block is strided by
``strides[i]``. Decoder level i (for i = n_stages-2 .. 0) upsamples with a transposed conv
(kernel = stride = ``strides[i+1]``), concatenates the encoder skip of stage i and applies
``n_conv_decoder[i]`` conv blocks; a 1x1 conv head turns it into logits.

Deep supervision: with ``deep_supervision = True`` forward returns the logits of every decoder level,
full resolution first (length n_stages-1); otherwise only the full-resolution tensor, and only that
head runs. With ``region_membership`` (R, K) the heads predict K label-pattern logits that
:class:`~autoseg.network.regions.RegionLogits` reads out as R nested region logits. The coarser heads then get no gradient, so DistributedDataParallel needs
``find_unused_parameters=True`` only when training with deep supervision switched off; the default
(on) path uses every parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from autoseg.errors import AutosegError, fail
from autoseg.network.blocks import ConvNormAct, conv_stack, init_he, ops, residual_stack
from autoseg.network.regions import RegionLogits
from autoseg.plans import NetworkPlan

ARCHS = ("unet", "resenc_unet")


def check_network_plan(plan: NetworkPlan) -> None:
    """Refuse (one-line AutosegError) a network plan whose lists disagree in length or dimensionality,
    e.g. from a hand-edited plans.json."""
    n = plan.n_stages

    def bad(problem: str) -> AutosegError:
        return fail(None, f"network plan: {problem}", "rerun autoseg-plan (or fix the network in plans.json)")

    if plan.arch not in ARCHS:
        raise bad(f"unknown arch {plan.arch!r} (have: {', '.join(ARCHS)})")
    if n < 2:
        raise bad("a U-Net needs at least 2 stages")
    for name, seq, want in (("kernel_sizes", plan.kernel_sizes, n), ("strides", plan.strides, n),
                            ("n_conv_encoder", plan.n_conv_encoder, n), ("n_conv_decoder", plan.n_conv_decoder, n - 1)):
        if len(seq) != want:
            raise bad(f"{name} has {len(seq)} entries, expected {want} for {n} stages")
    if plan.ndim not in (2, 3) or any(len(k) != plan.ndim for k in plan.kernel_sizes) \
            or any(len(s) != plan.ndim for s in plan.strides):
        raise bad("every kernel size and stride must have the same number of axes, 2 or 3")
    if any(c < 1 for c in [*plan.n_conv_encoder, *plan.n_conv_decoder, *plan.features]):
        raise bad("every stage needs at least one conv block and one feature")


class UNet(nn.Module):
    """Plain or residual-encoder U-Net with optional deep supervision (see the module docstring)."""

    def __init__(self, plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool = True,
                 region_membership: torch.Tensor | None = None) -> None:
        super().__init__()
        check_network_plan(plan)
        self.deep_supervision = deep_supervision
        self.to_regions = None if region_membership is None else RegionLogits(region_membership)
        if self.to_regions is not None:
            if region_membership.shape[0] != out_channels:
                raise ValueError(f"{region_membership.shape[0]} regions in the membership, {out_channels} outputs asked")
            out_channels = self.to_regions.num_patterns
        f, k, s = plan.features, plan.kernel_sizes, plan.strides
        o = ops(plan.ndim)
        self.stem: nn.Module = nn.Identity()
        if plan.arch == "resenc_unet":
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
                out = self.heads[i](x)
                outputs.append(out if self.to_regions is None else self.to_regions(out))
        if not self.deep_supervision:
            return outputs[-1]
        return outputs[::-1]
