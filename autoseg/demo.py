"""The embedded demo: a small synthetic BraTS-like dataset taken through the whole path on CPU.

BraTS folders -> convert -> verify -> fingerprint + plan (a tiny plan) -> preprocess -> train one fold
-> predict the held-out cases -> evaluate -> overlay PNGs and an HTML report. Every stage is called
through the same Python function its command calls, so the demo exercises the user's path.
The stages are imported inside the steps, so ``autoseg-demo --help`` answers without loading torch.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.errors import fail
from autoseg.paths import DatasetPaths, dataset_folder_name

DEMO_ID = 999
DEMO_NAME = "DemoBraTS"
CONFIGURATION = "3d_fullres"
FOLD = 0
MARKER = ".autoseg-demo"
Say = Callable[[str], None]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. Training is a fixed number of epochs, so the result does not depend on the
    machine's speed. ``full`` (12 x 25 iterations, 8 test cases) fits 10 minutes on a 2-core CPU without
    native bf16 (fp32 with AVX2 kernels; docs/accuracy.md): its mean over 8 test cases moves less with one
    small tumour than the mean over 3 did. ``quick`` checks an install in about a minute."""

    n_train: int
    n_test: int
    shape: tuple[int, int, int]
    epochs: int
    iters_per_epoch: int
    val_iters: int
    vram_gb: float
    base_features: int
    max_features: int

    @classmethod
    def full(cls) -> DemoSettings:
        return cls(n_train=12, n_test=8, shape=(48, 64, 64), epochs=12, iters_per_epoch=25, val_iters=4,
                   vram_gb=0.5, base_features=16, max_features=128)

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(n_train=4, n_test=2, shape=(32, 40, 40), epochs=1, iters_per_epoch=4, val_iters=1,
                   vram_gb=0.25, base_features=4, max_features=16)


@dataclass(frozen=True)
class DemoOptions:
    """Where to write, how big, and how to train (``precision``: see autoseg.precision)."""

    home: Path
    out: Path
    settings: DemoSettings
    workers: int = 2
    seed: int = 0
    precision: str = "auto"


@dataclass
class DemoResult:
    """What the demo produced: mean Dice per region on the test cases, artefact paths, seconds per step."""

    dataset: DatasetPaths
    dice: dict[str, float]
    artefacts: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    epochs: int = 0

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def describe(self) -> str:
        """The closing message: Dice per region, wall time, and where every artefact is."""
        lines = [f"autoseg demo finished in {self.total_seconds / 60:.1f} min ({self.epochs} epoch(s) of training)",
                 "mean Dice on the held-out test cases:"]
        lines += [f"  {name:<18} {dice:.3f}" for name, dice in self.dice.items()]
        lines.append("artefacts:")
        lines += [f"  {what:<22} {where}" for what, where in self.artefacts.items()]
        return "\n".join(lines)


def demo_paths(home: Path) -> DatasetPaths:
    return DatasetPaths(Path(home), dataset_folder_name(DEMO_ID, DEMO_NAME))


def owned_folders(paths: DatasetPaths, out: Path) -> list[Path]:
    return [paths.raw, paths.preprocessed, paths.results, out]


def clear_previous_demo(paths: DatasetPaths, out: Path) -> None:
    """Delete what an earlier demo wrote, and nothing else: only folders that carry the demo's marker.

    A folder that exists without the marker (a user's own Dataset999, or a non-empty --out) stops the
    demo with a one-line error instead.
    """
    folders = owned_folders(paths, out)
    for folder in folders:
        if folder.exists() and not (folder / MARKER).is_file() and any(folder.iterdir()):
            raise fail(folder, "exists and was not written by autoseg-demo", "choose another --home / --out, or move it away")
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)


