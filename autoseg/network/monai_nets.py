"""Networks from MONAI (``pip install 'autoseg[monai]'``): ``segresnet`` and ``attention_unet``.

Both are MONAI's own classes, built from a :class:`~autoseg.plans.NetworkPlan`; what MONAI fixes in
the class, the plan must say too (checked by :func:`segresnet_problem`, :func:`attention_unet_problem`,
and set by the ``*_plan`` functions that turn the planner's U-Net topology into the network's).

* ``segresnet``: ``SegResNetDS`` (Myronenko 2018, with MONAI's deep supervision and anisotropic
  kernels), as MONAI's Auto3DSeg configures it: instance norm, ReLU, encoder blocks 1-2-2-4-4, one
  decoder block per level, features doubling per stage. Its pooling is MONAI's for a voxel spacing
  (the finer axes first, then all axes), so the plan's strides are kept only as far as MONAI can
  realise them, at most five stages; deep supervision returns every decoder level, finest first.
* ``attention_unet``: ``AttentionUnet`` (Oktay et al. 2018), additive attention gates on the skip
  connections; two convs per encoder stage, one per decoder stage, batch norm, ReLU, one kernel size
  for every stage; it has no deep supervision (one output).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from autoseg.errors import fail
from autoseg.plans import NetworkPlan

SEGRESNET_BLOCKS = [1, 2, 2, 4, 4]   # Auto3DSeg's blocks_down; the number of stages is at most its length


def monai_nets(name: str) -> Any:
    """``monai.networks.nets``, or one line saying how to install it."""
    try:
        from monai.networks import nets
    except ImportError:
        raise fail(None, f"network {name!r} needs MONAI, which is not installed",
                   "pip install 'autoseg[monai]' (or choose --arch unet)") from None
    return nets


# ---- segresnet ------------------------------------------------------------------------------------------
def _resolution(strides: list[list[int]]) -> list[float]:
    """A voxel spacing from which MONAI derives the pooling ``strides`` (stage 1 on), if any can: an axis
    pooled at c of the levels before all axes are pooled is 2**c times finer than the coarsest."""
    ndim = len(strides[0]) if strides else 1
    everywhere = next((i for i, s in enumerate(strides) if all(v == 2 for v in s)), len(strides))
    return [2.0 ** -sum(1 for s in strides[:everywhere] if s[d] == 2) for d in range(ndim)]


def _scales(resolution: list[float], n_stages: int) -> list[list[int]]:
    from monai.networks.nets.segresnet_ds import scales_for_resolution
    return [[int(v) for v in s] for s in scales_for_resolution(resolution, n_stages=n_stages)]


def _realisable(strides: list[list[int]]) -> bool:
    """Whether MONAI's scales for :func:`_resolution` are exactly these strides (stage 0 first, all ones)."""
    return _scales(_resolution(strides[1:]), len(strides))[: len(strides) - 1] == [list(s) for s in strides[1:]]


def _segresnet_kernels(strides: list[list[int]]) -> list[list[int]]:
    """MONAI's kernel per stage: 3 along the axes its scale pools, 1 along the others."""
    scales = _scales(_resolution(strides[1:]), len(strides))
    return [[3 if v > 1 else 1 for v in s] for s in scales]


def segresnet_plan(plan: NetworkPlan) -> NetworkPlan:
    """The SegResNet on ``plan``'s topology: the longest prefix of its stages (at most five) whose pooling
    MONAI realises, MONAI's kernels, features doubling from ``features[0]``, Auto3DSeg's blocks."""
    monai_nets("segresnet")
    n = min(plan.n_stages, len(SEGRESNET_BLOCKS))
    while n > 2 and not _realisable(plan.strides[:n]):
        n -= 1
    strides = [list(s) for s in plan.strides[:n]]
    return replace(plan, features=[plan.features[0] * 2 ** i for i in range(n)],
                   kernel_sizes=_segresnet_kernels(strides), strides=strides,
                   n_conv_encoder=SEGRESNET_BLOCKS[:n], n_conv_decoder=[1] * (n - 1))


def segresnet_problem(plan: NetworkPlan) -> str | None:
    monai_nets("segresnet")
    if any(f != plan.features[0] * 2 ** i for i, f in enumerate(plan.features)):
        return "segresnet doubles the features at every stage (MONAI SegResNetDS); give base_features only"
    if plan.strides[0] != [1] * plan.ndim or not _realisable(plan.strides):
        return ("segresnet pools the finer axes first, then every axis (MONAI's scheme for a voxel spacing); "
                f"strides {plan.strides} are not of that kind")
    if plan.kernel_sizes != _segresnet_kernels(plan.strides):
        return f"segresnet's kernels follow its pooling: {_segresnet_kernels(plan.strides)}"
    return None


def _full_resolution_only(module: nn.Module, args: object, outputs: Any) -> Any:
    """SegResNetDS's deep-supervision list cut to its first (full-resolution) output when deep supervision is off."""
    if isinstance(outputs, (list, tuple)) and not module.deep_supervision:
        return outputs[0]
    return outputs


def build_segresnet(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
    """SegResNetDS with a head on every decoder level whether or not ``deep_supervision`` is on, so a training
    checkpoint loads into the prediction network (its state_dict keys do not depend on the flag); without deep
    supervision the lower heads' outputs are dropped (a forward hook, MONAI's own forward unchanged)."""
    nets = monai_nets("segresnet")
    net = nets.SegResNetDS(
        spatial_dims=plan.ndim, init_filters=plan.features[0], in_channels=in_channels, out_channels=out_channels,
        act="relu", norm="instance", blocks_down=tuple(plan.n_conv_encoder), blocks_up=tuple(plan.n_conv_decoder),
        dsdepth=plan.n_stages - 1, resolution=tuple(_resolution(plan.strides[1:])))
    net.deep_supervision = deep_supervision
    net.register_forward_hook(_full_resolution_only)
    return net


# ---- attention_unet -------------------------------------------------------------------------------------
def attention_unet_plan(plan: NetworkPlan) -> NetworkPlan:
    """The attention U-Net on ``plan``'s topology: kernel 3 everywhere, two convs per encoder stage, one merge
    conv per decoder stage (what MONAI's AttentionUnet has)."""
    monai_nets("attention_unet")
    n = plan.n_stages
    return replace(plan, kernel_sizes=[[3] * plan.ndim] * n, n_conv_encoder=[2] * n, n_conv_decoder=[1] * (n - 1))


def attention_unet_problem(plan: NetworkPlan) -> str | None:
    monai_nets("attention_unet")
    if any(k != plan.kernel_sizes[0] for k in plan.kernel_sizes):
        return "attention_unet has one kernel size for every stage (MONAI AttentionUnet)"
    if any(c != 2 for c in plan.n_conv_encoder) or any(c != 1 for c in plan.n_conv_decoder):
        return "attention_unet has 2 convs per encoder stage and 1 per decoder stage (MONAI AttentionUnet)"
    if plan.strides[0] != [1] * plan.ndim:
        return "attention_unet's first stage has stride 1 on every axis"
    return None


def build_attention_unet(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
    nets = monai_nets("attention_unet")
    return nets.AttentionUnet(spatial_dims=plan.ndim, in_channels=in_channels, out_channels=out_channels,
                              channels=list(plan.features), strides=[tuple(s) for s in plan.strides[1:]],
                              kernel_size=tuple(plan.kernel_sizes[0]), up_kernel_size=tuple(plan.kernel_sizes[0]))
