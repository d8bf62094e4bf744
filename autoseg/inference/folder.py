"""autoseg-predict's loop over a folder: find the cases, skip those whose outputs are up to date, predict the
others (the next case read in the background, outputs written in the background) and report a bad case in one
line while the others finish."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from autoseg.errors import AutosegError, fail
from autoseg.inference.inputs import find_input_cases, read_input_case
from autoseg.inference.predictions import export_case, output_paths
from autoseg.inference.uncertainty import uncertainty_paths, write_scores_csv
from autoseg.input_forms import InputCase, form_input_cases
from autoseg.locks import lock_name, write_lock
from autoseg.parallel import shard as shard_items
from autoseg.postprocessing import PostprocessingPlan
from autoseg.provenance import case_record, make_record, postprocessing_identity, staleness

if TYPE_CHECKING:   # predictor.py re-exports this module's names: importing it here would be a cycle
    from autoseg.inference.predictor import Predictor


@dataclass
class PredictionReport:
    """What :func:`predict_folder` did: cases written, skipped as up to date, and failures (one line each); which
    of the written cases had outputs that were stale (made by another model, from other inputs or options)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stale: dict[str, str] = field(default_factory=dict)   # case -> why its earlier outputs were out of date


def _is_done(case: InputCase, out_dir: Path, with_probabilities: bool) -> bool:
    """Whether the case's outputs exist; os.path.isfile, not Path.is_file, because a name too long for the
    file system must make this case fail when it is written (one line), not stop every case here."""
    seg, npz = output_paths(out_dir, case.case_id)
    written = case.form.done(out_dir) if case.form is not None and case.form.writes_output else os.path.isfile(seg)
    return written and (os.path.isfile(npz) or not with_probabilities)


def _prefetch(cases: list[InputCase], missing: Sequence[int] = ()) -> Iterator[tuple[InputCase, Future]]:
    """Read the next case in a background thread while the current one is predicted."""
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(read_input_case, cases[0], missing)] if cases else []
        for i, case in enumerate(cases):
            if i + 1 < len(cases):
                futures.append(pool.submit(read_input_case, cases[i + 1], missing))
            yield case, futures[i]


def predict_folder(predictor: Predictor, input_dir: str | Path, output_dir: str | Path,
                   save_probs: bool = False, postprocessing: PostprocessingPlan | None = None,
                   shard: tuple[int, int] = (0, 1), overlay_png: bool = False, progress: bool = True,
                   uncertainty: bool = False, case_ids: Collection[str] | None = None) -> PredictionReport:
    """Predict every case of ``input_dir`` (its ``shard``; only ``case_ids`` when given, e.g. a fold's held-out
    cases) into ``output_dir``; see the module docstring."""
    out_dir = Path(output_dir)
    cases = (form_input_cases(input_dir, predictor.info)
             or find_input_cases(input_dir, predictor.info.num_channels, predictor.info.file_ending))
    if case_ids is not None:
        cases = [c for c in cases if c.case_id in case_ids]
    cases = shard_items(cases, *shard, key=lambda c: c.case_id)
    report = PredictionReport()
    try:   # before any work: an output folder that cannot exist fails now, not after every case is predicted
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fail(out_dir, f"cannot create the output folder ({e.strerror or e})",
                   "choose a writable folder with -o") from None
    with write_lock(out_dir, "prediction", "write to another folder with -o", lock_name(shard)):
        todo = []
        model = predictor.identity()
        for case in tqdm(cases, desc="check", unit="case", delay=2, disable=not progress):   # (inputs are hashed)
            record = _record(predictor, model, case, postprocessing)
            if _is_done(case, out_dir, save_probs) and (
                    not uncertainty or uncertainty_paths(out_dir, case.case_id)[2].is_file()):
                why = "inputs unreadable" if record is None else staleness(case_record(out_dir, case.case_id), record)
                if why is None:
                    report.skipped.append(case.case_id)
                    continue
                report.stale[case.case_id] = why
            todo.append((case, record))
        _predict_cases(predictor, todo, out_dir, report, save_probs, postprocessing, overlay_png, progress,
                       uncertainty)
    return report


def _record(predictor: Predictor, model: dict, case: InputCase, postprocessing: PostprocessingPlan | None
            ) -> dict | None:
    """What the case's outputs depend on (:mod:`autoseg.provenance`); None if an input cannot be looked at (the
    case then fails when it is read, with its own message)."""
    post = postprocessing_identity(postprocessing)
    options = {"mirror_axes": list(predictor.mirror_axes), "step": predictor.step,
               "precision": str(predictor.compute_dtype), "missing_channels": sorted(predictor.missing_channels),
               "postprocessing": post, "convention": case.convention}
    inputs = [p for c, p in enumerate(case.channels) if c not in predictor.missing_channels]
    try:
        return make_record("autoseg-predict", inputs, options, model)
    except OSError:
        return None


def _predict_cases(predictor: Predictor, todo: list[tuple[InputCase, dict | None]], out_dir: Path,
                   report: PredictionReport, save_probs: bool, postprocessing: PostprocessingPlan | None,
                   overlay_png: bool, progress: bool, uncertainty: bool) -> None:
    records = {case.case_id: record for case, record in todo}
    bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not progress or not todo)
    with ThreadPoolExecutor(1) as writer:
        pending: list[Future] = []
        for case, loaded in _prefetch([case for case, _ in todo], predictor.missing_channels):
            try:
                images, geometry = loaded.result()
                if uncertainty:
                    probs, variance = predictor.predict_with_variance(images, geometry, progress)
                else:
                    probs, variance = predictor.predict(images, geometry, progress), None
                pending.append(writer.submit(export_case, case, probs, geometry, predictor.info, out_dir, save_probs,
                                             postprocessing, images[-1] if overlay_png else None, variance,
                                             predictor.num_members, records[case.case_id]))
                report.written.append(case.case_id)
            except AutosegError as e:
                report.failed.append(f"{case.case_id}: {e}")
            bar.update()
        for case_id, fut in zip(list(report.written), pending):
            try:
                fut.result()
            except AutosegError as e:
                report.written.remove(case_id)
                report.failed.append(f"{case_id}: {e}")
    bar.close()
    if uncertainty:
        try:
            write_scores_csv(out_dir)
        except AutosegError as e:
            report.failed.append(str(e))
