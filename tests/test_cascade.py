"""The cascade: planned with 3d_lowres, trained on each case's held-out lowres prediction (cached, redone when a
lowres checkpoint changes), predicted in one command after the lowres folds; one-line refusals."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cascade import CASCADE, one_hot, perturb_prior, prior_labels
from autoseg.checkpoint import load_checkpoint, save_checkpoint
from autoseg.cli.plan import main as plan_main
from autoseg.cli.predict import main as predict_main
from autoseg.cli.preprocess import main as preprocess_main
from autoseg.cli.train import main as train_main
from autoseg.data.augmentation import AugmentationParams
from autoseg.data.loader import BatchKey, BatchMaker
from autoseg.data.splits import load_or_create_splits
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError
from autoseg.inference.cascade import prior_from_probabilities
from autoseg.inference.predictor import Predictor
from autoseg.paths import DatasetPaths
from autoseg.planning import plan_dataset
from autoseg.plans import Plans
from autoseg.preprocessing import list_preprocessed_cases, load_case
from autoseg.provenance import case_record, read_record
from autoseg.synthetic import write_raw_dataset
from autoseg.training import TrainOptions, train_fold
from autoseg.training.cascade import ensure_priors, prior_dir, prior_path

sys.path.insert(0, str(Path(__file__).parent))
from test_planning import fingerprint, info_for  # noqa: E402

NAME = "Dataset001_Synthetic"
TINY = ["--vram", "0.002", "--base-features", "4", "--max-features", "8", "--spacing", "1.2"]
FAST = TrainOptions(epochs=1, iters_per_epoch=2, val_iters=1, workers=0, device="cpu", precision="fp32",
                    progress=False, validate=False)


def test_cascade_is_planned_exactly_when_lowres_is():
    large = fingerprint([[40, 48, 48]] * 6, [[1.0, 1.0, 1.0]] * 6)
    plans = plan_dataset(large, info_for(large), 0.002, "test", base_features=4, max_features=8, spacing=[1.5])
    full, cascade = plans.configurations["3d_fullres"], plans.configurations[CASCADE]
    assert "3d_lowres" in plans.configurations
    assert cascade.previous_stage == "3d_lowres" and cascade.data_of == "3d_fullres"
    assert (cascade.spacing, cascade.patch_size, cascade.batch_size) == (full.spacing, full.patch_size, full.batch_size)
    assert cascade.network == replace(full.network, prior_channels=3)   # BraTS labels 1, 2, 4
    assert CASCADE in " ".join(plans.explanation)
    assert Plans.from_dict(json.loads(json.dumps(plans.to_dict()))) == plans
    small = fingerprint([[40, 48, 48]] * 6, [[1.0, 1.0, 1.0]] * 6)
    plans = plan_dataset(small, info_for(small), 8, "test", base_features=4, max_features=8, spacing=[1.5])
    assert "3d_lowres" not in plans.configurations and CASCADE not in plans.configurations
    assert "previous_stage" not in json.dumps(plans.to_dict())   # plans without a cascade read as before


def test_perturbation_is_seeded_and_changes_only_the_prior_channels():
    seg = np.zeros((12, 16, 16), np.int8)
    seg[3:9, 4:12, 4:12] = 1
    seg[5:7, 6:10, 6:10] = 4
    seg[0:2, 0:2, 0:2] = 2
    prior = one_hot(seg, (1, 2, 4))
    assert prior.shape == (3, 12, 16, 16) and prior.sum(0).max() == 1
    outs = [perturb_prior(prior, np.random.default_rng(s)) for s in range(40)]
    assert np.array_equal(perturb_prior(prior, np.random.default_rng(3)), outs[3])
    changed = [not np.array_equal(o, prior) for o in outs]
    assert 0 < sum(changed) < 40   # p 0.4 and 0.2: some samples keep the prior as it is
    assert all(set(np.unique(o)) <= {0.0, 1.0} for o in outs)


class _Case:
    def __init__(self, data, seg, prior):
        self.data, self.seg, self.prior = data, seg, prior
        self.fg_locations = {"x": np.argwhere(seg > 0)}


def test_loader_moves_the_prior_with_the_label_and_leaves_its_intensity(monkeypatch):
    """With the perturbation off, a prior equal to the label stays equal to the target through rotation, scaling
    and mirroring (nearest), while the image channels are intensity-augmented."""
    monkeypatch.setattr("autoseg.data.loader.perturb_prior", lambda prior, rng: prior)
    info = DatasetInfo.from_dict({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                                  "file_ending": ".nii.gz", "numTraining": 1})
    rng = np.random.default_rng(0)
    seg = np.zeros((24, 24, 24), np.int8)
    seg[6:18, 5:15, 8:20] = 1
    seg[9:13, 9:12, 10:14] = 2
    case = _Case(rng.normal(size=(1, 24, 24, 24)).astype(np.float32), seg, seg.copy())
    params = AugmentationParams((12, 12, 12), (0, 1, 2))
    maker = BatchMaker(lambda cid: case, ["c"], info, (20, 20, 20), params, 2, (0, 1), 0.5, True, 0,
                       prior_labels=prior_labels(info))
    for it in range(12):
        data, target = maker.sample(BatchKey("train", 0, it), 0)
        assert data.shape == (3, 12, 12, 12)
        assert np.array_equal(data[1:], one_hot(target[0], (1, 2)))
    plain = replace(maker, prior_labels=())
    assert plain.sample(BatchKey("train", 0, 0), 0)[0].shape == (1, 12, 12, 12)


def test_prior_from_probabilities_resizes_to_the_target_grid():
    info = DatasetInfo.from_dict({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
                                  "file_ending": ".nii.gz", "numTraining": 1})
    probs = np.zeros((2, 4, 4, 4), np.float32)
    probs[0], probs[1, :2] = 1, 2
    prior = prior_from_probabilities(probs, (8, 8, 8), info)
    assert prior.shape == (8, 8, 8) and prior.dtype == np.int8
    assert (prior[:3] == 1).all() and (prior[5:] == 0).all()


def _one_line(capsys, call) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _ok(main, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code in (0, None)


def _fold_weights(paths: DatasetPaths, fold: int) -> str:
    from autoseg.provenance import model_identity
    p = Predictor.from_results(paths, "3d_lowres", [fold], device="cpu", precision="fp32")
    return model_identity(p.networks, {}, {})["weights"][0]


@pytest.mark.slow
def test_cascade_end_to_end(home: Path, tmp_path: Path, capsys):
    paths = DatasetPaths(home, NAME)
    write_raw_dataset(paths.raw, n_train=5, n_test=1, shape=(40, 48, 48), seed=0)
    _ok(plan_main, ["-d", "1", "--home", str(home), *TINY])
    plans = Plans.load(paths.plans_json)
    assert {"3d_lowres", CASCADE} <= set(plans.configurations)
    _ok(preprocess_main, ["-d", "1", "--home", str(home), "-c", "all", "-np", "1"])
    assert not paths.config_dir(CASCADE).exists()   # the cascade reads 3d_fullres's cases: no second copy
    home_args = ["-d", "1", "--home", str(home)]

    # no lowres fold yet: one line naming them all; fold all is refused for the cascade
    err = _one_line(capsys, lambda: train_main([CASCADE, "fold0", *home_args, "--epochs", "1"]))
    assert "3d_lowres fold(s) 0, 1, 2, 3, 4" in err and "autoseg-train 3d_lowres fold0" in err
    for k in range(5):
        train_fold(paths, "3d_lowres", k, replace(FAST, seed=k))   # distinct weights per fold
    err = _one_line(capsys, lambda: train_main([CASCADE, "all", *home_args, "--epochs", "1"]))
    assert "fold all" in err

    train_fold(paths, CASCADE, 0, replace(FAST, validate=True))
    fold0 = paths.fold_dir(CASCADE, 0)
    assert (fold0 / "checkpoint_final.pt").is_file() and (fold0 / "validation" / "summary.json").is_file()
    assert load_checkpoint(fold0 / "checkpoint_final.pt")["network"]["prior_channels"] == 3

    # every case's extra channels are the prediction of the lowres fold that held it out
    splits = load_or_create_splits(paths.splits_json, list_preprocessed_cases(paths.config_dir("3d_fullres")))
    folder = prior_dir(paths, plans.configurations[CASCADE], None)
    weights = [_fold_weights(paths, k) for k in range(5)]
    assert len(set(weights)) == 5
    for k, split in enumerate(splits):
        held_out = Predictor.from_results(paths, "3d_lowres", [k], device="cpu", precision="fp32")
        for cid in split.val:
            record = read_record(case_record(folder, cid))
            assert record["options"]["fold"] == k and record["model"]["weights"] == [weights[k]]
            low = torch.from_numpy(np.array(load_case(paths.config_dir("3d_lowres"), cid).data))
            shape = load_case(paths.config_dir("3d_fullres"), cid).data.shape[1:]
            expected = prior_from_probabilities(held_out.probabilities_preprocessed(low), shape, held_out.info)
            assert np.array_equal(np.load(prior_path(folder, cid)), expected)

    # a changed lowres checkpoint redoes exactly the cases that fold held out
    changed = splits[2].val
    ck = paths.fold_dir("3d_lowres", 2) / "checkpoint_final.pt"
    payload = load_checkpoint(ck)
    payload["network_state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["network_state"].items()}
    del payload["format"], payload["plan_hash"]
    save_checkpoint(ck, payload)
    before = {cid: case_record(folder, cid).stat().st_mtime_ns for s in splits for cid in s.val}
    ensure_priors(paths, plans.configurations[CASCADE], splits, None, "cpu", "fp32", progress=False)
    after = {cid: case_record(folder, cid).stat().st_mtime_ns for cid in before}
    assert {cid for cid in before if before[cid] != after[cid]} == set(changed)
    assert read_record(case_record(folder, changed[0]))["model"]["weights"] == [_fold_weights(paths, 2)]

    # predict: lowres folds ensembled, then the cascade, in one command
    out = tmp_path / "pred"
    _ok(predict_main, ["-i", str(paths.raw / "imagesTs"), "-o", str(out), *home_args, "-c", CASCADE, "-f", "0",
                       "--no-tta", "--device", "cpu"])
    assert (out / "case_005.nii.gz").is_file()
    capsys.readouterr()
    shutil.move(str(paths.run_dir("3d_lowres")), str(tmp_path / "lowres_moved"))
    err = _one_line(capsys, lambda: predict_main(["-i", str(paths.raw / "imagesTs"), "-o", str(tmp_path / "p2"),
                                                  *home_args, "-c", CASCADE, "--device", "cpu"]))
    assert "no 3d_lowres cross-validation fold" in err and "autoseg-train 3d_lowres fold0" in err


def test_cascade_predictor_feeds_the_lowres_ensemble(monkeypatch):
    """CascadePredictor.preprocess appends the one-hot of the previous stage's prediction of the same case."""
    from autoseg.inference.cascade import CascadePredictor
    info = DatasetInfo.from_dict({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                                  "file_ending": ".nii.gz", "numTraining": 1})

    class Stub:
        missing_channels = ()

        def preprocess(self, images, geometry):
            return np.zeros((1, 4, 4, 4), np.float32), None

        def probabilities_preprocessed(self, data):
            p = np.zeros((3, 4, 4, 4), np.float32)
            p[2] = 1
            return p

    monkeypatch.setattr(Predictor, "preprocess", lambda self, images, geometry: (np.ones((1, 8, 8, 8), np.float32), "p"))
    cp = CascadePredictor(config=None, info=info, networks=[], previous=Stub())
    data, props = cp.preprocess([], None)
    assert props == "p" and data.shape == (3, 8, 8, 8)
    assert (data[0] == 1).all() and (data[1] == 0).all() and (data[2] == 1).all()
