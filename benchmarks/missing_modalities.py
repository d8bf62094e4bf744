"""Dice with each MRI sequence missing, with and without modality-dropout training (docs/accuracy.md).

    python benchmarks/missing_modalities.py --work W [--dropout 0.5] [--precision fp32]

On the demo's synthetic data and plan (benchmarks/demo_accuracy.py makes it), trains fold 0 twice
with the demo's fixed budget (``DemoSettings.full()``; 7 x 25 iterations when docs/accuracy.md's table
was measured, 12 x 25 since; seed 0): once as usual, once with
``--modality-dropout``. Each model then predicts the held-out cases (3 then, 8 since) with nothing missing and with
each channel missing in turn (``autoseg-predict --missing``; no test-time augmentation), and the
mean Dice per region is printed as a markdown table and stored in W/missing_modalities.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from demo_accuracy import _dataset


def scores(home: Path, missing: tuple[int, ...], out: Path) -> dict[str, float]:
    from autoseg.dataset import DatasetInfo
    from autoseg.demo import CONFIGURATION, FOLD, demo_paths, mean_dice
    from autoseg.evaluation.evaluate import evaluate_folder
    from autoseg.inference.predictor import Predictor, predict_folder

    paths = demo_paths(home)
    predictor = Predictor.from_results(paths, CONFIGURATION, folds=[FOLD], device="cpu", precision="fp32",
                                       mirroring=False)
    predictor.missing_channels = missing
    shutil.rmtree(out, ignore_errors=True)
    predict_folder(predictor, paths.raw / "imagesTs", out, progress=False)
    result = evaluate_folder(out, home / "demo" / "references", DatasetInfo.load(paths.dataset_json), out / "eval")
    return mean_dice(result.summary)


def main() -> None:
    from autoseg.demo import CONFIGURATION, FOLD
    from autoseg.training import TrainOptions, train_fold

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--precision", default="fp32")
    a = p.parse_args()
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, dropout in (("no dropout", 0.0), (f"modality dropout {a.dropout:g}", a.dropout)):
        home = a.work / ("home_dropout" if dropout else "home_plain")
        opts, paths = _dataset(home, "softmax")
        s = opts.settings
        if not (paths.fold_dir(CONFIGURATION, FOLD) / "checkpoint_final.pt").is_file():
            train_fold(paths, CONFIGURATION, FOLD, TrainOptions(
                epochs=s.epochs, iters_per_epoch=s.iters_per_epoch, val_iters=s.val_iters, device="cpu", workers=2,
                seed=0, precision=a.precision, progress=False, validate=False, modality_dropout=dropout))
        names = {"none": ()} | {n: (c,) for c, n in enumerate(("T1", "T1ce", "T2", "FLAIR"))}
        table[label] = {n: scores(home, m, a.work / f"pred_{home.name}_{n}") for n, m in names.items()}
    (a.work / "missing_modalities.json").write_text(json.dumps(table, indent=2))
    regions = list(next(iter(next(iter(table.values())).values())))
    print("| missing | " + " | ".join(f"{lab}: {r}" for lab in table for r in regions) + " |")
    print("| --- |" + " --- |" * (len(table) * len(regions)))
    for n in next(iter(table.values())):
        print(f"| {n} | " + " | ".join(f"{table[lab][n][r]:.3f}" for lab in table for r in regions) + " |")


if __name__ == "__main__":
    main()
