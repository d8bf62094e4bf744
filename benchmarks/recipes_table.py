"""Every shipped recipe at the same budget on the public BraTS cases (issue 11, item 6; docs/recipes.md).

The dataset and scoring are those of ``benchmarks/real_data.py``: the labelled public cases other than
BraTS19_CBICA_BHQ_1 at 3 mm train (fold ``all``), BHQ_1 is predicted from its original 1 mm images and
scored there (Dice and HD95 per region). One plan for every recipe (real_data's: patch 48x64x48, batch 2,
4 stages, 32..256 features; a recipe's network part changes it as it would any plan), CPU, fp32, no TTA.

The budget is counted in batches, the same for every recipe: ``--batches`` over ``--epochs`` epochs, so a
recipe that accumulates N batches per optimiser step gets 1/N of the steps (same compute, same data seen).
No per-recipe tuning: each runs as shipped. Wall time of training and its peak resident memory (the
largest process: the trainer or a loader worker) are recorded.

    python benchmarks/recipes_table.py run --work W [--recipes nnunet segresnet] [--batches 250] [--epochs 5]
    python benchmarks/recipes_table.py run --work W --dry-run    # print the commands, run nothing
    python benchmarks/recipes_table.py table --work W            # markdown table of the finished runs

Each run writes ``W/results/recipe_NAME_runS.json``; ``W`` may be real_data.py's work folder (the raw
dataset and the preprocessed cases are shared, each recipe trains into its own results folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import real_data  # noqa: E402  (the dataset, the shared plan and the scoring)

CONFIGURATION, FOLD = "3d_fullres", "all"


def _recipes(names: Sequence[str] | None) -> list[str]:
    from autoseg.recipes import shipped_recipes
    return list(names) if names else shipped_recipes()


def steps_per_epoch(recipe: str, batches: int, epochs: int) -> int:
    """Optimiser steps per epoch so that the recipe sees ``batches`` batches in all (its accumulation included)."""
    from autoseg.recipes import load_recipe
    per_step = load_recipe(recipe).accumulation
    steps = batches // (epochs * per_step)
    if steps < 1:
        raise SystemExit(f"recipes_table: --batches {batches} is too few for {epochs} epochs of recipe {recipe} "
                         f"({per_step} batches per step); give at least {epochs * per_step}")
    return steps


def commands(work: Path, recipe: str, batches: int, epochs: int, seed: int) -> dict[str, list[str]]:
    """The train and predict commands of one recipe's run."""
    h = ["--home", str(work / "autoseg_home"), "-d", str(real_data.DATASET_ID)]
    train = [real_data._autoseg_bin("autoseg-train"), CONFIGURATION, FOLD, *h, "--recipe", recipe,
             "--epochs", str(epochs), "--iters-per-epoch", str(steps_per_epoch(recipe, batches, epochs)),
             "--val-iters", "0", "--precision", "fp32", "--device", "cpu", "--seed", str(seed), "--no-validation"]
    predict = [real_data._autoseg_bin("autoseg-predict"), "-i", str(work / "raw" / real_data.DATASET / "imagesTs"),
               "-o", str(pred_dir(work, recipe, seed)), *h, "-c", CONFIGURATION, "--recipe", recipe, "-f", FOLD,
               "--no-tta", "--precision", "fp32", "--device", "cpu"]
    return {"train": train, "predict": predict}


def pred_dir(work: Path, recipe: str, seed: int) -> Path:
    return work / "pred" / f"recipe_{recipe}_run{seed}"


