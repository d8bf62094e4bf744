"""Cross-validation in the raw images' space (each fold's validation_raw, autoseg-evaluate --crossval) and the choice
of the best configuration (autoseg-find-best)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _training_fixtures import build_home, copy_home, tiny_plan  # noqa: E402

from autoseg.dataset import DatasetInfo  # noqa: E402
from autoseg.evaluation.evaluate import evaluate_folder  # noqa: E402
from autoseg.inference.predictor import Predictor, predict_folder  # noqa: E402
from autoseg.io import read_image, read_json  # noqa: E402
from autoseg.training import TrainOptions, train_fold  # noqa: E402

FAST = dict(epochs=1, iters_per_epoch=2, val_iters=0, workers=0, progress=False, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return build_home(tmp_path_factory.mktemp("select") / "home", [tiny_plan()])


@pytest.fixture
def paths(prepared, tmp_path):
    return copy_home(prepared, tmp_path / "home")


def test_fold_validation_is_written_and_scored_in_the_raw_space(paths, tmp_path):
    fold_dir = train_fold(paths, "3d_fullres", 1, TrainOptions(**FAST))
    raw = fold_dir / "validation_raw"
    val = read_json(paths.splits_json)[1]["val"]
    assert sorted(p.name for p in raw.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in val)
    assert sorted(p.name for p in raw.glob("*.npz")) == sorted(f"{c}.npz" for c in val)
    summary = read_json(raw / "summary.json")
    assert sorted(summary["per_case"]) == sorted(val) and summary["failed"] == []
    # the same labels as autoseg-predict with this fold writes, in the raw image's grid
    predictor = Predictor.from_results(paths, "3d_fullres", [1], device="cpu", precision="fp32")
    predict_folder(predictor, paths.raw / "imagesTr", tmp_path / "pred", progress=False, case_ids={val[0]})
    ours, geometry = read_image(raw / f"{val[0]}.nii.gz")
    assert np.array_equal(ours, read_image(tmp_path / "pred" / f"{val[0]}.nii.gz")[0])
    assert geometry.shape_zyx == read_image(paths.raw / "labelsTr" / f"{val[0]}.nii.gz")[1].shape_zyx
    # the same numbers as autoseg-evaluate of that folder against labelsTr
    again = evaluate_folder(raw, paths.raw / "labelsTr", DatasetInfo.load(paths.dataset_json), tmp_path / "eval",
                            progress=False)
    assert again.per_case == summary["per_case"]
    # a rerun of the finished fold keeps what is up to date
    stamps = {p.name: p.stat().st_mtime_ns for p in raw.iterdir() if p.is_file()}
    train_fold(paths, "3d_fullres", 1, TrainOptions(**FAST))
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir() if p.is_file()} == stamps
