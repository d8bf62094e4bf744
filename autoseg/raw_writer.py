"""Writing converted cases into the raw layout (nnU-Net v2): what every converter that builds volumes shares.

A case is written file by file, each atomically, channels first and the label last; a rerun writes only the
files that are missing and does not read the case's input when nothing is. ``dataset.json`` is written last by
the caller, with the number of labelled cases found in ``labelsTr``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.dataset import check_case_id
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, read_json, write_image
from autoseg.paths import DatasetPaths, dataset_folder_name

ENDING = ".nii.gz"


@dataclass(frozen=True)
class CaseVolumes:
    """One case in memory: channel volumes (z, y, x) on one grid, and its label (same shape) if labelled."""

    channels: list[np.ndarray]
    label: np.ndarray | None
    geometry: Geometry


def target_dataset(root: Path, dataset_id: int, name: str) -> tuple[DatasetPaths, dict[str, Any] | None]:
    """The dataset's paths and its current ``dataset.json`` (None for a new one); an id used under another name is
    refused."""
    paths = DatasetPaths(root, dataset_folder_name(dataset_id, name))
    raw_parent = paths.raw.parent
    if raw_parent.is_dir():
        others = sorted(p.name for p in raw_parent.glob(f"Dataset{dataset_id:03d}_*") if p.name != paths.name)
        if others:
            raise fail(raw_parent / others[0], f"dataset id {dataset_id} is already used by this dataset",
                       f"choose another -d, or --name {others[0][11:]} to add cases to it")
    existing = read_json(paths.dataset_json) if paths.dataset_json.is_file() else None
    return paths, existing if isinstance(existing, dict) else None


def check_case_ids(sources: Mapping[str, Path], problems: ProblemList) -> None:
    """Unsafe case ids, and ids that differ only in letter case (one file name on macOS and Windows)."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for case_id, source in sources.items():
        try:
            check_case_id(case_id, source)
        except AutosegError as e:
            problems.items.append(str(e))
        by_key[case_id.lower()].append(case_id)
    for same in by_key.values():
        if len(same) > 1:
            shown = " and ".join(str(sources[c]) for c in same)
            problems.add(sources[same[0]], f"case id {same[0]!r} occurs more than once ({shown}; ids are compared "
                         "ignoring case)", "rename or remove one of them")


def check_same_channels(existing: Mapping[str, Any] | None, channel_names: Mapping[str, str], where: Path,
                        problems: ProblemList) -> None:
    """Cases added to an existing dataset must bring the same channels, in the same order."""
    if existing is not None and existing.get("channel_names") != dict(channel_names):
        problems.add(where, f"the dataset's channels are {existing.get('channel_names')}, the new cases have "
                     f"{dict(channel_names)}", "convert them into another dataset (another -d)")


def targets(raw: Path, case_id: str, num_channels: int, labelled: bool) -> list[Path]:
    """The files of one case: ``images{Tr,Ts}/CASE_XXXX.nii.gz`` per channel, then ``labelsTr/CASE.nii.gz``."""
    subset = "Tr" if labelled else "Ts"
    paths = [raw / f"images{subset}" / f"{case_id}_{c:04d}{ENDING}" for c in range(num_channels)]
    return paths + ([raw / "labelsTr" / f"{case_id}{ENDING}"] if labelled else [])


def write_case(raw: Path, case_id: str, num_channels: int, labelled: bool, load: Callable[[], CaseVolumes]) -> int:
    """Write the case's missing files; ``load`` reads its input only when one is missing. Returns files written."""
    paths = targets(raw, case_id, num_channels, labelled)
    missing = [p for p in paths if not p.exists()]
    if not missing:
        return 0
    case = load()
    arrays = list(case.channels)
    if labelled:
        if case.label is None:
            raise AutosegError(f"{paths[-1]}: internal error: a labelled case was read without its label")
        arrays.append(case.label)
    for path, array in zip(paths, arrays, strict=True):
        if path in missing:
            write_image(path, array, case.geometry)
    return len(missing)


def count_training(raw: Path) -> int:
    """Labelled cases present: the ``numTraining`` of ``dataset.json``."""
    folder = raw / "labelsTr"
    return sum(1 for p in folder.glob(f"*{ENDING}") if not p.name.startswith(".")) if folder.is_dir() else 0