def mark(folder: Path) -> None:
    """Create ``folder`` with the marker that lets a later demo run delete it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by autoseg-demo; the next autoseg-demo run deletes this folder\n")


# ---- steps ----------------------------------------------------------------------------------------

def generate_data(opts: DemoOptions) -> tuple[Path, Path]:
    """Training cases as labelled BraTS folders, test cases as unlabelled folders with labels held back.

    Returns the source folder (for conversion) and the reference-label folder (for evaluation).
    """
    from autoseg.synthetic import write_brats_folders

    s = opts.settings
    src, refs = opts.out / "brats_synthetic", opts.out / "references"
    write_brats_folders(src / "training", n=s.n_train, shape=s.shape, seed=opts.seed)
    write_brats_folders(src / "validation", n=s.n_test, shape=s.shape, seed=opts.seed, first_index=s.n_train,
                        labelled=False, labels_to=refs)
    return src, refs


def convert(src: Path, paths: DatasetPaths, workers: int) -> None:
    from autoseg.convert import convert_brats

    convert_brats(src, paths.root, DEMO_ID, DEMO_NAME, workers)


def plan(paths: DatasetPaths, s: DemoSettings, workers: int) -> str:
    """Verify, fingerprint and plan a tiny network, as autoseg-plan does; returns the plan's summary table."""
    from autoseg.planning.stage import run_planning, summary_table

    plans = run_planning(paths, vram_gb=s.vram_gb, base_features=s.base_features, max_features=s.max_features,
                         workers=workers)
    return summary_table(plans)


def preprocess(paths: DatasetPaths, workers: int) -> list[str]:
    from autoseg.preprocessing import preprocess_dataset

    return preprocess_dataset(paths, CONFIGURATION, workers)


def train(paths: DatasetPaths, opts: DemoOptions, configuration: str = CONFIGURATION) -> Path:
    """Train fold 0 for the settings' fixed number of epochs, then validate it, as autoseg-train does (also
    for the stroke CT demo, whose options have the same fields)."""
    from autoseg.training import TrainOptions, train_fold

    s = opts.settings
    options = TrainOptions(epochs=s.epochs, iters_per_epoch=s.iters_per_epoch, val_iters=s.val_iters, device="cpu",
                           workers=opts.workers, seed=opts.seed, precision=opts.precision)
    return train_fold(paths, configuration, FOLD, options)


def predict(paths: DatasetPaths, out: Path) -> Path:
    """Predict the converted test cases (``imagesTs``) with the trained fold, as autoseg-predict does."""
    from autoseg.errors import AutosegError
    from autoseg.inference.predictor import Predictor, predict_folder

    pred_dir = out / "predictions"
    predictor = Predictor.from_results(paths, CONFIGURATION, folds=[FOLD], device="cpu")
    report = predict_folder(predictor, paths.raw / "imagesTs", pred_dir)
    if report.failed:
        raise AutosegError("prediction failed: " + "; ".join(report.failed))
    return pred_dir


def evaluate(pred_dir: Path, refs: Path, paths: DatasetPaths, out: Path, workers: int) -> tuple[dict, dict]:
    """Metrics of the predictions against the held-back labels, as autoseg-evaluate computes them;
    writes ``summary.json`` and ``metrics.csv``; returns the summary and the per-case metrics."""
    from autoseg.dataset import DatasetInfo
    from autoseg.errors import AutosegError
    from autoseg.evaluation.evaluate import evaluate_folder

    result = evaluate_folder(pred_dir, refs, DatasetInfo.load(paths.dataset_json), out / "evaluation", workers=workers)
    if result.failed or not result.per_case:
        raise AutosegError("evaluation failed: " + "; ".join(result.failed or ["no case evaluated"]))
    return result.summary, result.per_case


def report_rows(per_case: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, object]]:
    """One compact row per case for the report: Dice and HD95 of each region (single labels left out)."""
    return [{"case": cid, **{f"{name} {m}": v[m] for name, v in metrics.items() if not name.startswith("label ")
                             for m in ("dice", "hd95")}}
            for cid, metrics in per_case.items()]


