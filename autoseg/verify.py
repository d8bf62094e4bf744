"""Dataset integrity check: every problem of a raw dataset, found in one pass and reported together.

Two levels: file names (``dataset.json``, channels present, duplicate or unsafe case ids, labels without
images, ``numTraining``; also for the optional ``imagesTs``), then the content of each complete training case (readable, 3D, same geometry
across channels and label, finite, not all zero, label values declared, label not empty). Cases are
read one file at a time, ``workers`` cases in parallel, so memory stays bounded by the largest volume.

NIfTI voxel data is read with nibabel, not SimpleITK: SimpleITK 2.5 silently turns NaN/inf into 0 and
reads a truncated ``.nii.gz`` without error (the missing part comes back as zeros), so it would hide
exactly what this check is for. Geometry comes from SimpleITK's header reader, as everywhere else.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

from autoseg.dataset import CaseFiles, DatasetInfo, check_case_id
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, off_grid, read_image
from autoseg.parallel import thread_map

# image formats SimpleITK reads that a dataset might mix up with its declared ``file_ending``
_IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_FIX_EMPTY = "remove the case or relabel it"


def _ending(name: str) -> str | None:
    return next((e for e in _IMAGE_ENDINGS if name.endswith(e)), None)


def _scan(folder: Path, ending: str, problems: ProblemList) -> dict[str, Path]:
    """Image files in ``folder`` with the dataset's ending, by stem; wrong endings and duplicates go to problems."""
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}
    found: dict[str, Path] = {}
    for name, path in files.items():
        own = _ending(name)
        if own is None or own == ending:
            if name.endswith(ending):
                found[name[: -len(ending)]] = path
            continue
        stem = name[: -len(own)]
        if stem + ending in files:
            problems.add(path, f"duplicate of {stem + ending} (same case and channel, two files)", "delete one of them")
        else:
            problems.add(path, f"file ending {own} differs from dataset.json's file_ending {ending}",
                         f"convert it to {ending}, or change file_ending")
    return found


def _channels_by_case(img_dir: Path, info: DatasetInfo, problems: ProblemList) -> dict[str, set[int]]:
    """Channel indices found per case id in ``img_dir``; misnamed files and undeclared channels go to problems."""
    channel_re = re.compile(r"^(.+)_(\d{4})$")
    channels: dict[str, set[int]] = defaultdict(set)
    for stem, path in _scan(img_dir, info.file_ending, problems).items():
        m = channel_re.match(stem)
        if not m:
            problems.add(path, f"not named CASE_XXXX{info.file_ending} (XXXX = 4-digit channel index)",
                         "rename or move it out")
        elif int(m.group(2)) >= info.num_channels:
            problems.add(path, f"channel {int(m.group(2))} is not declared (dataset.json has {info.num_channels} "
                         f"channel(s), 0-{info.num_channels - 1})", "remove the file or add the channel to channel_names")
        else:
            channels[m.group(1)].add(int(m.group(2)))
    return channels


def _check_case_collisions(img_dir: Path, case_ids: set[str], problems: ProblemList) -> None:
    by_lower: dict[str, list[str]] = defaultdict(list)
    for cid in sorted(case_ids):
        by_lower[cid.lower()].append(cid)
    for same in by_lower.values():
        if len(same) > 1:
            problems.add(img_dir, f"case ids {' and '.join(same)} differ only in upper/lower case "
                         "(they collide on case-insensitive file systems)", "rename one of them")


