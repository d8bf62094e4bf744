"""The previous stage's segmentations a cascade trains on, made before its first epoch and cached.

Every case of the cross-validation lies in the held-out set of exactly one fold f of ``3d_lowres``; its
segmentation comes from that fold's model, the one that never saw it (nnU-Net's rule), predicted from the
case's lowres preprocessed data (sliding window, mirroring) and brought to the cascade's preprocessed grid
(:func:`autoseg.inference.cascade.prior_from_probabilities`, as prediction does). So training fold k of the
cascade sees, for its training and validation cases alike, segmentations no model made from the case itself.

Cached as ``preprocessed/DATASET/previous_stage/RUN/CASE_prior.npy`` (RUN: the lowres results folder name, e.g.
``3d_lowres``) with ``provenance/CASE.json`` beside it (:mod:`autoseg.provenance`: the lowres fold's weights, plan
and dataset; the input arrays; the fold): a retrained lowres fold or re-preprocessed case makes its cases stale,
and they are redone; up-to-date ones are skipped. Writes are atomic and the record comes last, so folds of
the cascade trained at the same time may both write a case, never a half one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from autoseg.data.splits import Split
from autoseg.errors import fail
from autoseg.inference.cascade import prior_from_probabilities
from autoseg.inference.predictor import Predictor
from autoseg.io import save_npy_atomic
from autoseg.paths import DEFAULT_RECIPE, DatasetPaths, run_folder_name
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing import load_case
from autoseg.preprocessing.storage import case_files
from autoseg.provenance import case_record, drop_record, make_record, staleness, write_record

FOLDER = "previous_stage"
CHECKPOINT = "checkpoint_final.pt"


def prior_dir(paths: DatasetPaths, plan: ConfigurationPlan, recipe: str | None) -> Path:
    """Where the cached segmentations of ``plan``'s previous stage (trained with ``recipe``) lie."""
    assert plan.previous_stage is not None
    return paths.preprocessed / FOLDER / run_folder_name(plan.previous_stage, recipe)


def prior_path(folder: Path, case_id: str) -> Path:
    return folder / f"{case_id}_prior.npy"


def check_previous_stage(paths: DatasetPaths, plan: ConfigurationPlan, fold: int | str, splits: list[Split],
                         recipe: str | None) -> None:
    """Refuse, in one line, fold ``all`` (every case would get a segmentation from a model that saw it) and missing
    previous-stage folds (named, with the command that trains them)."""
    stage = plan.previous_stage
    with_recipe = "" if (recipe or DEFAULT_RECIPE) == DEFAULT_RECIPE else f" --recipe {recipe}"
    if str(fold) == "all":
        raise fail(paths.run_dir(plan.name, recipe), f"{plan.name} cannot train fold all: it trains on {stage}'s "
                   "cross-validation predictions, and a model trained on every case has no held-out prediction",
                   f"train the cross-validation folds: autoseg-train {plan.name} fold0{with_recipe} (..fold4)")
    missing = [k for k in range(len(splits)) if not (paths.fold_dir(stage, k, recipe) / CHECKPOINT).is_file()]
    if missing:
        raise fail(paths.run_dir(stage, recipe), f"{plan.name} trains on {stage}'s cross-validation predictions, but "
                   f"{stage} fold(s) {', '.join(map(str, missing))} have no {CHECKPOINT}",
                   f"train them first: autoseg-train {stage} fold{missing[0]}{with_recipe}"
                   + (" (and the others named)" if len(missing) > 1 else ""))


def ensure_priors(paths: DatasetPaths, plan: ConfigurationPlan, splits: list[Split], recipe: str | None,
                  device: str = "auto", precision: str = "auto", progress: bool = True) -> Path:
    """Write every case's held-out previous-stage segmentation that is missing or stale; return the folder."""
    stage = plan.previous_stage
    assert stage is not None
    out = prior_dir(paths, plan, recipe)
    stage_dir, data_dir = paths.config_dir(stage), paths.config_dir(plan.data_of or plan.name)
    todo: list[tuple[int, str]] = []
    loaded: dict[int, tuple[Predictor, dict]] = {}
    for k, split in enumerate(splits):
        predictor = Predictor.from_results(paths, stage, [k], "final", recipe, device=device, precision=precision)
        model = predictor.identity()
        loaded[k] = (predictor, model)
        for case_id in split.val:
            if staleness(case_record(out, case_id), _record(stage_dir, data_dir, case_id, k, model)) is not None:
                todo.append((k, case_id))
    bar = tqdm(todo, desc=f"{stage} held-out predictions for {plan.name}", unit="case", disable=not progress or not todo)
    for k, case_id in bar:
        predictor, model = loaded[k]
        record = _record(stage_dir, data_dir, case_id, k, model)
        low = np.array(load_case(stage_dir, case_id, mmap=False).data, dtype=np.float32)
        shape = load_case(data_dir, case_id).data.shape[1:]
        prior = prior_from_probabilities(predictor.probabilities_preprocessed(torch.from_numpy(low)), shape,
                                         predictor.info)
        drop_record(case_record(out, case_id))
        save_npy_atomic(prior_path(out, case_id), prior)
        write_record(case_record(out, case_id), record)
    return out


def _record(stage_dir: Path, data_dir: Path, case_id: str, fold: int, model: dict) -> dict:
    """What a cached segmentation depends on: the previous stage's fold model, its input and the target grid."""
    inputs = [case_files(stage_dir, case_id)["data"], case_files(data_dir, case_id)["props"]]
    try:
        return make_record("autoseg-train (previous stage)", inputs, {"fold": fold}, model)
    except OSError:
        raise fail(inputs[0], "preprocessed case missing", "run autoseg-preprocess for this configuration") from None
