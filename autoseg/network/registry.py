"""The network registry: every architecture a plan or a recipe may name, and what the other stages ask of it.

A network is a :class:`NetworkSpec`: a builder ``(plan, in_channels, out_channels, deep_supervision) ->
nn.Module`` and, optionally, a plan check, the arch's plan on a topology the planner chose, and a memory
estimate. Everything else is derived the same way for every network: the parameter count and the
output layers (by building it on the ``meta`` device), the memory estimate (by tracing its forward
there, :func:`autoseg.network.memory.traced_training_memory`), the nested region head (a hook on its
outputs, :func:`autoseg.network.regions.attach_region_logits`).

Built in: ``unet`` and ``resenc_unet`` (autoseg's own), ``segresnet`` and ``attention_unet`` (MONAI's,
with the ``monai`` extra). Any installed package adds its own through the entry-point group
``autoseg.networks`` (``docs/extending.md``): the entry point's name is the arch, its object a
:class:`NetworkSpec` or just a builder function. A built-in name always means the built-in network.

The contract of a builder: ``out_channels`` logits per voxel; in training mode with ``deep_supervision``
either one tensor or a list of tensors at decreasing resolution, the full resolution first (what
the trainer's deep-supervision loss takes); in eval mode or without deep supervision, one tensor of
the input's spatial size.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from autoseg.errors import AutosegError, fail
from autoseg.network.memory import MemoryEstimate, estimate_training_memory, traced_training_memory
from autoseg.network.monai_nets import (attention_unet_plan, attention_unet_problem, build_attention_unet,
                                         build_segresnet, segresnet_plan, segresnet_problem)
from autoseg.network.regions import attach_region_logits
from autoseg.network.unet import RESENC_BLOCKS, UNET_BLOCKS, UNet, unet_defaults
from autoseg.plans import NetworkPlan

ENTRY_POINT_GROUP = "autoseg.networks"
Builder = Callable[[NetworkPlan, int, int, bool], nn.Module]


@dataclass(frozen=True)
class NetworkSpec:
    """One architecture.

    ``build(plan, in_channels, out_channels, deep_supervision)``: the network, freshly initialised (from
    torch's global RNG, so a seed gives the same weights). ``problem(plan)``: why ``plan`` cannot be built
    (None if it can), beyond the checks every plan gets. ``adapt(plan)``: this arch's plan on the topology
    (patch, pooling, kernels, features) of a plan made for another arch, e.g. the planner's U-Net; default:
    the plan unchanged. ``estimate(plan, patch, batch, in_channels, out_channels, mixed_precision)``:
    bytes of one training step; default: traced on the meta device. ``summary``: one line for listings.
    """

    name: str
    build: Builder
    summary: str = ""
    problem: Callable[[NetworkPlan], str | None] | None = None
    adapt: Callable[[NetworkPlan], NetworkPlan] | None = None
    estimate: Callable[[NetworkPlan, Sequence[int], int, int, int, bool], MemoryEstimate] | None = None


def _unet_spec(name: str, residual: bool, blocks: tuple[list[int], int], summary: str) -> NetworkSpec:
    def build(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool) -> nn.Module:
        return UNet(plan, in_channels, out_channels, deep_supervision, residual_encoder=residual)

    return NetworkSpec(name, build, summary, adapt=partial(unet_defaults, blocks=blocks),
                       estimate=estimate_training_memory)


BUILT_IN: dict[str, NetworkSpec] = {s.name: s for s in (
    _unet_spec("unet", False, UNET_BLOCKS, "nnU-Net's plain U-Net: conv-InstanceNorm-LeakyReLU blocks, deep supervision"),
    _unet_spec("resenc_unet", True, RESENC_BLOCKS, "nnU-Net's residual-encoder U-Net (ResEnc L/XL blocks)"),
    NetworkSpec("segresnet", build_segresnet, "MONAI SegResNetDS, deep supervision (needs autoseg[monai])",
                problem=segresnet_problem, adapt=segresnet_plan),
    NetworkSpec("attention_unet", build_attention_unet,
                "MONAI AttentionUnet: additive attention gates on the skips (needs autoseg[monai])",
                problem=attention_unet_problem, adapt=attention_unet_plan),
)}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def network_names() -> list[str]:
    """Every arch that can be named: the built-ins, then those installed packages register."""
    return [*BUILT_IN, *sorted(set(_entry_points()) - set(BUILT_IN))]


def _load(ep: importlib.metadata.EntryPoint) -> NetworkSpec:
    where = f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP}"
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - any import failure of a third-party package is the user's to fix
        raise fail(None, f"{where} does not load ({type(e).__name__}: {e})",
                   "fix or reinstall the package that registers it") from None
    if isinstance(obj, NetworkSpec):
        return replace(obj, name=ep.name)
    if callable(obj):
        return NetworkSpec(ep.name, obj, f"registered by {ep.value}")
    raise fail(None, f"{where} is neither a NetworkSpec nor a builder function", "see docs/extending.md")


def network_spec(arch: str, where: str | Path | None = None) -> NetworkSpec:
    """The spec of ``arch``; an unknown name is one line naming ``where`` and the known ones."""
    if arch in BUILT_IN:
        return BUILT_IN[arch]
    eps = _entry_points()
    if arch in eps:
        return _load(eps[arch])
    raise fail(where, f"unknown network {arch!r}",
               f"use one of {', '.join(network_names())}, or register your own (docs/extending.md)")


def check_network_plan(plan: NetworkPlan, where: str | Path | None = None) -> None:
    """Refuse (one line) a network plan that cannot be built: lists that disagree in length or
    dimensionality (e.g. a hand-edited plans.json), or what the arch itself cannot do."""
    n = plan.n_stages

    def bad(problem: str) -> AutosegError:
        return fail(where, f"network plan: {problem}", "rerun autoseg-plan (or fix the network in plans.json)")

    if plan.arch not in network_names():
        raise bad(f"unknown network {plan.arch!r} (have: {', '.join(network_names())}; a network a package "
                  "registers needs that package installed)")
    spec = network_spec(plan.arch, where)
    if n < 2:
        raise bad("a network needs at least 2 stages")
    for name, seq, want in (("kernel_sizes", plan.kernel_sizes, n), ("strides", plan.strides, n),
                            ("n_conv_encoder", plan.n_conv_encoder, n), ("n_conv_decoder", plan.n_conv_decoder, n - 1)):
        if len(seq) != want:
            raise bad(f"{name} has {len(seq)} entries, expected {want} for {n} stages")
    if plan.ndim not in (2, 3) or any(len(k) != plan.ndim for k in plan.kernel_sizes) \
            or any(len(s) != plan.ndim for s in plan.strides):
        raise bad("every kernel size and stride must have the same number of axes, 2 or 3")
    if any(c < 1 for c in [*plan.n_conv_encoder, *plan.n_conv_decoder, *plan.features]):
        raise bad("every stage needs at least one conv block and one feature")
    problem = spec.problem(plan) if spec.problem else None
    if problem:
        raise bad(problem)


def adapt_network_plan(plan: NetworkPlan, arch: str, where: str | Path | None = None) -> NetworkPlan:
    """``arch``'s network on the topology of ``plan`` (a plan made for any arch), checked.

    Its strides are a prefix of ``plan``'s (an arch may use fewer stages, never other pooling), so a
    patch that fits ``plan`` fits it too. The same arch returns ``plan`` as it is."""
    if arch == plan.arch:
        return plan
    spec = network_spec(arch, where)
    out = replace(plan, arch=arch)
    if spec.adapt is not None:
        out = replace(spec.adapt(out), arch=arch)
    if out.strides != plan.strides[: out.n_stages]:
        raise fail(where, f"network {arch!r} changed the pooling of the plan, not only its depth",
                   "its adapt() may drop trailing stages only (docs/extending.md)")
    check_network_plan(out, where)
    return out


def build_network(plan: NetworkPlan, in_channels: int, out_channels: int, deep_supervision: bool = True,
                  region_membership: torch.Tensor | None = None) -> nn.Module:
    """The network of ``plan`` (checked) with fresh weights; ``region_membership`` (regions x label patterns,
    :func:`autoseg.network.regions.region_patterns`) makes it predict a softmax over the patterns and
    return nested region logits; without it each of the ``out_channels`` outputs is its own logit."""
    check_network_plan(plan)
    spec = network_spec(plan.arch)
    if region_membership is None:
        return spec.build(plan, in_channels, out_channels, deep_supervision)
    if region_membership.shape[0] != out_channels:
        raise ValueError(f"{region_membership.shape[0]} regions in the membership, {out_channels} outputs asked")
    net = spec.build(plan, in_channels, region_membership.shape[1], deep_supervision)
    return attach_region_logits(net, region_membership)


def _on_meta(plan: NetworkPlan, in_channels: int, out_channels: int) -> nn.Module:
    with torch.device("meta"):
        return network_spec(plan.arch).build(plan, in_channels, out_channels, True)


def parameter_count(plan: NetworkPlan, in_channels: int, out_channels: int) -> int:
    """Trainable parameters of the network (built on the meta device: no memory, no initialisation cost)."""
    return sum(p.numel() for p in _on_meta(plan, in_channels, out_channels).parameters() if p.requires_grad)


def output_layers(plan: NetworkPlan, in_channels: int, out_channels: int) -> frozenset[str]:
    """state_dict keys whose shape depends on the number of outputs (the heads): those of a network
    with one output more differ. Pretrained weights from another dataset leave exactly these fresh."""
    a = _on_meta(plan, in_channels, out_channels).state_dict()
    b = _on_meta(plan, in_channels, out_channels + 1).state_dict()
    return frozenset(k for k in a if k not in b or a[k].shape != b[k].shape)


def estimate_memory(plan: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int,
                    out_channels: int, mixed_precision: bool) -> MemoryEstimate:
    """Bytes one training step (forward, loss, backward, SGD step) holds: the arch's own estimate, else the
    forward traced on the meta device."""
    spec = network_spec(plan.arch)
    if spec.estimate is not None:
        return spec.estimate(plan, patch_size, batch_size, in_channels, out_channels, mixed_precision)
    return traced_training_memory(lambda: spec.build(plan, in_channels, out_channels, True), patch_size, batch_size,
                                  in_channels, mixed_precision)
