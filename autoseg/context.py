"""2.5D input: a 2d network that sees the K slices on each side of the slice it segments.

With ``context_slices`` K > 0 in the 2d configuration's :class:`~autoseg.plans.NetworkPlan`
(``autoseg-plan --context-slices K``), input channel ``c`` of the dataset becomes the 2K + 1 network
channels ``c * (2K + 1) + j``, j = 0..2K, holding slices ``z - K + j`` (channel-major: all slices of
channel 0, then of channel 1, ...). At the first and last slices of a volume the missing neighbours
repeat the edge slice (replication padding), so every slice has a full stack. The same stacking is used
when training cuts a slice (:class:`ContextSlices`) and when a whole case is predicted or validated
(:func:`stack_context`), so a model sees the same input at inference as in training.

Intensity augmentation then treats each stacked slice as its own channel, as it does with MRI sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def input_channels(num_channels: int, context: int) -> int:
    """Network input channels for ``num_channels`` image channels with ``context`` slices on each side."""
    return num_channels * (2 * context + 1)


def neighbours(z: int | np.ndarray, num_slices: int, context: int) -> np.ndarray:
    """Slice indices ``z - K .. z + K`` (along a new last axis for an array ``z``), clipped to the volume."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.asarray(z)[..., None] + offsets, 0, num_slices - 1)


def context_slab(volume: np.ndarray, z: int, context: int) -> np.ndarray:
    """Slice ``z`` of a (C, Z, Y, X) volume with its neighbours: (C * (2K + 1), Y, X)."""
    c, n = volume.shape[:2]
    slab = np.asarray(volume[:, neighbours(z, n, context)])     # (C, 2K + 1, Y, X); a copy, also from a memory map
    return slab.reshape(c * (2 * context + 1), *volume.shape[2:])


def stack_context(volume: np.ndarray, context: int) -> np.ndarray:
    """Every slice of a (C, Z, Y, X) volume with its neighbours: (C * (2K + 1), Z, Y, X); the volume itself
    for K = 0."""
    if context == 0:
        return volume
    c, n = volume.shape[:2]
    index = neighbours(np.arange(n), n, context).T               # (2K + 1, Z): row j holds slice z - K + j
    return np.asarray(volume[:, index]).reshape(c * (2 * context + 1), n, *volume.shape[2:])


def expand_channels(channels: Sequence[int], context: int) -> tuple[int, ...]:
    """The network channels that carry the given image channels (e.g. those normalised inside a mask)."""
    k = 2 * context + 1
    return tuple(c * k + j for c in channels for j in range(k))


@dataclass(frozen=True)
class ContextSlices:
    """A preprocessed (C, Z, Y, X) volume (often a memory map) read as its 2.5D stack (C * (2K + 1), Z, Y, X).

    The training loader cuts one slice at a time, ``array[:, z]``, which reads only the 2K + 1 slices
    needed; any other use (``np.asarray``) builds the whole stack.
    """

    volume: Any
    context: int

    @property
    def shape(self) -> tuple[int, ...]:
        c, *rest = self.volume.shape
        return (input_channels(c, self.context), *rest)

    @property
    def ndim(self) -> int:
        return len(self.volume.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if (isinstance(key, tuple) and len(key) == 2 and key[0] == slice(None)
                and isinstance(key[1], (int, np.integer))):
            return context_slab(self.volume, int(key[1]), self.context)
        return stack_context(np.asarray(self.volume), self.context)[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        stacked = stack_context(np.asarray(self.volume), self.context)
        return stacked if dtype is None else stacked.astype(dtype, copy=False)
