"""BraTS 2023 lesion-wise Dice and HD95 for one binary mask pair (prediction, reference).

The definitions are those of the BraTS 2023 evaluation (Saluja et al., BraTS-2023-Metrics), written anew:

- lesions are 26-connected components; reference lesions whose dilations touch are one lesion (the
  reference mask is dilated, its 26-connected components taken, and each holds the reference voxels in it);
- a predicted component matches a reference lesion when it overlaps the lesion dilated by ``dilation``
  iterations of the 18-neighbour structuring element (``generate_binary_structure(3, 2)``, as the toolkit);
- each reference lesion is scored (Dice, HD95) against the union of its matched components; a lesion with
  none scores Dice 0 and HD95 374 mm;
- reference lesions of at most ``min_volume_mm3`` are left out of the score (the components matched to them
  are not false positives either); every predicted component that matches no reference lesion, whatever its
  size, adds an entry of Dice 0 and HD95 374 mm;
- the case's score is the mean over these entries; with none (both masks empty), Dice 1 and HD95 0.

HD95 per lesion is this package's :func:`~autoseg.evaluation.metrics.hd95` (medpy's definition); the toolkit
uses DeepMind's surfel-based robust Hausdorff distance instead (see docs/evaluation.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.boxes import mask_bounds
from autoseg.evaluation.metrics import hd95

LESION_HD95_PENALTY = 374.0
LESION_METRICS = ("lesion_dice", "lesion_hd95")
LESION_COUNTS = ("lesion_tp", "lesion_fn", "lesion_fp")
_CONNECTIVITY = np.ones((3, 3, 3), bool)                      # 26-neighbour components
_DILATION = ndimage.generate_binary_structure(3, 2)           # 18-neighbour dilation, as the BraTS toolkit


@dataclass(frozen=True)
class LesionSettings:
    """Matching dilation (iterations, i.e. voxels) and the reference-lesion volume (mm³) at or below which a
    lesion is left out; the defaults are BraTS 2023 GLI's (also SSA and PED; MEN: 1 and 50; MET: 1 and 2)."""

    dilation: int = 3
    min_volume_mm3: float = 50.0


def _grow(box: Sequence[slice], by: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - by, 0), min(s.stop + by, n)) for s, n in zip(box, shape))


def _union(boxes: Sequence[Sequence[slice]]) -> tuple[slice, ...]:
    return tuple(slice(min(b[i].start for b in boxes), max(b[i].stop for b in boxes)) for i in range(len(boxes[0])))


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    # scipy treats iterations < 1 as "until nothing changes": 0 means no dilation here
    return ndimage.binary_dilation(mask, _DILATION, iterations=iterations) if iterations > 0 else mask


def lesion_wise(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                settings: LesionSettings = LesionSettings()) -> dict[str, float]:
    """``lesion_dice``, ``lesion_hd95`` (mm) and the lesion counts ``lesion_tp`` (scored reference lesions
    matched), ``lesion_fn`` (scored reference lesions missed), ``lesion_fp`` (unmatched predicted components).

    Everything happens in the bounding box of both masks, grown by the dilation (and one voxel for the
    surfaces), which gives the full image's result on full-size volumes at a fraction of the cost.
    """
    pred, ref = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    d = max(int(settings.dilation), 0)
    boxes = [_grow([slice(a, b) for a, b in bounds], grow, pred.shape)
             for bounds, grow in ((mask_bounds(ref), max(d, 1)), (mask_bounds(pred), 1)) if bounds is not None]
    if not boxes:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0, "lesion_tp": 0, "lesion_fn": 0, "lesion_fp": 0}
    work = _union(boxes)
    p, r = pred[work], ref[work]
    pred_cc, n_pred = ndimage.label(p, _CONNECTIVITY)
    pred_boxes = ndimage.find_objects(pred_cc)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    merged, n_ref = ndimage.label(_dilate(r, d), _CONNECTIVITY)
    lesions = np.where(r, merged, 0)                              # reference voxels, numbered by merged lesion
    lesion_boxes = ndimage.find_objects(lesions)
    lesion_sizes = np.bincount(lesions.ravel(), minlength=n_ref + 1)
    voxel_mm3 = math.prod(float(s) for s in spacing)
    matched_any: set[int] = set()
    dice, dist, tp, fn = [], [], 0, 0
    for k in range(1, n_ref + 1):
        around = _grow(lesion_boxes[k - 1], d, p.shape)
        lesion = lesions[around] == k
        matched = np.unique(pred_cc[around][_dilate(lesion, d)])
        matched = [int(m) for m in matched if m != 0]
        matched_any.update(matched)
        if lesion_sizes[k] * voxel_mm3 <= settings.min_volume_mm3:
            continue
        if not matched:
            dice.append(0.0)
            dist.append(LESION_HD95_PENALTY)
            fn += 1
            continue
        joint = _grow(_union([lesion_boxes[k - 1], *(pred_boxes[m - 1] for m in matched)]), 1, p.shape)
        seg, ref_lesion = np.isin(pred_cc[joint], matched), lesions[joint] == k
        overlap = int(np.count_nonzero(seg & ref_lesion))
        dice.append(2 * overlap / (int(pred_sizes[matched].sum()) + int(lesion_sizes[k])))
        dist.append(hd95(seg, ref_lesion, spacing))
        tp += 1
    fp = n_pred - len(matched_any)
    entries = len(dice) + fp
    if entries == 0:
        return {"lesion_dice": 1.0, "lesion_hd95": 0.0, "lesion_tp": 0, "lesion_fn": 0, "lesion_fp": 0}
    return {"lesion_dice": float(sum(dice) / entries),
            "lesion_hd95": float((sum(dist) + fp * LESION_HD95_PENALTY) / entries),
            "lesion_tp": tp, "lesion_fn": fn, "lesion_fp": fp}
