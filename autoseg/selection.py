"""Cross-validation results in the raw images' space, and the choice of the model to predict with (nnU-Net's
``find_best_configuration``).

Every cross-validation fold writes its held-out predictions and their metrics to ``fold_N/validation_raw/``
(:func:`autoseg.training.validation.validate_raw`). :func:`crossval` merges the folds of one trained folder
(``CONFIG`` or ``RECIPE__CONFIG`` under ``results/DATASET/``) into ``FOLDER/crossval/summary.json`` and
``metrics.csv``, and names each fold that is missing with the command that makes it. :func:`find_best` ranks
every trained folder whose planned folds are all validated, and every pair of them (the mean of their
cross-validation probabilities, ``results/DATASET/ensembles/A+B/fold_N/``, written once and reused), by the mean
Dice over the dataset's labels or regions; decides largest-component postprocessing on the winner's
cross-validation predictions; and writes ``results/DATASET/inference_instructions.json`` and ``.md`` with the
commands that predict with it. Folders are found by their ``fold_N`` subfolders, so any configuration and recipe
(the cascade included) is a candidate once its folds are trained.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autoseg.dataset import DatasetInfo
from autoseg.ensemble import ensemble_folders
from autoseg.errors import fail
from autoseg.evaluation.evaluate import evaluate_folder, metric_rows, summarize, write_results
from autoseg.evaluation.metrics import declared_masks
from autoseg.io import read_image, read_json, write_bytes_atomic, write_json_atomic
from autoseg.paths import DEFAULT_RECIPE, RECIPE_SEPARATOR, DatasetPaths
from autoseg.postprocessing import PostprocessingPlan, determine_postprocessing
from autoseg.provenance import make_record
from autoseg.training.validation import RAW_FOLDER

CROSSVAL = "crossval"          # FOLDER/crossval: the folds merged
ENSEMBLES = "ensembles"        # results/DATASET/ensembles/A+B/fold_N: a pair's cross-validation predictions
ENSEMBLE_JOIN = "+"
INSTRUCTIONS = "inference_instructions"
POSTPROCESSING = "postprocessing.json"   # results/DATASET/postprocessing.json: the winner's, shipped by autoseg-export
DATA_ROOT = "DATA_ROOT"  # the data root in a model's instructions (autoseg-export), the importing one's after import
DATA_ROOT_MEANING = "the data root the model is imported into (autoseg-import MODEL.zip --home DATA_ROOT)"


def split_folder(folder: str) -> tuple[str, str]:
    """``RECIPE__CONFIG`` -> (recipe, configuration); a bare ``CONFIG`` is the default recipe's."""
    recipe, sep, configuration = folder.rpartition(RECIPE_SEPARATOR)
    return (recipe, configuration) if sep else (DEFAULT_RECIPE, folder)


def trained_folders(paths: DatasetPaths) -> list[str]:
    """Folders under ``results/DATASET/`` holding at least one cross-validation fold (``fold_0`` ...), sorted."""
    if not paths.results.is_dir():
        return []
    return sorted(p.name for p in paths.results.iterdir()
                  if p.is_dir() and p.name != ENSEMBLES and any(p.glob("fold_[0-9]*/")))


def held_out_cases(paths: DatasetPaths) -> list[list[str]]:
    """Per planned fold, its held-out case ids (``splits.json``, written by the first autoseg-train of the dataset)."""
    if not paths.splits_json.is_file():
        raise fail(paths.splits_json, "no cross-validation splits yet", "train a fold first: autoseg-train CONFIG fold0")
    return [list(s["val"]) for s in read_json(paths.splits_json)]


def train_command(folder: str, fold: int) -> str:
    recipe, configuration = split_folder(folder)
    return f"autoseg-train {configuration} fold{fold}" + ("" if recipe == DEFAULT_RECIPE else f" --recipe {recipe}")


