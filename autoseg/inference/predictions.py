"""The files a prediction leaves in its output folder, and how a case's probabilities become them.

``OUT/CASE.nii.gz`` (or the input's own form: PNG/TIFF slices) is the segmentation in the input's grid, label
values and BraTS convention; ``OUT/CASE.npz`` (``--save-probabilities``) holds float16 probabilities in the
original grid and, as JSON, what is needed to write a segmentation from them (geometry, dataset.json, convention);
``OUT/provenance/CASE.json`` says what produced them (:mod:`autoseg.provenance`). autoseg-ensemble and
autoseg-evaluate --calibration read the probabilities back with :func:`load_probabilities`.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.brats import ENHANCING
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.inference.uncertainty import write_case_uncertainty
from autoseg.input_forms import InputCase
from autoseg.io import Geometry, save_npz_atomic, write_image
from autoseg.postprocessing import PostprocessingPlan
from autoseg.provenance import case_record, drop_record, write_record


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """``CASE.nii.gz`` and ``CASE.npz`` in ``out_dir``."""
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}.npz"


def output_label_map(info: DatasetInfo, convention: str | None) -> dict[int, int]:
    """Label values to rewrite so the output follows the input's BraTS convention (e.g. {4: 3})."""
    if convention is None or info.label_convention not in ENHANCING or convention not in ENHANCING:
        return {}
    src, dst = ENHANCING[info.label_convention], ENHANCING[convention]
    return {src: dst} if src != dst else {}


def segmentation_from_probabilities(probs: np.ndarray, info: DatasetInfo, convention: str | None = None,
                                    postprocessing: PostprocessingPlan | None = None) -> np.ndarray:
    """Label map in the dataset's values, postprocessed, then rewritten to the input's BraTS convention."""
    seg = info.label_from_outputs(probs)
    if postprocessing is not None:
        seg = postprocessing.apply(seg, info)
    for src, dst in output_label_map(info, convention).items():
        seg[seg == src] = dst
    return seg


def save_probabilities(path: Path, probs: np.ndarray, geometry: Geometry, info: DatasetInfo,
                       convention: str | None) -> None:
    """float16 probabilities in the original grid plus what is needed to write a segmentation from them."""
    meta = {"geometry": {"size": geometry.size, "spacing": geometry.spacing, "origin": geometry.origin,
                         "direction": geometry.direction}, "dataset": info.to_dict(), "convention": convention}
    save_npz_atomic(path, probabilities=probs.astype(np.float16), meta=np.array(json.dumps(meta)))


@dataclass(frozen=True)
class SavedProbabilities:
    """One ``CASE.npz`` written by autoseg-predict."""

    probabilities: np.ndarray
    geometry: Geometry
    info: DatasetInfo
    convention: str | None


def load_probabilities(path: str | Path) -> SavedProbabilities:
    """Read a probabilities file (no pickle); a corrupt or foreign file is a one-line error."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            probs, meta = z["probabilities"], json.loads(str(z["meta"]))
        return SavedProbabilities(probs, Geometry.from_dict(meta["geometry"]),
                                  DatasetInfo.from_dict(meta["dataset"], path), meta.get("convention"))
    except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError, zipfile.BadZipFile, zlib.error) as e:
        if "allow_pickle" in str(e):   # numpy refused to unpickle an object array: never loaded
            raise fail(path, "refused: holds pickled Python objects, not plain arrays (tampered or not from autoseg)",
                       "rerun autoseg-predict --save-probabilities for this case") from None
        raise fail(path, f"not a readable probabilities file ({type(e).__name__})",
                   "rerun autoseg-predict --save-probabilities for this case") from None


def export_case(case: InputCase, probs: np.ndarray, geometry: Geometry, info: DatasetInfo, out_dir: Path,
                save_probs: bool, postprocessing: PostprocessingPlan | None, image: np.ndarray | None,
                variance: np.ndarray | None = None, members: int = 0, record: dict | None = None) -> None:
    """Write a case's outputs from its probabilities in the input's grid: the segmentation in the input's form,
    optionally the probabilities, uncertainty maps (``variance``, over ``members``) and an overlay PNG of
    ``image``; its provenance ``record`` last, so outputs half rewritten are never taken for up to date."""
    seg_path, npz_path = output_paths(out_dir, case.case_id)
    drop_record(case_record(out_dir, case.case_id))
    if save_probs:
        save_probabilities(npz_path, probs, geometry, info, case.convention)
    seg = segmentation_from_probabilities(probs, info, case.convention, postprocessing)
    if case.form is not None and case.form.writes_output:   # PNG/TIFF in, PNG/TIFF out: names, sizes, grey values
        case.form.write(seg, out_dir)
    else:
        write_image(seg_path, seg, geometry)
    if variance is not None:
        write_case_uncertainty(out_dir, case.case_id, probs, variance, members, seg, geometry, info,
                               output_label_map(info, case.convention))
    if image is not None:
        from autoseg.visualize import save_overlay_png
        overlays = out_dir / "overlays" if case.form is not None else out_dir   # 2D PNG outputs are CASE.png
        save_overlay_png(image, seg, overlays / f"{case.case_id}.png", title=case.case_id)
    if record is not None:
        write_record(case_record(out_dir, case.case_id), record)
