"""DICOM series -> raw dataset: geometry from the slices' own positions (whatever the file order), HU values,
labels, several channels through a mapping file, and every input error (one line each, nothing written)."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli.convert import main as convert_main
from autoseg.dicom import convert_dicom
from autoseg.errors import AutosegError
from autoseg.io import Geometry, read_image, read_json, write_image
from autoseg.synthetic_ct import make_head_ct, write_dicom_series
from autoseg.verify import verify_dataset

SHAPE = (6, 20, 24)
# axial slices of a patient lying the other way round: x flipped, slices stacked towards the feet
DIRECTION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
SPACING = (2.5, 0.7, 0.6)
ORIGIN = (100.0, -50.0, 30.0)


def _shuffled_names(n: int, seed: int) -> list[str]:
    names = [f"slice{k}.dcm" for k in range(n)]
    random.Random(seed).shuffle(names)   # file names say nothing about the slice order
    return names


def _series(folder: Path, seed: int, uid: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Write a head CT series with shuffled names; returns the HU volume and its lesion mask."""
    ct = make_head_ct(SHAPE, seed=seed)
    write_dicom_series(folder, ct.hu, spacing_zyx=SPACING, origin=ORIGIN, direction=DIRECTION, series_uid=uid,
                       file_names=_shuffled_names(SHAPE[0], seed), **kwargs)
    return np.round(ct.hu), ct.lesion


