"""Calibration arithmetic: ECE, reliability counts, the evaluated box, Spearman, the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from autoseg.dataset import DatasetInfo
from autoseg.evaluation.calibration import (ECE_BINS, Reliability, case_reliability, expected_calibration_error,
                                            region_box, report_table, save_reliability_png, spearman)

LABELS = DatasetInfo.from_dict({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                                "numTraining": 1, "file_ending": ".nii.gz"})


def test_calibrated_sample_has_ece_near_zero() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(400_000)
    truth = rng.random(p.size) < p          # the event happens with exactly the predicted probability
    assert expected_calibration_error(p, truth) < 0.005


def test_over_confident_sample_has_a_clear_ece() -> None:
    rng = np.random.default_rng(1)
    q = rng.random(400_000)
    truth = rng.random(q.size) < q
    confident = (q > 0.5).astype(np.float64)    # says 0 or 1 where the truth is only q
    assert expected_calibration_error(confident, truth) == pytest.approx(0.25, abs=0.005)   # E|q - round(q)|
    sharpened = q ** 3 / (q ** 3 + (1 - q) ** 3)
    assert expected_calibration_error(sharpened, truth) > 0.05


def test_ece_by_hand_and_the_last_bin_holds_one() -> None:
    p = np.array([0.05, 0.15, 0.95, 1.0])
    truth = np.array([0, 1, 1, 1], bool)
    # bins 0, 1 and 9: gaps 0.05, 0.85 and |0.975 - 1| for two voxels
    assert expected_calibration_error(p, truth) == pytest.approx((0.05 + 0.85 + 2 * 0.025) / 4)
    r = Reliability()
    r.add(p, truth)
    assert r.count.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2] and r.voxels == 4 and len(r.count) == ECE_BINS
    conf, freq = r.curve()
    assert conf[9] == pytest.approx(0.975) and freq[1] == 1.0 and conf[5] is None
    merged = Reliability()
    merged.merge(r)
    merged.merge(r)
    assert merged.ece() == pytest.approx(r.ece()) and merged.voxels == 8
    assert Reliability().ece() is None
    # two bins: mean 0.1 against 1 of 2 inside, and 0.975 against 2 of 2
    assert expected_calibration_error(p, truth, bins=2) == pytest.approx((2 * 0.4 + 2 * 0.025) / 4)


@pytest.mark.parametrize("seed", range(4))
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, 30).astype(float)        # many ties
    y = x * 0.3 + rng.integers(0, 4, 30)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    u, v = rng.random(12), rng.random(12)
    assert spearman(u, v) == pytest.approx(spearmanr(u, v).statistic, abs=1e-12)


def test_spearman_edge_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [2, 1]) is None                 # too few cases to rank
    assert spearman([1, 2, 3], [5, 5, 5]) is None           # a constant side has no ranking
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


def test_region_box_is_the_union_of_reference_and_prediction() -> None:
    ref = np.zeros((6, 6, 6), bool)
    ref[1:3, 1:2, 2:3] = True
    prob = np.zeros((6, 6, 6))
    prob[4, 4, 4] = 0.7
    prob[0, 0, 0] = 0.4                                  # below 0.5: not predicted, does not widen the box
    assert region_box(ref, prob) == (slice(1, 5), slice(1, 5), slice(2, 5))
    assert region_box(np.zeros_like(ref), np.zeros_like(prob)) is None


def test_case_reliability_uses_the_named_channels_inside_the_box() -> None:
    ref = np.zeros((4, 8, 8), np.uint8)
    ref[1:3, 2:6, 2:6] = 1
    ref[1, 3, 3] = 2
    probs = np.zeros((3, 4, 8, 8), np.float32)
    probs[0] = 1.0
    probs[1][ref == 1] = 0.8                              # liver, 80 % where it is always liver
    probs[2][ref == 2] = 1.0
    counts = case_reliability(probs, ref, {"liver": 1, "tumour": 2}, LABELS)
    assert counts["liver"].voxels == 2 * 4 * 4            # the liver's box, not the 256 voxels of the image
    assert counts["liver"].ece() == pytest.approx((31 * 0.2 + 1 * 0.0) / 32)   # the tumour voxel is 0, not liver
    assert counts["tumour"].voxels == 1 and counts["tumour"].ece() == 0.0


def test_reliability_diagram_and_report_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    curves = {"whole tumour": Reliability(), "enhancing tumour": Reliability()}
    p = rng.random(5000)
    curves["whole tumour"].add(p, rng.random(5000) < p)
    png = save_reliability_png(curves, tmp_path / "reliability.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.name for f in tmp_path.iterdir()] == ["reliability.png"]   # no temporary left
    summary = {"calibration": {"regions": {"whole tumour": curves["whole tumour"].to_dict()}},
               "uncertainty_ranking": {"regions": {"whole tumour": {"spearman_dice": -0.5, "cases": 4}}}}
    row = report_table(summary)["whole tumour"]
    assert row["voxels"] == 5000 and row["Spearman(score, Dice)"] == -0.5 and row["ECE (10 bins)"] < 0.05
