"""Sliding-window prediction of one preprocessed case.

Windows of the plan's patch size overlap by half a patch (``step=0.5``); each window's logits are
weighted by a Gaussian importance map (sigma = patch/8) so that window borders, where the network
sees least context, count least. Mirroring test-time augmentation runs the network on every
combination of flips over ``mirror_axes`` (8 passes for three axes) and averages. Windows and flips
are batched together. Images smaller than the patch are zero-padded and cropped back. A 2d plan on a
3D volume predicts slice by slice: the window is one slice thick, slices are batched.

The weighted logits are accumulated in float32, or in float16 when the accumulator would pass
``ACCUMULATOR_FP32_LIMIT`` bytes, so a large volume never needs a float32 copy per output.

For uncertainty, ``member=`` runs the flips one after the other instead of together and hands each
flip's stitched logits (one ensemble member) to a callback before averaging them, so member statistics
need one accumulator, however many flips; without it the loop is the one above, unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ACCUMULATOR_FP32_LIMIT = 1 << 30


def compute_steps(size: int, patch: int, step: float) -> list[int]:
    """Window starts along one axis: ``ceil((size - patch) / (patch * step)) + 1`` evenly spaced starts."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    stride = (size - patch) / (n - 1)
    return [int(round(stride * i)) for i in range(n)]


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """Separable Gaussian centred on the patch (sigma = patch * sigma_scale), max 1, strictly positive."""
    w = torch.ones(())
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        sigma = max(p * sigma_scale, 1e-6)
        w = w[..., None] * torch.exp(-0.5 * (x / sigma) ** 2)
    w = w / w.max()
    w = torch.clamp(w, min=float(w[w > 0].min()))
    return w.float()


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """No flip plus every non-empty subset of ``mirror_axes`` (spatial axes of the patch)."""
    axes = sorted(set(int(a) for a in mirror_axes))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


@dataclass(frozen=True)
class _Item:
    """One forward pass: a window (slices over the padded spatial axes) and the flip applied to it."""

    window: tuple[slice, ...]
    flip: tuple[int, ...]