def mean_dice(summary: dict) -> dict[str, float]:
    """Mean Dice per region from an evaluation summary (``summary["mean"][region]["dice"]``)."""
    return {name: float(m["dice"]) for name, m in summary.get("mean", {}).items()
            if isinstance(m, dict) and "dice" in m and not name.startswith("label ")}


def draw_pictures(paths: DatasetPaths, pred_dir: Path, refs: Path, out: Path, summary: dict,
                  per_case: dict) -> Path:
    """One overlay PNG per test case (FLAIR, prediction beside reference) and the HTML report; returns it."""
    from autoseg.io import read_image
    from autoseg.report import write_report_html
    from autoseg.visualize import save_overlay_png

    pngs = {}
    for ref_file in sorted(refs.glob("*.nii.gz")):
        case_id = ref_file.name[: -len(".nii.gz")]
        flair, _ = read_image(paths.raw / "imagesTs" / f"{case_id}_0003.nii.gz")
        pred, _ = read_image(pred_dir / ref_file.name)
        ref, _ = read_image(ref_file)
        pngs[case_id] = save_overlay_png(flair, pred, out / "overlays" / f"{case_id}.png", ref=ref,
                                         title=f"{case_id}: FLAIR, prediction vs reference")
    table = {k: summary[k] for k in ("num_cases", "mean", "median") if k in summary}
    return write_report_html(table, report_rows(per_case), pngs, out / "report.html",
                             title="autoseg demo: held-out synthetic test cases")


# ---- the whole path -------------------------------------------------------------------------------

class _Clock:
    """Times the demo's steps and announces them."""

    def __init__(self, say: Say, n_steps: int) -> None:
        self.say, self.n, self.i, self.start = say, n_steps, 0, time.perf_counter()
        self.seconds: dict[str, float] = {}

    def step(self, name: str, fn: Callable, *args, **kwargs):
        self.i += 1
        self.say(f"[{self.i}/{self.n}] {name} ...")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        self.say(f"[{self.i}/{self.n}] {name}: {time.perf_counter() - t0:.1f} s")
        return result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def run_demo(opts: DemoOptions, say: Say = print) -> DemoResult:
    """Run the whole path on fresh synthetic data under ``opts.home``; see the module docstring."""
    s, out = opts.settings, Path(opts.out)
    paths = demo_paths(opts.home)
    clear_previous_demo(paths, out)
    for folder in owned_folders(paths, out):
        mark(folder)
    clock = _Clock(say, 8)
    src, refs = clock.step(f"generate {s.n_train} training + {s.n_test} test cases {s.shape}", generate_data, opts)
    clock.step("convert BraTS folders", convert, src, paths, opts.workers)
    table = clock.step(f"verify, fingerprint, plan (--vram {s.vram_gb:g})", plan, paths, s, opts.workers)
    say("    " + table.replace("\n", "\n    "))
    clock.step("preprocess", preprocess, paths, opts.workers)
    fold_dir = clock.step(f"train fold 0 ({s.epochs} epochs x {s.iters_per_epoch} iterations)", train, paths, opts)
    pred_dir = clock.step("predict test cases", predict, paths, out)
    summary, per_case = clock.step("evaluate", evaluate, pred_dir, refs, paths, out, opts.workers)
    report = clock.step("overlays + report", draw_pictures, paths, pred_dir, refs, out, summary, per_case)
    artefacts = {"BraTS source folders": src, "raw dataset": paths.raw, "fingerprint": paths.fingerprint_json,
                 "plan": paths.plans_json, "preprocessed": paths.config_dir(CONFIGURATION), "trained fold": fold_dir,
                 "predictions": pred_dir, "metrics": out / "evaluation" / "summary.json",
                 "overlays": out / "overlays", "report": report}
    return DemoResult(paths, mean_dice(summary), artefacts, clock.seconds, s.epochs)
