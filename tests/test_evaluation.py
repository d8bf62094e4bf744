"""Metrics against medpy (test-only reference implementation), BraTS empty-mask convention, folder evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from medpy.metric import binary as mp
from scipy import ndimage

from autoseg.brats import dataset_json_for, find_brats_case
from autoseg.dataset import DatasetInfo
from autoseg.evaluation.metrics import EMPTY_HD95, case_metrics, evaluated_masks, hd95, mask_metrics
from autoseg.io import read_image

BRATS_INFO = DatasetInfo(**{k: v for k, v in {
    "channel_names": dataset_json_for("brats2020", 1, "x")["channel_names"],
    "labels": dataset_json_for("brats2020", 1, "x")["labels"],
    "file_ending": ".nii.gz", "num_training": 1,
    "regions_class_order": dataset_json_for("brats2020", 1, "x")["regions_class_order"]}.items()})


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
    rng = np.random.default_rng(0)
    for values in ((1, 2, 4), (1, 4), (4,)):
        r = np.isin(ref, values)
        p = ndimage.binary_dilation(r, iterations=2) & (rng.random(r.shape) > 0.05)
        p = np.roll(p, 3, axis=1)
        _assert_matches_medpy(p, r, geom.spacing_zyx)
