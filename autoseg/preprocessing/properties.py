"""What preprocessing did to one case, saved next to it as JSON, so that every step can be undone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoseg.io import Geometry
from autoseg.orientation import Reorientation


@dataclass(frozen=True)
class CaseProperties:
    """Steps applied to one case, in order, with the shapes between them (all zyx, canonical after step 1).

    1. reorient: ``np.flip(np.transpose(image, perm), flips)``: original ``geometry`` -> ``shape_canonical``
    2. crop: ``bbox`` (half-open, canonical axes) -> ``shape_after_crop`` (spacing ``spacing_canonical``)
    3. normalise per channel with ``intensity_stats`` (mean, std) used
    4. resample: ``target_spacing`` -> ``shape_after_resampling``; ``separate_axis`` was resampled on its own
    """

    geometry: Geometry
    perm: tuple[int, int, int]
    flips: tuple[int, ...]
    shape_canonical: tuple[int, int, int]
    spacing_canonical: tuple[float, float, float]
    bbox: tuple[tuple[int, int], ...]
    shape_after_crop: tuple[int, int, int]
    target_spacing: tuple[float, float, float]
    shape_after_resampling: tuple[int, int, int]
    separate_axis: int | None = None
    intensity_stats: tuple[tuple[float, float], ...] = ()

    @property
    def reorientation(self) -> Reorientation:
        return Reorientation(self.perm, self.flips)

    @property
    def resampled(self) -> bool:
        return self.shape_after_resampling != self.shape_after_crop

    def to_dict(self) -> dict[str, Any]:
        return {
            "geometry": {"size": list(self.geometry.size), "spacing": list(self.geometry.spacing),
                         "origin": list(self.geometry.origin), "direction": list(self.geometry.direction)},
            "perm": list(self.perm), "flips": list(self.flips),
            "shape_canonical": list(self.shape_canonical), "spacing_canonical": list(self.spacing_canonical),
            "bbox": [list(b) for b in self.bbox], "shape_after_crop": list(self.shape_after_crop),
            "target_spacing": list(self.target_spacing), "shape_after_resampling": list(self.shape_after_resampling),
            "separate_axis": self.separate_axis, "intensity_stats": [list(s) for s in self.intensity_stats],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseProperties:
        return cls(
            geometry=Geometry.from_dict(d["geometry"]),
            perm=tuple(int(p) for p in d["perm"]), flips=tuple(int(f) for f in d["flips"]),  # type: ignore[arg-type]
            shape_canonical=tuple(int(s) for s in d["shape_canonical"]),  # type: ignore[arg-type]
            spacing_canonical=tuple(float(s) for s in d["spacing_canonical"]),  # type: ignore[arg-type]
            bbox=tuple((int(lo), int(hi)) for lo, hi in d["bbox"]),
            shape_after_crop=tuple(int(s) for s in d["shape_after_crop"]),  # type: ignore[arg-type]
            target_spacing=tuple(float(s) for s in d["target_spacing"]),  # type: ignore[arg-type]
            shape_after_resampling=tuple(int(s) for s in d["shape_after_resampling"]),  # type: ignore[arg-type]
            separate_axis=None if d.get("separate_axis") is None else int(d["separate_axis"]),
            intensity_stats=tuple((float(m), float(s)) for m, s in d.get("intensity_stats", [])),
        )
