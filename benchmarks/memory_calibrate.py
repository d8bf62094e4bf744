"""Measure what one training step really holds, on CPU, to calibrate :mod:`autoseg.network.memory`.

A benchmark tool, not part of the package (it needs the network and the training loss, both later stages
than planning): ``benchmarks/memory_model.py`` prints the calibration table with it and
``tests/test_memory_model.py`` checks the estimate against it.

Two counts, both exact on any device that runs the step:

* ``saved_activation_bytes``: unique storages autograd saves for backward during forward + loss
  (``torch.autograd.graph.saved_tensors_hooks``), parameters excluded;
* ``peak_bytes``: the peak of live tensor storage during forward, loss, backward and the SGD step,
  tracked by a dispatch mode that adds every new output storage and subtracts it when freed, plus
  what exists before the step (parameters, momentum, the batch). It is the CPU twin of
  ``torch.cuda.max_memory_allocated`` (without cuDNN workspaces and allocator rounding).

The loss is training's own (:class:`autoseg.training.losses.DeepSupervisionLoss` over Dice + BCE for
regions, targets downsampled inside the step). Mixed precision is measured with CPU autocast to
bfloat16 (2 bytes, like float16 on CUDA).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from autoseg.network import build_network
from autoseg.plans import NetworkPlan
from autoseg.training.losses import DeepSupervisionLoss, segmentation_loss


@dataclass(frozen=True)
class MeasuredMemory:
    saved_activation_bytes: int
    peak_bytes: int


class _LiveStorage(TorchDispatchMode):
    """Tracks the bytes of storages created by ops while active, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                ptr, n = s.data_ptr(), s.nbytes()
                if n and ptr not in self._live:
                    self._live.add(ptr)
                    self.current += n
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(s, self._free, ptr, n)
        return out

    def _free(self, ptr: int, n: int) -> None:
        if ptr in self._live:
            self._live.discard(ptr)
            self.current -= n


def _nbytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def measure_training_step(net_plan: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int,
                          out_channels: int, mixed_precision: bool, seed: int = 0) -> MeasuredMemory:
    """Run one SGD step (momentum buffers already allocated, as in every step but the first) on random data."""
    torch.manual_seed(seed)
    net = build_network(net_plan, in_channels, out_channels)
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.99, nesterov=True)
    for p in params:
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    loss_fn = DeepSupervisionLoss(segmentation_loss(region_based=True, batch_dice=False), region_based=True)
    x = torch.randn(batch_size, in_channels, *patch_size)
    y = (torch.rand(batch_size, out_channels, *patch_size) > 0.5).float()
    before = _nbytes(params) + _nbytes([opt.state[p]["momentum_buffer"] for p in params]) + _nbytes([x, y])
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            saved[s.data_ptr()] = s.nbytes()
        return t

    mode = _LiveStorage()
    with mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    return MeasuredMemory(saved_activation_bytes=sum(saved.values()), peak_bytes=before + mode.peak)
