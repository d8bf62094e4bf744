"""Evaluate a folder of predicted segmentations against references.

Predictions are ``PRED/CASE.nii.gz``; a reference is ``REF/CASE.nii.gz`` or a BraTS case folder
``REF/CASE/`` holding its ``_seg``/``-seg`` file. Writes ``metrics.csv`` (one row per case) and
``summary.json`` (mean, median and std per label/region and metric, plus every case). HD95 uses the
reference's voxel spacing. A case that cannot be evaluated is reported in one line; the rest finish.
"""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autoseg.brats import CHANNEL_NAMES, find_brats_case, labels_for, regions_class_order_for
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError, fail
from autoseg.evaluation.metrics import EMPTY_HD95, METRICS, case_metrics, evaluated_masks
from autoseg.io import atomic_path, read_image, write_json_atomic
from autoseg.parallel import children_ignore_ctrl_c

SEG_ENDINGS = (".nii.gz", ".nii")
CSV_FIELDS = (*METRICS, "n_ref", "n_pred")


@dataclass(frozen=True)
class EvalCase:
    """One prediction with its reference and, when known, an image channel for overlays."""

    case_id: str
    pred: Path
    ref: Path
    image: Path | None = None


@dataclass
class Evaluation:
    """Per-case metrics, their summary, and the cases that could not be evaluated (one line each)."""

    per_case: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _strip(name: str) -> str | None:
    for e in SEG_ENDINGS:
        if name.endswith(e):
            return name[: -len(e)]
    return None


def find_eval_cases(pred_dir: str | Path, ref_dir: str | Path) -> tuple[list[EvalCase], list[str]]:
    """Pair predictions with references by case id; unmatched ones come back as problem lines."""
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, opt in ((pred_dir, "-p"), (ref_dir, "-r")):
        if not d.is_dir():
            raise fail(d, "folder not found", f"check {opt}")
    # hidden names are a killed writer's temporaries (.CASE.XXXX.tmp.nii.gz), never results
    preds = {cid: p for p in sorted(pred_dir.iterdir())
             if p.is_file() and not p.name.startswith(".") and (cid := _strip(p.name))}
    refs: dict[str, tuple[Path, Path | None]] = {}
    for p in sorted(ref_dir.iterdir()):
        if p.is_file() and (cid := _strip(p.name)):
            refs[cid] = (p, None)
        elif p.is_dir() and (bc := find_brats_case(p)) is not None and bc.label is not None:
            refs[bc.case_id] = (bc.label, bc.channels[3])
    if not preds:
        raise fail(pred_dir, "no predictions (CASE.nii.gz) found", "check -p")
    cases = [EvalCase(cid, preds[cid], *refs[cid]) for cid in sorted(preds) if cid in refs]
    problems = [f"{preds[c]}: no reference {c}.nii.gz in {ref_dir}; check -r, or remove this prediction"
                for c in sorted(preds) if c not in refs]
    problems += [f"{refs[c][0]}: reference has no prediction in {pred_dir}; predict this case (autoseg-predict), "
                 "the summary covers only the cases evaluated" for c in sorted(refs) if c not in preds]
    return cases, problems


def brats_info_for(ref_dir: str | Path) -> DatasetInfo | None:
    """BraTS regions for a reference folder of BraTS-named case folders (convention from the names)."""
    if not Path(ref_dir).is_dir():
        return None
    for p in sorted(Path(ref_dir).iterdir()):
        if p.is_dir() and (bc := find_brats_case(p)) is not None:
            c = bc.convention
            return DatasetInfo(dict(CHANNEL_NAMES), labels_for(c), ".nii.gz", 0, regions_class_order_for(c),
                               name=c, label_convention=c)
    return None


