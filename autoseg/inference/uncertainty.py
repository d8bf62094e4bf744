"""Per-voxel uncertainty of an ensemble prediction and a per-case score (``autoseg-predict --uncertainty``).

The ensemble members are the runs prediction already makes: every fold network under every mirroring.
Two maps per case, in the input's grid like the segmentation:

- **entropy** of the prediction's probabilities (the logit-averaged ones that give the segmentation), in
  bits and scaled to [0, 1]: for regions the mean over regions of each region's binary entropy; for labels
  the categorical entropy divided by log2 of the number of classes.
- **variance** of the members' probabilities (population variance, mean over the outputs), from Welford's
  running sums: two tensors of memory whatever the number of members.

The per-case score, per region or label, is the region's total binary entropy divided by its predicted
volume (voxels, at least 1): the uncertain voxels per predicted voxel, which grows with the expected error
relative to the region's size (as 1 - Dice does) and, unlike the mean entropy inside the prediction, also
counts uncertain voxels just outside it (missed tumour). ``foreground_score`` is the entropy map's total
divided by the predicted foreground's voxels.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.io import Geometry, atomic_path, read_json, write_image, write_json_atomic

if TYPE_CHECKING:   # not imported at run time: autoseg-evaluate reads the scores without loading torch
    import torch

FOLDER = "uncertainty"


class RunningVariance:
    """Welford's running mean and population variance of same-shape tensors (float32): memory of two
    tensors however many are added, and no cancellation as with a plain sum of squares."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        self.count += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = x.clone(), x.new_zeros(x.shape)
            return
        delta = x - self.mean
        self.mean.add_(delta, alpha=1 / self.count)
        self.m2.addcmul_(delta, x - self.mean)

    def variance(self) -> torch.Tensor:
        if self.m2 is None:
            raise ValueError("no values added")
        return self.m2 / self.count


def output_channels(info: DatasetInfo) -> dict[str, int]:
    """Foreground name -> its channel in the network output (softmax outputs start with background)."""
    first = 0 if info.region_based else 1
    return {name: first + i for i, name in enumerate(info.foreground_names)}


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) in bits (0 at p = 0 or 1, 1 at p = 0.5), float32."""
    p = np.clip(np.asarray(p, dtype=np.float32), 0, 1)
    return _plogp(p) + _plogp(1 - p)


def _plogp(p: np.ndarray) -> np.ndarray:
    """-p log2 p with 0 at p = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log2(p), np.float32(0)).astype(np.float32)


def entropy_map(probs: np.ndarray, region_based: bool) -> np.ndarray:
    """Per-voxel entropy in [0, 1] of probabilities (C, ...): mean binary entropy over regions, or
    categorical entropy / log2(C) over classes."""
    out = np.zeros(probs.shape[1:], np.float32)
    for p in probs:
        if region_based:
            out += binary_entropy(p)
        else:
            out += _plogp(np.clip(p.astype(np.float32), 0, 1))
    return out / np.float32(len(probs) if region_based else math.log2(max(len(probs), 2)))


def case_scores(probs: np.ndarray, seg: np.ndarray, entropy: np.ndarray, info: DatasetInfo,
                label_map: dict[int, int]) -> tuple[dict[str, float], float]:
    """Per region/label score and the foreground score (module docstring) of one case; ``seg`` is the
    written segmentation, whose values ``label_map`` rewrote from the dataset's (BraTS conventions)."""
    scores = {}
    channels = output_channels(info)
    for name, values in zip(info.foreground_names, info.regions):
        predicted = np.count_nonzero(np.isin(seg, [label_map.get(v, v) for v in values]))
        total = float(binary_entropy(probs[channels[name]]).sum(dtype=np.float64))
        scores[name] = total / max(predicted, 1)
    foreground = float(entropy.sum(dtype=np.float64)) / max(int(np.count_nonzero(seg)), 1)
    return scores, foreground


def uncertainty_paths(out_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    """``OUT/uncertainty/CASE_entropy.nii.gz``, ``CASE_variance.nii.gz`` and ``CASE.json`` (written last)."""
    folder = out_dir / FOLDER
    return folder / f"{case_id}_entropy.nii.gz", folder / f"{case_id}_variance.nii.gz", folder / f"{case_id}.json"


def write_case_uncertainty(out_dir: Path, case_id: str, probs: np.ndarray, variance: np.ndarray, members: int,
                           seg: np.ndarray, geometry: Geometry, info: DatasetInfo,
                           label_map: dict[int, int]) -> None:
    """Both maps and the score JSON of one case; ``variance`` is the (z, y, x) mean member variance."""
    entropy_path, variance_path, json_path = uncertainty_paths(out_dir, case_id)
    entropy = entropy_map(probs, info.region_based)
    write_image(entropy_path, entropy, geometry)
    write_image(variance_path, variance.astype(np.float32, copy=False), geometry)
    scores, foreground = case_scores(probs, seg, entropy, info, label_map)
    write_json_atomic(json_path, {"case": case_id, "members": members, "score": scores,
                                  "foreground_score": foreground})


def read_case_uncertainty(path: Path) -> dict[str, Any]:
    """One ``CASE.json``: ``case``, ``members``, ``score`` (name -> number), ``foreground_score``; a foreign
    or broken file is a one-line error naming it."""
    data: Any = read_json(path)
    scores = data.get("score") if isinstance(data, dict) else None
    if (not isinstance(scores, dict) or not all(isinstance(v, (int, float)) for v in scores.values())
            or not isinstance(data.get("foreground_score"), (int, float))):
        raise fail(path, "not an uncertainty score file (no 'score' table of numbers)",
                   "rerun autoseg-predict --uncertainty for this case")
    return data


def write_scores_csv(out_dir: Path) -> Path | None:
    """``OUT/uncertainty/scores.csv``: one row per case JSON present (every shard's so far), None if none."""
    rows = []
    for path in sorted((out_dir / FOLDER).glob("*.json")):
        if not path.name.startswith("."):   # not a killed writer's temporary
            data = read_case_uncertainty(path)
            rows.append({"case": data.get("case", path.stem), "members": data.get("members"), **data["score"],
                         "foreground_score": data["foreground_score"]})
    if not rows:
        return None
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    path = out_dir / FOLDER / "scores.csv"
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
