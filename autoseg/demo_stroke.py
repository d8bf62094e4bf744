"""``autoseg-demo --task stroke-ct``: synthetic stroke CT as PNG patient folders, through the whole path on CPU.

PNG folders (16-bit, HU + 1024; :mod:`autoseg.synthetic_ct`) -> ``autoseg-convert slices`` (``--intercept
-1024``: HU) -> plan with the brain window 40/80 and 2.5D context slices, 2d only trained -> preprocess 2d ->
train fold 0 for a fixed budget -> predict the held-out patients' PNG folders to PNG masks (0/255, the
input's names and sizes) -> evaluate against their PNG masks -> overlays and an HTML report. Every stage is
called through the Python function its command calls; see ``autoseg.demo`` for the BraTS demo it mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.demo import (DemoResult, Say, _Clock, clear_previous_demo, mark, mean_dice, owned_folders, report_rows,
                          train)
from autoseg.paths import DatasetPaths, dataset_folder_name

DEMO_ID = 998
DEMO_NAME = "DemoStrokeCT"
CONFIGURATION = "2d"
FOLD = 0
WINDOW = (40.0, 80.0)          # brain window (HU)
SPACING = (5.0, 0.5, 0.5)      # z, y, x mm of the synthetic heads


@dataclass(frozen=True)
class StrokeSettings:
    """Sizes of the stroke demo; training is a fixed number of epochs, so the result does not depend on the
    machine's speed. ``full`` is meant to fit 10 minutes on a 2-core CPU; ``quick`` checks an install."""

    n_train: int
    n_test: int
    shape: tuple[int, int, int]
    epochs: int
    iters_per_epoch: int
    val_iters: int
    vram_gb: float
    base_features: int
    max_features: int
    context_slices: int = 2

    @classmethod
    def full(cls) -> StrokeSettings:
        return cls(n_train=16, n_test=4, shape=(24, 96, 96), epochs=8, iters_per_epoch=25, val_iters=4, vram_gb=0.25,
                   base_features=16, max_features=128)

    @classmethod
    def quick(cls) -> StrokeSettings:
        return cls(n_train=4, n_test=2, shape=(12, 48, 48), epochs=1, iters_per_epoch=3, val_iters=1, vram_gb=0.1,
                   base_features=4, max_features=16)


@dataclass(frozen=True)
class StrokeOptions:
    """Where to write, how big, how to train (``precision``: see autoseg.precision)."""

    home: Path
    out: Path
    settings: StrokeSettings
    workers: int = 2
    seed: int = 0
    precision: str = "auto"


def demo_paths(home: Path) -> DatasetPaths:
    return DatasetPaths(Path(home), dataset_folder_name(DEMO_ID, DEMO_NAME))


def generate(opts: StrokeOptions) -> tuple[Path, Path]:
    """Training patients (images and masks) and held-out test patients (their masks kept apart) as 16-bit PNG
    folders; returns the training source and the test folder (``images/``, ``masks/``)."""
    from autoseg.synthetic_ct import write_png_patients

    s = opts.settings
    src, test = opts.out / "png", opts.out / "test"
    write_png_patients(src, n=s.n_train, shape=s.shape, seed=opts.seed, bits=16)
    write_png_patients(test, n=s.n_test, shape=s.shape, seed=opts.seed, bits=16, first_index=s.n_train + 1)
    return src, test


def convert(src: Path, paths: DatasetPaths, workers: int) -> None:
    from autoseg.slices import convert_slices

    convert_slices(src, paths.root, DEMO_ID, DEMO_NAME, spacing_zyx=SPACING, channel_name="CT", workers=workers,
                   intercept=-1024)


def plan(paths: DatasetPaths, s: StrokeSettings, workers: int) -> str:
    from autoseg.planning.stage import run_planning, summary_table

    plans = run_planning(paths, vram_gb=s.vram_gb, base_features=s.base_features, max_features=s.max_features,
                         workers=workers, ct_window=WINDOW, context_slices=s.context_slices)
    return summary_table(plans)


def preprocess(paths: DatasetPaths, workers: int) -> list[str]:
    from autoseg.preprocessing import preprocess_dataset

    return preprocess_dataset(paths, CONFIGURATION, workers)


def predict(paths: DatasetPaths, test: Path, out: Path, precision: str) -> Path:
    """Predict the test patients' PNG folders; the masks come back as PNG folders beside them."""
    from autoseg.errors import AutosegError
    from autoseg.inference.predictor import Predictor, predict_folder

    pred_dir = out / "predictions"
    predictor = Predictor.from_results(paths, CONFIGURATION, folds=[FOLD], device="cpu", precision=precision)
    report = predict_folder(predictor, test / "images", pred_dir, progress=False)
    if report.failed:
        raise AutosegError("prediction failed: " + "; ".join(report.failed))
    return pred_dir


