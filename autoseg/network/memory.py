"""What one training step holds at its peak, in bytes: the estimate the planner sizes patch and batch with.

Two ways, chosen per network by the registry (:mod:`autoseg.network.registry`):

* :func:`traced_training_memory`, for any network: run its forward on the ``meta`` device (shapes only,
  no memory, no arithmetic) and add up what autograd saves for backward, plus model state, the batch and
  a backward workspace;
* :func:`estimate_training_memory`, the analytic model of the built-in U-Nets (``unet``,
  ``resenc_unet``), counted per layer type without building a network. It is the one the reference
  plans were sized with, so it stays theirs.

The analytic model: what a training step (forward, loss, backward, SGD step) holds at its peak, counted
per sample and per layer type, in bytes (``b`` bytes per activation element: 4, or 2 with mixed precision):

* activations autograd saves for backward, per encoder/decoder stage with ``f`` features at ``v`` voxels:
    - network input: ``in_channels * v0`` (saved by the first conv);
    - conv -> InstanceNorm -> LeakyReLU(inplace) block: ``2 f v`` (the conv output, which the norm saves,
      and the activation output, which LeakyReLU saves and the next conv reuses; the conv's own input is
      the previous block's output and is not counted twice);
    - residual block (``resenc_unet`` encoder): ``4 f v`` (two conv outputs, the inner activation and the
      block output), plus ``f v`` for the 1x1 projection when the block changes shape;
    - transposed conv: nothing new (it saves its input, the level below's output; concat saves nothing);
    - concat: ``2 f v`` (the concatenated tensor, saved by the first decoder conv);
    - segmentation heads and loss: ``LOSS_SAVED_PER_OUTPUT * out_channels * v`` per supervised level, in
      float32 (autocast runs the loss in full precision);
* model state: parameters, gradients and SGD momentum (fp32, ``12`` bytes per parameter), plus the
  half-precision weight copies autocast keeps during a mixed-precision step (``2`` bytes per parameter);
* a backward workspace: the gradient buffers alive at the start of backward, dominated by
  ``BACKWARD_FULLRES_BUFFERS`` tensors of the full-resolution feature-map size ``f0 v0``, plus the
  batch itself (input and per-level targets).

Not counted by either (the planner keeps them out of its budget instead, see ``autoseg.planning.planner``):
the CUDA context, cuDNN workspaces and caching-allocator slack. The constants were calibrated on CPU against the bytes
autograd really keeps (see ``docs/planning-memory.md``, ``benchmarks/memory_calibrate.py`` and
``tests/test_memory_model.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from autoseg.plans import NetworkPlan

LOSS_SAVED_PER_OUTPUT = 4         # float32 elements per output element: logits cast, sigmoid/softmax, BCE/CE, soft Dice
BACKWARD_FULLRES_BUFFERS = 2      # gradients alive at once at full resolution (an op's output grad and input grad)
FP32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held at the peak of one training step, by kind."""

    activations: int
    model_state: int
    workspace: int

    @property
    def total(self) -> int:
        return self.activations + self.model_state + self.workspace

    def for_batch(self, batch_size: int) -> MemoryEstimate:
        """This estimate of one sample, for ``batch_size`` samples: everything but the model state scales."""
        return MemoryEstimate(self.activations * batch_size, self.model_state, self.workspace * batch_size)