def _fold_problem(paths: DatasetPaths, folder: str, fold: int, held_out: Sequence[str]) -> str | None:
    """None when the fold's raw-space validation scored every held-out case, else what is missing and the fix."""
    fold_dir = paths.results / folder / f"fold_{fold}"
    command = train_command(folder, fold)
    if not (fold_dir / "checkpoint_final.pt").is_file():
        return f"{folder} fold {fold}: not trained to the end (no checkpoint_final.pt); run {command}"
    summary = fold_dir / RAW_FOLDER / "summary.json"
    if not summary.is_file():
        return (f"{folder} fold {fold}: no raw-space validation ({RAW_FOLDER}/summary.json); run {command} "
                "(a finished fold is only validated)")
    missing = sorted(set(held_out) - set(read_json(summary).get("per_case", {})))
    if missing:
        return (f"{folder} fold {fold}: {len(missing)} held-out case(s) not scored ({', '.join(missing[:3])}); see "
                f"{summary}, then run {command}")
    return None


@dataclass
class Crossval:
    """A model's cross-validation: the folds merged (``summary``: mean, median, std, per_case) and what is missing."""

    name: str
    fold_dirs: dict[int, Path]          # fold -> folder of its held-out predictions and summary.json
    missing: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def mean(self, metric: str, targets: Sequence[str]) -> float:
        """Mean over ``targets`` (labels or regions) of the cross-validation mean of ``metric``."""
        return float(np.mean([self.summary["mean"][t][metric] for t in targets]))


def _merge(name: str, fold_dirs: dict[int, Path], missing: list[str], out: Path) -> Crossval:
    """Merge the folds' ``summary.json`` into ``out/summary.json`` and ``metrics.csv`` (nothing when none is scored)."""
    per_case: dict[str, Any] = {}
    for fold_dir in fold_dirs.values():
        per_case.update(read_json(fold_dir / "summary.json")["per_case"])
    result = Crossval(name, fold_dirs, missing)
    if not per_case:
        return result
    result.summary = {**summarize(per_case), "num_cases": len(per_case), "folds": sorted(fold_dirs),
                      "missing": missing, "per_case": per_case}
    record = make_record("autoseg-evaluate --crossval", [d / "summary.json" for d in fold_dirs.values()], {})
    write_results(out, result.summary, metric_rows(per_case), record)
    return result


def crossval(paths: DatasetPaths, folder: str) -> Crossval:
    """The cross-validation of one trained folder, written to ``FOLDER/crossval/``; incomplete folds are named."""
    if not (paths.results / folder).is_dir():
        known = ", ".join(trained_folders(paths)) or "none"
        raise fail(paths.results / folder, f"no trained folds (trained: {known})",
                   "check -c and --recipe, or train the folds first")
    fold_dirs, missing = {}, []
    for fold, held_out in enumerate(held_out_cases(paths)):
        problem = _fold_problem(paths, folder, fold, held_out)
        if problem is None:
            fold_dirs[fold] = paths.results / folder / f"fold_{fold}" / RAW_FOLDER
        else:
            missing.append(problem)
    return _merge(folder, fold_dirs, missing, paths.results / folder / CROSSVAL)


def ensemble_crossval(paths: DatasetPaths, members: Sequence[Crossval], info: DatasetInfo) -> Crossval:
    """The cross-validation of the mean of complete models' probabilities, fold by fold (up-to-date folds kept)."""
    name = ENSEMBLE_JOIN.join(m.name for m in members)
    root = paths.results / ENSEMBLES / name
    fold_dirs = {}
    for fold, held_out in enumerate(held_out_cases(paths)):
        out = root / f"fold_{fold}"
        report = ensemble_folders([m.fold_dirs[fold] for m in members], out, progress=False)
        if report.failed:
            raise fail(out, f"ensembling failed: {report.failed[0]}", "rerun autoseg-train for the folds named")
        evaluate_folder(out, paths.raw / "labelsTr", info, out, progress=False, case_ids=set(held_out),
                        skip_current=True)
        fold_dirs[fold] = out
    return _merge(name, fold_dirs, [], root / CROSSVAL)


def _pairs(result: Crossval, labels: Path, info: DatasetInfo) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for fold_dir in result.fold_dirs.values():
        for case in read_json(fold_dir / "summary.json")["per_case"]:
            yield read_image(fold_dir / f"{case}.nii.gz")[0], read_image(labels / f"{case}{info.file_ending}")[0]


