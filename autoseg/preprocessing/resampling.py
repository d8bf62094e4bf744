"""Resampling between spacings: smooth for images, value-preserving for labels, linear for probabilities.

Coordinates follow pixel areas (``grid_mode``): output voxel i covers the same physical extent as
the input voxels it came from, the convention of skimage's ``resize`` that nnU-Net uses. When one
axis is much coarser than the others (ratio > 3), that axis is resampled separately with nearest
neighbour and the in-plane axes slice by slice, so thick slices are not smeared into each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

ANISOTROPY_THRESHOLD = 3.0
IMAGE_ORDER = 3
LABEL_ORDER = 1
PROBABILITY_ORDER = 1
ORDER_Z = 0


def target_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape that covers the same physical extent at ``new_spacing`` (at least 1 voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing))


def separate_axis(spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis to resample on its own (coarse, anisotropic data), or None for plain 3D resampling."""
    for sp in (spacing, new_spacing):
        sp = np.asarray(sp, dtype=float)
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            coarse = np.flatnonzero(sp == sp.max())
            return int(coarse[0]) if coarse.size == 1 else None
    return None


def _zoom(x: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    factors = [n / o for n, o in zip(shape, x.shape)]
    return ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True, output=np.float32,
                        prefilter=order > 1)


def resize(x: np.ndarray, shape: Sequence[int], order: int, axis: int | None = None) -> np.ndarray:
    """Resize one float (z, y, x) volume to ``shape`` (float32).

    With ``axis``, the other two axes are resized slice by slice with ``order`` and ``axis`` itself
    with nearest neighbour.
    """
    shape = tuple(int(s) for s in shape)
    x = np.asarray(x, dtype=np.float32)
    if tuple(x.shape) == shape:
        return x.copy()
    if axis is None:
        return _zoom(x, shape, order)
    inter_shape = list(shape)
    inter_shape[axis] = x.shape[axis]
    inter = np.empty(inter_shape, dtype=np.float32)
    plane = [s for a, s in enumerate(shape) if a != axis]
    for i in range(x.shape[axis]):
        src = np.take(x, i, axis=axis)
        dst = _zoom(src, plane, order) if tuple(src.shape) != tuple(plane) else src
        np.moveaxis(inter, axis, 0)[i] = dst
    return _zoom(inter, shape, ORDER_Z) if inter.shape[axis] != shape[axis] else inter


def resample_image(data: np.ndarray, shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Resample (C, z, y, x) channel by channel with 3rd-order splines; float32."""
    out = np.empty((data.shape[0], *shape), dtype=np.float32)
    for c in range(data.shape[0]):
        out[c] = resize(data[c], shape, IMAGE_ORDER, axis)
    return out


def resample_label(seg: np.ndarray, shape: Sequence[int], axis: int | None = None) -> np.ndarray:
    """Resample a label map without inventing values: each label's one-hot mask is resampled
    linearly and every voxel takes the label with the largest interpolated weight."""
    shape = tuple(int(s) for s in shape)
    if tuple(seg.shape) == shape:
        return seg.copy()
    values = np.unique(seg)
    out = np.full(shape, values[0], dtype=seg.dtype)
    best = resize(seg == values[0], shape, LABEL_ORDER, axis)
    for v in values[1:]:
        weight = resize(seg == v, shape, LABEL_ORDER, axis)
        better = weight > best
        out[better] = v
        best = np.maximum(best, weight, out=best)
    return out
