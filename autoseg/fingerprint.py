"""Dataset fingerprint: what the planner needs to know about a raw dataset, measured cheaply.

Saved as ``preprocessed/DatasetNNN_Name/fingerprint.json``. Shapes and spacings are in the array order
(z, y, x) *after* reorientation to the canonical orientation (see ``preprocessing``), shapes after
cropping to the nonzero box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoseg.errors import fail
from autoseg.io import read_json, write_json_atomic

FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel, pooled over the sampled cases."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    shape: list[int]            # original (z, y, x), canonical orientation
    spacing: list[float]        # (z, y, x) mm
    orientation: str            # original orientation code, e.g. "LPS", "RAS"
    # measured on the sampled cases only (None for the rest), so the cost stays bounded:
    shape_after_crop: list[int] | None = None        # nonzero bounding box
    label_voxels: dict[str, int] | None = None       # per foreground output name (region or label)


@dataclass(frozen=True)
class Fingerprint:
    dataset_name: str
    channel_names: dict[str, str]
    num_training: int
    cases: list[CaseFingerprint]
    intensity: list[IntensityStats]   # one per channel
    sampled_cases: list[str]           # which cases the intensity statistics were drawn from
    version: int = FINGERPRINT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spacings(self) -> list[list[float]]:
        return [c.spacing for c in self.cases]

    @property
    def shapes_after_crop(self) -> list[list[int]]:
        """Cropped shapes of the sampled cases."""
        return [c.shape_after_crop for c in self.cases if c.shape_after_crop is not None]

    @property
    def median_relative_size_after_crop(self) -> float:
        import numpy as np

        rel = [float(np.prod(c.shape_after_crop)) / float(np.prod(c.shape)) for c in self.cases
               if c.shape_after_crop is not None]
        return float(np.median(rel)) if rel else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | Path | None = None) -> Fingerprint:
        try:
            if d.get("version") != FINGERPRINT_VERSION:
                raise fail(where, f"fingerprint version {d.get('version')} is not {FINGERPRINT_VERSION}", "rerun autoseg-plan")
            return cls(**{**d, "cases": [CaseFingerprint(**c) for c in d["cases"]],
                          "intensity": [IntensityStats(**s) for s in d["intensity"]]})
        except (KeyError, TypeError) as e:
            raise fail(where, f"fingerprint is incomplete or from another version ({e})", "rerun autoseg-plan") from None

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        return cls.from_dict(read_json(path), path)
