"""autoseg-predict on inputs in the forms they come in: DICOM series (NIfTI out, in the series' own geometry,
checked against the positions in the files) and PNG/TIFF slice folders or 2D images (PNG out: same names,
sizes and mask grey values; PNG -> volume -> PNG exact for masks); autoseg-evaluate on PNG masks."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from autoseg.cli.evaluate import main as evaluate_main
from autoseg.dataset import DatasetInfo
from autoseg.dicom import convert_dicom
from autoseg.errors import AutosegError
from autoseg.inference.predictor import Predictor, predict_folder
from autoseg.input_forms import SliceInput, form_input_cases, slice_masks_as_nifti
from autoseg.io import read_image, read_json
from autoseg.network import network_for_dataset
from autoseg.plans import ChannelNormalization, ConfigurationPlan, NetworkPlan
from autoseg.slices import convert_slices
from autoseg.synthetic_ct import make_head_ct, write_dicom_series, write_png_patients
from test_convert_dicom import _positions  # ImagePositionPatient as the files hold it

SHAPE = (6, 40, 40)
SPACING = (5.0, 0.5, 0.5)
ORIGIN = (-10.0, 20.0, 35.0)
C, S = np.cos(0.3), np.sin(0.3)
DIRECTION = (C, 0.0, S, 0.0, 1.0, 0.0, -S, 0.0, C)   # oblique: tilted about y


def _predictor(info: DatasetInfo, two_d: bool, norm: ChannelNormalization) -> Predictor:
    dim = 2 if two_d else 3
    net = NetworkPlan("unet", [4, 8], [[3] * dim] * 2, [[1] * dim, [2] * dim], [1, 1], [1])
    patch = [32, 32] if two_d else [4, 32, 32]
    config = ConfigurationPlan("2d" if two_d else "3d_fullres", list(SPACING[3 - dim:]), list(SHAPE[3 - dim:]), patch,
                               2, net, [norm] * info.num_channels, 0.01, mirror_axes=[])
    torch.manual_seed(0)
    network = network_for_dataset(net, info, deep_supervision=False).eval()
    return Predictor(config, info, [network], torch.device("cpu"), mirroring=False)


def test_dicom_series_predict_to_nifti_in_the_series_geometry(tmp_path: Path, capsys) -> None:
    root = tmp_path / "dicom"
    for k, case in enumerate(("case_a", "case_b")):
        names = [f"x{i}.dcm" for i in range(SHAPE[0])]
        random.Random(k).shuffle(names)   # file names say nothing about the slice order
        write_dicom_series(root / case, make_head_ct(SHAPE, seed=k).hu, spacing_zyx=SPACING, origin=ORIGIN,
                           direction=DIRECTION, series_uid=f"1.2.826.0.1.3680043.8.498.{k + 10}", file_names=names)
    gap = write_dicom_series(root / "case_gap", make_head_ct(SHAPE, seed=3).hu, spacing_zyx=SPACING,
                             series_uid="1.2.826.0.1.3680043.8.498.30")
    gap[2].unlink()                       # a missing slice: that case fails in one line, the others finish
    info = DatasetInfo(channel_names={"0": "CT"}, labels={"background": 0, "lesion": 1}, file_ending=".nii.gz",
                       num_training=0)
    predictor = _predictor(info, two_d=False, norm=ChannelNormalization("ct_window", False, lower=0.0, upper=80.0))

    report = predict_folder(predictor, root, tmp_path / "pred", progress=False)
    assert report.written == ["case_a", "case_b"] and len(report.failed) == 1
    assert report.failed[0].startswith("case_gap: ") and "gap(s) in the slice positions" in report.failed[0]
    seg, geometry = read_image(tmp_path / "pred" / "case_a.nii.gz")
    positions = np.array(_positions(root / "case_a"))
    normal = np.asarray(DIRECTION).reshape(3, 3)[:, 2]
    first = positions[np.argmin(positions @ normal)]
    assert seg.shape == SHAPE and geometry.size == tuple(reversed(SHAPE))
    np.testing.assert_allclose(geometry.origin, first, atol=1e-4)            # the first slice's own position
    np.testing.assert_allclose(geometry.direction, DIRECTION, atol=1e-5)
    np.testing.assert_allclose(geometry.spacing, tuple(reversed(SPACING)), atol=1e-4)
    assert np.ptp(positions @ normal) == pytest.approx(SPACING[0] * (SHAPE[0] - 1), abs=1e-3)

    # the same as predicting the converted series: one reading of DICOM for convert and predict
    shutil.rmtree(root / "case_gap")
    paths = convert_dicom(root, tmp_path / "home", 51, "HeadCT", workers=1)
    nifti = predict_folder(predictor, paths.raw / "imagesTs", tmp_path / "pred_nifti", progress=False)
    assert nifti.written == ["case_a", "case_b"]
    seg_nifti, geometry_nifti = read_image(tmp_path / "pred_nifti" / "case_a.nii.gz")
    assert geometry_nifti == geometry and np.array_equal(seg_nifti, seg)

    # one series folder given directly is one case named after it
    single = predict_folder(predictor, root / "case_b", tmp_path / "pred_single", progress=False)
    assert single.written == ["case_b"] and (tmp_path / "pred_single" / "case_b.nii.gz").is_file()


def _png(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_png_masks_round_trip_exactly_through_volumes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_png_patients(src, n=2, shape=SHAPE, seed=4)
    paths = convert_slices(src, tmp_path / "home", 52, "Stroke", spacing_zyx=SPACING, workers=1)
    info = DatasetInfo.load(paths.dataset_json)
    for case in form_input_cases(src / "images", info):
        label, _ = read_image(paths.raw / "labelsTr" / f"{case.case_id}.nii.gz")
        assert isinstance(case.form, SliceInput) and case.form.mask_values == (0, 255)
        case.form.write(label, tmp_path / "back")                    # volume -> PNG, as autoseg-predict writes
        masks = sorted((src / "masks" / case.case_id).iterdir())
        written = sorted((tmp_path / "back" / case.case_id).iterdir())
        assert [p.name for p in written] == [p.name for p in masks]
        for a, b in zip(written, masks):
            assert np.array_equal(_png(a), _png(b)) and _png(a).dtype == _png(b).dtype
    # PNG -> volume for evaluation: the label maps conversion wrote
    slice_masks_as_nifti(tmp_path / "back", info, tmp_path / "nifti")
    for cid in ("patient_001", "patient_002"):
        again, geometry = read_image(tmp_path / "nifti" / f"{cid}.nii.gz")
        label, label_geometry = read_image(paths.raw / "labelsTr" / f"{cid}.nii.gz")
        assert np.array_equal(again, label) and geometry == label_geometry


@pytest.mark.slow
def test_png_folders_and_2d_images_predict_to_png_in_the_inputs_form(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    write_png_patients(src, n=2, shape=SHAPE, seed=6)
    paths = convert_slices(src, tmp_path / "home", 53, "Stroke", spacing_zyx=SPACING, channel_name="CT", workers=1)
    info = DatasetInfo.load(paths.dataset_json)
    predictor = _predictor(info, two_d=True, norm=ChannelNormalization("zscore"))
    bad = src / "images" / "patient_009"          # slices of two sizes: that patient fails in one line
    shutil.copytree(src / "images" / "patient_001", bad)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((36, 40), np.uint8)), str(bad / "003.png"))
    out = tmp_path / "pred"
    report = predict_folder(predictor, src / "images", out, progress=False)
    assert report.written == ["patient_001", "patient_002"] and len(report.failed) == 1
    assert report.failed[0].startswith("patient_009: ") and "003.png: slice is 40x36 pixels" in report.failed[0]
    assert "\n" not in report.failed[0] and not (out / "patient_009").exists()
    shutil.rmtree(bad)
    for folder in sorted((src / "images").iterdir()):
        written = sorted((out / folder.name).iterdir())
        assert [p.name for p in written] == [p.name for p in sorted(folder.iterdir())]
        for p in written:
            mask = _png(p)
            assert mask.shape == (40, 40) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert not list(out.glob("*.nii.gz"))
    assert predict_folder(predictor, src / "images", out, progress=False).skipped == ["patient_001", "patient_002"]

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:   # PNG predictions scored against the PNG masks
        evaluate_main(["-p", str(out), "-r", str(src / "masks"), "--dataset-json", str(paths.dataset_json)])
    assert e.value.code in (0, None)
    summary = read_json(out / "summary.json")
    assert summary["num_cases"] == 2 and "foreground" in summary["mean"]

    # 2D images: CASE.png in, CASE.png out
    flat = tmp_path / "flat"
    marked = [p for p in sorted((src / "images" / "patient_001").iterdir())
              if _png(src / "masks" / "patient_001" / p.name).any()]
    for k, image in enumerate([marked[0], sorted((src / "images" / "patient_001").iterdir())[0]]):
        (flat / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, flat / "images" / f"img_{k}.png")
        (flat / "masks").mkdir(exist_ok=True)
        shutil.copy(src / "masks" / "patient_001" / image.name, flat / "masks" / f"img_{k}.png")
    paths2d = convert_slices(flat, tmp_path / "home", 54, "Flat", spacing_zyx=SPACING, channel_name="CT", workers=1)
    info2d = DatasetInfo.load(paths2d.dataset_json)
    assert info2d.is_2d
    report = predict_folder(_predictor(info2d, True, ChannelNormalization("zscore")), flat / "images",
                            tmp_path / "pred2d", progress=False)
    assert report.written == ["img_0", "img_1"]
    assert sorted(p.name for p in (tmp_path / "pred2d").glob("*.png")) == ["img_0.png", "img_1.png"]
    assert _png(tmp_path / "pred2d" / "img_0.png").shape == (40, 40)
    # a model of 2D images refuses patient folders (one line, the fix)
    with pytest.raises(AutosegError, match="trained on 2D images"):
        predict_folder(_predictor(info2d, True, ChannelNormalization("zscore")), src / "images", tmp_path / "x",
                       progress=False)
