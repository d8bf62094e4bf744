"""BraTS naming and label conventions, shared by conversion, prediction and evaluation.

BraTS 2019-2021: ``CASE_t1 / _t1ce / _t2 / _flair / _seg``, labels 1 necrotic core, 2 oedema, 4 enhancing.
BraTS 2023+:     ``CASE-t1n / -t1c / -t2w / -t2f / -seg``, labels 1 necrotic core, 2 oedema, 3 enhancing.
Regions: whole tumour = all tumour labels, tumour core = necrosis + enhancing, enhancing tumour.
Labels stay in their original values in the raw dataset; regions are declared the nnU-Net v2 way
(a label's value may be a list) with ``regions_class_order`` = [2, 1, ET] so that painting
regions in that order writes back the original label values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHANNEL_NAMES = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}

# convention -> suffixes in channel order (T1, T1ce, T2, FLAIR), label suffix, separator
_SUFFIXES = {
    "brats2020": (("t1", "t1ce", "t2", "flair"), "seg", "_"),
    "brats2023": (("t1n", "t1c", "t2w", "t2f"), "seg", "-"),
}
ENHANCING = {"brats2020": 4, "brats2023": 3}


@dataclass(frozen=True)
class BratsCase:
    """One BraTS case folder: its id, four channel files in autoseg's channel order, and its label if any."""

    case_id: str
    channels: tuple[Path, Path, Path, Path]
    label: Path | None
    convention: str


def _file(folder: Path, case_id: str, sep: str, suffix: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        p = folder / f"{case_id}{sep}{suffix}{ext}"
        if p.is_file():
            return p
    return None


def find_brats_case(folder: str | Path) -> BratsCase | None:
    """Recognise a BraTS case folder of either naming convention; None if it is not one.

    The case id is the folder name; a folder with only some channels still matches so that the
    caller can report exactly which channel is missing (``channels`` then holds the expected paths).
    """
    folder = Path(folder)
    case_id = folder.name
    for convention, (suffixes, seg, sep) in _SUFFIXES.items():
        found = [_file(folder, case_id, sep, s) for s in suffixes]
        if any(found):
            channels = tuple(f if f else folder / f"{case_id}{sep}{s}.nii.gz" for f, s in zip(found, suffixes))
            return BratsCase(case_id, channels, _file(folder, case_id, sep, seg), convention)  # type: ignore[arg-type]
    return None


def missing_channels(case: BratsCase) -> list[Path]:
    return [p for p in case.channels if not p.is_file()]


def labels_for(convention: str) -> dict[str, int | list[int]]:
    """``dataset.json`` labels for a convention: background plus the three regions."""
    et = ENHANCING[convention]
    return {"background": 0, "whole tumour": [1, 2, et], "tumour core": [1, et], "enhancing tumour": et}


def regions_class_order_for(convention: str) -> list[int]:
    """Paint order that turns region masks back into original labels: oedema, then necrosis, then ET."""
    return [2, 1, ENHANCING[convention]]


def dataset_json_for(convention: str, num_training: int, name: str) -> dict:
    """A complete nnU-Net-v2-compatible, region-based ``dataset.json`` for BraTS."""
    return {
        "name": name,
        "description": f"BraTS brain-tumour MRI converted by autoseg ({convention} labels)",
        "channel_names": dict(CHANNEL_NAMES),
        "labels": labels_for(convention),
        "regions_class_order": regions_class_order_for(convention),
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "label_convention": convention,
    }
