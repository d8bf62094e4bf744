"""Ensembling saved probabilities, and largest-component postprocessing chosen on cross-validation results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.brats import dataset_json_for
from autoseg.cli.ensemble import main as ensemble_main
from autoseg.dataset import DatasetInfo
from autoseg.ensemble import ensemble_folders, load_probabilities
from autoseg.inference.predictor import save_probabilities
from autoseg.io import Geometry, read_image
from autoseg.postprocessing import PostprocessingPlan, determine_postprocessing, keep_largest_component

INFO = DatasetInfo.from_dict(dataset_json_for("brats2020", 1, "x"))
GEOM = Geometry((12, 10, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _write(folder: Path, case: str, seed: int, convention: str | None = None) -> np.ndarray:
    probs = np.random.default_rng(seed).random((3, *GEOM.shape_zyx)).astype(np.float32)
    save_probabilities(folder / f"{case}.npz", probs, GEOM, INFO, convention)
    return probs.astype(np.float16).astype(np.float32)


def test_ensemble_averages_probabilities(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", "c1", 0)
    b = _write(tmp_path / "b", "c1", 1)
    report = ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", save_probs=True, progress=False)
    assert report.written == ["c1"] and not report.failed
    seg, geom = read_image(tmp_path / "out" / "c1.nii.gz")
    assert geom == GEOM
    np.testing.assert_array_equal(seg, INFO.label_from_outputs((a + b) / 2))
    saved = load_probabilities(tmp_path / "out" / "c1.npz")
    np.testing.assert_allclose(saved.probabilities, (a + b) / 2, atol=1e-3)
    again = ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", save_probs=True, progress=False)
    assert again.skipped == ["c1"]


def test_ensemble_keeps_the_input_convention(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", "c1", 0, "brats2023")
    b = _write(tmp_path / "b", "c1", 1, "brats2023")
    ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", progress=False)
    seg, _ = read_image(tmp_path / "out" / "c1.nii.gz")
    expected = INFO.label_from_outputs((a + b) / 2)
    expected[expected == 4] = 3
    np.testing.assert_array_equal(seg, expected)


def test_missing_or_corrupt_cases_are_reported(tmp_path: Path, capsys) -> None:
    for folder in ("a", "b"):
        _write(tmp_path / folder, "good", 0)
        _write(tmp_path / folder, "bad", 1)
    _write(tmp_path / "a", "only_a", 2)
    (tmp_path / "b" / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(SystemExit) as e:
        ensemble_main(["-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "only_a.npz" in err and "bad.npz" in err and "1 written" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "provenance"]


def _tumour(shape=(20, 20, 20), blob: bool = True) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[5:12, 5:12, 5:12] = 2
    seg[7:10, 7:10, 7:10] = 4
    if blob:
        seg[16:18, 16:18, 16:18] = 2
    return seg


def test_keep_largest_component() -> None:
    seg = _tumour()
    out = keep_largest_component(seg, (1, 2, 4))
    assert (out[16:18, 16:18, 16:18] == 0).all() and (out[5:12, 5:12, 5:12] == seg[5:12, 5:12, 5:12]).all()
    diagonal = np.zeros((3, 3, 3), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # touching at a corner: one component (26-connectivity)
    np.testing.assert_array_equal(keep_largest_component(diagonal, (1,)), diagonal)


def test_postprocessing_is_chosen_only_when_it_helps(tmp_path: Path) -> None:
    ref = _tumour(blob=False)
    spurious = [(_tumour(blob=True), ref), (_tumour(blob=True), ref)]
    plan = determine_postprocessing(spurious, INFO)
    assert plan.foreground_largest_component and plan.num_cases == 2
    assert plan.dice_after["whole tumour"] > plan.dice_before["whole tumour"]
    real_second_lesion = [(_tumour(blob=True), _tumour(blob=True))]
    keep = determine_postprocessing(real_second_lesion, INFO)
    assert not keep.foreground_largest_component and keep.largest_component == ()
    plan.save(tmp_path / "pp.json")
    loaded = PostprocessingPlan.load(tmp_path / "pp.json")
    assert loaded == plan
    np.testing.assert_array_equal(loaded.apply(_tumour(blob=True), INFO), ref)


def test_postprocess_flag_applies_the_plan(tmp_path: Path) -> None:
    probs = np.zeros((3, 20, 20, 20), np.float32)
    seg = _tumour(blob=True)
    probs[0] = np.isin(seg, (1, 2, 4))
    probs[1] = np.isin(seg, (1, 4))
    probs[2] = seg == 4
    geom = Geometry((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for folder in ("a", "b"):
        save_probabilities(tmp_path / folder / "c.npz", probs, geom, INFO, None)
    PostprocessingPlan(True).save(tmp_path / "pp.json")
    with pytest.raises(SystemExit) as e:
        ensemble_main(["-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "out"),
                       "--postprocess", str(tmp_path / "pp.json")])
    assert e.value.code == 0
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "c.nii.gz")[0], _tumour(blob=False))
