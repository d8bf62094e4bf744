"""Uncertainty of ensemble predictions: running variance, entropy maps, scores, the members a predictor runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from autoseg.brats import dataset_json_for
from autoseg.cli.evaluate import main as evaluate_main
from autoseg.cli.predict import main as predict_main
from autoseg.dataset import DatasetInfo
from autoseg.inference.predictor import Predictor
from autoseg.inference.sliding_window import logits_to_probabilities, mirror_combinations, sliding_window_logits
from autoseg.inference.uncertainty import (RunningVariance, binary_entropy, case_scores, entropy_map,
                                           output_channels)
from autoseg.io import Geometry, read_header, read_image, write_image, write_json_atomic
from autoseg.network import network_for_dataset
from test_predict import DS, tiny_plan, write_fold
from test_reliability import expect_one_line, run

BRATS = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "Synthetic"))
LABELS = DatasetInfo.from_dict({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                                "numTraining": 1, "file_ending": ".nii.gz"})


@pytest.fixture
def one_thread():
    """Tiny networks run 50x faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_running_variance_matches_the_stacked_variance() -> None:
    xs = [torch.rand(3, 5, 6) for _ in range(7)]
    rv = RunningVariance()
    for x in xs:
        rv.add(x)
    stacked = torch.stack(xs)
    assert rv.count == 7
    torch.testing.assert_close(rv.mean, stacked.mean(0))
    torch.testing.assert_close(rv.variance(), stacked.var(0, unbiased=False))
    one = RunningVariance()
    one.add(xs[0])
    assert not one.variance().any()
    with pytest.raises(ValueError):
        RunningVariance().variance()


def test_entropy_maps_are_in_bits_and_scaled_to_one() -> None:
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0, 0.25])), [0, 1, 0, 0.811278], atol=1e-6)
    regions = np.array([[0.5, 0.0], [0.5, 1.0], [0.5, 0.0]], np.float32)[:, :, None]   # 3 regions, 2 voxels
    np.testing.assert_allclose(entropy_map(regions, True)[:, 0], [1.0, 0.0])
    classes = np.array([[1 / 3, 1.0], [1 / 3, 0.0], [1 / 3, 0.0]], np.float32)[:, :, None]
    np.testing.assert_allclose(entropy_map(classes, False)[:, 0], [1.0, 0.0], atol=1e-6)


def test_scores_are_entropy_per_predicted_voxel() -> None:
    probs = np.zeros((3, 4, 4, 4), np.float32)
    probs[0, 0] = 1.0      # whole tumour certain in slice 0 (16 voxels) ...
    probs[0, 1, 0] = 0.5   # ... and uncertain on 4 voxels beside it
    probs[2, 3, 0, 0] = 0.5
    seg = BRATS.label_from_outputs(probs)
    scores, foreground = case_scores(probs, seg, entropy_map(probs, True), BRATS, {})
    assert scores["whole tumour"] == pytest.approx(4 / 16)
    assert scores["tumour core"] == 0.0
    assert scores["enhancing tumour"] == pytest.approx(1.0)   # nothing predicted: total entropy / 1
    assert foreground == pytest.approx((4 + 1) / 3 / 16)
    assert output_channels(BRATS) == {"whole tumour": 0, "tumour core": 1, "enhancing tumour": 2}
    assert output_channels(LABELS) == {"liver": 1, "tumour": 2}
    # a 2023-named input: the written enhancing value is 3, the model's is 4
    seg23 = np.where(seg == 4, 3, seg)
    assert case_scores(probs, seg23, entropy_map(probs, True), BRATS, {4: 3})[0] == scores


