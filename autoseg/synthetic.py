"""Synthetic BraTS-like volumes: a brain-shaped ellipsoid, four MRI-like channels whose contrasts
differ by tissue, and a tumour of nested oedema / necrotic core / enhancing rim.

Used by the demo and by the tests: deterministic for a seed, fast (a 64^3 case in ~50 ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg import brats
from autoseg.io import Geometry, write_image, write_json_atomic

# mean intensity per tissue (background, brain, CSF, oedema, necrosis, enhancing) for T1, T1ce, T2, FLAIR
_CONTRAST = np.array([
    [0.0, 0.0, 0.0, 0.0],
    [600, 650, 500, 450],     # brain
    [250, 260, 1500, 200],    # CSF / ventricles
    [520, 560, 1100, 1000],   # oedema
    [300, 320, 1300, 700],    # necrosis
    [620, 1400, 900, 850],    # enhancing
], dtype=np.float32)


@dataclass(frozen=True)
class SyntheticCase:
    """Channels (T1, T1ce, T2, FLAIR) as (z, y, x) float32 arrays, label in the chosen BraTS convention."""

    images: list[np.ndarray]
    label: np.ndarray
    spacing_zyx: tuple[float, float, float]


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))


def make_case(shape: tuple[int, int, int] = (48, 64, 64), seed: int = 0, convention: str = "brats2020",
              spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0), tumour: bool = True) -> SyntheticCase:
    """One case. The tumour's size and position vary with the seed; some seeds have no necrosis."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    centre = np.array(shape) / 2 + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    brain = _ellipsoid(shape, centre, np.array(shape) * np.array([0.40, 0.44, 0.38])) <= 1.0
    vent = _ellipsoid(shape, centre, np.array(shape) * np.array([0.08, 0.05, 0.12])) <= 1.0
    tissue = np.where(brain, 1, 0).astype(np.uint8)
    tissue[vent & brain] = 2
    label = np.zeros(shape, dtype=np.uint8)
    et_value = brats.ENHANCING[convention]
    if tumour:
        # tumour centre inside the brain, away from the ventricles
        offset = rng.uniform(0.12, 0.22, 3) * np.array(shape) * rng.choice([-1, 1], 3)
        tc = centre + offset
        r_ed = rng.uniform(0.14, 0.24) * min(shape) * rng.uniform(0.8, 1.2, 3)
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        dist = np.sqrt(_ellipsoid(shape, tc, r_ed)) + noise / noise.std() * 0.1
        oedema = (dist <= 1.0) & brain
        core_frac = rng.uniform(0.45, 0.7)
        enh = (dist <= core_frac) & brain
        nec = (dist <= core_frac * rng.choice([0.0, rng.uniform(0.4, 0.75)], p=[0.15, 0.85])) & brain
        label[oedema] = 2
        label[enh] = et_value
        label[nec] = 1
        tissue[oedema] = 3
        tissue[enh] = 5
        tissue[nec] = 4
    bias = 1.0 + 0.1 * ndimage.zoom(rng.standard_normal((3, 3, 3)), np.array(shape) / 3, order=1)[
        tuple(slice(0, s) for s in shape)]
    images = []
    for ch in range(4):
        scale = rng.uniform(0.8, 1.25)
        img = _CONTRAST[tissue, ch] * bias * scale
        img = img + rng.normal(0, 25, shape) * brain
        img = ndimage.gaussian_filter(img, 0.6)
        img[~brain] = 0
        images.append(np.clip(img, 0, None).astype(np.float32))
    return SyntheticCase(images, label, spacing_zyx)


def _geometry(shape_zyx: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> Geometry:
    return Geometry(tuple(reversed(shape_zyx)), tuple(reversed(spacing_zyx)), (0.0, -239.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def write_raw_dataset(raw_dir: str | Path, n_train: int = 6, n_test: int = 0, shape: tuple[int, int, int] = (48, 64, 64),
                      seed: int = 0, convention: str = "brats2020", name: str = "Synthetic") -> Path:
    """Write a region-based BraTS-like dataset in the nnU-Net v2 raw layout; returns ``raw_dir``."""
    raw_dir = Path(raw_dir)
    for i in range(n_train + n_test):
        case = make_case(shape, seed + i, convention)
        subset = "Tr" if i < n_train else "Ts"
        cid = f"case_{i:03d}"
        geom = _geometry(case.label.shape, case.spacing_zyx)
        for c, img in enumerate(case.images):
            write_image(raw_dir / f"images{subset}" / f"{cid}_{c:04d}.nii.gz", img, geom)
        write_image(raw_dir / f"labels{subset}" / f"{cid}.nii.gz", case.label, geom)
    write_json_atomic(raw_dir / "dataset.json", brats.dataset_json_for(convention, n_train, name))
    return raw_dir


def write_brats_folders(out_dir: str | Path, n: int = 2, shape: tuple[int, int, int] = (48, 64, 64), seed: int = 0,
                        convention: str = "brats2020", labelled: bool = True, first_index: int = 0,
                        labels_to: str | Path | None = None) -> list[Path]:
    """Write cases as BraTS release folders (``CASE/CASE_t1.nii.gz`` ... or ``CASE/CASE-t1n.nii.gz`` ...).

    Case ``k`` (``first_index`` <= k < ``first_index + n``) uses seed ``seed + k``, so a training set and a
    test set written by two calls never share a case. ``labels_to`` writes the labels of unlabelled cases
    there as ``CASE.nii.gz`` (like a validation set whose labels are held back), for evaluation.
    """
    suffixes, seg, sep = brats._SUFFIXES[convention]
    folders = []
    for k in range(first_index, first_index + n):
        case = make_case(shape, seed + k, convention)
        cid = f"BraTS-SYN-{k:05d}-000" if convention == "brats2023" else f"BraTS20_Synthetic_{k:03d}"
        folder = Path(out_dir) / cid
        geom = _geometry(case.label.shape, case.spacing_zyx)
        for suffix, img in zip(suffixes, case.images):
            write_image(folder / f"{cid}{sep}{suffix}.nii.gz", img, geom)
        if labelled:
            write_image(folder / f"{cid}{sep}{seg}.nii.gz", case.label, geom)
        elif labels_to is not None:
            write_image(Path(labels_to) / f"{cid}.nii.gz", case.label, geom)
        folders.append(folder)
    return folders