@dataclass
class Selection:
    """What :func:`find_best` found: every candidate ranked (best first), the incomplete folders, the winner's
    postprocessing and the instructions written."""

    ranking: list[Crossval]
    targets: list[str]
    incomplete: list[str]
    postprocessing: PostprocessingPlan
    instructions: dict[str, Any]


def find_best(paths: DatasetPaths, progress: bool = True) -> Selection:
    """Rank the complete trained folders and their pairs; postprocess the winner; write the instructions."""
    info = DatasetInfo.load(paths.dataset_json)
    targets = list(declared_masks(info))
    folders = trained_folders(paths)
    if not folders:
        raise fail(paths.results, "no trained cross-validation folds", "train the five folds of a configuration first: "
                   "autoseg-train 3d_fullres fold0 ... fold4")
    held_out_cases(paths)
    if not (paths.raw / "labelsTr").is_dir():
        raise fail(paths.raw / "labelsTr", "not found: the pairs of models are scored against the raw references",
                   "restore the raw dataset (autoseg-convert), then rerun autoseg-find-best")
    singles = [crossval(paths, f) for f in tqdm(folders, desc="cross-validation", unit="model", disable=not progress)]
    complete = [c for c in singles if c.complete]
    incomplete = [line for c in singles for line in c.missing]
    if not complete:
        raise fail(paths.results, f"no configuration has every fold validated ({len(incomplete)} fold(s) missing; "
                   f"first: {incomplete[0]})", "train and validate the folds named, then rerun autoseg-find-best")
    pairs = list(itertools.combinations(complete, 2))
    ensembles = [ensemble_crossval(paths, pair, info)
                 for pair in tqdm(pairs, desc="ensembles", unit="pair", disable=not progress or not pairs)]
    ranking = sorted(complete + ensembles, key=lambda c: -c.mean("dice", targets))
    best = ranking[0]
    post = determine_postprocessing(_pairs(best, paths.raw / "labelsTr", info), info, best.summary["num_cases"])
    post.save(paths.results / best_folder(paths, best) / CROSSVAL / POSTPROCESSING)
    post.save(paths.results / POSTPROCESSING)
    instructions = inference_instructions(paths, best, ranking, targets, incomplete, post)
    write_json_atomic(paths.results / f"{INSTRUCTIONS}.json", instructions)
    write_bytes_atomic(paths.results / f"{INSTRUCTIONS}.md", instructions_markdown(instructions).encode())
    return Selection(ranking, targets, incomplete, post, instructions)


def best_folder(paths: DatasetPaths, result: Crossval) -> str:
    """Where a candidate's merged results lie, relative to ``results/DATASET``."""
    return result.name if ENSEMBLE_JOIN not in result.name else f"{ENSEMBLES}/{result.name}"


def predict_command(paths: DatasetPaths, folder: str, output: str, postprocess: Path | None, save: bool) -> str:
    """The autoseg-predict line that predicts with a trained folder's cross-validation folds."""
    recipe, configuration = split_folder(folder)
    words = ["autoseg-predict", "--home", str(paths.root.resolve()), "-d", paths.name, "-c", configuration]
    words += [] if recipe == DEFAULT_RECIPE else ["--recipe", recipe]
    words += ["-f", *map(str, range(len(held_out_cases(paths)))), "-i", "INPUT_FOLDER", "-o", output]
    words += ["--save-probabilities"] if save else ["--postprocess", str(postprocess)]
    return shlex.join(words)


def commands_for(paths: DatasetPaths, best: Crossval, postprocess: Path) -> list[str]:
    """The exact commands that predict INPUT_FOLDER into OUTPUT_FOLDER with ``best`` and its postprocessing."""
    members = best.name.split(ENSEMBLE_JOIN)
    if len(members) == 1:
        return [predict_command(paths, members[0], "OUTPUT_FOLDER", postprocess, save=False)]
    outputs = [f"OUTPUT_FOLDER_{m}" for m in members]
    lines = [predict_command(paths, m, o, None, save=True) for m, o in zip(members, outputs)]
    return lines + [shlex.join(["autoseg-ensemble", "-i", *outputs, "-o", "OUTPUT_FOLDER",
                                "--postprocess", str(postprocess)])]


