"""Evaluate a folder of predicted segmentations against references.

Predictions are ``PRED/CASE<ending>``; a reference is ``REF/CASE<ending>`` or a BraTS case folder
``REF/CASE/`` holding its ``_seg``/``-seg`` file, where the ending is the dataset's ``file_ending`` or any
3D format the package reads (.nii.gz, .nii, .mha, .mhd, .nrrd). Writes ``metrics.csv`` (one row per case)
and ``summary.json`` (mean, median and std per label/region and metric, plus every case), with
``summary.provenance.json`` (the prediction and reference files scored and the options), all or none:
a run that scores no case writes nothing, so earlier results stay. HD95 uses the reference's voxel spacing.
A case that cannot be evaluated is reported in one line; the rest finish.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from autoseg.brats import CHANNEL_NAMES, find_brats_case, labels_for, regions_class_order_for
from autoseg.dataset import DatasetInfo
from autoseg.errors import AutosegError, fail
from autoseg.evaluation.calibration import calibration_and_ranking, check_inputs, report_table
from autoseg.evaluation.lesions import LESION_COUNTS, LESION_HD95_PENALTY, LESION_METRICS, LesionSettings
from autoseg.evaluation.metrics import EMPTY_HD95, METRICS, case_metrics, evaluated_masks
from autoseg.io import atomic_path, read_image, read_json
from autoseg.locks import write_lock
from autoseg.parallel import children_ignore_ctrl_c
from autoseg.provenance import make_record, staleness

IMAGE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
SUMMARIZED = (*METRICS, "nsd", *LESION_METRICS)
CSV_FIELDS = (*SUMMARIZED, *LESION_COUNTS, "n_ref", "n_pred")
PROVENANCE = "summary.provenance.json"   # beside summary.json: the files and options it was computed from


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


def endings_for(info: DatasetInfo) -> tuple[str, ...]:
    """File endings a prediction or reference may have: the dataset's own first, then every 3D format read."""
    return tuple(dict.fromkeys((info.file_ending, *IMAGE_ENDINGS)))


def _images_by_case(folder: Path, endings: tuple[str, ...], problems: list[str]) -> tuple[dict[str, Path], set[str]]:
    """``CASE<ending>`` files of ``folder`` by case id, and the ids found in two endings (each reported as a
    problem line, not guessed). Hidden names (a killed writer's temporaries, files other systems leave) are
    skipped."""
    longest_first = sorted(endings, key=len, reverse=True)
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        ending = next((e for e in longest_first if p.name.endswith(e) and len(p.name) > len(e)), None)
        if ending is not None:
            found.setdefault(p.name[: -len(ending)], []).append(p)
    ambiguous = {cid for cid, paths in found.items() if len(paths) > 1}
    for cid in sorted(ambiguous):
        problems.append(str(fail(found[cid][0], f"case {cid} has {len(found[cid])} files here "
                                 f"({', '.join(q.name for q in found[cid])})", "keep one of them")))
    return {cid: paths[0] for cid, paths in found.items() if cid not in ambiguous}, ambiguous


