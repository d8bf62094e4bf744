"""Per-case metrics: Dice, HD95 (mm), sensitivity, specificity for each region and label value.

Empty masks follow the BraTS convention: reference and prediction both empty -> Dice 1, HD95 0,
sensitivity 1; exactly one empty -> Dice 0, HD95 = ``EMPTY_HD95`` (373.13 mm, the diagonal of the
240x240x155 mm BraTS image), sensitivity 0 when the reference has voxels the prediction misses
(and 0 when only the prediction has voxels). Specificity is counted over the whole image.

HD95 matches ``medpy.metric.hd95``: surface voxels are those removed by one erosion with the
face-connected structuring element; distances (with the voxel spacing) from each surface to the other,
pooled over both directions; the 95th percentile. Only the bounding box of both masks (plus one voxel)
enters the distance transform, which keeps it fast on full-size volumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from autoseg.boxes import mask_bounds
from autoseg.dataset import DatasetInfo

EMPTY_HD95 = 373.13
METRICS = ("dice", "hd95", "sensitivity", "specificity")


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances in mm (BraTS convention for empty masks)."""
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    bp, br = mask_bounds(pred), mask_bounds(ref)
    if bp is None and br is None:
        return 0.0
    if bp is None or br is None:
        return EMPTY_HD95
    box = tuple(slice(max(min(a[0], b[0]) - 1, 0), min(max(a[1], b[1]) + 1, n))
                for a, b, n in zip(bp, br, pred.shape))
    p, r = pred[box], ref[box]
    sp, sr = _surface(p), _surface(r)
    sampling = tuple(float(s) for s in spacing)
    d_pr = ndimage.distance_transform_edt(~sr, sampling=sampling)[sp]
    d_rp = ndimage.distance_transform_edt(~sp, sampling=sampling)[sr]
    return float(np.percentile(np.concatenate([d_pr, d_rp]), 95))


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, HD95, sensitivity, specificity and the counts behind them for one binary mask pair."""
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    tn = pred.size - tp - fp - fn
    if n_pred == 0 and n_ref == 0:
        dice, sens = 1.0, 1.0
    else:
        dice = 2 * tp / (n_pred + n_ref)
        sens = tp / n_ref if n_ref else 0.0
    spec = tn / (tn + fp) if tn + fp else 1.0
    return {"dice": dice, "hd95": hd95(pred, ref, spacing), "sensitivity": sens, "specificity": spec,
            "tp": tp, "fp": fp, "fn": fn, "n_pred": n_pred, "n_ref": n_ref}


def evaluated_masks(info: DatasetInfo) -> dict[str, tuple[int, ...]]:
    """What is evaluated, name -> label values: each declared label or region, then (for region-based
    datasets) each single label value not already a region, named ``label N``."""
    targets = dict(zip(info.foreground_names, info.regions))
    if info.region_based:
        for v in info.label_values:
            if v != 0 and (v,) not in targets.values():
                targets[f"label {v}"] = (v,)
    return targets


def case_metrics(pred: np.ndarray, ref: np.ndarray, info: DatasetInfo,
                 spacing_zyx: Sequence[float]) -> dict[str, dict[str, float]]:
    """Metrics of one case, ``{name: {metric: value}}`` for every region/label of :func:`evaluated_masks`.

    ``pred`` and ``ref`` are label maps (same shape) in the dataset's label values.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return {name: mask_metrics(np.isin(pred, values), np.isin(ref, values), spacing_zyx)
            for name, values in evaluated_masks(info).items()}
