"""DICOM series -> a raw dataset: one series per case folder, or a mapping file for several channels per case.

SRC is a folder whose sub-folders each hold one series (the case id is the folder name, the channel is named
after the series' modality: ``CT`` selects CT normalisation), or a JSON mapping file
``{"CASE": {"CHANNEL": "series folder", ...}, ...}`` (folders relative to the file; every case lists the same
channels, whose series must share one grid).

Series are read with SimpleITK's series reader: slices are ordered by their position along the slice normal
(ImagePositionPatient and ImageOrientationPatient), never by file name, and stored values are rescaled to HU
(RescaleSlope/RescaleIntercept). Each series is written as NIfTI in its own geometry (origin, spacing,
direction), as int16 when the values fit. Before anything is written every problem is listed, one line each:
several series in one folder, files that are not DICOM images, slices of different size or orientation, and
missing slices (gaps in the slice positions), which the reader would otherwise stack into a distorted volume.

Labels (``--labels DIR``) are label maps ``DIR/CASE.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``) on the series'
grid; a case with a label goes to ``imagesTr``/``labelsTr``, one without to ``imagesTs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.dataset import is_os_litter
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, keeps_locale, read_header, read_image, read_json, write_json_atomic
from autoseg.parallel import thread_map
from autoseg.paths import DatasetPaths
from autoseg.raw_writer import (ENDING, CaseVolumes, check_case_ids, check_same_channels,
                                count_training, target_dataset, write_case)

LABEL_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
_FIX_MAPPING = 'e.g. {"case_001": {"CT": "case_001/ct"}} (see docs/2d-ct-dicom.md)'
_POSITION_TOLERANCE = (0.01, 0.05)   # mm, and share of the slice distance, by which a gap may differ


@dataclass(frozen=True)
class DicomSeries:
    """One series: its slice files in order along the slice normal, its modality, and its grid from the headers."""

    folder: Path
    files: tuple[Path, ...]
    modality: str
    geometry: Geometry


@dataclass(frozen=True)
class DicomCase:
    """One case: a series folder per channel (in channel order) and its label file, if any."""

    case_id: str
    folders: tuple[Path, ...]
    label: Path | None


# ---- finding cases ------------------------------------------------------------------------------------------

def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not is_os_litter(p.name))


def read_mapping(path: Path) -> tuple[dict[str, tuple[Path, ...]], dict[str, str]]:
    """A mapping file -> series folders per case (channel order of the first case) and the channel names."""
    mapping = read_json(path)
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(v, dict) and v and all(isinstance(f, str) for f in v.values()) for v in mapping.values()):
        raise fail(path, "must map each case to {channel name: series folder}", _FIX_MAPPING)
    names = list(next(iter(mapping.values())))
    cases: dict[str, tuple[Path, ...]] = {}
    for case_id, channels in mapping.items():
        if set(channels) != set(names):
            raise fail(path, f"case {case_id!r} has channels {sorted(channels)}, the first case {sorted(names)}",
                       "give every case the same channels")
        cases[str(case_id)] = tuple(path.parent / channels[n] for n in names)
    return cases, {str(i): str(n) for i, n in enumerate(names)}


def find_dicom_cases(src: Path, labels: Path | None,
                     problems: ProblemList) -> tuple[list[DicomCase], dict[str, str] | None]:
    """Cases of a folder of series folders or of a mapping file, each with its label if ``labels`` has one.

    Returns the channel names of a mapping file, or None: they then come from the series' modality.
    """
    if src.is_file():
        folders, channel_names = read_mapping(src)
    else:
        entries = _visible(src)
        for p in entries:
            if not p.is_dir():
                problems.add(p, "a file beside the case folders", "put each series in its own case folder, or move "
                             "the file out of SRC")
        folders, channel_names = {p.name: (p,) for p in entries if p.is_dir()}, None
        if not folders:
            raise fail(src, "holds no case folders", "put each case's series in its own folder: SRC/CASE/*.dcm")
    check_case_ids({c: f[0] for c, f in folders.items()}, problems)
    label_files: dict[str, Path] = {}
    if labels is not None:
        if not labels.is_dir():
            raise fail(labels, "label folder not found", "give the folder of CASE.nii.gz label maps with --labels")
        for p in _visible(labels):
            case_id = next((p.name[:-len(e)] for e in LABEL_ENDINGS if p.name.endswith(e)), None)
            if case_id is None or not p.is_file():
                problems.add(p, "not a label map (.nii.gz, .nii, .nrrd or .mha)", "move it out of the label folder")
            elif case_id not in folders:
                problems.add(p, f"label without its case (no case {case_id!r} in {src})",
                             "add the case's series or remove the label")
            elif case_id in label_files:
                problems.add(p, f"second label of case {case_id!r} (also {label_files[case_id].name})", "keep one")
            else:
                label_files[case_id] = p
    return [DicomCase(c, f, label_files.get(c)) for c, f in folders.items()], channel_names


# ---- checking one series ------------------------------------------------------------------------------------

def _header(path: Path) -> sitk.ImageFileReader | None:
    """The file's DICOM header through GDCM, or None if it holds no image."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _not_an_image(path: Path) -> str:
    with open(path, "rb") as f:
        is_dicom = f.read(132)[128:] == b"DICM"
    return ("a DICOM file without image data (e.g. a report, a structure set or a DICOMDIR)" if is_dicom
            else "not a DICOM file")