def _training_cases(raw_dir: Path, info: DatasetInfo, problems: ProblemList) -> list[CaseFiles]:
    """Name-level checks of imagesTr/labelsTr; returns the cases whose files are all present."""
    img_dir, lab_dir, ending = raw_dir / "imagesTr", raw_dir / "labelsTr", info.file_ending
    if not img_dir.is_dir():
        problems.add(img_dir, "folder not found", f"put the training images there (CASE_0000{ending}, ...)")
        return []
    channels = _channels_by_case(img_dir, info, problems)
    labels = _scan(lab_dir, ending, problems) if lab_dir.is_dir() else {}
    if not lab_dir.is_dir():
        problems.add(lab_dir, "folder not found", f"put the training labels there (CASE{ending})")
    _check_case_collisions(img_dir, set(channels) | set(labels), problems)
    cases = []
    for cid in sorted(channels):
        try:
            check_case_id(cid, img_dir)
        except AutosegError as e:
            problems.items.append(str(e))
            continue
        images = tuple(img_dir / f"{cid}_{c:04d}{ending}" for c in range(info.num_channels))
        for c, path in enumerate(images):
            if c not in channels[cid]:
                problems.add(path, f"channel {c} ({info.channel_names[str(c)]}) missing", "add it, or remove the case")
        if cid not in labels:
            problems.add(lab_dir / f"{cid}{ending}", "label file missing",
                         "add it, or move the case's images to imagesTs")
        elif len(channels[cid]) == info.num_channels:
            cases.append(CaseFiles(cid, images, labels[cid]))
    for cid, path in sorted(labels.items()):
        if cid not in channels:
            problems.add(path, "label file without images", f"add {cid}_0000{ending} ... to imagesTr, or remove it")
    if info.num_training != len(channels):
        problems.add(raw_dir / "dataset.json", f"numTraining is {info.num_training} but imagesTr holds "
                     f"{len(channels)} case(s)", f"set numTraining to {len(channels)}")
    return cases


def _check_test_names(img_dir: Path, info: DatasetInfo, problems: ProblemList) -> None:
    """imagesTs (optional, unlabelled): file names, channels complete, case ids safe and distinct."""
    if not img_dir.is_dir():
        return
    channels = _channels_by_case(img_dir, info, problems)
    _check_case_collisions(img_dir, set(channels), problems)
    for cid, found in sorted(channels.items()):
        try:
            check_case_id(cid, img_dir)
        except AutosegError as e:
            problems.items.append(str(e))
            continue
        for c in sorted(set(range(info.num_channels)) - found):
            problems.add(img_dir / f"{cid}_{c:04d}{info.file_ending}", f"channel {c} ({info.channel_names[str(c)]}) "
                         "missing", "add it, or remove the case")


def _check_image(path: Path, array: np.ndarray, problems: ProblemList) -> None:
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            problems.add(path, f"{bad} voxel(s) are NaN or infinite", "replace them (e.g. with 0) and save the file again")
    if not array.any():
        problems.add(path, "image is all zero", "re-export the image, or remove the case")


def _check_label(path: Path, array: np.ndarray, allowed: list[int], problems: ProblemList) -> None:
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            problems.add(path, "label holds NaN or infinite values", "save labels as integers")
            return
        if not np.array_equal(array, np.round(array)):
            problems.add(path, "label holds non-integer values", "save labels as integers")
            return
    undeclared = array[~np.isin(array, allowed)]  # usually empty: cheap, unlike np.unique of the whole volume
    if undeclared.size:
        values = [int(v) for v in np.unique(undeclared)]
        problems.add(path, f"label value(s) {values} are not declared in dataset.json (declared: {allowed})",
                     "relabel the case, or declare the values in dataset.json labels")
    elif not array.any():
        problems.add(path, "label is empty (no foreground voxel)", _FIX_EMPTY)


def check_case(case: CaseFiles, info: DatasetInfo) -> list[str]:
    """Content checks of one training case, reading one file at a time; returns its problems."""
    problems = ProblemList()
    ref: tuple[Path, Geometry] | None = None
    for path in (*case.images, case.label):
        try:
            array, geometry = read_image(path, allow_nonfinite=True)  # NaN/inf are reported below
        except AutosegError as e:
            problems.items.append(str(e))
            continue
        if ref is None:
            ref = (path, geometry)
        elif (error := off_grid(path, geometry, *ref)) is not None:
            problems.items.append(str(error))
        if path == case.label:
            _check_label(path, array, info.label_values, problems)
        else:
            _check_image(path, array, problems)
        del array
    return problems.items


def verify_dataset(raw_dir: Path, workers: int = 2) -> None:
    """Check a raw dataset; raise one AutosegError listing every problem (one line each), or return None."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise fail(raw_dir, "raw dataset folder not found", "run autoseg-convert, or create it in the nnU-Net v2 layout")
    info = DatasetInfo.load(raw_dir / "dataset.json")  # its own one-line error: nothing else can be checked
    problems = ProblemList()
    cases = _training_cases(raw_dir, info, problems)
    _check_test_names(raw_dir / "imagesTs", info, problems)
    for found in thread_map(partial(check_case, info=info), cases, workers, "verify"):
        problems.items.extend(found)
    problems.raise_if_any(f"dataset check of {raw_dir}")
