"""Ensemble configurations or folds: average probabilities saved by ``autoseg-predict --save-probabilities``.

Each ``CASE.npz`` holds float16 probabilities in the case's original grid and, as JSON, its geometry,
the dataset labels and the input's label convention, so segmentations can be written without the
images. Cases present in only some folders are reported and skipped; outputs whose provenance record matches
their inputs are kept, outputs of other inputs (a folder predicted again) are redone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoseg.errors import AutosegError, fail
from autoseg.inference.folder import PredictionReport
from autoseg.inference.predictions import (SavedProbabilities, load_probabilities, save_probabilities,
                                           segmentation_from_probabilities)
from autoseg.io import write_image
from autoseg.locks import write_lock
from autoseg.postprocessing import PostprocessingPlan
from autoseg.provenance import (case_record, drop_record, make_record, postprocessing_identity, staleness,
                                write_record)


def ensemble_case(paths: Sequence[Path]) -> SavedProbabilities:
    """Mean of the cases' probabilities; they must agree on shape and on labels/regions."""
    first = load_probabilities(paths[0])
    total = first.probabilities.astype(np.float32)
    for p in paths[1:]:
        other = load_probabilities(p)
        if other.probabilities.shape != total.shape:
            raise fail(p, f"probabilities of shape {other.probabilities.shape} differ from {total.shape} "
                       f"({paths[0]})", "ensemble predictions of the same cases and dataset")
        if other.info.regions != first.info.regions:
            raise fail(p, "labels/regions differ from those of the first folder", "ensemble models of one dataset")
        total += other.probabilities
    total /= len(paths)
    return SavedProbabilities(total, first.geometry, first.info, first.convention)


def ensemble_folders(input_dirs: Sequence[str | Path], output_dir: str | Path,
                     postprocessing: PostprocessingPlan | None = None, save_probs: bool = False,
                     progress: bool = True) -> PredictionReport:
    """Average ``CASE.npz`` over ``input_dirs`` and write ``CASE.nii.gz`` (and the mean ``.npz``) to ``output_dir``."""
    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise fail(None, "ensembling needs at least two input folders", "give -i A B [C ...]")
    ids_per_dir = []
    for d in dirs:
        if not d.is_dir():
            raise fail(d, "folder not found", "give folders written by autoseg-predict --save-probabilities")
        ids = {p.name[:-4] for p in d.glob("*.npz") if not p.name.startswith(".")}   # not temporaries
        if not ids:
            raise fail(d, "no probabilities (CASE.npz) found", "predict with --save-probabilities")
        ids_per_dir.append(ids)
    common = set.intersection(*ids_per_dir)
    report = PredictionReport()
    for d, ids in zip(dirs, ids_per_dir):
        report.failed += [f"{d / (c + '.npz')}: missing from the other folders, skipped" for c in sorted(ids - common)]
    out = Path(output_dir)
    if any(out.resolve() == d.resolve() for d in dirs):
        raise fail(out, "is also an input folder (-i): the ensemble would overwrite the predictions it averages",
                   "write the ensemble to another folder with -o")
    post = postprocessing_identity(postprocessing)
    with write_lock(out, "ensembling", "write to another folder with -o"):
        for cid in tqdm(sorted(common), desc="ensemble", unit="case", disable=not progress):
            inputs = [d / f"{cid}.npz" for d in dirs]
            seg_path, npz_path = out / f"{cid}.nii.gz", out / f"{cid}.npz"
            try:
                record = make_record("autoseg-ensemble", inputs, {"postprocessing": post})
            except OSError as e:   # (an input removed meanwhile)
                report.failed.append(str(fail(e.filename, f"cannot be read ({e.strerror})",
                                              "rerun autoseg-predict --save-probabilities")))
                continue
            if seg_path.is_file() and (npz_path.is_file() or not save_probs):
                why = staleness(case_record(out, cid), record)
                if why is None:
                    report.skipped.append(cid)
                    continue
                report.stale[cid] = why
            try:
                mean = ensemble_case(inputs)
                drop_record(case_record(out, cid))
                if save_probs:
                    save_probabilities(npz_path, mean.probabilities, mean.geometry, mean.info, mean.convention)
                seg = segmentation_from_probabilities(mean.probabilities, mean.info, mean.convention, postprocessing)
                write_image(seg_path, seg, mean.geometry)
                write_record(case_record(out, cid), record)
                report.written.append(cid)
            except AutosegError as e:
                report.failed.append(str(e))
    return report
