"""PNG/TIFF slice folders and 2D images -> raw dataset: stacking, mask value mapping and its exact round trip,
natural order, 2D/RGB cases, reruns, and every input error (one line each, nothing written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli.convert import main as convert_main
from autoseg.errors import AutosegError
from autoseg.io import read_image, read_json
from autoseg.slices import convert_slices, grey_from_labels, natural_key
from autoseg.synthetic_ct import write_png_patients
from autoseg.verify import verify_dataset

SHAPE = (8, 40, 40)


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3), str(path))


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _stack(folder: Path) -> np.ndarray:
    return np.stack([_read(p) for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))])


def test_patient_folders_become_volumes_and_masks_round_trip_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    folders = write_png_patients(src, n=3, shape=SHAPE, seed=0)
    shutil.rmtree(src / "masks" / "patient_003")   # no mask folder: an unlabelled case
    paths = convert_slices(src, tmp_path / "home", 5, "Stroke", spacing_zyx=(5.0, 0.5, 0.25))

    d = read_json(paths.dataset_json)
    assert d["labels"] == {"background": 0, "foreground": 1} and d["autoseg_mask_values"] == [0, 255]
    assert d["channel_names"] == {"0": "image"} and d["autoseg_2d"] is False and d["numTraining"] == 2
    for folder in folders[:2]:
        image, geometry = read_image(paths.raw / "imagesTr" / f"{folder.name}_0000.nii.gz")
        np.testing.assert_array_equal(image, _stack(folder))
        assert image.dtype == np.uint8 and geometry.spacing == (0.25, 0.5, 5.0) and geometry.origin == (0, 0, 0)
        label, label_geometry = read_image(paths.raw / "labelsTr" / f"{folder.name}.nii.gz")
        assert label_geometry == geometry and set(np.unique(label)) == {0, 1}
        # PNG -> volume -> PNG: the written-back masks equal the input masks, slice by slice
        back = grey_from_labels(label, d["autoseg_mask_values"])
        masks = src / "masks" / folder.name
        for z, name in enumerate(sorted(p.name for p in masks.iterdir())):
            out = tmp_path / "back" / folder.name / name
            _write(out, back[z])
            np.testing.assert_array_equal(_read(out), _read(masks / name))
    assert sorted(p.name for p in (paths.raw / "imagesTs").iterdir()) == ["patient_003_0000.nii.gz"]
    verify_dataset(paths.raw)


def test_grey_values_become_labels_in_grey_order_and_16_bit_tiff_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    grey = np.zeros((3, 12, 10), dtype=np.uint8)
    grey[:, 2:5, 2:5], grey[:, 6:9, 1:4], grey[1:, 8:11, 6:9] = 170, 85, 255
    image = rng.integers(0, 65535, grey.shape, dtype=np.uint16)
    for z in range(3):
        _write(src / "images" / "p1" / f"s{z}.tif", image[z])
        _write(src / "masks" / "p1" / f"s{z}.png", grey[z])
    paths = convert_slices(src, tmp_path / "home", 1, "Grey")
    d = read_json(paths.dataset_json)
    assert d["autoseg_mask_values"] == [0, 85, 170, 255]
    assert d["labels"] == {"background": 0, "value_85": 1, "value_170": 2, "value_255": 3}
    label, _ = read_image(paths.raw / "labelsTr" / "p1.nii.gz")
    np.testing.assert_array_equal(label[grey == 170], 2)
    np.testing.assert_array_equal(grey_from_labels(label, d["autoseg_mask_values"]), grey)
    volume, _ = read_image(paths.raw / "imagesTr" / "p1_0000.nii.gz")
    assert volume.dtype == np.uint16
    np.testing.assert_array_equal(volume, image)


def test_slices_stack_in_natural_order_of_their_names(tmp_path: Path) -> None:
    names = ["p10", "p", "p2", "p1.png", "p01.png", "2b", "10a"]
    assert sorted(names, key=natural_key) == ["2b", "10a", "p", "p01.png", "p1.png", "p2", "p10"]
    src = tmp_path / "src"
    for k in range(1, 12):   # 1.png 2.png ... 11.png: a plain sort would put 10 and 11 after 1
        _write(src / "images" / "p" / f"{k}.png", np.full((4, 5), k, dtype=np.uint8))
        _write(src / "masks" / "p" / f"{k}.png", np.full((4, 5), 255 * (k % 2), dtype=np.uint8))
    paths = convert_slices(src, tmp_path / "home", 1, "Order")
    volume, _ = read_image(paths.raw / "imagesTr" / "p_0000.nii.gz")
    label, _ = read_image(paths.raw / "labelsTr" / "p.nii.gz")
    assert volume[:, 0, 0].tolist() == list(range(1, 12))
    assert label[:, 0, 0].tolist() == [k % 2 for k in range(1, 12)]


def test_bad_input_is_one_line_each_naming_the_file_and_keeps_what_was_written(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write_png_patients(good, n=1, shape=SHAPE, seed=0)
    paths = convert_slices(good, tmp_path / "home", 2, "S")
    before = {p: p.stat().st_mtime_ns for p in paths.raw.rglob("*")}

    src = tmp_path / "src"
    write_png_patients(src, n=4, shape=SHAPE, seed=0)
    odd = src / "images" / "patient_001" / "004.png"
    _write(odd, np.zeros((40, 36), dtype=np.uint8))                        # another size
    (src / "masks" / "patient_009").mkdir()                                # mask folder without images
    extra_mask = src / "masks" / "patient_002" / "099.png"
    _write(extra_mask, np.zeros((40, 40), dtype=np.uint8))                 # mask slice without image slice
    lost_mask = src / "masks" / "patient_003" / "005.png"
    lost_mask.unlink()                                                     # image slices without mask slices
    (src / "masks" / "patient_003" / "007.png").unlink()
    colour = src / "images" / "patient_004" / "002.png"
    _write(colour, np.dstack([np.zeros((40, 40), np.uint8), np.full((40, 40), 9, np.uint8),
                              np.zeros((40, 40), np.uint8)]))
    with pytest.raises(AutosegError) as e:
        convert_slices(src, tmp_path / "home", 2, "S")
    lines = [ln.strip() for ln in str(e.value).splitlines()[1:]]
    assert len(lines) == 5, lines
    assert f"{src / 'masks' / 'patient_009'}: mask folder without its image folder" in lines[0]
    assert f"{extra_mask}: mask slice without its image slice" in lines[1]
    assert lines[2].startswith(f"{src / 'images' / 'patient_003' / '005.png'}: image slice without its mask slice")
    assert "), and 1 more in this folder; add the mask slice" in lines[2]
    assert lines[3] == (f"{odd}: slice is 36x40 pixels but 001.png is 40x40; export every slice of patient_001 at "
                        "one size")
    assert lines[4].startswith(f"{colour}: is a colour image")
    assert all("; " in ln for ln in lines)   # each names the fix
    assert {p: p.stat().st_mtime_ns for p in paths.raw.rglob("*")} == before   # nothing written, nothing lost


def test_2d_images_are_single_slice_cases_and_rgb_gives_three_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    rgb = {c: rng.integers(0, 255, (20, 24, 3), dtype=np.uint8) for c in ("a", "b", "c")}
    for case, array in rgb.items():
        _write(src / "images" / f"{case}.png", array)
    for case in ("a", "b"):   # c has no mask: unlabelled
        mask = np.zeros((20, 24), dtype=np.uint8)
        mask[5:12, 3:9] = 255
        _write(src / "masks" / f"{case}.png", mask)
    paths = convert_slices(src, tmp_path / "home", 3, "Road")
    d = read_json(paths.dataset_json)
    assert d["autoseg_2d"] is True and d["channel_names"] == {"0": "R", "1": "G", "2": "B"} and d["numTraining"] == 2
    for c in range(3):
        channel, geometry = read_image(paths.raw / "imagesTr" / f"a_{c:04d}.nii.gz")
        assert channel.shape == (1, 20, 24)
        np.testing.assert_array_equal(channel[0], rgb["a"][..., c])
    assert sorted(p.name for p in (paths.raw / "imagesTs").iterdir()) == [f"c_{c:04d}.nii.gz" for c in range(3)]
    verify_dataset(paths.raw)

    _write(src / "images" / "d.png", np.zeros((20, 24), dtype=np.uint8))   # a grey image among RGB ones
    with pytest.raises(AutosegError, match="has 1 channel\\(s\\) but .*a.png has 3; save all images as RGB"):
        convert_slices(src, tmp_path / "home", 3, "Road")


def test_rerun_writes_only_what_is_missing_and_new_grey_values_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_png_patients(src, n=2, shape=SHAPE, seed=0)
    paths = convert_slices(src, tmp_path / "home", 4, "S")
    files = sorted(paths.raw.rglob("*.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    files[0].unlink()
    convert_slices(src, tmp_path / "home", 4, "S")
    assert files[0].is_file() and all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != files[0])

    write_png_patients(src, n=1, shape=SHAPE, seed=0, first_index=3)
    mask = src / "masks" / "patient_003" / "005.png"
    _write(mask, np.where(_read(mask) > 0, 128, 0).astype(np.uint8))
    with pytest.raises(AutosegError, match=r"grey value\(s\) \[128\] that the dataset does not have"):
        convert_slices(src, tmp_path / "home", 4, "S")
    assert not (paths.raw / "imagesTr" / "patient_003_0000.nii.gz").exists()


def test_cli_converts_slices_and_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    write_png_patients(src, n=1, shape=SHAPE, seed=0, bits=16)
    home = str(tmp_path / "home")
    with pytest.raises(SystemExit) as e:
        convert_main(["slices", str(src), "-d", "6", "--name", "CT", "--spacing", "5", "0.5", "0.5",
                      "--channel-name", "CT", "--home", home])
    assert e.value.code == 0 and "1 training case(s)" in capsys.readouterr().out
    d = read_json(tmp_path / "home" / "raw" / "Dataset006_CT" / "dataset.json")
    assert d["channel_names"] == {"0": "CT"}
    with pytest.raises(SystemExit) as e:
        convert_main(["slices", str(src), "-d", "7", "--name", "X", "--images", "scans", "--home", home])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{src / 'scans'}: image folder not found" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        convert_main(["slices", str(src), "-d", "7", "--name", "X", "--spacing", "5", "0", "1", "--home", home])
    assert e.value.code == 2 and "--spacing" in capsys.readouterr().err
