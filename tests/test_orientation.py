"""Reorientation agrees with SimpleITK's DICOMOrient and is exactly invertible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.io import Geometry
from autoseg.orientation import orientation_code, reorientation_for


def _directions() -> list[tuple[float, ...]]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            m = np.zeros((3, 3))
            for i, (p, s) in enumerate(zip(perm, signs)):
                m[p, i] = s
            out.append(tuple(m.ravel()))
    return out


@pytest.mark.parametrize("direction", _directions()[::5])
def test_matches_dicomorient_and_inverts(direction: tuple[float, ...]) -> None:
    arr = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(direction)
    img.SetSpacing((1.0, 2.0, 3.0))
    geom = Geometry.of(img)
    r = reorientation_for(geom)
    canonical = r.to_canonical(arr)
    ref = sitk.DICOMOrient(img, "LPS")
    np.testing.assert_array_equal(canonical, sitk.GetArrayFromImage(ref))
    assert r.spacing_zyx(geom) == tuple(reversed(ref.GetSpacing()))
    np.testing.assert_array_equal(r.from_canonical(canonical[None])[0], arr)
    assert orientation_code(ref.GetDirection()) == "LPS"