def find_eval_cases(pred_dir: str | Path, ref_dir: str | Path, endings: tuple[str, ...] = IMAGE_ENDINGS,
                    case_ids: Collection[str] | None = None) -> tuple[list[EvalCase], list[str]]:
    """Pair predictions with references by case id; unmatched ones come back as problem lines. ``case_ids``: only
    these cases count (a fold's held-out cases among every reference of labelsTr).

    No pair at all is an error (one line): nothing could be evaluated, so nothing is written.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    for d, opt in ((pred_dir, "-p"), (ref_dir, "-r")):
        if not d.is_dir():
            raise fail(d, "folder not found", f"check {opt}")
    problems: list[str] = []
    preds, pred_ambiguous = _images_by_case(pred_dir, endings, problems)
    if not preds:
        raise AutosegError(problems[0]) if problems else fail(pred_dir, f"no predictions (CASE{endings[0]}) found",
                                                              "check -p")
    ref_files, ref_ambiguous = _images_by_case(ref_dir, endings, problems)
    refs: dict[str, tuple[Path, Path | None]] = {c: (p, None) for c, p in ref_files.items()}
    for p in sorted(ref_dir.iterdir()):
        if p.is_dir() and (bc := find_brats_case(p)) is not None and bc.label is not None:
            refs[bc.case_id] = (bc.label, bc.channels[3])
    if case_ids is not None:
        preds = {c: p for c, p in preds.items() if c in case_ids}
        refs = {c: r for c, r in refs.items() if c in case_ids}
    cases = [EvalCase(cid, preds[cid], *refs[cid]) for cid in sorted(preds) if cid in refs]
    if not cases:
        raise fail(pred_dir, f"no prediction matches a reference in {ref_dir} ({len(preds)} prediction(s), "
                   f"{len(refs)} reference(s), no case id in common)",
                   f"check -p and -r (PRED/CASE{endings[0]} is scored against REF/CASE{endings[0]} or a BraTS "
                   "folder REF/CASE/); nothing was written")
    problems += [f"{preds[c]}: no reference for case {c} in {ref_dir} (CASE{endings[0]}, another image ending or a "
                 "BraTS case folder); check -r, or remove this prediction" for c in sorted(preds)
                 if c not in refs and c not in ref_ambiguous]
    problems += [f"{refs[c][0]}: reference has no prediction in {pred_dir}; predict this case (autoseg-predict), "
                 "the summary covers only the cases evaluated" for c in sorted(refs)
                 if c not in preds and c not in pred_ambiguous]
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


def label_values_in(array: np.ndarray) -> list[float]:
    """The distinct values of a label map, fast for the usual case of a mostly-zero volume."""
    nonzero = array[array != 0]
    return sorted(([0] if nonzero.size < array.size else []) + np.unique(nonzero).tolist())


def evaluate_case(case: EvalCase, info: DatasetInfo, nsd_tolerance: float | None = None,
                  lesions: LesionSettings | None = None) -> dict[str, dict[str, float]]:
    """Metrics of one case; unreadable files, other shapes or label values the dataset does not declare (in the
    prediction or the reference, where a non-integer value such as 0.5 is named as such) raise one line."""
    ref, geom = read_image(case.ref)
    pred, pgeom = read_image(case.pred)
    if pred.shape != ref.shape:
        raise fail(case.pred, f"shape {pred.shape} differs from the reference {ref.shape} ({case.ref})",
                   "predict in the reference's geometry (autoseg-predict writes the input's grid)")
    ref_values = label_values_in(ref)
    fractional = [v for v in ref_values if v != int(v)]
    if fractional:
        raise fail(case.ref, f"reference label holds non-integer values {fractional[:5]}",
                   "re-export the label with whole label values (nearest-neighbour resampling), then rerun")
    undeclared = [v for v in ref_values if v not in info.label_values]
    if undeclared:
        raise fail(case.ref, f"reference label values {undeclared} are not labels of the dataset ({info.label_values})",
                   "fix the label file, or evaluate with the dataset.json that declares them (-d / --dataset-json)")
    unknown = [v for v in label_values_in(pred) if v not in info.label_values]
    if unknown:
        raise fail(case.pred, f"label values {unknown} are not labels of the dataset ({info.label_values})",
                   "evaluate with the matching dataset.json (-d / --dataset-json)")
    return case_metrics(pred, ref, info, geom.spacing_zyx, nsd_tolerance, lesions)


def summarize(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{"mean"|"median"|"std": {name: {metric: value}}}`` over cases, for each metric the cases carry."""
    first = next(iter(per_case.values()), {})
    out: dict[str, dict[str, dict[str, float]]] = {"mean": {}, "median": {}, "std": {}}
    for name, metrics in first.items():
        for stat, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
            out[stat][name] = {m: float(fn([c[name][m] for c in per_case.values()]))
                               for m in SUMMARIZED if m in metrics}
    return out


