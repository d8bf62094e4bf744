"""Dataset integrity check: a clean dataset passes; each kind of damage is found, and all are listed at once."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import AutosegError
from autoseg.io import Geometry, read_image, write_image
from autoseg.synthetic import write_raw_dataset
from autoseg.verify import verify_dataset

SHAPE = (16, 20, 24)


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_raw_dataset(tmp_path / "Dataset001_Check", n_train=12, shape=SHAPE, seed=3)


def _img(raw: Path, case: int, channel: int) -> Path:
    return raw / "imagesTr" / f"case_{case:03d}_{channel:04d}.nii.gz"


def _lab(raw: Path, case: int) -> Path:
    return raw / "labelsTr" / f"case_{case:03d}.nii.gz"


def _rewrite(path: Path, change) -> None:
    array, geometry = read_image(path)
    array, geometry = change(array, geometry)
    write_image(path, array, geometry)


def test_clean_dataset_passes(raw: Path) -> None:
    verify_dataset(raw, workers=2)


def test_every_problem_is_listed_with_its_file(raw: Path) -> None:
    expected: list[tuple[Path, str]] = []

    _img(raw, 0, 2).unlink()
    expected.append((_img(raw, 0, 2), "channel 2 (T2) missing"))

    _rewrite(_lab(raw, 1), lambda a, g: (a, Geometry(g.size, (1.0, 1.0, 2.0), g.origin, g.direction)))
    expected.append((_lab(raw, 1), "spacing"))

    _rewrite(_lab(raw, 2), lambda a, g: (np.where(a == 4, 3, a).astype(a.dtype), g))  # 3 is not a brats2020 label
    expected.append((_lab(raw, 2), "label value(s) [3] are not declared"))

    def with_nan(a: np.ndarray, g: Geometry) -> tuple[np.ndarray, Geometry]:
        a = a.copy()
        a[0, 0, :3] = [np.nan, np.inf, -np.inf]
        return a, g
    _rewrite(_img(raw, 3, 0), with_nan)
    expected.append((_img(raw, 3, 0), "3 voxel(s) are NaN or infinite"))

    data = _img(raw, 4, 1).read_bytes()  # a download cut short
    _img(raw, 4, 1).write_bytes(data[: len(data) // 2])
    expected.append((_img(raw, 4, 1), "cannot read image data (EOFError"))

    data = gzip.decompress(_img(raw, 10, 1).read_bytes())  # complete gzip stream of a short file
    _img(raw, 10, 1).write_bytes(gzip.compress(data[: len(data) // 2]))
    expected.append((_img(raw, 10, 1), "cannot read image data"))

    sitk.WriteImage(sitk.Image(24, 20, sitk.sitkFloat32), str(_img(raw, 5, 3)))
    expected.append((_img(raw, 5, 3), "is a 2D image"))

    _rewrite(_img(raw, 6, 0), lambda a, g: (np.zeros_like(a), g))
    expected.append((_img(raw, 6, 0), "image is all zero"))

    _rewrite(_lab(raw, 7), lambda a, g: (np.zeros_like(a), g))
    expected.append((_lab(raw, 7), "label is empty (no foreground voxel); remove the case or relabel it"))

    _rewrite(_img(raw, 8, 1), lambda a, g: (a, Geometry(g.size, g.spacing, (5.0, 0.0, 0.0), g.direction)))
    expected.append((_img(raw, 8, 1), "origin"))

    _rewrite(_img(raw, 9, 2), lambda a, g: (a, Geometry(g.size, g.spacing, g.origin, (-1.0, 0, 0, 0, 1, 0, 0, 0, 1))))
    expected.append((_img(raw, 9, 2), "direction"))

    shutil.copy(_lab(raw, 0), raw / "labelsTr" / "ghost.nii.gz")
    expected.append((raw / "labelsTr" / "ghost.nii.gz", "label file without images"))

    nii = raw / "imagesTr" / "case_001_0000.nii"
    sitk.WriteImage(sitk.ReadImage(str(_img(raw, 1, 0))), str(nii), useCompression=False)
    expected.append((nii, "duplicate of case_001_0000.nii.gz"))

    for c in range(4):  # same case id but for upper/lower case: collides on macOS/Windows
        shutil.copy(_img(raw, 11, c), raw / "imagesTr" / f"CASE_011_{c:04d}.nii.gz")
    shutil.copy(_lab(raw, 11), raw / "labelsTr" / "CASE_011.nii.gz")
    expected.append((raw / "imagesTr", "case ids CASE_011 and case_011 differ only in upper/lower case"))

    (raw / "imagesTr" / "case_012_0000.nii.gz").write_bytes(_img(raw, 1, 0).read_bytes())
    expected.append((raw / "labelsTr" / "case_012.nii.gz", "label file missing"))
    expected.append((raw / "imagesTr" / "case_012_0001.nii.gz", "channel 1 (T1ce) missing"))
    expected.append((raw / "dataset.json", "numTraining is 12 but imagesTr holds 14 case(s)"))

    with pytest.raises(AutosegError) as e:
        verify_dataset(raw, workers=2)
    lines = str(e.value).splitlines()
    assert lines[0] == f"dataset check of {raw}: {len(lines) - 1} problem(s) found"
    for path, problem in expected:
        assert any(line.strip().startswith(f"{path}: ") and problem in line for line in lines), (path, problem, lines)
    # exactly one line per problem above, plus the two other missing channels of case_012
    assert len(lines) - 1 == len(expected) + 2


def test_test_images_are_checked_by_name(tmp_path: Path) -> None:
    raw = write_raw_dataset(tmp_path / "Dataset002_Ts", n_train=1, n_test=2, shape=SHAPE)
    verify_dataset(raw)
    missing = raw / "imagesTs" / "case_002_0003.nii.gz"
    missing.unlink()
    with pytest.raises(AutosegError, match="1 problem") as e:
        verify_dataset(raw)
    assert f"{missing}: channel 3 (FLAIR) missing" in str(e.value)


def test_4d_image_and_non_integer_label(raw: Path) -> None:
    sitk.WriteImage(sitk.Image([24, 20, 16, 2], sitk.sitkFloat32), str(_img(raw, 0, 0)))
    _rewrite(_lab(raw, 1), lambda a, g: (a.astype(np.float32) + 0.5, g))
    with pytest.raises(AutosegError) as e:
        verify_dataset(raw, workers=1)
    msg = str(e.value)
    assert f"{_img(raw, 0, 0)}: is a 4D image" in msg and f"{_lab(raw, 1)}: label holds non-integer values" in msg


def test_bad_dataset_json_stops_with_one_line(raw: Path) -> None:
    d = json.loads((raw / "dataset.json").read_text())
    del d["channel_names"]
    (raw / "dataset.json").write_text(json.dumps(d))
    with pytest.raises(AutosegError, match=r"dataset.json: missing field\(s\) channel_names"):
        verify_dataset(raw)
    with pytest.raises(AutosegError, match="raw dataset folder not found"):
        verify_dataset(raw.parent / "nothing")


def test_wrong_file_ending_undeclared_channel_and_unsafe_id(raw: Path) -> None:
    path = _img(raw, 0, 0)
    mha = path.with_name("case_000_0000.mha")
    sitk.WriteImage(sitk.ReadImage(str(path)), str(mha))
    path.unlink()
    shutil.copy(_img(raw, 1, 0), raw / "imagesTr" / "case_001_0004.nii.gz")
    shutil.copy(_img(raw, 1, 0), raw / "imagesTr" / "bad case_0000.nii.gz")
    with pytest.raises(AutosegError) as e:
        verify_dataset(raw)
    msg = str(e.value)
    assert f"{mha}: file ending .mha differs from dataset.json's file_ending .nii.gz" in msg
    assert "case_001_0004.nii.gz: channel 4 is not declared" in msg
    assert f"{path}: channel 0 (T1) missing" in msg
    assert "unsafe case id 'bad case'" in msg


@pytest.mark.brats
@pytest.mark.slow
def test_real_labelled_cases_pass(brats_dir: Path, tmp_path: Path) -> None:
    from autoseg.convert import convert_brats

    src = tmp_path / "src"  # two real cases, linked: one with enhancing tumour (4), one without
    src.mkdir()
    for case in ("BraTS19_CBICA_ASK_1", "TCGA-DU-7294"):
        (src / case).symlink_to(brats_dir / "labelled" / case)
    paths = convert_brats(src, tmp_path / "home", 1, "BraTS")
    verify_dataset(paths.raw)
    # a real label with a value the 2023 convention does not declare is caught
    d = json.loads(paths.dataset_json.read_text())
    d["labels"] = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [1, 3], "enhancing tumour": 3}
    paths.dataset_json.write_text(json.dumps(d))
    with pytest.raises(AutosegError, match=r"label value\(s\) \[4\] are not declared"):
        verify_dataset(paths.raw)