def evaluate_case(case: EvalCase, info: DatasetInfo) -> dict[str, dict[str, float]]:
    """Metrics of one case; unreadable files, other shapes or unknown label values raise one line."""
    ref, geom = read_image(case.ref)
    pred, pgeom = read_image(case.pred)
    if pred.shape != ref.shape:
        raise fail(case.pred, f"shape {pred.shape} differs from the reference {ref.shape} ({case.ref})",
                   "predict in the reference's geometry (autoseg-predict writes the input's grid)")
    unknown = sorted(set(np.unique(pred).tolist()) - set(info.label_values))
    if unknown:
        raise fail(case.pred, f"label values {unknown} are not labels of the dataset ({info.label_values})",
                   "evaluate with the matching dataset.json (-d / --dataset-json)")
    return case_metrics(pred, ref, info, geom.spacing_zyx)


def summarize(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{"mean"|"median"|"std": {name: {metric: value}}}`` over cases."""
    names = next(iter(per_case.values())).keys() if per_case else []
    out: dict[str, dict[str, dict[str, float]]] = {"mean": {}, "median": {}, "std": {}}
    for name in names:
        for stat, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
            out[stat][name] = {m: float(fn([c[name][m] for c in per_case.values()])) for m in METRICS}
    return out


def write_metrics_csv(path: Path, per_case: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per case, columns ``<label/region> <metric>``; returns the rows."""
    rows = [{"case": cid, **{f"{n} {m}": v[m] for n, v in ms.items() for m in CSV_FIELDS}}
            for cid, ms in per_case.items()]
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


def _run(args: tuple[EvalCase, DatasetInfo]) -> tuple[str, dict | None, str | None]:
    case, info = args
    try:
        return case.case_id, evaluate_case(case, info), None
    except AutosegError as e:
        return case.case_id, None, str(e)


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, info: DatasetInfo, out_dir: str | Path | None = None,
                    workers: int = 1, overlays: bool = False, report: bool = False,
                    progress: bool = True) -> Evaluation:
    """Evaluate every prediction; write ``metrics.csv``, ``summary.json`` (and PNGs / ``report.html``) to ``out_dir``."""
    out = Path(out_dir) if out_dir is not None else Path(pred_dir)
    cases, problems = find_eval_cases(pred_dir, ref_dir)
    result = Evaluation(failed=problems)
    jobs = [(c, info) for c in cases]
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    with children_ignore_ctrl_c():  # map() submits every job, which starts the workers
        results = pool.map(_run, jobs) if pool is not None else map(_run, jobs)
    try:
        for cid, metrics, err in tqdm(results, total=len(jobs), desc="evaluate", unit="case", disable=not progress):
            if metrics is not None:
                result.per_case[cid] = metrics
            else:
                result.failed.append(str(err))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.summary = {**summarize(result.per_case), "num_cases": len(result.per_case),
                      "regions": {n: list(v) for n, v in evaluated_masks(info).items()},
                      "empty_convention": {"both_empty": {"dice": 1.0, "hd95": 0.0},
                                           "one_empty": {"dice": 0.0, "hd95": EMPTY_HD95}},
                      "failed": result.failed, "per_case": result.per_case}
    write_json_atomic(out / "summary.json", result.summary)
    rows = write_metrics_csv(out / "metrics.csv", result.per_case)
    pngs = write_overlays(cases, info, out / "overlays") if overlays or report else {}
    if report:
        from autoseg.report import write_report_html
        summary = {k: result.summary[k] for k in ("mean", "median", "std", "num_cases")}
        write_report_html(summary, rows, pngs, out / "report.html")
    return result


def write_overlays(cases: list[EvalCase], info: DatasetInfo, out_dir: Path) -> dict[str, Path]:
    """Prediction-vs-reference PNG per case, over the FLAIR image when known (else a blank background)."""
    from autoseg.visualize import save_overlay_png
    pngs = {}
    for case in tqdm(cases, desc="overlays", unit="case", leave=False):
        try:
            pred, _ = read_image(case.pred)
            ref, _ = read_image(case.ref)
            image = read_image(case.image, np.float32)[0] if case.image is not None else np.zeros(ref.shape, np.float32)
            if image.shape != ref.shape:
                continue
            pngs[case.case_id] = save_overlay_png(image, pred, out_dir / f"{case.case_id}.png", ref=ref,
                                                  title=case.case_id)
        except AutosegError:
            continue  # already reported by the metrics pass
    return pngs

