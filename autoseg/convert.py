"""BraTS release folders -> a raw dataset in the nnU-Net v2 layout.

Accepts BraTS 2019-2021 folders (``CASE/CASE_t1.nii.gz``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``) and
BraTS 2023+ folders (``CASE/CASE-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``), given directly under
SRC or one level of sub-folders down (e.g. ``SRC/training/CASE/``). Labelled cases go to ``imagesTr`` +
``labelsTr``, unlabelled ones to ``imagesTs``; channels are written in the order T1, T1ce, T2, FLAIR.

Files are copied byte for byte (``.nii`` is gzipped, not re-encoded), so nothing is resampled or recast;
labels keep their original values and ``dataset.json`` declares the three regions for that convention.

Mixed conventions: unlabelled cases may use either naming (their images are the same four channels).
Labelled cases must all use one label convention (enhancing tumour is 4 in 2019-2021 and 3 in 2023+),
otherwise the conversion stops before writing anything and names one case of each.
"""

from __future__ import annotations

import gzip
import shutil
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

from autoseg import brats
from autoseg.brats import BratsCase
from autoseg.dataset import check_case_id, is_os_litter
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import atomic_path, write_json_atomic
from autoseg.parallel import thread_map
from autoseg.paths import DatasetPaths
from autoseg.raw_writer import target_dataset

_FIX_CONVENTION = ("convert each convention into its own dataset (another -d), or relabel one set so that "
                   "enhancing tumour has one value")


def _has_nifti(folder: Path) -> bool:
    return any(p.name.endswith((".nii", ".nii.gz")) and not is_os_litter(p.name) and p.is_file()
               for p in folder.iterdir())


def _subfolders(folder: Path) -> list[Path]:
    """Sub-folders that may hold cases: not hidden, not ``__MACOSX`` (a zip archive's metadata from macOS)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and not is_os_litter(p.name))


def find_case_folders(src: Path, problems: ProblemList) -> list[BratsCase]:
    """BraTS cases in ``src`` itself, its sub-folders, or their sub-folders (one level of grouping).

    Folders that hold NIfTI files but are not named like a BraTS case are added to ``problems``.
    """
    own = brats.find_brats_case(src)
    if own is not None:
        return [own]
    cases: list[BratsCase] = []
    for child in _subfolders(src):
        case = brats.find_brats_case(child)
        if case is not None:
            cases.append(case)
            continue
        found = [brats.find_brats_case(g) for g in _subfolders(child)]
        cases.extend(c for c in found if c is not None)
        unknown = [child] if _has_nifti(child) else []
        unknown += [g for g, c in zip(_subfolders(child), found) if c is None and _has_nifti(g)]
        for folder in unknown:
            problems.add(folder, "holds NIfTI files but is not named like a BraTS case folder",
                         f"name the folder after the case and its files {folder.name}_t1.nii.gz ... "
                         f"(2019-2021) or {folder.name}-t1n.nii.gz ... (2023+)")
    return cases


def check_cases(src: Path, cases: list[BratsCase], problems: ProblemList) -> None:
    """Missing channels, unsafe or colliding case ids, and mixed label conventions, all added to ``problems``."""
    by_key: dict[str, list[BratsCase]] = defaultdict(list)
    for case in cases:
        by_key[case.case_id.lower()].append(case)
        try:
            check_case_id(case.case_id, case.channels[0].parent)
        except AutosegError as e:
            problems.items.append(str(e))
        for path in brats.missing_channels(case):
            problems.add(path, "channel file missing", "add it, or remove the case folder from SRC")
    for same in by_key.values():
        if len(same) > 1:
            folders = " and ".join(str(c.channels[0].parent) for c in same)
            problems.add(src, f"case id {same[0].case_id!r} occurs more than once ({folders}; ids are compared "
                         "ignoring case)", "keep one of them")
    labelled: dict[str, BratsCase] = {}
    for case in cases:
        if case.label is not None:
            labelled.setdefault(case.convention, case)
    if len(labelled) > 1:
        a, b = labelled.values()
        problems.add(src, f"labelled cases use two label conventions: {a.case_id} ({a.convention}, enhancing "
                     f"{brats.ENHANCING[a.convention]}) and {b.case_id} ({b.convention}, enhancing "
                     f"{brats.ENHANCING[b.convention]})", _FIX_CONVENTION)


def _choose_convention(cases: list[BratsCase], existing: str | None) -> str:
    """The labelled cases' convention; else the dataset's current one; else the most common naming."""
    labelled = {c.convention for c in cases if c.label is not None}
    if labelled:
        return labelled.pop()
    if existing:
        return existing
    return Counter(c.convention for c in cases).most_common(1)[0][0]


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def copy_nifti(src: Path, dst: Path) -> None:
    """Place ``src`` at ``dst`` (a ``.nii.gz`` path) atomically: copied as is if gzipped, else gzipped.

    Some releases hold uncompressed files named ``.nii.gz``; gzipping them keeps the name honest.
    """
    with atomic_path(dst) as tmp:
        if _is_gzip(src):
            shutil.copyfile(src, tmp)
        else:
            with open(src, "rb") as f, gzip.open(tmp, "wb", compresslevel=6) as g:
                shutil.copyfileobj(f, g, length=1 << 20)


def case_targets(case: BratsCase, raw: Path) -> list[tuple[Path, Path]]:
    """(source, destination) pairs of one case in the raw layout."""
    subset = "Tr" if case.label is not None else "Ts"
    pairs = [(src, raw / f"images{subset}" / f"{case.case_id}_{c:04d}.nii.gz") for c, src in enumerate(case.channels)]
    if case.label is not None:
        pairs.append((case.label, raw / "labelsTr" / f"{case.case_id}.nii.gz"))
    return pairs


def convert_case(case: BratsCase, raw: Path) -> int:
    """Copy one case's files that are not there yet; returns how many were written."""
    written = 0
    for src, dst in case_targets(case, raw):
        if not dst.exists():
            copy_nifti(src, dst)
            written += 1
    return written


def convert_brats(src: Path, root: Path, dataset_id: int, name: str, workers: int = 2) -> DatasetPaths:
    """Convert BraTS case folders under ``src`` into ``root/raw/DatasetNNN_name``; returns its paths.

    Every input problem is reported at once, before anything is written. A rerun skips files that are
    already in place (each is written atomically), and ``dataset.json`` is rewritten last with the number
    of labelled cases found in ``labelsTr``.
    """
    src, root = Path(src), Path(root)
    if not src.is_dir():
        raise fail(src, "folder not found", "give the folder that holds the BraTS case folders")
    paths, dataset_json = target_dataset(root, dataset_id, name)
    existing = dataset_json.get("label_convention") if dataset_json else None
    problems = ProblemList()
    cases = find_case_folders(src, problems)
    check_cases(src, cases, problems)
    if not cases and not problems:
        raise fail(src, "no BraTS case folders found here or one level down",
                   "point SRC at the folder holding CASE/CASE_t1.nii.gz ... or CASE/CASE-t1n.nii.gz ...")
    convention = _choose_convention(cases, existing)
    if existing and existing != convention:
        problems.add(paths.dataset_json, f"the dataset already holds {existing} labels, the new cases are {convention}",
                     _FIX_CONVENTION)
    problems.raise_if_any(f"cannot convert {src}")
    thread_map(partial(convert_case, raw=paths.raw), cases, workers, "convert")
    num_training = sum(1 for p in (paths.raw / "labelsTr").glob("*.nii.gz")) if (paths.raw / "labelsTr").is_dir() else 0
    write_json_atomic(paths.dataset_json, brats.dataset_json_for(convention, num_training, name))
    return paths
