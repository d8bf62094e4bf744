"""Metrics against medpy (test-only reference implementation), BraTS empty-mask convention, folder evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from medpy.metric import binary as mp
from scipy import ndimage

from autoseg.brats import dataset_json_for, find_brats_case
from autoseg.cli.evaluate import main as evaluate_main
from autoseg.dataset import DatasetInfo
from autoseg.evaluation.evaluate import evaluate_folder
from autoseg.evaluation.metrics import EMPTY_HD95, case_metrics, evaluated_masks, hd95, mask_metrics
from autoseg.io import read_image, write_image
from autoseg.postprocessing import PostprocessingPlan
from autoseg.synthetic import write_brats_folders

BRATS_INFO = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "x"))


def _blob(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def _medpy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    return {"dice": mp.dc(pred, ref), "hd95": mp.hd95(pred, ref, voxelspacing=spacing),
            "sensitivity": mp.sensitivity(pred, ref), "specificity": mp.specificity(pred, ref)}


def _assert_matches_medpy(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> None:
    ours, theirs = mask_metrics(pred, ref, spacing), _medpy(pred, ref, spacing)
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 1.1)])
def test_synthetic_blobs_match_medpy(spacing: tuple[float, ...]) -> None:
    ref = _blob((40, 50, 45), (20, 25, 20), (8, 12, 10))
    pred = _blob((40, 50, 45), (22, 24, 23), (7, 13, 9)) | _blob((40, 50, 45), (5, 5, 5), (2, 2, 2))
    _assert_matches_medpy(pred, ref, spacing)


def test_masks_touching_the_image_border_match_medpy() -> None:
    ref = np.zeros((20, 20, 20), bool)
    ref[:10, :, 3:9] = True
    pred = np.zeros_like(ref)
    pred[:12, 2:, 5:12] = True
    _assert_matches_medpy(pred, ref, (1.0, 2.0, 1.5))


def test_brats_empty_convention() -> None:
    empty = np.zeros((10, 10, 10), bool)
    one = empty.copy()
    one[4:6, 4:6, 4:6] = True
    both = mask_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95"], both["sensitivity"], both["specificity"]) == (1.0, 0.0, 1.0, 1.0)
    for pred, ref in ((one, empty), (empty, one)):
        m = mask_metrics(pred, ref, (1, 1, 1))
        assert m["dice"] == 0.0 and m["hd95"] == EMPTY_HD95 and m["sensitivity"] == 0.0
    assert hd95(one, one, (1, 1, 1)) == 0.0


def test_regions_and_labels_are_evaluated() -> None:
    assert evaluated_masks(BRATS_INFO) == {"whole tumour": (1, 2, 4), "tumour core": (1, 4),
                                           "enhancing tumour": (4,), "label 1": (1,), "label 2": (2,)}
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 2
    ref[3:5, 3:5, 3:5] = 4
    pred = ref.copy()
    pred[ref == 4] = 1  # enhancing called necrosis: WT and TC perfect, ET and labels 1 missed
    m = case_metrics(pred, ref, BRATS_INFO, (1, 1, 1))
    assert m["whole tumour"]["dice"] == 1 and m["tumour core"]["dice"] == 1
    assert m["enhancing tumour"]["dice"] == 0 and m["enhancing tumour"]["hd95"] == EMPTY_HD95
    assert m["label 2"]["dice"] == 1 and m["label 1"]["dice"] == 0


@pytest.mark.brats
def test_real_brats_label_vs_perturbed_matches_medpy(brats_dir) -> None:
    case = find_brats_case(brats_dir / "labelled" / "BraTS19_CBICA_ASK_1")
    ref, geom = read_image(case.label)
    # medpy is slow on the full 240x240x155 grid: both sides see the tumour's box plus a margin
    z, y, x = (np.flatnonzero(ref.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    ref = ref[max(z[0] - 8, 0):z[-1] + 9, max(y[0] - 8, 0):y[-1] + 9, max(x[0] - 8, 0):x[-1] + 9]
    rng = np.random.default_rng(0)
    for values in ((1, 2, 4), (4,)):
        r = np.isin(ref, values)
        p = ndimage.binary_dilation(r, iterations=2) & (rng.random(r.shape) > 0.05)
        p = np.roll(p, 3, axis=1)
        _assert_matches_medpy(p, r, geom.spacing_zyx)


def _copy_labels(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    ids = []
    for p in sorted(src.glob("*.nii.gz")):
        shutil.copy(p, dst / p.name)
        ids.append(p.name[:-7])
    return ids


def test_evaluate_folder_writes_csv_and_summary(synthetic_home_session: Path, tmp_path: Path) -> None:
    raw = synthetic_home_session / "raw" / "Dataset001_Synthetic"
    info = DatasetInfo.load(raw / "dataset.json")
    ids = _copy_labels(raw / "labelsTr", tmp_path / "pred")[:3]
    for extra in sorted((tmp_path / "pred").glob("*.nii.gz"))[3:]:
        extra.unlink()
    seg, geom = read_image(tmp_path / "pred" / f"{ids[0]}.nii.gz")
    write_image(tmp_path / "pred" / f"{ids[0]}.nii.gz", np.where(seg == 4, 1, seg).astype(seg.dtype), geom)
    result = evaluate_folder(tmp_path / "pred", raw / "labelsTr", info, tmp_path / "eval", progress=False)
    # references without predictions are reported, the three predictions are scored
    assert len(result.per_case) == 3 and len(result.failed) == 3
    assert all("reference has no prediction" in f for f in result.failed)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["median"]["whole tumour"]["dice"] == 1.0
    et = [result.per_case[c]["enhancing tumour"]["dice"] for c in ids]
    assert et[0] == 0.0 and et[1:] == [1.0, 1.0]
    assert summary["mean"]["enhancing tumour"]["dice"] == pytest.approx(2 / 3)
    assert summary["std"]["enhancing tumour"]["dice"] == pytest.approx(np.std([0, 1, 1]))
    with open(tmp_path / "eval" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ids and float(rows[0]["enhancing tumour hd95"]) == EMPTY_HD95


def test_cli_infers_brats_regions_and_reports_bad_cases(tmp_path: Path, capsys) -> None:
    folders = write_brats_folders(tmp_path / "ref", n=3, shape=(24, 32, 32), convention="brats2023")
    pred = tmp_path / "pred"
    pred.mkdir()
    for f in folders:
        shutil.copy(f / f"{f.name}-seg.nii.gz", pred / f"{f.name}.nii.gz")
    seg, geom = read_image(pred / f"{folders[1].name}.nii.gz")
    write_image(pred / f"{folders[1].name}.nii.gz", np.where(seg == 3, 4, seg).astype(seg.dtype), geom)  # 2020 ET
    (pred / f"{folders[2].name}.nii.gz").write_bytes(b"truncated")
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(pred), "-r", str(tmp_path / "ref"), "--report"])
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "enhancing tumour: Dice 1.0000" in captured.out
    assert f"{folders[1].name}.nii.gz" in captured.err and "[4]" in captured.err
    assert f"{folders[2].name}.nii.gz" in captured.err
    assert (pred / "report.html").is_file() and (pred / "overlays" / f"{folders[0].name}.png").is_file()
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["num_cases"] == 1 and summary["regions"]["enhancing tumour"] == [3]


def test_cli_determines_postprocessing(synthetic_home_session: Path, tmp_path: Path) -> None:
    raw = synthetic_home_session / "raw" / "Dataset001_Synthetic"
    ids = _copy_labels(raw / "labelsTr", tmp_path / "pred")
    for cid in ids:
        seg, geom = read_image(tmp_path / "pred" / f"{cid}.nii.gz")
        seg[1:3, 1:3, 1:3] = 2  # a spurious speck far from the tumour
        write_image(tmp_path / "pred" / f"{cid}.nii.gz", seg, geom)
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-p", str(tmp_path / "pred"), "-r", str(raw / "labelsTr"),
                       "--dataset-json", str(raw / "dataset.json"), "--determine-postprocessing",
                       str(tmp_path / "pp.json")])
    assert e.value.code == 0
    plan = PostprocessingPlan.load(tmp_path / "pp.json")
    assert plan.foreground_largest_component and plan.num_cases == len(ids)
