"""Synthetic stroke-like head CT in Hounsfield units, and a writer of PNG patient folders.

A head phantom per seed: air (-1000 HU) around a skin layer (~40 HU), a skull shell (1000-1500 HU), brain
(30-40 HU, grey/white variation), two lateral ventricles of CSF (5-10 HU) and, in a band of slices, a
hypodense ischaemic lesion (15-20 HU) in one hemisphere, plus scanner noise. Deterministic for a seed and fast
(a 24 x 96 x 96 volume in about 0.1 s), for tests of the PNG/TIFF slice conversion and the stroke CT path.

:func:`write_png_patients` writes the layout of slice-based stroke CT systems::

    OUT/images/patient_001/001.png 002.png ...   (windowed 8-bit, or 16-bit HU + 1024)
    OUT/masks/patient_001/001.png 002.png ...    (0 background, 255 lesion)

and :func:`write_dicom_series` a CT series, one DICOM file per slice with the tags a scanner writes for its
position and rescaling, for tests of the DICOM conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from autoseg.io import atomic_path, keeps_locale

AIR, SKIN, CSF_RANGE, BRAIN_RANGE, LESION_RANGE, BONE_RANGE = -1000.0, 40.0, (5, 10), (30, 40), (15, 20), (1000, 1500)
HU_OFFSET = 1024      # 16-bit PNGs store HU + 1024, so that air (-1000) is a positive value


@dataclass(frozen=True)
class SyntheticCT:
    """A head CT volume (z, y, x) float32 in HU, its lesion mask (0/1 uint8), and its spacing in mm (z, y, x)."""

    hu: np.ndarray
    lesion: np.ndarray
    spacing_zyx: tuple[float, float, float]


def _radius(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid radius: < 1 inside, 1 on the surface."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth noise scaled to about [-1, 1]: texture and irregular borders."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (3 * field.std() + 1e-6)


def make_head_ct(shape: tuple[int, int, int] = (24, 96, 96), seed: int = 0, lesion: bool = True,
                 spacing_zyx: tuple[float, float, float] = (5.0, 0.5, 0.5)) -> SyntheticCT:
    """One head. The lesion's side, size, position and slice range vary with the seed; ``lesion=False`` gives none.

    The head is an ellipsoid cut by the volume's top and bottom slices (as an axial stroke CT covers the brain),
    so the lesion lies in some slices only and the others hold brain without lesion.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    size = np.array(shape, dtype=float)
    centre = size / 2 + np.array([0.0, *rng.uniform(-0.03, 0.03, 2) * size[1:]])
    head = _radius(shape, centre, size * np.array([0.62, 0.44, 0.37]) * rng.uniform(0.95, 1.05, 3))
    wobble = 0.01 * _smooth_field(rng, shape, 3.0)
    brain = head + wobble < 0.86
    skull = (head + wobble >= 0.86) & (head < 0.96)
    skin = (head >= 0.96) & (head < 1.0)
    vent = np.zeros(shape, dtype=bool)
    for side in (-1, 1):   # two lateral ventricles beside the midline
        c = centre + np.array([0.05 * size[0], -0.04 * size[1], side * 0.055 * size[2]])
        vent |= _radius(shape, c, size * np.array([0.22, 0.13, 0.035])) < 1.0
    vent &= brain

    texture = _smooth_field(rng, shape, 2.0)
    hu = np.full(shape, AIR, dtype=np.float32)
    hu[skin] = SKIN
    hu[skull] = BONE_RANGE[0] + (BONE_RANGE[1] - BONE_RANGE[0]) * (0.5 + 0.5 * np.clip(texture[skull] * 1.5, -1, 1))
    brain_mean = rng.uniform(*BRAIN_RANGE)
    hu[brain] = brain_mean + 3.0 * texture[brain]
    hu[vent] = rng.uniform(*CSF_RANGE) + texture[vent]

    mask = np.zeros(shape, dtype=np.uint8)
    if lesion:
        side = rng.choice([-1, 1])
        lc = centre + np.array([rng.uniform(-0.12, 0.12) * size[0], rng.uniform(-0.15, 0.15) * size[1],
                                side * rng.uniform(0.14, 0.2) * size[2]])
        radii = size * np.array([rng.uniform(0.12, 0.2), *rng.uniform(0.07, 0.12, 2)])
        blob = _radius(shape, lc, radii) + 0.3 * _smooth_field(rng, shape, 1.5) < 1.0
        mask = (blob & brain & ~vent).astype(np.uint8)
        hu[mask > 0] = rng.uniform(*LESION_RANGE) + 1.5 * texture[mask > 0]

    hu = ndimage.gaussian_filter(hu, (0.0, 0.6, 0.6)) + rng.normal(0.0, 3.0, shape) * (hu > AIR + 1)
    return SyntheticCT(hu.astype(np.float32), mask, spacing_zyx)