def stage_shapes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial shape of the feature maps at every stage (patch divided by the cumulative strides)."""
    shape, out = list(patch_size), []
    for s in strides:
        shape = [a // b for a, b in zip(shape, s)]
        out.append(shape)
    return out


def count_parameters(net: NetworkPlan, in_channels: int, out_channels: int) -> int:
    """Parameters of the network :func:`autoseg.network.build_network` builds from ``net``, counted analytically."""
    f, k = net.features, [int(np.prod(x)) for x in net.kernel_sizes]

    def conv(cin: int, cout: int, kv: int, bias: bool = True) -> int:
        return cin * cout * kv + (cout if bias else 0)

    def conv_block(cin: int, cout: int, kv: int) -> int:
        return conv(cin, cout, kv) + 2 * cout          # + affine InstanceNorm

    total = 0
    for i in range(net.n_stages):
        cin = f[i - 1] if i > 0 else (f[0] if net.arch == "resenc_unet" else in_channels)
        if net.arch == "resenc_unet":
            if i == 0:
                total += conv_block(in_channels, f[0], k[0])           # stem
            for b in range(net.n_conv_encoder[i]):
                c = cin if b == 0 else f[i]
                total += conv_block(c, f[i], k[i]) + conv_block(f[i], f[i], k[i])
                if b == 0 and (c != f[i] or i > 0 and any(s != 1 for s in net.strides[i])):
                    total += conv(c, f[i], 1, bias=False) + 2 * f[i]   # projected skip
        else:
            total += sum(conv_block(cin if b == 0 else f[i], f[i], k[i]) for b in range(net.n_conv_encoder[i]))
    for i in range(net.n_stages - 1):
        total += conv(f[i + 1], f[i], int(np.prod(net.strides[i + 1])))                      # transposed conv
        total += sum(conv_block(2 * f[i] if b == 0 else f[i], f[i], k[i]) for b in range(net.n_conv_decoder[i]))
        total += conv(f[i], out_channels, 1)                                                  # head
    return total


def saved_activation_elements(net: NetworkPlan, patch_size: Sequence[int], in_channels: int) -> int:
    """Feature-map elements autograd saves for backward for one sample (see the module docstring)."""
    vox = [int(np.prod(s)) for s in stage_shapes(patch_size, net.strides)]
    f = net.features
    total = in_channels * vox[0]     # the input, then every stage (loss terms are counted in fp32 separately)
    for i in range(net.n_stages):
        if net.arch == "resenc_unet":
            if i == 0:
                total += 2 * f[0] * vox[0]                                    # stem
            projected = i > 0 and (f[i] != f[i - 1] or any(s != 1 for s in net.strides[i]))
            total += (4 * net.n_conv_encoder[i] + int(projected)) * f[i] * vox[i]
        else:
            total += 2 * net.n_conv_encoder[i] * f[i] * vox[i]
    for i in range(net.n_stages - 1):
        total += (2 + 2 * net.n_conv_decoder[i]) * f[i] * vox[i]              # concat + conv blocks
    return total


def loss_elements(net: NetworkPlan, patch_size: Sequence[int], out_channels: int) -> int:
    """Float32 elements the deep-supervised loss saves for one sample (heads' outputs at every level)."""
    vox = [int(np.prod(s)) for s in stage_shapes(patch_size, net.strides)]
    return LOSS_SAVED_PER_OUTPUT * out_channels * sum(vox[: net.n_stages - 1])


def estimate_training_memory(net: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int,
                             out_channels: int, mixed_precision: bool) -> MemoryEstimate:
    """The breakdown behind :func:`estimate_training_memory_bytes`."""
    b = 2 if mixed_precision else FP32
    n_params = count_parameters(net, in_channels, out_channels)
    v0 = int(np.prod(patch_size))
    activations = batch_size * (b * saved_activation_elements(net, patch_size, in_channels)
                                + FP32 * loss_elements(net, patch_size, out_channels))
    model_state = n_params * (3 * FP32 + (2 if mixed_precision else 0))
    supervised = sum(int(np.prod(s)) for s in stage_shapes(patch_size, net.strides)[: net.n_stages - 1])
    batch = batch_size * FP32 * (in_channels * v0 + out_channels * supervised)   # input + targets at every level
    workspace = batch_size * b * BACKWARD_FULLRES_BUFFERS * net.features[0] * v0 + batch
    return MemoryEstimate(int(activations), int(model_state), int(workspace))


def estimate_training_memory_bytes(net: NetworkPlan, patch_size: Sequence[int], batch_size: int, in_channels: int,
                                   out_channels: int, mixed_precision: bool) -> int:
    """Peak bytes of tensors one training step (forward, loss, backward, SGD with momentum) holds."""
    return estimate_training_memory(net, patch_size, batch_size, in_channels, out_channels, mixed_precision).total


def _saved_during_forward(net: nn.Module, x: torch.Tensor) -> tuple[list[tuple[torch.Size, torch.dtype]], list[torch.Tensor]]:
    """(shape, dtype) of every distinct storage autograd saves for backward during ``net(x)`` (parameters
    and buffers excluded), and the outputs, finest first. On the meta device nothing is allocated."""
    own = {t.untyped_storage()._cdata for t in [*net.parameters(), *net.buffers()]}
    saved: dict[int, tuple[torch.Size, torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in own:
            saved[key] = (torch.Size([t.untyped_storage().nbytes() // t.element_size()]), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    return list(saved.values()), list(out) if isinstance(out, (list, tuple)) else [out]


def traced_training_memory(build: Callable[[], nn.Module], patch_size: Sequence[int], batch_size: int,
                           in_channels: int, mixed_precision: bool) -> MemoryEstimate:
    """Bytes one training step holds for the network ``build()`` makes, found by running its forward on the
    ``meta`` device (milliseconds, no memory) in training mode:

    * activations: every storage autograd saves for backward, floating ones at ``b`` bytes per element (2 with
      mixed precision, as autocast keeps them; the meta device has no autocast, so it is counted, not run),
      plus the loss's ``LOSS_SAVED_PER_OUTPUT`` float32 elements per output element (all outputs supervised);
    * model state: parameters, gradients and SGD momentum in float32, plus autocast's half weight copies;
    * workspace: ``BACKWARD_FULLRES_BUFFERS`` gradients the size of the largest saved activation, and the batch
      (input and a float32 target at every output's size).
    """
    b = 2 if mixed_precision else FP32
    with torch.device("meta"):
        net = build()
    net.train()
    x = torch.empty(batch_size, in_channels, *patch_size, device="meta")
    saved, outputs = _saved_during_forward(net, x)
    sizes = [(int(np.prod(shape)) * (b if dtype.is_floating_point else torch.empty((), dtype=dtype).element_size()))
             for shape, dtype in saved]
    out_elements = sum(o.numel() for o in outputs)
    activations = sum(sizes) + FP32 * LOSS_SAVED_PER_OUTPUT * out_elements
    n_params = sum(p.numel() for p in net.parameters())
    model_state = n_params * (3 * FP32 + (2 if mixed_precision else 0)) + sum(t.nbytes for t in net.buffers())
    workspace = max(sizes, default=0) + FP32 * (x.numel() + out_elements)
    return MemoryEstimate(int(activations), int(model_state), int(workspace))
