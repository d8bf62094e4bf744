"""Reorientation to one canonical convention (ITK's identity direction, i.e. LPS axes) by axis
permutation and flips only: exact, lossless and invertible.

Arrays are (z, y, x); numpy axis k is ITK index axis 2 - k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from autoseg.errors import fail
from autoseg.io import Geometry


def orientation_code(direction: tuple[float, ...]) -> str:
    """Three-letter code of where the index axes point, ITK convention (identity = "LPS")."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(float(d) for d in direction))


@dataclass(frozen=True)
class Reorientation:
    """Canonical array = ``np.flip(np.transpose(original, perm), flips)`` (numpy axes, zyx)."""

    perm: tuple[int, int, int]
    flips: tuple[int, ...]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Apply to a (..., z, y, x) array; leading axes (channels) are kept."""
        lead = array.ndim - 3
        out = np.transpose(array, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        return np.flip(out, tuple(lead + f for f in self.flips)) if self.flips else out

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`."""
        lead = array.ndim - 3
        out = np.flip(array, tuple(lead + f for f in self.flips)) if self.flips else array
        inv = np.argsort(self.perm)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(p) for p in inv))

    def spacing_zyx(self, geometry: Geometry) -> tuple[float, float, float]:
        s = geometry.spacing_zyx
        return tuple(float(s[p]) for p in self.perm)  # type: ignore[return-value]

    def shape_zyx(self, geometry: Geometry) -> tuple[int, int, int]:
        s = geometry.shape_zyx
        return tuple(int(s[p]) for p in self.perm)  # type: ignore[return-value]


def reorientation_for(geometry: Geometry, path: object = None) -> Reorientation:
    """The permutation/flips that bring an image with this direction to the canonical orientation.

    Oblique directions are snapped to the nearest axis; no resampling happens (the original
    geometry is kept in the case properties and restored on export).
    """
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)  # columns: ITK index axes in physical space
    phys_of_index = np.argmax(np.abs(d), axis=0)                    # physical axis each index axis points along
    if sorted(phys_of_index.tolist()) != [0, 1, 2]:
        raise fail(path, "image direction is degenerate (two axes point the same way)", "fix the image header")
    signs = np.sign(d[phys_of_index, np.arange(3)])
    # canonical numpy axis k (k=0 -> z) must hold physical axis 2-k; find which original numpy axis that is
    perm = []
    for k in range(3):
        itk_axis = int(np.where(phys_of_index == 2 - k)[0][0])
        perm.append(2 - itk_axis)
    flips = tuple(k for k in range(3) if signs[2 - perm[k]] < 0)
    return Reorientation(tuple(perm), flips)  # type: ignore[arg-type]
