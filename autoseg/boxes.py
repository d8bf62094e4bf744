"""Bounding boxes of masks, shared by the fingerprint (crop size), preprocessing (crop) and
evaluation (HD95 restricted to where the masks are)."""

from __future__ import annotations

import numpy as np


def mask_bounds(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Half-open ``(start, stop)`` per axis of the True voxels of ``mask``; None when there are none."""
    bounds = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        bounds.append((int(hits[0]), int(hits[-1]) + 1))
    return bounds