def _pad_to(data: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes up to ``shape`` (centred); return the slicer that undoes it."""
    spatial = data.shape[1:]
    pads, crop = [], []
    for s, t in zip(spatial, shape):
        total = max(t - s, 0)
        lo = total // 2
        pads.append((lo, total - lo))
        crop.append(slice(lo, lo + s))
    if not any(p[0] or p[1] for p in pads):
        return data, tuple(crop)
    flat = [v for p in reversed(pads) for v in p]
    return nn.functional.pad(data, flat), tuple(crop)


def _window(data: torch.Tensor, item: _Item) -> torch.Tensor:
    """The item's window of ``data`` (C, *spatial), flipped as the item says."""
    x = data[(slice(None), *item.window)]
    return torch.flip(x, [a + 1 for a in item.flip]) if item.flip else x


def _forward(network: nn.Module, x: torch.Tensor, slice_mode: bool) -> torch.Tensor:
    """Logits for a batch of windows; a 2d network gets the one-slice axis squeezed away."""
    if slice_mode:
        x = x[:, :, 0]
    out = network(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out[:, :, None] if slice_mode else out


def _batches(items: list[_Item], size: int) -> Iterator[list[_Item]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sliding_window_logits(network: nn.Module, data: torch.Tensor, patch_size: Sequence[int], num_outputs: int,
                          mirror_axes: Sequence[int] = (), step: float = 0.5, batch_size: int = 1,
                          device: str | torch.device = "cpu", compute_dtype: torch.dtype | None = None,
                          accumulate_dtype: torch.dtype | None = None, progress: bool = False,
                          member: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Gaussian-weighted mean logits (num_outputs, *spatial) of ``network`` over overlapping windows.

    ``data`` is (C, *spatial). ``patch_size`` has as many axes as the network (3 for 3d; 2 for a 2d
    network, which then runs on the last two axes slice by slice). ``mirror_axes`` index the patch
    axes. ``compute_dtype`` (e.g. ``torch.bfloat16``) runs the network under autocast. ``member``, when
    given, is called once per flip with that flip's stitched logits (num_outputs, *spatial), a buffer
    reused after the call returns; the result is then the mean of those members (equal to the default
    up to float rounding, as the sums run in another order).
    """
    device = torch.device(device)
    spatial = tuple(data.shape[1:])
    patch = tuple(int(p) for p in patch_size)
    lead = len(spatial) - len(patch)
    if lead not in (0, 1):
        raise ValueError(f"patch {patch} does not fit data of spatial shape {spatial}")
    slice_mode = lead == 1
    full_patch = (1,) * lead + patch
    padded, crop = _pad_to(data, [max(s, p) for s, p in zip(spatial, full_patch)])
    pshape = tuple(padded.shape[1:])
    if accumulate_dtype is None:
        need = 4 * num_outputs * math.prod(pshape)
        accumulate_dtype = torch.float32 if need <= ACCUMULATOR_FP32_LIMIT else torch.float16

    weight = gaussian_importance(patch).reshape(full_patch).to(device)
    flips = [tuple(a + lead for a in f) for f in mirror_combinations(mirror_axes)]
    starts = [compute_steps(s, p, step) for s, p in zip(pshape, full_patch)]
    windows = [tuple(slice(o, o + p) for o, p in zip(origin, full_patch)) for origin in itertools.product(*starts)]
    if member is None:   # every window with every flip, into one sum
        passes = [([_Item(w, f) for w in windows for f in flips], weight / len(flips))]
    else:                # one flip at a time: each sum is one member
        passes = [([_Item(w, f) for w in windows], weight) for f in flips]

    acc = torch.zeros((num_outputs, *pshape), dtype=accumulate_dtype, device=device)
    norm = torch.zeros(pshape, dtype=torch.float32, device=device)
    for w in windows:
        norm[w] += weight
    mean = None if member is None else torch.zeros((num_outputs, *spatial), dtype=accumulate_dtype, device=device)
    autocast = torch.autocast(device.type, dtype=compute_dtype or torch.float32, enabled=compute_dtype is not None)
    bar = None
    if progress:
        from tqdm import tqdm
        total = sum(math.ceil(len(items) / max(1, batch_size)) for items, _ in passes)
        bar = tqdm(total=total, desc="windows", unit="batch", leave=False, disable=None)  # only on a terminal
    with torch.inference_mode(), autocast:
        for items, scale in passes:
            for batch in _batches(items, max(1, batch_size)):
                x = torch.stack([_window(padded, it) for it in batch]).to(device, non_blocking=True)
                out = _forward(network, x, slice_mode)
                if out.shape[1] != num_outputs:
                    raise ValueError(f"network gives {out.shape[1]} outputs, {num_outputs} expected")
                for o, it in zip(out, batch):
                    if it.flip:
                        o = torch.flip(o, [a + 1 for a in it.flip])
                    acc[(slice(None), *it.window)] += (o.float() * scale).to(accumulate_dtype)
                if bar is not None:
                    bar.update()
            if mean is not None and member is not None:
                acc /= norm.to(accumulate_dtype)
                member(acc[(slice(None), *crop)])
                mean += acc[(slice(None), *crop)]
                acc.zero_()
    if bar is not None:
        bar.close()
    if mean is not None:
        return mean.div_(len(flips))
    acc /= norm.to(accumulate_dtype)
    return acc[(slice(None), *crop)]


def logits_to_probabilities(logits: torch.Tensor, region_based: bool) -> torch.Tensor:
    """Sigmoid per region, or softmax over classes (channel axis 0); keeps the dtype."""
    if region_based:
        return torch.sigmoid(logits.float()).to(logits.dtype)
    return torch.softmax(logits.float(), dim=0).to(logits.dtype)


def predict_sliding_window(network: nn.Module, data: torch.Tensor | np.ndarray, patch_size: Sequence[int],
                           num_outputs: int, region_based: bool, mirror_axes: Sequence[int] = (), step: float = 0.5,
                           batch_size: int = 1, device: str | torch.device = "cpu",
                           compute_dtype: torch.dtype | None = None, progress: bool = False) -> torch.Tensor:
    """Probabilities (num_outputs, *spatial) on the CPU: sigmoid per region, or softmax over classes.

    The network is put in eval mode with deep supervision off; see :func:`sliding_window_logits`.
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    with eval_mode(network):
        logits = sliding_window_logits(network, data, patch_size, num_outputs, mirror_axes, step, batch_size, device,
                                       compute_dtype, progress=progress)
    return logits_to_probabilities(logits, region_based).cpu()


@contextlib.contextmanager
def eval_mode(network: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with full-resolution output only (deep supervision off); restores both afterwards."""
    was_training = network.training
    had_ds = getattr(network, "deep_supervision", None)
    network.eval()
    if had_ds is not None:
        network.deep_supervision = False
    try:
        yield network
    finally:
        network.train(was_training)
        if had_ds is not None:
            network.deep_supervision = had_ds
