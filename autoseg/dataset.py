"""The raw dataset (nnU-Net v2 layout): ``dataset.json``, ``imagesTr/CASE_XXXX.nii.gz``, ``labelsTr/CASE.nii.gz``.

:class:`DatasetInfo` is the typed view of ``dataset.json``; :func:`list_cases` pairs image and label
files. Labels or regions: a label whose value is a list declares a region (sigmoid output, BraTS);
otherwise labels are mutually exclusive classes (softmax output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import AutosegError, fail
from autoseg.io import read_json, write_json_atomic

SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
# what macOS (Finder, zip archives) and Windows (Explorer) leave in folders of images; "._*" is below
OS_LITTER = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", ".spotlight-v100",
                       ".trashes", ".fseventsd"})


def is_os_litter(name: str) -> bool:
    """Whether a file or folder name is one other operating systems leave beside images: macOS ``.DS_Store``,
    ``._CASE_0000.nii.gz`` (AppleDouble metadata, named like the image it describes) and ``__MACOSX``, Windows
    ``Thumbs.db`` and ``desktop.ini``. They are never data, so every reader of a folder of cases skips them."""
    return name.startswith("._") or name.lower() in OS_LITTER


@dataclass(frozen=True)
class DatasetInfo:
    """Typed ``dataset.json``. Unknown keys are kept in ``extra`` and written back unchanged."""

    channel_names: dict[str, str]
    labels: dict[str, int | list[int]]
    file_ending: str
    num_training: int
    regions_class_order: list[int] | None = None
    name: str = ""
    label_convention: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- loading / saving -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> DatasetInfo:
        """Read and validate ``dataset.json``; each problem is reported with the file and the fix."""
        path = Path(path)
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "dataset.json") -> DatasetInfo:
        """Validate a ``dataset.json`` dict (e.g. the copy stored in a checkpoint); ``path`` names it in errors."""
        path = Path(path)
        if not isinstance(d, dict):
            raise fail(path, "must hold a JSON object", "see docs/formats.md for the dataset.json fields")
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in d]
        if "channel_names" not in d and "modality" in d:
            raise fail(path, "uses the nnU-Net v1 key 'modality'", "rename it to 'channel_names'")
        if missing:
            raise fail(path, f"missing field(s) {', '.join(missing)}", "add them (see docs/formats.md)")
        cn, labels = d["channel_names"], d["labels"]
        if not isinstance(cn, dict) or not cn or sorted(cn, key=int) != [str(i) for i in range(len(cn))]:
            raise fail(path, "'channel_names' must map '0', '1', ... to channel names", "e.g. {\"0\": \"T1\", \"1\": \"FLAIR\"}")
        if not isinstance(labels, dict):
            raise fail(path, "'labels' must be an object of name: value", "e.g. {\"background\": 0, \"tumour\": 1}")
        _check_label_values(labels, path)
        if labels.get("background") != 0:
            raise fail(path, "'labels' must be an object with \"background\": 0", "add \"background\": 0 to labels")
        region_based = any(isinstance(v, list) for v in labels.values())
        rco = d.get("regions_class_order")
        if region_based and not rco:
            raise fail(path, "labels declare regions (list values) but 'regions_class_order' is missing",
                       "add regions_class_order: the label value painted for each region, in order")
        if rco is not None and (not isinstance(rco, list) or len(rco) != len(labels) - 1):
            raise fail(path, f"'regions_class_order' must list one value per non-background label ({len(labels) - 1})",
                       "give one label value per region")
        if rco is not None and (strings := [x for x in rco if isinstance(x, str)]):
            raise fail(path, f"'regions_class_order' holds label values written as strings ({_quoted(strings)})",
                       "write them as numbers, without quotes")
        fe = d["file_ending"]
        if not isinstance(fe, str) or not fe.startswith("."):
            raise fail(path, f"'file_ending' {fe!r} must start with a dot", "use \".nii.gz\"")
        num = d.get("numTraining", 0)
        if not isinstance(num, int) or num < 0:
            raise fail(path, f"'numTraining' {num!r} must be a non-negative integer", "set it to the number of training cases")
        known = {"channel_names", "labels", "file_ending", "numTraining", "regions_class_order", "name", "label_convention"}
        return cls(channel_names={str(k): str(v) for k, v in cn.items()}, labels=labels, file_ending=fe,
                   num_training=num, regions_class_order=rco, name=str(d.get("name", path.parent.name)),
                   label_convention=d.get("label_convention"), extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "channel_names": self.channel_names, "labels": self.labels,
                             "numTraining": self.num_training, "file_ending": self.file_ending}
        if self.regions_class_order is not None:
            d["regions_class_order"] = self.regions_class_order
        if self.label_convention:
            d["label_convention"] = self.label_convention
        d.update(self.extra)
        return d

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    # ---- labels and regions -----------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def is_2d(self) -> bool:
        """Whether the cases are 2D images, one slice each (``autoseg_2d``, written by autoseg-convert slices):
        only the 2d configuration is planned for them."""
        return bool(self.extra.get("autoseg_2d"))

    @property
    def region_based(self) -> bool:
        return any(isinstance(v, list) for v in self.labels.values())

    @property
    def foreground_names(self) -> list[str]:
        """Names of the network's foreground outputs, in output order."""
        return [k for k in self.labels if k != "background"]

    @property
    def regions(self) -> list[tuple[int, ...]]:
        """Per foreground output, the label values it covers (a single value for plain labels)."""
        return [tuple(v) if isinstance(v, list) else (v,) for k, v in self.labels.items() if k != "background"]

    @property
    def label_values(self) -> list[int]:
        """Every label value that may appear in a label file (background included), sorted."""
        vals = {0}
        for v in self.labels.values():
            vals.update(v if isinstance(v, list) else [v])
        return sorted(vals)

    @property
    def num_outputs(self) -> int:
        """Network output channels: one per region (sigmoid), or background + classes (softmax)."""
        return len(self.regions) if self.region_based else len(self.labels)

    def targets_from_label(self, seg: np.ndarray) -> np.ndarray:
        """Training target for a label map: region masks (R, ...) uint8, or class indices (...) uint8."""
        if self.region_based:
            return np.stack([np.isin(seg, r) for r in self.regions]).astype(np.uint8)
        lut = np.zeros(max(self.label_values) + 1, dtype=np.uint8)
        for i, (_, v) in enumerate(self.labels.items()):
            lut[v] = i
        return lut[np.clip(seg, 0, None)]

    def label_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """Write back label values: regions (sigmoid probs > 0.5) painted in regions_class_order; else argmax.

        ``outputs`` are probabilities (C, ...) where C = num_outputs.
        """
        if self.region_based:
            seg = np.zeros(outputs.shape[1:], dtype=np.uint8)
            for prob, value in zip(outputs, self.regions_class_order or []):
                seg[prob > 0.5] = value
            return seg
        class_values = np.array([v for v in self.labels.values()], dtype=np.uint8)
        return class_values[np.argmax(outputs, axis=0)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _quoted(values: list[str]) -> str:
    shown = ", ".join(f'"{v}"' for v in values[:3])
    return shown + (", ..." if len(values) > 3 else "")


def _check_label_values(labels: dict[str, Any], path: Path) -> None:
    """Each label value is a non-negative integer or a non-empty list of them.

    Values written as strings (``"1"`` for 1, a common slip when dataset.json is written by hand or by a
    script that formats everything as text) are named as such: the generic message would send the user
    looking elsewhere (e.g. for a background entry that is there, only quoted).
    """
    strings = [str(x) for v in labels.values() for x in (v if isinstance(v, list) else [v]) if isinstance(x, str)]
    if strings:
        raise fail(path, f"label values are written as strings ({_quoted(strings)}), not numbers",
                   "remove the quotes around them, e.g. \"background\": 0, \"tumour\": 1")
    for k, v in labels.items():
        ok = (_is_int(v) and v >= 0) or (isinstance(v, list) and v and all(_is_int(x) and x >= 0 for x in v))
        if not ok:
            raise fail(path, f"label {k!r} has value {v!r}", "use a non-negative integer or a list of integers")


@dataclass(frozen=True)
class CaseFiles:
    """One case of the raw dataset: its channel files in order, and its label file if labelled."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def check_case_id(case_id: str, where: Path) -> None:
    """Refuse case ids that could escape a folder or break file names."""
    if not SAFE_CASE_ID.match(case_id) or ".." in case_id:
        raise fail(where, f"unsafe case id {case_id!r}",
                   "case ids may contain letters, digits, '_', '-' and '.', not path separators or '..'")


def list_cases(raw_dir: str | Path, info: DatasetInfo, subset: str = "Tr") -> dict[str, CaseFiles]:
    """Pair ``images{subset}/CASE_XXXX{ending}`` files by case id, with ``labels{subset}/CASE{ending}``.

    Missing channel files are not raised here (``verify`` reports them all); the expected path is kept.
    """
    raw_dir = Path(raw_dir)
    img_dir, lab_dir = raw_dir / f"images{subset}", raw_dir / f"labels{subset}"
    ending = info.file_ending
    if not img_dir.is_dir():
        if subset == "Tr":
            raise fail(img_dir, "folder not found", "put the training images there (CASE_0000.nii.gz, ...)")
        return {}
    pat = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    ids: set[str] = set()
    for p in img_dir.iterdir():
        m = None if is_os_litter(p.name) else pat.match(p.name)
        if m:
            ids.add(m.group(1))
    cases = {}
    for cid in sorted(ids):
        check_case_id(cid, img_dir)
        images = tuple(img_dir / f"{cid}_{c:04d}{ending}" for c in range(info.num_channels))
        label = lab_dir / f"{cid}{ending}"
        cases[cid] = CaseFiles(cid, images, label if (label.exists() or subset == "Tr") else None)
    return cases


def load_dataset(raw_dir: str | Path) -> tuple[DatasetInfo, dict[str, CaseFiles]]:
    """``dataset.json`` plus the training cases of a raw dataset folder."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise fail(raw_dir, "raw dataset folder not found", "run autoseg-convert, or create it in the nnU-Net v2 layout")
    info = DatasetInfo.load(raw_dir / "dataset.json")
    cases = list_cases(raw_dir, info, "Tr")
    if not cases:
        raise AutosegError(f"{raw_dir / 'imagesTr'}: no training images named CASE_0000{info.file_ending}; "
                           "check file names and 'file_ending' in dataset.json")
    return info, cases
