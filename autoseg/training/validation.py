"""End-of-training validation of a fold's held-out cases, twice:

- :func:`validate_cases`, the fold's quick check: sliding-window prediction of the preprocessed cases, scored in
  the preprocessed space (cropped, resampled to the plan's spacing): ``validation/summary.json``, ``per_case.csv``;
- :func:`validate_raw`, the cross-validation result: the fold's ``checkpoint_final.pt`` predicts the raw images as
  ``autoseg-predict --save-probabilities`` would (``validation_raw/CASE.nii.gz`` and ``CASE.npz`` in each image's own
  grid), scored against ``raw/.../labelsTr`` as ``autoseg-evaluate`` would (``validation_raw/summary.json``,
  ``metrics.csv``). ``autoseg-evaluate --crossval`` and ``autoseg-find-best`` (:mod:`autoseg.selection`) read
  these; a rerun redoes only cases whose model, images or options changed (:mod:`autoseg.provenance`).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.cascade import prior_labels, with_prior
from autoseg.context import stack_context
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.evaluation.evaluate import Evaluation, evaluate_folder
from autoseg.inference.cascade import held_out_predictor
from autoseg.inference.predictor import PredictionReport, predict_folder
from autoseg.io import atomic_path, write_json_atomic
from autoseg.paths import DatasetPaths
from autoseg.plans import ConfigurationPlan

RAW_FOLDER = "validation_raw"   # fold_N/validation_raw: predictions and metrics in the raw images' space


def validate_cases(network: nn.Module, case_ids: list[str], load_case: Callable[[str], Any], info: DatasetInfo,
                   plan: ConfigurationPlan, device: torch.device, out_dir: Path,
                   compute_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Predict each case, score it against its label, write summary.json and per_case.csv; return the summary."""
    from autoseg.evaluation.metrics import case_metrics
    from autoseg.inference.sliding_window import predict_sliding_window

    per_case: dict[str, dict[str, dict[str, float]]] = {}
    for case_id in case_ids:
        case = load_case(case_id)
        data = np.array(case.data, dtype=np.float32)   # a writable copy of the memory map
        data = stack_context(data, plan.network.context_slices)   # 2.5D: slices with neighbours
        if plan.network.prior_channels:   # cascade: the previous stage's held-out segmentation, one-hot
            data = with_prior(data, case.prior, prior_labels(info))
        data = torch.from_numpy(data)
        probs = predict_sliding_window(network, data, plan.patch_size, info.num_outputs, info.region_based,
                                       mirror_axes=plan.mirror_axes, step=0.5, device=device,
                                       compute_dtype=compute_dtype)
        pred = info.label_from_outputs(probs.numpy())
        ref = np.clip(np.asarray(case.seg), 0, None).astype(np.uint8)
        # the case's (z, y, x) spacing: a 2d plan's spacing has only (y, x)
        per_case[case_id] = case_metrics(pred, ref, info, case.props.target_spacing)
    summary = {"cases": per_case, "mean": mean_metrics(per_case), "space": "preprocessed",
               "spacing_zyx": list(plan.spacing)}
    write_json_atomic(out_dir / "summary.json", summary)
    write_per_case_csv(out_dir / "per_case.csv", per_case)
    return summary


def mean_metrics(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean over cases per region and metric, ignoring NaN (e.g. Dice of a region absent in both)."""
    out: dict[str, dict[str, float]] = {}
    for metrics in per_case.values():
        for region, values in metrics.items():
            for name, v in values.items():
                out.setdefault(region, {}).setdefault(name, [])  # type: ignore[arg-type]
                out[region][name].append(v)  # type: ignore[union-attr]
    return {r: {m: _nanmean(v) for m, v in ms.items()} for r, ms in out.items()}  # type: ignore[arg-type]


def _nanmean(values: list[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


def write_per_case_csv(path: Path, per_case: dict[str, dict[str, dict[str, float]]]) -> None:
    """One row per case, one column per region and metric (``WT_dice``, ...)."""
    columns = sorted({f"{r}_{m}" for ms in per_case.values() for r, vs in ms.items() for m in vs})
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", *columns])
            for case_id, ms in per_case.items():
                flat = {f"{r}_{m}": v for r, vs in ms.items() for m, v in vs.items()}
                w.writerow([case_id, *(flat.get(c, "") for c in columns)])


def validate_raw(paths: DatasetPaths, fold_dir: Path, fold: int, case_ids: list[str], recipe: str, device: str = "auto",
                 precision: str = "auto", progress: bool = True) -> tuple[PredictionReport, Evaluation]:
    """Predict the fold's held-out raw cases with its ``checkpoint_final.pt`` into ``fold_dir/validation_raw`` (labels
    and probabilities, mirroring on, as autoseg-predict) and score them against the raw references there; what is up
    to date is kept. Returns what the prediction did and the evaluation (its ``failed`` names cases not scored)."""
    images, labels = paths.raw / "imagesTr", paths.raw / "labelsTr"
    for folder in (images, labels):
        if not folder.is_dir():
            raise fail(folder, "not found: the raw-space validation predicts and scores the raw training cases",
                       "restore the raw dataset, then rerun autoseg-train for this fold (a finished fold is only "
                       "validated)")
    out = fold_dir / RAW_FOLDER
    predictor = held_out_predictor(paths, fold_dir, fold, recipe, device, precision)   # a cascade: + lowres fold
    report = predict_folder(predictor, images, out, save_probs=True, progress=progress, case_ids=set(case_ids))
    found = set(report.written) | set(report.skipped) | {line.split(":")[0] for line in report.failed}
    report.failed += [str(fail(images, f"no images of held-out case {c}", "restore them from the raw dataset"))
                      for c in case_ids if c not in found]
    evaluation = evaluate_folder(out, labels, predictor.info, out, progress=progress, case_ids=set(case_ids),
                                 skip_current=True)
    return report, evaluation