def run_measured(cmd: Sequence[str], log: Path) -> tuple[float, int, float]:
    """Run ``cmd`` (output appended to ``log``); return its wall seconds, peak resident bytes (wait4's
    ru_maxrss: the largest of the process and the children it waited for) and CPU seconds (user + system, its
    children included: what the run costs whatever else shares the machine)."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(list(cmd), stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"recipes_table: {cmd[0]} failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime


def prepare(work: Path, log: Path) -> None:
    """The raw dataset (real_data.py), then plan (edited to the shared plan) and preprocess, once."""
    if not (work / "raw" / real_data.DATASET / "dataset.json").is_file():
        real_data.make_dataset(work)
    home = work / "autoseg_home"
    link = home / "raw" / real_data.DATASET
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((work / "raw" / real_data.DATASET).resolve())
    plans = home / "preprocessed" / real_data.DATASET / "plans.json"
    if not plans.is_file():
        h = ["--home", str(home), "-d", str(real_data.DATASET_ID)]
        real_data._run([real_data._autoseg_bin("autoseg-plan"), *h], log)
        real_data._set_autoseg_plan(plans)
        real_data._run([real_data._autoseg_bin("autoseg-preprocess"), *h, "-c", CONFIGURATION, "-np", "2"], log)


def run_recipe(work: Path, recipe: str, batches: int, epochs: int, seed: int) -> dict:
    """Train (from scratch) and predict one recipe; score BHQ_1 in its original space."""
    from autoseg.paths import DatasetPaths
    log = work / "logs" / f"recipe_{recipe}_run{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    prepare(work, log)
    cmds = commands(work, recipe, batches, epochs, seed)
    fold_dir = DatasetPaths(work / "autoseg_home", real_data.DATASET).fold_dir(CONFIGURATION, FOLD, recipe)
    shutil.rmtree(fold_dir, ignore_errors=True)
    train_s, peak, train_cpu_s = run_measured(cmds["train"], log)
    shutil.rmtree(pred_dir(work, recipe, seed), ignore_errors=True)
    predict_s, _, _ = run_measured(cmds["predict"], log)
    return {"recipe": recipe, "run": seed, "batches": batches, "epochs": epochs, "train_s": train_s,
            "train_cpu_s": train_cpu_s,
            "predict_s": predict_s, "train_peak_bytes": peak, "scores": real_data._score(pred_dir(work, recipe, seed), work),
            "command": " ".join(["autoseg-train", *cmds["train"][1:]])}


def table(work: Path) -> str:
    """Markdown: one row per finished run, Dice and HD95 per region, training time and peak memory."""
    rows = [json.loads(p.read_text()) for p in sorted((work / "results").glob("recipe_*.json"))]
    regions = list(real_data.REGIONS)
    lines = ["| recipe | run | " + " | ".join(f"{r} Dice" for r in regions) + " | "
             + " | ".join(f"{r} HD95 (mm)" for r in regions) + " | train wall (min) | train CPU (min) | peak memory (GB) |",
             "| --- " * (5 + 2 * len(regions)) + "|"]
    for r in rows:
        s = r["scores"]
        lines.append(f"| {r['recipe']} | {r['run']} | " + " | ".join(f"{s[k]['dice']:.3f}" for k in regions) + " | "
                     + " | ".join(f"{s[k]['hd95']:.1f}" for k in regions)
                     + f" | {r['train_s'] / 60:.1f} | {r['train_cpu_s'] / 60:.1f} | {r['train_peak_bytes'] / 1e9:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("run", "table"))
    p.add_argument("--work", type=Path, required=True, help="work folder (may be real_data.py's)")
    p.add_argument("--recipes", nargs="+", default=None, help="recipe names (default: every shipped recipe)")
    p.add_argument("--batches", type=int, default=250, help="training batches per recipe, accumulation included")
    p.add_argument("--epochs", type=int, default=5, help="epochs the batches are spread over (the schedules see them)")
    p.add_argument("--seed", type=int, default=0, help="autoseg-train --seed, and the run number in the results")
    p.add_argument("--dry-run", action="store_true", help="print the commands of each recipe, run nothing")
    a = p.parse_args(argv)
    if a.batches < 1 or a.epochs < 1:
        p.error("--batches and --epochs must be at least 1")
    return a


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    if a.what == "table":
        print(table(a.work))
        return
    for recipe in _recipes(a.recipes):
        if a.dry_run:
            for name, cmd in commands(a.work, recipe, a.batches, a.epochs, a.seed).items():
                print(f"{recipe} {name}: {' '.join(cmd)}")
            continue
        real_data.save_result(a.work, f"recipe_{recipe}_run{a.seed}", run_recipe(a.work, recipe, a.batches, a.epochs,
                                                                                a.seed))


if __name__ == "__main__":
    main()
