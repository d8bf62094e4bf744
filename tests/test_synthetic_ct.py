"""The synthetic stroke CT: HU of each tissue, a lesion in some slices only, determinism, and its PNG/DICOM writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.synthetic_ct import (HU_OFFSET, hu_to_uint16, make_head_ct, window_to_uint8, write_dicom_series,
                                  write_png_patients)

SHAPE = (12, 64, 64)


def test_tissues_have_their_hounsfield_units() -> None:
    for seed in range(3):
        ct = make_head_ct(SHAPE, seed=seed)
        hu, lesion = ct.hu, ct.lesion > 0
        assert hu[0, 0, 0] == -1000 and hu.dtype == np.float32
        bone = hu > 500
        assert 1000 <= np.median(hu[bone]) <= 1500
        brain = (hu > 20) & (hu < 60) & ~lesion
        assert 30 <= np.median(hu[brain]) <= 40
        assert 14 <= hu[lesion].mean() <= 21                     # hypodense, between CSF and brain
        csf = (hu > -50) & (hu < 12) & ~lesion
        assert 0 <= np.median(hu[csf]) <= 12 and csf.sum() > 50  # the ventricles
        slices = lesion.any(axis=(1, 2))
        assert 0 < slices.sum() < SHAPE[0]                       # the lesion lies in some slices only
        assert not (lesion & (hu > 500)).any()


def test_same_seed_same_head_other_seed_other_lesion() -> None:
    a, b, c = make_head_ct(SHAPE, seed=4), make_head_ct(SHAPE, seed=4), make_head_ct(SHAPE, seed=5)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.lesion, b.lesion)
    assert not np.array_equal(a.lesion, c.lesion)
    assert not make_head_ct(SHAPE, seed=4, lesion=False).lesion.any()


def test_window_and_offset_encodings() -> None:
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 1200.0])
    assert window_to_uint8(hu).tolist() == [0, 0, 128, 255, 255]   # brain window 40/80: 0..80 HU
    assert hu_to_uint16(hu).tolist() == [24, 1024, 1064, 1104, 2224] and HU_OFFSET == 1024


def test_png_patient_folders(tmp_path: Path) -> None:
    folders = write_png_patients(tmp_path, n=2, shape=(4, 32, 32), seed=0, bits=16)
    assert [f.name for f in folders] == ["patient_001", "patient_002"]
    assert sorted(p.name for p in folders[0].iterdir()) == ["001.png", "002.png", "003.png", "004.png"]
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(folders[0] / "001.png")))
    assert first.dtype == np.uint16
    np.testing.assert_array_equal(first, hu_to_uint16(make_head_ct((4, 32, 32), seed=1).hu[0]))
    masks = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
                      for p in sorted((tmp_path / "masks" / "patient_001").iterdir())])
    assert set(np.unique(masks)) <= {0, 255} and masks.dtype == np.uint8


def test_dicom_series_stores_hu_plus_1024_and_reads_back_as_hu(tmp_path: Path) -> None:
    hu = make_head_ct((3, 16, 16), seed=2).hu
    files = write_dicom_series(tmp_path / "s", hu, spacing_zyx=(2.0, 0.5, 0.5), origin=(1.0, 2.0, 3.0))
    header = sitk.ImageFileReader()
    header.SetFileName(str(files[2]))
    header.ReadImageInformation()
    assert header.GetMetaData("0028|1052").strip() == "-1024"
    assert np.allclose([float(v) for v in header.GetMetaData("0020|0032").split("\\")], (1.0, 2.0, 7.0))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reader.Execute()), np.round(hu))
