"""Per-channel intensity normalisation as the plan says (``ChannelNormalization``).

Normalisation runs on the cropped image before resampling (as nnU-Net does), so the statistics
come from the original voxels and not from interpolated ones.
"""

from __future__ import annotations

import numpy as np

from autoseg.errors import fail
from autoseg.plans import ChannelNormalization

SCHEMES = ("zscore", "ct", "ct_window", "none")
_EPS = 1e-8


def normalize_channel(image: np.ndarray, norm: ChannelNormalization, mask: np.ndarray) -> tuple[float, float]:
    """Normalise one float32 channel in place; return the (mean, std) that were used.

    ``zscore``: per case; with ``use_mask`` the statistics come from ``mask`` only and voxels
    outside it are set to 0. ``ct``: clip to [lower, upper], then (x - mean) / std with the
    dataset-wide values from the fingerprint. ``ct_window``: clip to the fixed window [lower, upper]
    (``autoseg-plan --ct-window``), then scale linearly to [0, 1]; returns (lower, width). ``none``: unchanged.
    """
    if norm.scheme == "zscore":
        inside = image[mask] if norm.use_mask else image
        mean, std = (float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))) if inside.size else (0.0, 1.0)
        image -= mean
        image /= max(std, _EPS)
        if norm.use_mask:
            image[~mask] = 0
        return mean, std
    if norm.scheme == "ct":
        if None in (norm.lower, norm.upper, norm.mean, norm.std):
            raise fail(None, "CT normalisation needs lower, upper, mean and std in the plan", "rerun autoseg-plan")
        np.clip(image, norm.lower, norm.upper, out=image)
        image -= norm.mean
        image /= max(float(norm.std), _EPS)
        return float(norm.mean), float(norm.std)
    if norm.scheme == "ct_window":
        if norm.lower is None or norm.upper is None or not norm.upper > norm.lower:
            raise fail(None, f"the CT window [{norm.lower}, {norm.upper}] in the plan is not a range",
                       "rerun autoseg-plan --ct-window CENTER WIDTH")
        width = float(norm.upper) - float(norm.lower)
        np.clip(image, norm.lower, norm.upper, out=image)
        image -= norm.lower
        image /= width
        return float(norm.lower), width
    if norm.scheme == "none":
        return 0.0, 1.0
    raise fail(None, f"unknown normalisation scheme {norm.scheme!r} in the plan (known: {', '.join(SCHEMES)})",
               "rerun autoseg-plan or fix plans.json")