def metric_rows(per_case: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per case, columns ``<label/region> <metric>`` (the metrics each region carries)."""
    return [{"case": cid, **{f"{n} {m}": v[m] for n, v in ms.items() for m in CSV_FIELDS if m in v}}
            for cid, ms in per_case.items()]


def write_results(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]],
                  provenance: dict[str, Any] | None = None) -> None:
    """``summary.json`` and ``metrics.csv`` (and ``summary.provenance.json``, what they were computed from), all or
    none: each goes to a temporary name and they are renamed into place only when all are complete, so a failure
    keeps the earlier ones as they were."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(out / "summary.json"))
        with open(tmp, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = stack.enter_context(atomic_path(out / "metrics.csv", suffix=".csv"))
        with open(tmp, "w", newline="") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        if provenance is not None:
            tmp = stack.enter_context(atomic_path(out / PROVENANCE))
            with open(tmp, "w") as f:
                f.write(json.dumps(provenance, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())


def _run(args: tuple[EvalCase, DatasetInfo, float | None, LesionSettings | None]
         ) -> tuple[str, dict | None, str | None]:
    case = args[0]
    try:
        return case.case_id, evaluate_case(*args), None
    except AutosegError as e:
        return case.case_id, None, str(e)


def evaluate_folder(pred_dir: str | Path, ref_dir: str | Path, info: DatasetInfo, out_dir: str | Path | None = None,
                    workers: int = 1, overlays: bool = False, report: bool = False, progress: bool = True,
                    nsd_tolerance: float | None = None, lesions: LesionSettings | None = None,
                    calibration: bool = False, uncertainty: bool = False, case_ids: Collection[str] | None = None,
                    skip_current: bool = False) -> Evaluation:
    """Evaluate every prediction; write ``metrics.csv``, ``summary.json`` (and PNGs / ``report.html``) to ``out_dir``.

    ``nsd_tolerance`` (mm) adds normalised surface Dice, ``lesions`` the BraTS lesion-wise metrics,
    ``calibration`` the ECE and reliability diagram of ``PRED/CASE.npz``, ``uncertainty`` the ranking by
    ``PRED/uncertainty/CASE.json`` (:mod:`autoseg.evaluation.calibration`). When no case can be scored,
    nothing is written and ``summary`` stays empty (``failed`` says why). ``case_ids``: score only these cases.
    ``skip_current``: when ``out_dir`` holds the summary of exactly these files and options, return it unscored.
    """
    out = Path(out_dir) if out_dir is not None else Path(pred_dir)
    cases, problems = find_eval_cases(pred_dir, ref_dir, endings_for(info), case_ids)
    options = {"dataset": info.to_dict(), "calibration": calibration, "uncertainty": uncertainty,
               **_settings(nsd_tolerance, lesions)}
    record = make_record("autoseg-evaluate", [p for c in cases for p in (c.pred, c.ref)], options)
    if skip_current and (out / "summary.json").is_file() and staleness(out / PROVENANCE, record) is None:
        summary = read_json(out / "summary.json")
        return Evaluation(summary["per_case"], summary, list(summary["failed"]))
    with write_lock(out, "evaluation", "write the results to another folder with -o"):
        return _evaluate(cases, problems, info, out, workers, overlays, report, progress, nsd_tolerance, lesions,
                         calibration, uncertainty, record)


def _evaluate(cases: list[EvalCase], problems: list[str], info: DatasetInfo, out: Path, workers: int, overlays: bool,
              report: bool, progress: bool, nsd_tolerance: float | None, lesions: LesionSettings | None,
              calibration: bool, uncertainty: bool, provenance: dict[str, Any]) -> Evaluation:
    result = Evaluation(failed=problems)
    if calibration or uncertainty:   # a missing input file stops the run now, not after every case is scored
        check_inputs(cases, calibration, uncertainty)
    jobs = [(c, info, nsd_tolerance, lesions) for c in cases]
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
    if not result.per_case:
        return result   # nothing scored: write nothing, so earlier results stay as they were
    result.summary = {**summarize(result.per_case), "num_cases": len(result.per_case),
                      "regions": {n: list(v) for n, v in evaluated_masks(info).items()},
                      "empty_convention": {"both_empty": {"dice": 1.0, "hd95": 0.0},
                                           "one_empty": {"dice": 0.0, "hd95": EMPTY_HD95}},
                      **_settings(nsd_tolerance, lesions),
                      "failed": result.failed, "per_case": result.per_case}
    figures: dict[str, Path] = {}
    if calibration or uncertainty:
        sections, failed, figures = calibration_and_ranking(cases, info, result.per_case, out, calibration,
                                                            uncertainty)
        result.summary.update(sections)
        result.failed += failed
    rows = metric_rows(result.per_case)
    write_results(out, result.summary, rows, provenance)
    pngs = write_overlays(cases, info, out / "overlays") if overlays or report else {}
    if report:
        from autoseg.report import write_report_html
        keys = ("mean", "median", "std", "num_cases", "nsd_tolerance_mm", "lesion_wise")
        shown = {k: result.summary[k] for k in keys if k in result.summary}
        if calibration or uncertainty:
            shown["calibration and uncertainty"] = report_table(result.summary)
        write_report_html(shown, rows, pngs, out / "report.html", figures=figures)
    return result


def _settings(nsd_tolerance: float | None, lesions: LesionSettings | None) -> dict[str, Any]:
    """What the optional metrics were computed with, for summary.json (nothing when they are off)."""
    out: dict[str, Any] = {}
    if nsd_tolerance is not None:
        out["nsd_tolerance_mm"] = nsd_tolerance
    if lesions is not None:
        out["lesion_wise"] = {"definition": "BraTS 2023", "connectivity": 26, "dilation_neighbourhood": 18,
                              "dilation_iterations": lesions.dilation, "min_volume_mm3": lesions.min_volume_mm3,
                              "missed_or_false_lesion_dice": 0.0, "missed_or_false_lesion_hd95": LESION_HD95_PENALTY}
    return out


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

