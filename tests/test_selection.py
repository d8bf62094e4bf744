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


# ---- cross-validation and selection on fold predictions written here (no training: the fast tier) -------------------
def _fold_predictions(paths, folder: str, blob: tuple[slice, ...], weight: float = 0.6, skip: tuple[int, ...] = ()):
    """``folder``'s folds as if trained and validated in raw space: each held-out case predicted as its reference's
    regions (probability ``weight``) plus a false cube ``blob`` (0.6) and one shared by every folder (0.9), scored
    against labelsTr as validate_raw does."""
    from autoseg.inference.predictor import save_probabilities, segmentation_from_probabilities
    from autoseg.io import write_image
    info = DatasetInfo.load(paths.dataset_json)
    for fold, split in enumerate(read_json(paths.splits_json)):
        fold_dir = paths.results / folder / f"fold_{fold}"
        fold_dir.mkdir(parents=True)
        if fold in skip:
            continue
        (fold_dir / "checkpoint_final.pt").write_bytes(b"weights")
        out = fold_dir / "validation_raw"
        for case in split["val"]:
            ref, geometry = read_image(paths.raw / "labelsTr" / f"{case}.nii.gz")
            probs = np.stack([np.isin(ref, r) * weight for r in info.regions]).astype(np.float32)
            probs[(slice(None), *blob)] = 0.6
            probs[:, :3, :3, :3] = 0.9
            save_probabilities(out / f"{case}.npz", probs, geometry, info, None)
            write_image(out / f"{case}.nii.gz", segmentation_from_probabilities(probs, info), geometry)
        evaluate_folder(out, paths.raw / "labelsTr", info, out, progress=False, case_ids=set(split["val"]))


@pytest.fixture
def validated(tmp_path):
    from autoseg.data.splits import make_splits
    from autoseg.io import write_json_atomic
    from autoseg.paths import DatasetPaths
    from autoseg.synthetic import write_raw_dataset
    paths = DatasetPaths(tmp_path / "home", "Dataset001_Synthetic")
    write_raw_dataset(paths.raw, n_train=5, shape=(24, 32, 32), seed=5)
    ids = [p.name.removesuffix(".nii.gz") for p in sorted((paths.raw / "labelsTr").glob("*.nii.gz"))]
    write_json_atomic(paths.splits_json, [{"train": s.train, "val": s.val} for s in make_splits(ids)])
    _fold_predictions(paths, "3d_fullres", (slice(20, 23), slice(0, 3), slice(28, 31)))
    _fold_predictions(paths, "3d_lowres", (slice(0, 5), slice(26, 31), slice(0, 5)))   # a larger false cube
    _fold_predictions(paths, "segresnet__3d_fullres", (slice(0, 3),) * 3, skip=(4,))
    return paths