def scan_series(folder: Path, problems: ProblemList) -> DicomSeries | None:
    """Check one series folder and order its slices by position; its problems are added to ``problems``."""
    if not folder.is_dir():
        problems.add(folder, "series folder not found", "check the path (mapping files: relative to the file)")
        return None
    entries = _visible(folder)
    for p in entries:
        if p.is_dir():
            problems.add(p, "sub-folder inside a series folder", "put the series' files directly in one folder "
                         "(several series per case: a mapping file, see docs/2d-ct-dicom.md)")
    files = [p for p in entries if p.is_file()]
    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    in_series = {Path(f).name for uid in uids for f in reader.GetGDCMSeriesFileNames(str(folder), uid)}
    for p in files:
        if p.name not in in_series:
            problems.add(p, _not_an_image(p), "move it out of the series folder")
    if len(uids) > 1:
        shown = ", ".join(uids[:3]) + (", ..." if len(uids) > 3 else "")
        problems.add(folder, f"holds {len(uids)} DICOM series (SeriesInstanceUID {shown})", "put each series in its "
                     "own folder: one per case, or several channels of a case listed in a mapping file")
        return None
    if not uids:
        problems.add(folder, "no DICOM image series in this folder", "put the series' slice files there")
        return None
    headers = []
    for name in reader.GetGDCMSeriesFileNames(str(folder), uids[0]):
        header = _header(Path(name))
        if header is None:
            problems.add(name, "cannot read this DICOM slice's header", "re-export the series")
            return None
        headers.append((Path(name), header))
    return _order_slices(folder, headers, problems)


