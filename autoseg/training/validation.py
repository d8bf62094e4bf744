"""End-of-training validation: sliding-window prediction of the fold's held-out preprocessed cases
and per-case metrics, written as ``validation/summary.json`` and ``validation/per_case.csv``.

Metrics are computed in the preprocessed space (cropped, resampled to the plan's spacing), which is
what nnU-Net's pseudo-Dice and our fold selection need; ``autoseg-evaluate`` scores exported NIfTI.
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

from autoseg.context import stack_context
from autoseg.dataset import DatasetInfo
from autoseg.io import atomic_path, write_json_atomic
from autoseg.plans import ConfigurationPlan


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
        data = torch.from_numpy(stack_context(data, plan.network.context_slices))   # 2.5D: slices with neighbours
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