def test_crossval_merges_the_folds_and_names_the_missing_ones(validated, capsys):
    from autoseg.cli.evaluate import main as evaluate_main
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--crossval", "--home", str(validated.root), "-c", "3d_fullres"])
    assert e.value.code == 0
    summary = read_json(validated.results / "3d_fullres" / "crossval" / "summary.json")
    folds = [read_json(validated.results / "3d_fullres" / f"fold_{k}" / "validation_raw" / "summary.json")
             for k in range(5)]
    assert summary["per_case"] == {c: m for f in folds for c, m in f["per_case"].items()}
    assert summary["num_cases"] == 5 and summary["folds"] == [0, 1, 2, 3, 4] and summary["missing"] == []
    wt = [m["whole tumour"]["dice"] for m in summary["per_case"].values()]
    assert summary["mean"]["whole tumour"]["dice"] == pytest.approx(np.mean(wt))
    assert "whole tumour" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--crossval", "--home", str(validated.root), "-c", "3d_fullres", "--recipe", "segresnet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "segresnet__3d_fullres fold 4: not trained to the end" in err
    assert "autoseg-train 3d_fullres fold4 --recipe segresnet" in err
    assert read_json(validated.results / "segresnet__3d_fullres" / "crossval" / "summary.json")["num_cases"] == 4
    with pytest.raises(SystemExit) as e:
        evaluate_main(["--crossval", "--home", str(validated.root), "-c", "2d"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "trained: 3d_fullres, 3d_lowres, segresnet__3d_fullres" in err


def test_find_best_ranks_models_and_pairs_and_writes_the_instructions(validated, capsys):
    from autoseg.cli.find_best import main as find_best_main
    with pytest.raises(SystemExit) as e:
        find_best_main(["--home", str(validated.root)])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    instructions = read_json(validated.results / "inference_instructions.json")
    ranking = instructions["ranking"]
    # the incomplete folder is listed, not ranked; the two complete ones and their pair are
    assert [r["model"] for r in ranking] == ["3d_fullres+3d_lowres", "3d_fullres", "3d_lowres"]
    assert "not ranked: segresnet__3d_fullres fold 4" in err
    assert instructions["incomplete"] == [line.removeprefix("not ranked: ") for line in err.splitlines()
                                          if line.startswith("not ranked: ")]
    for r in ranking:   # the means of the merged cross-validation written beside each model
        summary = read_json(validated.results / r["results"])
        assert r["mean_dice"] == pytest.approx(np.mean([summary["mean"][t]["dice"] for t in r["dice"]]))
        assert r["mean_hd95"] == pytest.approx(np.mean([summary["mean"][t]["hd95"] for t in r["dice"]]))
    assert [r["mean_dice"] for r in ranking] == sorted((r["mean_dice"] for r in ranking), reverse=True)
    # the pair averages the probabilities: each model's own false cube (0.6) falls under 0.5, the shared one stays
    pair = validated.results / "ensembles" / "3d_fullres+3d_lowres"
    case = read_json(validated.splits_json)[0]["val"][0]
    seg = read_image(pair / "fold_0" / f"{case}.nii.gz")[0]
    assert seg[:3, :3, :3].all() and not seg[20:23, 0:3, 28:31].any()
    # postprocessing on the winner removes the shared cube and is shipped for autoseg-export
    post = read_json(validated.results / "postprocessing.json")
    assert post["foreground_largest_component"] and post == read_json(pair / "crossval" / "postprocessing.json")
    assert instructions["postprocessing"]["mean_dice_after"] > instructions["postprocessing"]["mean_dice_before"]
    commands = instructions["commands"]
    assert [c.split()[0] for c in commands] == ["autoseg-predict", "autoseg-predict", "autoseg-ensemble"]
    assert "-c 3d_fullres" in commands[0] and "-c 3d_lowres" in commands[1] and "-f 0 1 2 3 4" in commands[0]
    assert all("--save-probabilities" in c for c in commands[:2])
    assert commands[2].endswith(f"--postprocess {(validated.results / 'postprocessing.json').resolve()}")
    assert all(c in out for c in commands) and "3d_fullres+3d_lowres" in out.splitlines()[1]
    md = (validated.results / "inference_instructions.md").read_text()
    assert all(c in md for c in commands) and "segresnet__3d_fullres fold 4" in md
    # a rerun reuses the pair's predictions
    stamp = (pair / "fold_0" / f"{case}.nii.gz").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        find_best_main(["--home", str(validated.root)])
    assert (pair / "fold_0" / f"{case}.nii.gz").stat().st_mtime_ns == stamp


# ---- the whole path: planned 3d_lowres, 3d_fullres and the cascade, five folds each -------------------------------
@pytest.mark.slow
def test_find_best_commands_reproduce_the_chosen_prediction(tmp_path, capsys):
    """A synthetic dataset whose median image is large for the patch of a tiny GPU budget gets 3d_lowres; every 3d
    configuration planned trains five folds (tiny budget); find-best ranks them and every pair, and its printed commands
    predict a test case exactly as the chosen model does through the Python API (and those of the best pair too)."""
    from dataclasses import replace

    from autoseg.cli.find_best import main as find_best_main
    from autoseg.cli.plan import main as plan_main
    from autoseg.paths import DatasetPaths
    from autoseg.plans import Plans
    from autoseg.preprocessing import preprocess_dataset
    from autoseg.synthetic import write_raw_dataset

    paths = DatasetPaths(tmp_path / "home", "Dataset001_Synthetic")
    write_raw_dataset(paths.raw, n_train=5, n_test=1, shape=(32, 40, 40), seed=0)
    with pytest.raises(SystemExit):
        plan_main(["--home", str(paths.root), "--vram", "0.002", "--base-features", "4", "--max-features", "16",
                   "-np", "1"])
    plans = Plans.load(paths.plans_json)
    planned = [c for c in plans.configurations if c.startswith("3d")]
    assert {"3d_lowres", "3d_fullres", "3d_cascade_fullres"} <= set(planned)
    # the tiny budget: no mirroring (each validation and prediction then runs 1 pass per window, not 8)
    plans.configurations.update({c: replace(p, mirror_axes=[]) for c, p in plans.configurations.items()})
    plans.save(paths.plans_json)
    configurations = sorted(planned, key=lambda c: c != "3d_lowres")   # a cascade trains on 3d_lowres' folds
    for c in configurations:
        preprocess_dataset(paths, c, workers=1)
        for fold in range(5):
            train_fold(paths, c, fold, TrainOptions(**FAST))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        find_best_main(["--home", str(paths.root)])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    instructions = read_json(paths.results / "inference_instructions.json")
    n = len(configurations)
    assert len(instructions["ranking"]) == n + n * (n - 1) // 2 and instructions["incomplete"] == []
    commands = [line.strip() for line in printed.splitlines() if line.startswith("  autoseg-")]
    assert commands == instructions["commands"]
    _check_commands(paths, commands, instructions["best"]["members"], tmp_path / "predicted")
    # the commands of the best pair too (when a single model won), made by the same function, so both kinds run
    pair = next(r for r in instructions["ranking"] if len(r["members"]) == 2)
    if pair is not instructions["ranking"][0]:
        from autoseg.selection import Crossval, commands_for
        pair_commands = commands_for(paths, Crossval(pair["model"], {}), paths.results.resolve() / "postprocessing.json")
        assert [c.split()[0] for c in pair_commands] == ["autoseg-predict", "autoseg-predict", "autoseg-ensemble"]
        _check_commands(paths, pair_commands, pair["members"], tmp_path / "pair")


def _check_commands(paths, commands: list[str], members: list[dict], out: Path) -> None:
    """Run ``commands`` on the test case into ``out``; its segmentation must equal the model's through the Python API:
    each member's five folds (a cascade's fed by its previous stage), their probabilities averaged as saved (fp16),
    then postprocessed."""
    import shlex

    from autoseg.cli.ensemble import main as ensemble_main
    from autoseg.cli.predict import main as predict_main
    from autoseg.inference.cascade import predictor_for
    from autoseg.inference.predictor import find_input_cases, read_input_case, segmentation_from_probabilities
    from autoseg.postprocessing import PostprocessingPlan
    mains = {"autoseg-predict": predict_main, "autoseg-ensemble": ensemble_main}
    for command in commands:
        words = shlex.split(command.replace("INPUT_FOLDER", shlex.quote(str(paths.raw / "imagesTs")))
                            .replace("OUTPUT_FOLDER", shlex.quote(str(out))))
        with pytest.raises(SystemExit) as e:
            mains[words[0]](words[1:])
        assert e.value.code == 0, command
    info = DatasetInfo.load(paths.dataset_json)
    case = find_input_cases(paths.raw / "imagesTs", info.num_channels)[0]
    images, geometry = read_input_case(case)
    probs = [predictor_for(paths, m["configuration"], list(range(5))).predict(images, geometry) for m in members]
    mean = probs[0]
    if len(probs) > 1:   # autoseg-ensemble's arithmetic on the float16 files
        mean = probs[0].astype(np.float16).astype(np.float32)
        for p in probs[1:]:
            mean += p.astype(np.float16)
        mean /= len(probs)
    post = PostprocessingPlan.load(paths.results / "postprocessing.json")
    expected = segmentation_from_probabilities(mean, info, None, post)
    assert np.array_equal(read_image(out / f"{case.case_id}.nii.gz")[0], expected)