def inference_instructions(paths: DatasetPaths, best: Crossval, ranking: list[Crossval], targets: list[str],
                           incomplete: list[str], post: PostprocessingPlan) -> dict[str, Any]:
    """The choice as JSON: ranking (Dice per label/region, mean Dice and HD95), winner, postprocessing, commands."""
    def row(c: Crossval) -> dict[str, Any]:
        return {"model": c.name, "members": [dict(zip(("recipe", "configuration"), split_folder(m)), folder=m)
                                             for m in c.name.split(ENSEMBLE_JOIN)],
                "dice": {t: c.summary["mean"][t]["dice"] for t in targets}, "mean_dice": c.mean("dice", targets),
                "mean_hd95": c.mean("hd95", targets), "num_cases": c.summary["num_cases"],
                "results": f"{best_folder(paths, c)}/{CROSSVAL}/summary.json"}

    steps = (["foreground"] if post.foreground_largest_component else []) + list(post.largest_component)
    postprocess = paths.results.resolve() / POSTPROCESSING
    return {"dataset": paths.name, "best": row(best), "ranking": [row(c) for c in ranking],
            "postprocessing": {"file": POSTPROCESSING, "largest_component_of": steps,
                               "mean_dice_before": float(np.mean([post.dice_before[t] for t in targets])),
                               "mean_dice_after": float(np.mean([post.dice_after[t] for t in targets]))},
            "commands": commands_for(paths, best, postprocess), "incomplete": incomplete,
            "placeholders": {"INPUT_FOLDER": "the cases to predict (raw layout CASE_0000.nii.gz ...)",
                             "OUTPUT_FOLDER": "where the final segmentations go"}}


def rebase_commands(instructions: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """A copy of ``instructions`` whose commands name ``new`` for each word that is the root ``old`` or a path
    under it: the instructions of a shared model name the data root it lies in, not the trainer's. Word by
    word (``shlex``), so a root with spaces stays one quoted word."""
    def rebase(word: str) -> str:
        return new + word[len(old):] if word == old or word.startswith(old + "/") else word
    commands = [shlex.join(map(rebase, shlex.split(c))) for c in instructions["commands"]]
    return {**instructions, "commands": commands}


def ranking_table(instructions: dict[str, Any], markdown: bool = False) -> str:
    """The ranking as a text (or Markdown) table: Dice per label/region, mean Dice, mean HD95."""
    rows = instructions["ranking"]
    targets = list(rows[0]["dice"])
    head = ["#", "model", *targets, "mean Dice", "mean HD95 (mm)"]
    body = [[str(i + 1), r["model"], *(f"{r['dice'][t]:.4f}" for t in targets), f"{r['mean_dice']:.4f}",
             f"{r['mean_hd95']:.2f}"] for i, r in enumerate(rows)]
    if markdown:
        return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *body])
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [head, *body])


def instructions_markdown(instructions: dict[str, Any]) -> str:
    """inference_instructions.md: the ranking, the choice, its postprocessing and the commands, for people."""
    best, post = instructions["best"], instructions["postprocessing"]
    steps = ", ".join(post["largest_component_of"]) or "nothing (no gain on the cross-validation)"
    *others, last = instructions["placeholders"]
    placeholders = f"{', '.join(others)} and {last}" if others else last
    lines = [f"# Inference instructions: {instructions['dataset']}", "",
             "Cross-validation in the raw images' space (each case predicted by the fold that did not train on it), "
             "written by `autoseg-find-best`.", "", ranking_table(instructions, markdown=True), "",
             f"Best: **{best['model']}**, mean Dice {best['mean_dice']:.4f} over {best['num_cases']} cases.", "",
             f"Postprocessing (`{post['file']}`): keep the largest component of {steps}; mean Dice "
             f"{post['mean_dice_before']:.4f} -> {post['mean_dice_after']:.4f}.", "",
             f"Predict new cases (replace {placeholders}):", "", "```", *instructions["commands"], "```", "",
             *(f"- `{name}`: {meaning}" for name, meaning in instructions["placeholders"].items()), ""]
    if instructions["incomplete"]:
        lines += ["Not ranked (folds missing):", "", *(f"- {line}" for line in instructions["incomplete"]), ""]
    return "\n".join(lines)
