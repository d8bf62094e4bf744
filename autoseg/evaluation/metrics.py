"""Per-case metrics: Dice, HD95 (mm), sensitivity, specificity for each region and label value.

Empty masks follow the BraTS convention: reference and prediction both empty -> Dice 1, HD95 0,
sensitivity 1; exactly one empty -> Dice 0, HD95 = ``EMPTY_HD95`` (373.13 mm, the diagonal of the
240x240x155 mm BraTS image), sensitivity 0 when the reference has voxels the prediction misses
(and 0 when only the prediction has voxels). Specificity is counted over the whole image.

HD95 matches ``medpy.metric.hd95``: surface voxels are those removed by one erosion with the
face-connected structuring element; distances (with the voxel spacing) from each surface to the other,
pooled over both directions; the 95th percentile. Only the bounding box of both masks (plus one voxel)
enters the distance transform, which keeps it fast on full-size volumes.

Normalised surface Dice (NSD, Nikolov et al. 2021; MONAI ``compute_surface_dice``) uses the same surface
voxels and distances: the fraction of both surfaces that lies within a tolerance (mm) of the other one.
Empty masks: both empty -> 1, exactly one empty -> 0 (the Dice convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from autoseg.boxes import mask_bounds
from autoseg.dataset import DatasetInfo

if TYPE_CHECKING:
    from autoseg.evaluation.lesions import LesionSettings

EMPTY_HD95 = 373.13
METRICS = ("dice", "hd95", "sensitivity", "specificity")


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances in mm from each surface voxel of ``pred`` to the surface of ``ref``, and back; None when
    either mask is empty. Computed in the bounding box of both masks plus one voxel (same result, faster)."""
    bp, br = mask_bounds(pred), mask_bounds(ref)
    if bp is None or br is None:
        return None
    box = tuple(slice(max(min(a[0], b[0]) - 1, 0), min(max(a[1], b[1]) + 1, n))
                for a, b, n in zip(bp, br, pred.shape))
    p, r = pred[box], ref[box]
    sp, sr = _surface(p), _surface(r)
    sampling = tuple(float(s) for s in spacing)
    d_pr = ndimage.distance_transform_edt(~sr, sampling=sampling)[sp]
    d_rp = ndimage.distance_transform_edt(~sp, sampling=sampling)[sr]
    return d_pr, d_rp


def _hd95(distances: tuple[np.ndarray, np.ndarray] | None, pred: np.ndarray, ref: np.ndarray) -> float:
    if distances is None:
        return EMPTY_HD95 if pred.any() or ref.any() else 0.0
    return float(np.percentile(np.concatenate(distances), 95))


def _nsd(distances: tuple[np.ndarray, np.ndarray] | None, pred: np.ndarray, ref: np.ndarray,
         tolerance: float) -> float:
    if distances is None:
        return 0.0 if pred.any() or ref.any() else 1.0
    d_pr, d_rp = distances
    return float((np.count_nonzero(d_pr <= tolerance) + np.count_nonzero(d_rp <= tolerance)) / (d_pr.size + d_rp.size))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the symmetric surface distances in mm (BraTS convention for empty masks)."""
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    return _hd95(surface_distances(pred, ref, spacing), pred, ref)


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance: float) -> float:
    """Normalised surface Dice: the share of both surfaces within ``tolerance`` mm of the other surface."""
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    return _nsd(surface_distances(pred, ref, spacing), pred, ref, tolerance)


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 nsd_tolerance: float | None = None) -> dict[str, float]:
    """Dice, HD95, sensitivity, specificity and the counts behind them for one binary mask pair; with
    ``nsd_tolerance`` (mm) also ``nsd``, from the same surface distances as HD95."""
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
    distances = surface_distances(pred, ref, spacing)
    out = {"dice": dice, "hd95": _hd95(distances, pred, ref), "sensitivity": sens, "specificity": spec}
    if nsd_tolerance is not None:
        out["nsd"] = _nsd(distances, pred, ref, nsd_tolerance)
    return {**out, "tp": tp, "fp": fp, "fn": fn, "n_pred": n_pred, "n_ref": n_ref}


def declared_masks(info: DatasetInfo) -> dict[str, tuple[int, ...]]:
    """Each label or region declared in dataset.json, name -> label values (for BraTS: WT, TC, ET)."""
    return dict(zip(info.foreground_names, info.regions))


def evaluated_masks(info: DatasetInfo) -> dict[str, tuple[int, ...]]:
    """What is evaluated, name -> label values: each declared label or region, then (for region-based
    datasets) each single label value not already a region, named ``label N``."""
    targets = declared_masks(info)
    if info.region_based:
        for v in info.label_values:
            if v != 0 and (v,) not in targets.values():
                targets[f"label {v}"] = (v,)
    return targets


def case_metrics(pred: np.ndarray, ref: np.ndarray, info: DatasetInfo, spacing_zyx: Sequence[float],
                 nsd_tolerance: float | None = None, lesions: LesionSettings | None = None
                 ) -> dict[str, dict[str, float]]:
    """Metrics of one case, ``{name: {metric: value}}`` for every region/label of :func:`evaluated_masks`.

    ``pred`` and ``ref`` are label maps (same shape) in the dataset's label values. ``nsd_tolerance`` (mm)
    adds ``nsd``; ``lesions`` adds the BraTS lesion-wise metrics to each declared label/region.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    out = {}
    lesion_names = declared_masks(info) if lesions is not None else {}
    for name, values in evaluated_masks(info).items():
        p, r = np.isin(pred, values), np.isin(ref, values)
        out[name] = mask_metrics(p, r, spacing_zyx, nsd_tolerance)
        if lesions is not None and name in lesion_names:
            from autoseg.evaluation.lesions import lesion_wise  # lesions.py builds on this module
            out[name].update(lesion_wise(p, r, spacing_zyx, lesions))
    return out