def _order_slices(folder: Path, headers: list[tuple[Path, sitk.ImageFileReader]],
                  problems: ProblemList) -> DicomSeries | None:
    """Sort slices along the normal; refuse other sizes, orientations, multi-frame files and gaps in the positions."""
    first_path, first = headers[0]
    before = len(problems)
    for path, h in headers:
        frames = _tag(h, "0028|0008")
        if (frames.isdigit() and int(frames) > 1) or h.GetSize()[2] > 1:
            problems.add(path, f"holds {frames or h.GetSize()[2]} frames (an enhanced multi-frame file)",
                         "export the series with one slice per file")
        elif h.GetSize() != first.GetSize():
            problems.add(path, f"slice of {h.GetSize()[0]}x{h.GetSize()[1]} pixels, {first_path.name} has "
                         f"{first.GetSize()[0]}x{first.GetSize()[1]}", "the folder must hold one series only")
        elif not np.allclose(h.GetDirection(), first.GetDirection(), atol=1e-4):
            problems.add(path, f"slice orientation (0020|0037) differs from {first_path.name}'s",
                         "the folder must hold one series of parallel slices only")
        elif not _tag(h, "0020|0032"):
            problems.add(path, "no ImagePositionPatient (0020|0032)", "export the series with slice positions: "
                         "autoseg orders slices by position, not by file name")
    if len(problems) > before:
        return None
    direction = np.array(first.GetDirection()).reshape(3, 3)
    normal = direction[:, 2]
    along = np.array([float(np.dot(h.GetOrigin(), normal)) for _, h in headers])
    order = np.argsort(along, kind="stable")
    files = tuple(headers[i][0] for i in order)
    along = along[order]
    spacing_z = 1.0
    if len(files) > 1:
        steps = np.diff(along)
        step = float(np.median(steps))
        if step < _POSITION_TOLERANCE[0]:
            problems.add(folder, "most slices share their position with another", "the folder must hold one series "
                         "with one slice per position")
            return None
        bad = np.flatnonzero(np.abs(steps - step) > _POSITION_TOLERANCE[0] + _POSITION_TOLERANCE[1] * step)
        if bad.size:
            i = int(bad[0])
            what = "at the same position" if steps[i] < _POSITION_TOLERANCE[0] else f"{steps[i]:.3g} mm apart"
            problems.add(folder, f"{bad.size} gap(s) in the slice positions, first: {files[i].name} and "
                         f"{files[i + 1].name} are {what}, the other slices {step:.3g} mm: a slice is missing, "
                         "doubled, or the spacing varies", "export the complete series (autoseg does not interpolate)")
            return None
        spacing_z = float(along[-1] - along[0]) / (len(files) - 1)   # as SimpleITK's series reader computes it
    lowest = headers[int(order[0])][1]
    size = (*first.GetSize()[:2], len(files))
    geometry = Geometry(tuple(int(s) for s in size), (*first.GetSpacing()[:2], spacing_z), tuple(lowest.GetOrigin()),
                        tuple(float(d) for d in first.GetDirection()))
    return DicomSeries(folder, files, _tag(first, "0008|0060") or "image", geometry)


@keeps_locale
def read_series(series: DicomSeries) -> tuple[np.ndarray, Geometry]:
    """The series' voxels in HU (rescale applied) as (z, y, x), int16 when they fit, and its geometry."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    reader.SetSpacingWarningRelThreshold(1.0)   # uneven positions were checked already, with a one-line message
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise fail(series.folder, f"cannot read the series ({str(e).strip().splitlines()[-1][:120]})",
                   "re-export the series") from None
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind in "iu" and array.size and -32768 <= array.min() and array.max() <= 32767:
        array = array.astype(np.int16)
    return array, Geometry.of(image)


# ---- checking and converting a case -------------------------------------------------------------------------

@dataclass
class _Inspection:
    """What the check of one case found: its problems, its series in channel order, and its label's values."""

    problems: list[str]
    series: list[DicomSeries]
    label_values: set[int]


def _inspect(case: DicomCase) -> _Inspection:
    problems = ProblemList()
    series = [s for s in (scan_series(f, problems) for f in case.folders) if s is not None]
    values: set[int] = set()
    if len(series) == len(case.folders):
        for s in series[1:]:
            differs = series[0].geometry.mismatch(s.geometry)
            if differs:
                problems.add(s.folder, f"{differs} of {series[0].folder}", "the channels of a case must share one "
                             "grid: resample the series onto one grid first")
        if case.label is not None:
            values = _check_label(case.label, series[0], problems)
    return _Inspection(problems.items, series, values)