def window_to_uint8(hu: np.ndarray, centre: float = 40.0, width: float = 80.0) -> np.ndarray:
    """The display window ``centre``/``width`` (brain: 40/80) mapped to 0..255, clipped outside."""
    low = centre - width / 2
    return np.round(np.clip((hu - low) / width, 0.0, 1.0) * 255).astype(np.uint8)


def hu_to_uint16(hu: np.ndarray) -> np.ndarray:
    """HU + 1024 as unsigned 16 bit, the usual lossless way to store CT in PNG."""
    return np.clip(np.round(hu) + HU_OFFSET, 0, 65535).astype(np.uint16)


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp))


def write_png_patients(out_dir: str | Path, n: int = 3, shape: tuple[int, int, int] = (24, 96, 96), seed: int = 0,
                       bits: int = 8, first_index: int = 1, masks: bool = True) -> list[Path]:
    """Write ``n`` patients as PNG slice folders; returns the image folders (``images/patient_001`` ...).

    Patient ``k`` uses seed ``seed + k``. ``bits`` 8 writes the brain window 40/80, 16 writes HU + 1024;
    masks are 0/255, written for every patient when ``masks`` (slices without lesion are all 0).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    out_dir = Path(out_dir)
    folders = []
    for k in range(first_index, first_index + n):
        case = make_head_ct(shape, seed + k)
        pixels = window_to_uint8(case.hu) if bits == 8 else hu_to_uint16(case.hu)
        folder = out_dir / "images" / f"patient_{k:03d}"
        for z in range(shape[0]):
            _write_png(folder / f"{z + 1:03d}.png", pixels[z])
            if masks:
                _write_png(out_dir / "masks" / folder.name / f"{z + 1:03d}.png", case.lesion[z] * np.uint8(255))
        folders.append(folder)
    return folders


@keeps_locale
def write_dicom_series(folder: str | Path, hu: np.ndarray, spacing_zyx: Sequence[float] = (5.0, 0.5, 0.5),
                       origin: Sequence[float] = (0.0, 0.0, 0.0),
                       direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                       series_uid: str = "1.2.826.0.1.3680043.8.498.1", file_names: Sequence[str] | None = None,
                       modality: str = "CT") -> list[Path]:
    """Write ``hu`` (z, y, x) as a DICOM series, slice ``k`` to ``file_names[k]`` (default ``IM0001.dcm`` ...).

    Each slice carries its ImagePositionPatient (the physical point of its first voxel), the orientation, the
    series UID and RescaleIntercept -1024 / RescaleSlope 1: the stored pixels are HU + 1024, as on a scanner,
    and a reader must apply the rescale to get HU back. Returns the files in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(file_names) if file_names is not None else [f"IM{k + 1:04d}.dcm" for k in range(hu.shape[0])]
    image = sitk.GetImageFromArray(np.round(hu).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    orientation = "\\".join(f"{v:.6f}" for v in (*d[:, 0], *d[:, 1]))   # row and column direction cosines
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, name in enumerate(names):
        piece = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {"0008|0060": modality, "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                           "0008|0018": f"{series_uid}.{k + 1}", "0020|000d": f"{series_uid}.0",
                           "0020|000e": series_uid, "0020|0013": str(k + 1), "0020|0037": orientation,
                           "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0028|1052": "-1024",
                           "0028|1053": "1"}.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / name))   # not via a temporary name: GDCM would read a leftover one
        writer.Execute(piece)
        files.append(folder / name)
    return files
