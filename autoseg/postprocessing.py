"""Largest-connected-component postprocessing, chosen on cross-validation results only where it helps.

As nnU-Net: (a) keep only the largest component of the whole foreground, kept if the mean Dice over
the labels/regions improves and none gets worse; then (b) for each label/region on its own, keep only
its largest component, kept if that label/region's mean Dice improves. Removed voxels become
background. Components use full (26-) connectivity. The decision is a small JSON file applied by
``autoseg-predict --postprocess`` and ``autoseg-ensemble --postprocess``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.io import read_json, write_json_atomic

FOREGROUND = "foreground"


def keep_largest_component(seg: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Copy of ``seg`` where voxels of ``values`` outside their largest connected component are set to 0."""
    mask = np.isin(seg, list(values))
    out = seg.copy()
    if not mask.any():
        return out
    components, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    n = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    return 1.0 if n == 0 else 2 * int(np.count_nonzero(pred & ref)) / n


def _targets(info: DatasetInfo) -> dict[str, tuple[int, ...]]:
    return dict(zip(info.foreground_names, info.regions))


@dataclass(frozen=True)
class PostprocessingPlan:
    """Which largest-component steps to apply, with the cross-validation Dice that justified them."""

    foreground_largest_component: bool = False
    largest_component: tuple[str, ...] = ()
    dice_before: dict[str, float] = field(default_factory=dict)
    dice_after: dict[str, float] = field(default_factory=dict)
    num_cases: int = 0

    def apply(self, seg: np.ndarray, info: DatasetInfo) -> np.ndarray:
        """Apply the chosen steps to a label map in the dataset's label values."""
        targets = _targets(info)
        if self.foreground_largest_component:
            seg = keep_largest_component(seg, [v for v in info.label_values if v != 0])
        for name in self.largest_component:
            if name not in targets:
                raise fail(None, f"postprocessing names {name!r}, not a label/region of this dataset "
                           f"({', '.join(targets)})", "determine postprocessing again for this model")
            seg = keep_largest_component(seg, targets[name])
        return seg

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> PostprocessingPlan:
        d = read_json(path)
        try:
            return cls(bool(d["foreground_largest_component"]), tuple(d["largest_component"]),
                       dict(d.get("dice_before", {})), dict(d.get("dice_after", {})), int(d.get("num_cases", 0)))
        except (KeyError, TypeError) as e:
            raise fail(path, f"not a postprocessing file ({e})", "write it with autoseg-evaluate --determine-postprocessing") from None


def _case_scores(pred: np.ndarray, ref: np.ndarray, info: DatasetInfo) -> dict[str, dict[str, float]]:
    """Dice per target for every candidate: baseline, foreground step, and each target's step on both."""
    targets = _targets(info)
    fg_values = [v for v in info.label_values if v != 0]
    refs = {t: np.isin(ref, v) for t, v in targets.items()}

    def scores(seg: np.ndarray) -> dict[str, float]:
        return {t: _dice(np.isin(seg, v), refs[t]) for t, v in targets.items()}

    fg = keep_largest_component(pred, fg_values)
    out = {"base": scores(pred), FOREGROUND: scores(fg)}
    for t, v in targets.items():
        out[f"base+{t}"] = {t: _dice(np.isin(keep_largest_component(pred, v), v), refs[t])}
        out[f"{FOREGROUND}+{t}"] = {t: _dice(np.isin(keep_largest_component(fg, v), v), refs[t])}
    return out


def determine_postprocessing(pairs: Iterable[tuple[np.ndarray, np.ndarray]], info: DatasetInfo,
                             num_cases: int | None = None) -> PostprocessingPlan:
    """Choose the steps from (prediction, reference) label maps of cross-validation cases."""
    sums: dict[str, dict[str, float]] = {}
    n = 0
    for pred, ref in tqdm(pairs, total=num_cases, desc="postprocessing", unit="case", leave=False):
        for variant, scores in _case_scores(pred, ref, info).items():
            acc = sums.setdefault(variant, {})
            for t, d in scores.items():
                acc[t] = acc.get(t, 0.0) + d
        n += 1
    if n == 0:
        raise fail(None, "no cases to determine postprocessing on", "give predictions that have references")
    mean = {v: {t: d / n for t, d in s.items()} for v, s in sums.items()}
    targets = list(_targets(info))
    base, fg = mean["base"], mean[FOREGROUND]
    use_fg = (np.mean([fg[t] for t in targets]) > np.mean([base[t] for t in targets])
              and all(fg[t] >= base[t] for t in targets))
    current = dict(fg if use_fg else base)
    prefix = FOREGROUND if use_fg else "base"
    chosen = []
    for t in targets:
        after = mean[f"{prefix}+{t}"][t]
        if after > current[t]:
            chosen.append(t)
            current[t] = after
    return PostprocessingPlan(bool(use_fg), tuple(chosen), dict(base), current, n)
