"""BraTS folders -> raw dataset: both conventions, byte-exact copies, reruns, and every input error."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg import brats
from autoseg.cli.convert import main as convert_main
from autoseg.convert import convert_brats
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.io import read_image, read_json
from autoseg.synthetic import write_brats_folders
from autoseg.verify import verify_dataset

SHAPE = (20, 24, 28)
OTHER = {"brats2020": "brats2023", "brats2023": "brats2020"}


@pytest.mark.parametrize("convention", ["brats2020", "brats2023"])
def test_converts_labelled_and_unlabelled_cases(tmp_path: Path, convention: str) -> None:
    src = tmp_path / "src"
    train = write_brats_folders(src / "training", n=2, shape=SHAPE, convention=convention)
    # unlabelled cases may use the other naming: they only carry images
    test = write_brats_folders(src / "validation", n=1, shape=SHAPE, convention=OTHER[convention], labelled=False)
    paths = convert_brats(src, tmp_path / "home", 7, "Tumour", workers=2)

    assert paths.raw == tmp_path / "home" / "raw" / "Dataset007_Tumour"
    d = read_json(paths.dataset_json)
    assert d["label_convention"] == convention and d["numTraining"] == 2
    assert d["labels"] == brats.labels_for(convention)
    assert d["regions_class_order"] == brats.regions_class_order_for(convention)
    for folder in train:
        case = brats.find_brats_case(folder)
        for c, channel in enumerate(case.channels):  # T1, T1ce, T2, FLAIR order, bytes unchanged
            assert (paths.raw / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz").read_bytes() == channel.read_bytes()
        label, _ = read_image(paths.raw / "labelsTr" / f"{case.case_id}.nii.gz")
        assert set(np.unique(label)) <= {0, 1, 2, brats.ENHANCING[convention]}
    test_id = test[0].name
    assert sorted(p.name for p in (paths.raw / "imagesTs").iterdir()) == [f"{test_id}_{c:04d}.nii.gz" for c in range(4)]
    assert not (paths.raw / "labelsTs").exists()
    verify_dataset(paths.raw)  # the result passes the integrity check


def test_rerun_skips_finished_files_and_counts_new_cases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_brats_folders(src, n=2, shape=SHAPE)
    paths = convert_brats(src, tmp_path / "home", 1, "B")
    files = sorted((paths.raw / "imagesTr").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    more = write_brats_folders(tmp_path / "more", n=3, shape=SHAPE)[2]
    shutil.copytree(more, src / more.name)

    convert_brats(src, tmp_path / "home", 1, "B")
    assert files[0].is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != files[0])
    assert read_json(paths.dataset_json)["numTraining"] == 3
    assert not list(paths.raw.rglob(".*tmp*"))


def test_missing_channel_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    folders = write_brats_folders(tmp_path / "src", n=2, shape=SHAPE)
    missing = folders[1] / f"{folders[1].name}_flair.nii.gz"
    missing.unlink()
    with pytest.raises(AutosegError, match="channel file missing") as e:
        convert_brats(tmp_path / "src", tmp_path / "home", 1, "B")
    assert str(missing) in str(e.value)
    assert not (tmp_path / "home" / "raw").exists()


def test_labelled_cases_of_two_conventions_are_refused_naming_both(tmp_path: Path) -> None:
    a = write_brats_folders(tmp_path / "src" / "old", n=1, shape=SHAPE, convention="brats2020")[0]
    b = write_brats_folders(tmp_path / "src" / "new", n=1, shape=SHAPE, convention="brats2023")[0]
    with pytest.raises(AutosegError, match="two label conventions") as e:
        convert_brats(tmp_path / "src", tmp_path / "home", 1, "B")
    assert a.name in str(e.value) and b.name in str(e.value) and "another -d" in str(e.value)
    assert not (tmp_path / "home" / "raw").exists()


def test_adding_cases_of_the_other_convention_to_a_dataset_is_refused(tmp_path: Path) -> None:
    write_brats_folders(tmp_path / "a", n=1, shape=SHAPE, convention="brats2020")
    write_brats_folders(tmp_path / "b", n=1, shape=SHAPE, convention="brats2023")
    convert_brats(tmp_path / "a", tmp_path / "home", 1, "B")
    with pytest.raises(AutosegError, match="already holds brats2020 labels"):
        convert_brats(tmp_path / "b", tmp_path / "home", 1, "B")
    with pytest.raises(AutosegError, match="already used"):
        convert_brats(tmp_path / "b", tmp_path / "home", 1, "Other")


def test_duplicate_and_unsafe_case_ids_and_stray_folders_are_all_listed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    case = write_brats_folders(src / "a", n=1, shape=SHAPE)[0]
    shutil.copytree(case, src / "b" / case.name)
    stray = src / "notes"
    stray.mkdir()
    shutil.copy(case / f"{case.name}_t1.nii.gz", stray / "scan.nii.gz")
    with pytest.raises(AutosegError) as e:
        convert_brats(src, tmp_path / "home", 1, "B")
    msg = str(e.value)
    assert "2 problem(s)" in msg and "occurs more than once" in msg and f"{stray}: holds NIfTI files" in msg


def test_uncompressed_files_are_gzipped_losslessly(tmp_path: Path) -> None:
    case = write_brats_folders(tmp_path / "src", n=1, shape=SHAPE)[0]
    t2, flair = case / f"{case.name}_t2.nii.gz", case / f"{case.name}_flair.nii.gz"
    originals = [read_image(t2), read_image(flair)]
    sitk.WriteImage(sitk.ReadImage(str(t2)), str(case / f"{case.name}_t2.nii"), useCompression=False)
    t2.unlink()
    plain = gzip.decompress(flair.read_bytes())  # uncompressed data under a .nii.gz name
    flair.write_bytes(plain)
    paths = convert_brats(tmp_path / "src", tmp_path / "home", 1, "B")
    for c, (image, geometry) in zip((2, 3), originals):
        out = paths.raw / "imagesTr" / f"{case.name}_{c:04d}.nii.gz"
        assert out.read_bytes()[:2] == b"\x1f\x8b"
        back, back_geometry = read_image(out)
        np.testing.assert_array_equal(back, image)
        assert back_geometry == geometry
    assert gzip.decompress((paths.raw / "imagesTr" / f"{case.name}_0003.nii.gz").read_bytes()) == plain
    verify_dataset(paths.raw)


def test_cli_converts_and_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_brats_folders(tmp_path / "src", n=1, shape=SHAPE)
    with pytest.raises(SystemExit) as e:
        convert_main(["brats", str(tmp_path / "src"), "-d", "3", "--home", str(tmp_path / "home"), "-np", "1"])
    assert e.value.code == 0 and "1 training case(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        convert_main(["brats", str(tmp_path / "nowhere"), "-d", "3", "--home", str(tmp_path / "home")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nowhere: folder not found" in err and "Traceback" not in err


@pytest.mark.brats
@pytest.mark.slow
def test_real_brats_folders_convert_and_verify(brats_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = convert_brats(brats_dir / "labelled", home, 1, "BraTS19")
    new = convert_brats(brats_dir / "labelled-2023", home, 2, "BraTS23")
    test = convert_brats(brats_dir / "unlabelled", home, 3, "Unlabelled")
    assert DatasetInfo.load(old.dataset_json).label_convention == "brats2020"
    assert DatasetInfo.load(new.dataset_json).label_convention == "brats2023"
    assert read_json(old.dataset_json)["numTraining"] == 4 and read_json(new.dataset_json)["numTraining"] == 1
    assert len(list((test.raw / "imagesTs").iterdir())) == 16 and read_json(test.dataset_json)["numTraining"] == 0
    verify_dataset(old.raw)
    verify_dataset(new.raw)
    # the whole release folder mixes labelled conventions: refused, naming the fix
    with pytest.raises(AutosegError, match="two label conventions"):
        convert_brats(brats_dir, home, 4, "All")