def evaluate(pred_dir: Path, test: Path, paths: DatasetPaths, out: Path, workers: int) -> tuple[dict, dict]:
    """Lesion Dice and the other metrics of the PNG predictions against the test patients' PNG masks."""
    from autoseg.dataset import DatasetInfo
    from autoseg.errors import AutosegError
    from autoseg.evaluation.evaluate import evaluate_folder
    from autoseg.input_forms import nifti_for_evaluation

    info = DatasetInfo.load(paths.dataset_json)
    with nifti_for_evaluation(pred_dir, test / "masks", info) as (pred, ref):
        result = evaluate_folder(pred, ref, info, out / "evaluation", workers=workers, progress=False)
    if result.failed or not result.per_case:
        raise AutosegError("evaluation failed: " + "; ".join(result.failed or ["no case evaluated"]))
    return result.summary, result.per_case


def draw_pictures(paths: DatasetPaths, pred_dir: Path, test: Path, out: Path, summary: dict, per_case: dict) -> Path:
    """One overlay per test patient (the CT in the brain window, prediction beside reference) and the report."""
    from autoseg.dataset import DatasetInfo
    from autoseg.input_forms import form_input_cases, slice_masks_as_nifti
    from autoseg.io import read_image
    from autoseg.report import write_report_html
    from autoseg.visualize import save_overlay_png

    info = DatasetInfo.load(paths.dataset_json)
    work = out / "evaluation" / "volumes"
    slice_masks_as_nifti(pred_dir, info, work / "pred")
    slice_masks_as_nifti(test / "masks", info, work / "ref")
    pngs = {}
    for case in form_input_cases(test / "images", info) or []:
        hu = case.form.read()[0][0]
        pred, _ = read_image(work / "pred" / f"{case.case_id}.nii.gz")
        ref, _ = read_image(work / "ref" / f"{case.case_id}.nii.gz")
        pngs[case.case_id] = save_overlay_png(np.clip(hu, *_window_range()), pred,
                                              out / "overlays" / f"{case.case_id}.png", ref=ref, names={1: "lesion"},
                                              title=f"{case.case_id}: CT (40/80), prediction vs reference")
    table = {k: summary[k] for k in ("num_cases", "mean", "median") if k in summary}
    return write_report_html(table, report_rows(per_case), pngs, out / "report.html",
                             title="autoseg stroke CT demo: held-out synthetic patients")


def _window_range() -> tuple[float, float]:
    return WINDOW[0] - WINDOW[1] / 2, WINDOW[0] + WINDOW[1] / 2


def run_stroke_demo(opts: StrokeOptions, say: Say = print) -> DemoResult:
    """Run the whole path on fresh synthetic stroke CT under ``opts.home``; see the module docstring."""
    s, out = opts.settings, Path(opts.out)
    paths = demo_paths(opts.home)
    clear_previous_demo(paths, out)
    for folder in owned_folders(paths, out):
        mark(folder)
    clock = _Clock(say, 8)
    src, test = clock.step(f"generate {s.n_train} training + {s.n_test} test patients {s.shape} as 16-bit PNG",
                           generate, opts)
    clock.step("convert PNG slices (HU + 1024 -> HU)", convert, src, paths, opts.workers)
    table = clock.step(f"verify, fingerprint, plan 2d (--vram {s.vram_gb:g}, --ct-window 40 80, "
                       f"--context-slices {s.context_slices})", plan, paths, s, opts.workers)
    say("    " + table.replace("\n", "\n    "))
    clock.step("preprocess 2d", preprocess, paths, opts.workers)
    fold_dir = clock.step(f"train 2d fold 0 ({s.epochs} epochs x {s.iters_per_epoch} iterations)", train, paths, opts,
                          CONFIGURATION)
    pred_dir = clock.step("predict the test patients' PNG folders", predict, paths, test, out, opts.precision)
    summary, per_case = clock.step("evaluate", evaluate, pred_dir, test, paths, out, opts.workers)
    report = clock.step("overlays + report", draw_pictures, paths, pred_dir, test, out, summary, per_case)
    artefacts = {"PNG patient folders": src, "test patients": test, "raw dataset": paths.raw,
                 "plan": paths.plans_json, "preprocessed": paths.config_dir(CONFIGURATION), "trained fold": fold_dir,
                 "predictions (PNG)": pred_dir, "metrics": out / "evaluation" / "summary.json",
                 "overlays": out / "overlays", "report": report}
    dice = {("lesion" if name == "foreground" else name): v for name, v in mean_dice(summary).items()}
    return DemoResult(paths, dice, artefacts, clock.seconds, s.epochs)