def _check_label(path: Path, series: DicomSeries, problems: ProblemList) -> set[int]:
    """The label's values, after checking that it lies on the series' grid and holds non-negative integers."""
    try:
        differs = series.geometry.mismatch(read_header(path))
        if differs:
            problems.add(path, f"{differs} of the series in {series.folder}", "save the label on the series' grid")
            return set()
        array, _ = read_image(path)
    except AutosegError as e:
        problems.items.append(str(e))
        return set()
    values = np.unique(array)
    if (values < 0).any() or (values != np.round(values)).any() or (values > 255).any():
        problems.add(path, f"label values must be whole numbers 0..255, found {values[:6].tolist()}",
                     "save the label map with integer labels")
        return set()
    return {int(v) for v in values}


def _load_case(series: Sequence[DicomSeries], label: Path | None) -> CaseVolumes:
    arrays = [read_series(s) for s in series]
    geometry = arrays[0][1]
    label_array = None
    if label is not None:
        label_array, label_geometry = read_image(label)
        differs = geometry.mismatch(label_geometry)
        if differs:
            raise fail(label, f"{differs} of the series in {series[0].folder}", "save the label on the series' grid")
        label_array = label_array.astype(np.uint8)
    return CaseVolumes([a for a, _ in arrays], label_array, geometry)


def _write(item: tuple[DicomCase, _Inspection], raw: Path, num_channels: int) -> int:
    case, seen = item
    return write_case(raw, case.case_id, num_channels, case.label is not None,
                      partial(_load_case, seen.series, case.label))


def _labels(existing: Mapping[str, Any] | None, values: set[int]) -> dict[str, Any]:
    """The dataset's labels (kept as named) plus ``label_V`` for each new value."""
    labels: dict[str, Any] = dict(existing.get("labels") or {}) if existing else {}
    labels.setdefault("background", 0)
    covered = {v for x in labels.values() for v in (x if isinstance(x, list) else [x])}
    labels.update({f"label_{v}": v for v in sorted(values - covered)})
    return labels


@keeps_locale
def convert_dicom(src: Path, root: Path, dataset_id: int, name: str, labels: Path | None = None,
                  workers: int = 2) -> DatasetPaths:
    """Convert DICOM series (case folders under ``src``, or the mapping file ``src``) into ``root/raw/DatasetNNN_name``.

    Every input problem is reported at once, before anything is written; a rerun writes only missing files.
    """
    src, root = Path(src), Path(root)
    if not src.exists():
        raise fail(src, "not found", "give the folder of case folders, or a mapping file (.json)")
    paths, existing = target_dataset(root, dataset_id, name)
    problems = ProblemList()
    cases, channel_names = find_dicom_cases(src, Path(labels) if labels is not None else None, problems)
    found = thread_map(_inspect, cases, workers, "check")
    for seen in found:
        problems.items.extend(seen.problems)
    if channel_names is None:
        modalities: dict[str, str] = {}
        for case, seen in zip(cases, found):
            if seen.series:
                modalities.setdefault(seen.series[0].modality, case.case_id)
        if len(modalities) > 1:
            shown = ", ".join(f"{m} ({c})" for m, c in list(modalities.items())[:3])
            problems.add(src, f"the series have different modalities: {shown}", "convert each modality into its own "
                         "dataset, or list them as channels of each case in a mapping file")
        channel_names = {"0": next(iter(modalities), "image")}
    check_same_channels(existing, channel_names, paths.dataset_json, problems)
    problems.raise_if_any(f"cannot convert {src}")
    thread_map(partial(_write, raw=paths.raw, num_channels=len(channel_names)), list(zip(cases, found)), workers,
               "convert")
    write_json_atomic(paths.dataset_json, {
        "name": name,
        "description": f"DICOM series converted by autoseg from {src.name}",
        "channel_names": channel_names,
        "labels": _labels(existing, set().union(*(s.label_values for s in found)) - {0}),
        "numTraining": count_training(paths.raw),
        "file_ending": ENDING,
    })
    return paths