def _positions(folder: Path) -> list[np.ndarray]:
    """ImagePositionPatient of every file in the folder, read from the files themselves."""
    found = []
    for p in folder.iterdir():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        found.append(np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")]))
    return found


def _label_geometry() -> Geometry:
    size = tuple(reversed(SHAPE))
    return Geometry(size, tuple(reversed(SPACING)), ORIGIN, DIRECTION)


def _dicom_without_image(path: Path, series_uid: str) -> None:
    """A minimal DICOM structured report: a valid DICOM file with no pixel data."""
    def element(group: int, elem: int, vr: str, value: bytes) -> bytes:
        value += b"\0" * (len(value) % 2)
        if vr == "OB":
            return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value
    sop = b"1.2.840.10008.5.1.4.1.1.88.11"
    meta = (element(2, 1, "OB", b"\0\1") + element(2, 2, "UI", sop) + element(2, 3, "UI", b"1.2.3.99")
            + element(2, 0x10, "UI", b"1.2.840.10008.1.2.1"))
    body = (element(8, 0x16, "UI", sop) + element(8, 0x18, "UI", b"1.2.3.99") + element(8, 0x60, "CS", b"SR")
            + element(0x20, 0xE, "UI", series_uid.encode()))
    path.write_bytes(b"\0" * 128 + b"DICM" + element(2, 0, "UL", struct.pack("<I", len(meta))) + meta + body)


def test_series_convert_in_their_own_geometry_whatever_the_file_order(tmp_path: Path) -> None:
    src, labels = tmp_path / "src", tmp_path / "labels"
    hu, lesion = _series(src / "case_a", 1, "1.2.826.0.1.3680043.8.498.11")
    _series(src / "case_b", 2, "1.2.826.0.1.3680043.8.498.12")
    write_image(labels / "case_a.nii.gz", lesion, _label_geometry())
    paths = convert_dicom(src, tmp_path / "home", 8, "StrokeCT", labels=labels)

    d = read_json(paths.dataset_json)
    assert d["channel_names"] == {"0": "CT"} and d["labels"] == {"background": 0, "label_1": 1}
    assert d["numTraining"] == 1
    image, geometry = read_image(paths.raw / "imagesTr" / "case_a_0000.nii.gz")
    np.testing.assert_array_equal(image, hu)   # HU: the stored HU + 1024 rescaled back
    assert image.dtype == np.int16 and image.min() == -1000
    # each converted slice k sits where the file at the k-th position along the slice normal says
    normal = np.array(DIRECTION).reshape(3, 3)[:, 2]
    positions = sorted(_positions(src / "case_a"), key=lambda p: float(p @ normal))
    nifti = sitk.ReadImage(str(paths.raw / "imagesTr" / "case_a_0000.nii.gz"))
    for k, position in enumerate(positions):
        np.testing.assert_allclose(nifti.TransformIndexToPhysicalPoint((0, 0, k)), position, atol=1e-4)
    np.testing.assert_allclose(geometry.spacing, tuple(reversed(SPACING)), atol=1e-5)
    np.testing.assert_allclose(geometry.direction, DIRECTION, atol=1e-6)
    label, label_geometry = read_image(paths.raw / "labelsTr" / "case_a.nii.gz")
    np.testing.assert_array_equal(label, lesion)
    assert label_geometry.mismatch(geometry) is None
    assert sorted(p.name for p in (paths.raw / "imagesTs").iterdir()) == ["case_b_0000.nii.gz"]
    verify_dataset(paths.raw)


def _move_slice(path: Path, position: tuple[float, float, float]) -> None:
    """Rewrite one DICOM file with another ImagePositionPatient, keeping its other tags."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    image.SetMetaData("0020|0032", "\\".join(str(v) for v in position))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


def test_slightly_uneven_positions_convert_quietly_on_the_readers_grid(tmp_path: Path,
                                                                      capfd: pytest.CaptureFixture) -> None:
    files = write_dicom_series(tmp_path / "src" / "c", np.zeros((4, 8, 8)), spacing_zyx=(2.5, 1.0, 1.0))
    _move_slice(files[2], (0.0, 0.0, 5.1))    # 0, 2.5, 5.1, 7.56: within 5 % of the slice distance
    _move_slice(files[3], (0.0, 0.0, 7.56))
    labels = tmp_path / "labels"
    write_image(labels / "c.nii.gz", np.ones((4, 8, 8), np.uint8),
                Geometry((8, 8, 4), (1.0, 1.0, 2.52), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
    paths = convert_dicom(tmp_path / "src", tmp_path / "home", 1, "U", labels=labels)
    _, geometry = read_image(paths.raw / "imagesTr" / "c_0000.nii.gz")
    assert geometry.spacing[2] == pytest.approx(2.52)   # first to last position over the slice count
    assert "WARNING" not in capfd.readouterr().err      # no multi-line ITK warning about the sampling


def test_mapping_file_gives_several_channels_per_case(tmp_path: Path) -> None:
    hu_a, _ = _series(tmp_path / "series" / "a_plain", 3, "1.2.826.0.1.3680043.8.498.21")
    hu_b, _ = _series(tmp_path / "series" / "a_contrast", 4, "1.2.826.0.1.3680043.8.498.22")
    mapping = tmp_path / "cases.json"
    mapping.write_text(json.dumps({"a": {"plain": "series/a_plain", "contrast": "series/a_contrast"}}))
    paths = convert_dicom(mapping, tmp_path / "home", 9, "Two")
    assert read_json(paths.dataset_json)["channel_names"] == {"0": "plain", "1": "contrast"}
    for c, hu in enumerate((hu_a, hu_b)):
        np.testing.assert_array_equal(read_image(paths.raw / "imagesTs" / f"a_{c:04d}.nii.gz")[0], hu)

    write_dicom_series(tmp_path / "series" / "b_plain", make_head_ct(SHAPE, seed=5).hu, spacing_zyx=SPACING)
    write_dicom_series(tmp_path / "series" / "b_contrast", make_head_ct(SHAPE, seed=6).hu, spacing_zyx=(3, 0.7, 0.6))
    mapping.write_text(json.dumps({"b": {"plain": "series/b_plain", "contrast": "series/b_contrast"}}))
    with pytest.raises(AutosegError, match="b_contrast: spacing .* differs .* must share one grid"):
        convert_dicom(mapping, tmp_path / "home", 9, "Two")


def test_bad_series_are_one_line_each_and_nothing_is_written(tmp_path: Path) -> None:
    src, labels = tmp_path / "src", tmp_path / "labels"
    _series(src / "gap", 1, "1.2.826.0.1.3680043.8.498.31")
    gap_files = sorted((src / "gap").iterdir(), key=lambda p: float(_positions_of(p) @ np.array([0, 0, -1.0])))
    gap_files[3].unlink()                                                  # a missing slice
    _series(src / "mixed", 2, "1.2.826.0.1.3680043.8.498.32")
    write_dicom_series(src / "mixed", make_head_ct(SHAPE, seed=3).hu, series_uid="1.2.826.0.1.3680043.8.498.33",
                       file_names=[f"other{k}.dcm" for k in range(SHAPE[0])])   # a second series in one folder
    _series(src / "extras", 4, "1.2.826.0.1.3680043.8.498.34")
    report = src / "extras" / "report.dcm"
    _dicom_without_image(report, "1.2.826.0.1.3680043.8.498.35")          # a non-image DICOM file
    notes = src / "extras" / "notes.txt"
    notes.write_text("scanned on Monday")                                  # not DICOM at all
    _series(src / "shifted", 5, "1.2.826.0.1.3680043.8.498.36")
    write_image(labels / "shifted.nii.gz", np.zeros(SHAPE, np.uint8),
                Geometry(tuple(reversed(SHAPE)), tuple(reversed(SPACING)), (0.0, 0.0, 0.0), DIRECTION))

    with pytest.raises(AutosegError) as e:
        convert_dicom(src, tmp_path / "home", 10, "Bad", labels=labels)
    lines = [ln.strip() for ln in str(e.value).splitlines()[1:]]
    assert len(lines) == 5, lines
    assert lines[0] == f"{notes}: not a DICOM file; move it out of the series folder"
    assert lines[1] == (f"{report}: a DICOM file without image data (e.g. a report, a structure set or a DICOMDIR); "
                        "move it out of the series folder")
    assert lines[2].startswith(f"{src / 'gap'}: 1 gap(s) in the slice positions, first: {gap_files[2].name} and "
                               f"{gap_files[4].name} are 5 mm apart, the other slices 2.5 mm: a slice is missing")
    assert lines[3].startswith(f"{src / 'mixed'}: holds 2 DICOM series (SeriesInstanceUID ")
    assert lines[4].startswith(f"{labels / 'shifted.nii.gz'}: origin (0.0, 0.0, 0.0) differs from (100.0, -50.0, 30.0)")
    assert all("; " in ln for ln in lines)
    assert not (tmp_path / "home" / "raw").exists()


def _positions_of(path: Path) -> np.ndarray:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])


def test_cli_converts_dicom_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    _series(src / "case_a", 1, "1.2.826.0.1.3680043.8.498.41")
    home = str(tmp_path / "home")
    with pytest.raises(SystemExit) as e:
        convert_main(["dicom", str(src), "-d", "11", "--name", "CT", "--home", home])
    assert e.value.code == 0 and "0 training case(s), 1 test case(s)" in capsys.readouterr().out
    shutil.rmtree(src / "case_a")
    (src / "case_a").mkdir()
    with pytest.raises(SystemExit) as e:
        convert_main(["dicom", str(src), "-d", "12", "--name", "CT2", "--home", home])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{src / 'case_a'}: no DICOM image series in this folder" in err
    assert "Traceback" not in err


def test_dicom_work_leaves_the_process_locale_and_text_encoding_alone(tmp_path: Path) -> None:
    """ITK's DICOM code sets the C locale; unrestored, every later text file read in the process was ASCII."""
    import locale

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    write_dicom_series(tmp_path / "src" / "case_a", make_head_ct(seed=0, shape=(6, 32, 32)).hu)
    convert_dicom(tmp_path / "src", tmp_path / "home", 7, "Ct")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before