def _flip(t: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(t, [a + 1 for a in axes]) if axes else t


def test_predictor_variance_is_over_folds_and_mirrorings(one_thread) -> None:
    """Brute force: each member is one fold run on the mirrored volume and mirrored back (the windows of a
    24-voxel axis at patch 16 (and the one window of a 16-voxel axis) are symmetric, so this is the very pass the predictor makes)."""
    config = replace(tiny_plan(), patch_size=[16, 16, 16])
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(network_for_dataset(config.network, BRATS, deep_supervision=False).eval())
    predictor = Predictor(config, BRATS, nets)
    data = torch.randn(4, 24, 24, 16)
    rv = RunningVariance()
    mean = predictor.logits(data, members=rv)
    members = [_flip(sliding_window_logits(net, _flip(data, f), (16, 16, 16), 3), f)
               for net in nets for f in mirror_combinations(config.mirror_axes)]
    assert rv.count == predictor.num_members == len(members) == 16
    stacked = torch.stack(members)
    torch.testing.assert_close(mean, stacked.mean(0), atol=1e-5, rtol=1e-5)
    probs = logits_to_probabilities(stacked, True)
    torch.testing.assert_close(rv.variance(), probs.var(0, unbiased=False), atol=1e-6, rtol=1e-4)
    assert rv.variance().max() > 1e-4                                  # the members do disagree
    torch.testing.assert_close(mean, predictor.logits(data), atol=1e-6, rtol=1e-5)   # the flag-off result


@pytest.mark.slow
def test_uncertainty_through_predict_and_evaluate(synthetic_home: Path, tmp_path: Path, capsys, one_thread) -> None:
    """autoseg-predict --uncertainty on 3 labelled cases with 2 folds x 8 mirrorings, then autoseg-evaluate
    --calibration --uncertainty --report on what it wrote (that the flag leaves the probabilities as they
    are, up to rounding, is checked on the predictor above)."""
    write_fold(synthetic_home, 0, 0)
    write_fold(synthetic_home, 1, 1)
    raw = synthetic_home / "raw" / DS
    cases, refs = tmp_path / "in", tmp_path / "refs"
    for k in range(3):
        for c in range(4):
            (cases / f"case_00{k}_{c:04d}.nii.gz").parent.mkdir(exist_ok=True)
            shutil.copy(raw / "imagesTr" / f"case_00{k}_{c:04d}.nii.gz", cases)
        refs.mkdir(exist_ok=True)
        shutil.copy(raw / "labelsTr" / f"case_00{k}.nii.gz", refs)
    out = tmp_path / "pred"
    common = ["-i", cases, "--home", synthetic_home, "--device", "cpu", "--precision", "fp32", "--threads", "1",
              "--save-probabilities"]
    code, lines = run(predict_main, [*common, "-o", out, "--uncertainty"], capsys)
    assert code == 0 and lines[-1].startswith("3 written"), lines
    for k in range(3):
        cid = f"case_00{k}"
        header = read_header(cases / f"{cid}_0000.nii.gz")
        entropy, geom = read_image(out / "uncertainty" / f"{cid}_entropy.nii.gz")
        variance, vgeom = read_image(out / "uncertainty" / f"{cid}_variance.nii.gz")
        assert geom == vgeom == header and entropy.dtype == variance.dtype == np.float32
        assert 0 <= entropy.min() and entropy.max() <= 1 and 0 <= variance.min() and variance.max() <= 0.25
        assert variance.max() > 1e-5 and not variance[0, 0, 0] and not entropy[0, 0, 0]   # 0 outside the brain
        data = json.loads((out / "uncertainty" / f"{cid}.json").read_text())
        assert data["members"] == 16 and set(data["score"]) == {"whole tumour", "tumour core", "enhancing tumour"}
    rows = (out / "uncertainty" / "scores.csv").read_text().splitlines()
    assert rows[0] == "case,members,whole tumour,tumour core,enhancing tumour,foreground_score" and len(rows) == 4

    # a rerun skips finished cases; a case without its score file is predicted again
    (out / "uncertainty" / "case_001.json").unlink()
    code, lines = run(predict_main, [*common, "-o", out, "--uncertainty"], capsys)
    assert code == 0 and lines[-1].startswith("1 written, 2 already done"), lines

    report = tmp_path / "eval"
    code, lines = run(evaluate_main, ["-p", out, "-r", refs, "--home", synthetic_home, "-o", report,
                                      "--calibration", "--uncertainty", "--report"], capsys)
    assert code == 0, lines
    summary = json.loads((report / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal["bins"] == 10 and cal["num_cases"] == 3 and set(cal["per_case"]) == {"case_000", "case_001", "case_002"}
    for name, r in cal["regions"].items():
        assert sum(r["count"]) == r["voxels"] > 0 and 0 <= r["ece"] <= 1, name
    ranking = summary["uncertainty_ranking"]["regions"]["whole tumour"]
    ids = sorted(summary["per_case"])
    scores = [json.loads((out / "uncertainty" / f"{c}.json").read_text())["score"]["whole tumour"] for c in ids]
    dice = [summary["per_case"][c]["whole tumour"]["dice"] for c in ids]
    expected = spearmanr(scores, dice).statistic
    assert ranking["cases"] == 3
    if np.isfinite(expected):
        assert ranking["spearman_dice"] == pytest.approx(expected)
    else:   # a constant Dice (e.g. 0 for every case) ranks nothing
        assert ranking["spearman_dice"] is None
    page = (report / "report.html").read_text()
    assert "Reliability diagram" in page and "Spearman(score, Dice)" in page and (report / "reliability.png").is_file()
    assert page.count("data:image/png;base64,") == 1 + 3   # the diagram and the 3 overlays


def test_calibration_and_ranking_inputs_missing_are_one_line(tmp_path: Path, capsys) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    info = dataset_json_for("brats2020", 1, "Synthetic")
    write_json_atomic(tmp_path / "dataset.json", info)
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    _write(ref / "case_000.nii.gz", seg)
    _write(pred / "case_000.nii.gz", seg)
    base = ["-p", pred, "-r", ref, "--dataset-json", tmp_path / "dataset.json"]
    code, lines = run(evaluate_main, [*base, "--calibration"], capsys)
    line = expect_one_line(code, lines, pred / "case_000.npz", "autoseg-evaluate")
    assert "--save-probabilities" in line
    code, lines = run(evaluate_main, [*base, "--uncertainty"], capsys)
    line = expect_one_line(code, lines, pred / "uncertainty" / "case_000.json", "autoseg-evaluate")
    assert "autoseg-predict --uncertainty" in line
    assert sorted(p.name for p in pred.iterdir()) == ["case_000.nii.gz"]   # nothing written
    # a score file that is not one: the case is reported, the metrics still written, exit 2
    (pred / "uncertainty").mkdir()
    (pred / "uncertainty" / "case_000.json").write_text('{"score": "high"}')
    code, lines = run(evaluate_main, [*base, "--uncertainty"], capsys)
    assert code == 2 and any("case_000.json" in ln and "not an uncertainty score file" in ln for ln in lines), lines
    assert (pred / "summary.json").is_file()


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, array, Geometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)))
