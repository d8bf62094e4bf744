"""2.5D context slices (autoseg-plan --context-slices K): the stacking and its edges, the plan that records and
sizes it, and a 2d model that trains and predicts with K = 2."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from autoseg.checkpoint import plan_hash
from autoseg.context import ContextSlices, context_slab, expand_channels, input_channels, stack_context
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.io import read_image, read_json
from autoseg.network import network_for_dataset
from autoseg.planning import plan_dataset
from autoseg.plans import NetworkPlan, Plans

STATS = IntensityStats(mean=30.0, std=20.0, median=30.0, min=-1000.0, max=1500.0, percentile_00_5=-900.0,
                       percentile_99_5=1200.0)


def test_each_slice_is_stacked_with_its_neighbours_and_edges_repeat() -> None:
    volume = np.arange(2 * 5 * 3 * 4, dtype=np.float32).reshape(2, 5, 3, 4)
    stacked = stack_context(volume, 2)
    assert stacked.shape == (10, 5, 3, 4) and input_channels(2, 2) == 10
    for c in range(2):
        for j in range(5):
            for z in range(5):
                np.testing.assert_array_equal(stacked[c * 5 + j, z], volume[c, min(max(z - 2 + j, 0), 4)])
    for z in range(5):   # what training cuts, one slice at a time, is what inference stacks
        np.testing.assert_array_equal(context_slab(volume, z, 2), stacked[:, z])
        np.testing.assert_array_equal(ContextSlices(volume, 2)[:, z], stacked[:, z])
    lazy = ContextSlices(volume, 2)
    assert lazy.shape == stacked.shape and np.array_equal(np.asarray(lazy, dtype=np.float32), stacked)
    assert stack_context(volume, 0) is volume
    assert expand_channels([1], 2) == (5, 6, 7, 8, 9) and expand_channels([], 2) == ()


def _fingerprint(n_slices: int = 24) -> Fingerprint:
    cases = [CaseFingerprint(f"c{i}", [n_slices, 256, 256], [5.0, 0.5, 0.5], "LPS", [n_slices, 200, 200])
             for i in range(6)]
    return Fingerprint("Dataset041_CT", {"0": "CT"}, 6, cases, [STATS], [c.case_id for c in cases])


def _info(two_d: bool = False) -> DatasetInfo:
    return DatasetInfo(channel_names={"0": "CT"}, labels={"background": 0, "lesion": 1}, file_ending=".nii.gz",
                       num_training=6, extra={"autoseg_2d": two_d})


def test_plan_records_context_for_2d_only_and_sizes_the_network_for_it() -> None:
    plain = plan_dataset(_fingerprint(), _info(), 8, "test")
    plans = plan_dataset(_fingerprint(), _info(), 8, "test", context_slices=2)
    c2d, c3d = plans.configurations["2d"], plans.configurations["3d_fullres"]
    assert c2d.network.context_slices == 2 and c3d.network.context_slices == 0
    assert c3d == plain.configurations["3d_fullres"]
    # sized for 5 input channels: more memory per sample than the one-slice plan (or a smaller batch/patch)
    p0 = plain.configurations["2d"]
    assert (c2d.memory_estimate_gb / c2d.batch_size > p0.memory_estimate_gb / p0.batch_size
            or c2d.patch_size != p0.patch_size)
    assert any("2 slice(s) on each side" in s and "5 input channels" in s for s in plans.explanation)
    d = plans.to_dict()
    assert d["configurations"]["2d"]["network"]["context_slices"] == 2
    assert "context_slices" not in d["configurations"]["3d_fullres"]["network"]   # plans.json unchanged without it
    assert Plans.from_dict(d).configurations["2d"] == c2d
    net = network_for_dataset(c2d.network, _info())
    assert next(p for p in net.parameters() if p.ndim == 4).shape[1] == 5   # the first convolution reads 5 slices


def test_context_is_refused_for_2d_images_and_negative_numbers() -> None:
    fp = _fingerprint(n_slices=1)
    with pytest.raises(AutosegError, match="2D images, one slice each"):
        plan_dataset(fp, _info(two_d=True), 8, "test", context_slices=2)
    with pytest.raises(AutosegError, match="at least 0"):
        plan_dataset(_fingerprint(), _info(), 8, "test", context_slices=-1)


def test_checkpoints_of_plans_without_the_field_keep_their_hash() -> None:
    config = asdict(plan_dataset(_fingerprint(), _info(), 8, "test").configurations["2d"])
    legacy = {**config, "network": {k: v for k, v in config["network"].items() if k != "context_slices"}}
    assert config["network"]["context_slices"] == 0 and plan_hash(config) == plan_hash(legacy)
    assert plan_hash({**config, "network": {**config["network"], "context_slices": 2}}) != plan_hash(config)
    assert NetworkPlan.from_dict(legacy["network"]).context_slices == 0


@pytest.mark.slow
def test_2d_with_two_context_slices_trains_and_predicts(tmp_path: Path) -> None:
    from autoseg.inference.predictor import Predictor, predict_folder
    from autoseg.planning.stage import run_planning
    from autoseg.preprocessing import load_case, preprocess_dataset
    from autoseg.slices import convert_slices
    from autoseg.synthetic_ct import write_png_patients
    from autoseg.training import TrainOptions, train_fold
    from autoseg.training.trainer import _load_case

    src = tmp_path / "src"
    write_png_patients(src, n=4, shape=(8, 48, 48), seed=5, bits=16)
    write_png_patients(src, n=1, shape=(8, 48, 48), seed=5, bits=16, first_index=5, masks=False)
    paths = convert_slices(src, tmp_path / "home", 41, "Context", spacing_zyx=(5.0, 0.5, 0.5), channel_name="CT",
                           intercept=-1024, workers=1)
    plans = run_planning(paths, vram_gb=0.25, base_features=4, max_features=16, workers=1, ct_window=(40, 80),
                         context_slices=2)
    assert read_json(paths.plans_json)["configurations"]["2d"]["network"]["context_slices"] == 2
    preprocess_dataset(paths, "2d", workers=1)
    case = _load_case(paths.config_dir("2d"), "patient_001", context=2)   # what the training loader reads
    plain = load_case(paths.config_dir("2d"), "patient_001")
    np.testing.assert_array_equal(case.data[:, 0], np.asarray(plain.data)[0, [0, 0, 0, 1, 2]])
    train_fold(paths, "2d", 0, TrainOptions(epochs=1, iters_per_epoch=2, val_iters=1, device="cpu", workers=0,
                                            precision="fp32"))
    predictor = Predictor.from_results(paths, "2d", folds=[0], device="cpu", mirroring=False)
    assert predictor.config.network.context_slices == 2
    images = [read_image(paths.raw / "imagesTs" / "patient_005_0000.nii.gz", np.float32)[0]]
    _, geometry = read_image(paths.raw / "imagesTs" / "patient_005_0000.nii.gz")
    data, _ = predictor.preprocess(images, geometry)
    assert data.shape[0] == 5 and plans.configurations["2d"].normalization[0].scheme == "ct_window"
    report = predict_folder(predictor, paths.raw / "imagesTs", tmp_path / "pred", progress=False)
    assert report.written == ["patient_005"] and not report.failed
    pred, pred_geometry = read_image(tmp_path / "pred" / "patient_005.nii.gz")
    assert pred.shape == (8, 48, 48) and pred_geometry == geometry
