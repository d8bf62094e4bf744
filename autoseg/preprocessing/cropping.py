"""Crop to the nonzero box: the part of the image that holds the (skull-stripped) head.

The mask is "any channel != 0" with holes filled, as nnU-Net does: dark structures inside the
brain (e.g. necrosis that is 0 in one channel) stay inside the mask used for normalisation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from autoseg.boxes import mask_bounds

BBox = tuple[tuple[int, int], ...]


def nonzero_bbox(images: list[np.ndarray] | np.ndarray) -> BBox:
    """Half-open box ``((z0, z1), (y0, y1), (x0, x1))`` around voxels nonzero in any array given.

    An all-zero image keeps its full extent (nothing to crop, nothing lost).
    """
    any_nonzero = np.zeros(images[0].shape, dtype=bool)
    for channel in images:
        any_nonzero |= channel != 0
    return bbox_of(any_nonzero)


def bbox_of(mask: np.ndarray) -> BBox:
    """Half-open bounding box of the True voxels of ``mask``; the whole array when none is True."""
    return tuple(mask_bounds(mask) or ((0, n) for n in mask.shape))


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """A copy of the box of the last ``len(bbox)`` axes (leading axes, e.g. channels, are kept)."""
    lead = (slice(None),) * (array.ndim - len(bbox))
    return array[lead + tuple(slice(lo, hi) for lo, hi in bbox)].copy()


def filled_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Mask of a (C, z, y, x) crop: any channel nonzero, holes filled."""
    return ndimage.binary_fill_holes(np.any(data != 0, axis=0))


def uncrop(array: np.ndarray, bbox: BBox, shape: tuple[int, ...], fill: float = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Paste a cropped (z, y, x) array back into a canvas of ``shape`` filled with ``fill``."""
    if out is None:
        out = np.empty(shape, dtype=array.dtype)
    out.fill(fill)
    out[tuple(slice(lo, hi) for lo, hi in bbox)] = array
    return out
