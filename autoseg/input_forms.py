"""Inputs in the forms they come in, and outputs in the same form: PNG/TIFF slices and DICOM series.

``autoseg-predict -i`` accepts, besides the raw layout and BraTS folders:

* a folder of patient folders of PNG/TIFF slices (``images/patient_001/001.png ...``) or of 2D images
  (``images/CASE.png``). They are read exactly as ``autoseg-convert slices`` read the training cases
  (natural order, the spacing and intercept recorded in ``dataset.json``), and the segmentation is written
  back in the same form: ``OUT/patient_001/001.png ...`` with the names and sizes of the input slices (a 2D
  image: ``OUT/CASE.png``), in the masks' grey values (``autoseg_mask_values``: 0/255 when the masks were).
* DICOM series: a folder of series folders (one per case), one series folder, or a mapping file
  ``{case: {channel: folder}}``, read as ``autoseg-convert dicom`` reads them (slices ordered by position,
  values in HU). The segmentation is NIfTI in the series' own geometry (origin at the first slice's
  position, its orientation and spacing), so it overlays the scanner's images.

:func:`slice_masks_as_nifti` turns folders of PNG/TIFF masks into label NIfTI, so that ``autoseg-evaluate``
scores PNG predictions against PNG masks.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.dataset import DatasetInfo, is_os_litter
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, atomic_path, keeps_locale, write_image
from autoseg.slices import (SliceCase, find_image_slices, grey_from_labels, inspect_case, is_slice_file,
                            labels_from_grey, natural_key, read_mask, read_slice_images)



@dataclass(frozen=True)
class InputCase:
    """One case to predict: its channel files in order and, for BraTS-named inputs, their convention.

    Defined here, below the predictor, because the input forms (slices, DICOM series) make them too."""

    case_id: str
    channels: tuple[Path, ...]
    convention: str | None = None
    form: Any = None   # PNG/TIFF slices or DICOM series: ``channels`` are then its files


def _first_error(problems: Sequence[str], what: str) -> AutosegError:
    more = f" (and {len(problems) - 1} more problem(s) in this {what})" if len(problems) > 1 else ""
    return AutosegError(problems[0] + more)


def _zero_missing(images: list[np.ndarray], missing: Sequence[int]) -> list[np.ndarray]:
    return [np.zeros_like(im, dtype=np.float32) if c in missing else im.astype(np.float32, copy=False)
            for c, im in enumerate(images)]


# ---- PNG/TIFF slices ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SliceInput:
    """A patient folder of slices (or one 2D image) read and written back as the dataset's conversion did."""

    case_id: str
    files: tuple[Path, ...]
    two_d: bool
    spacing_zyx: tuple[float, ...]
    intercept: float
    mask_values: tuple[int, ...] | None
    num_channels: int
    writes_output = True

    def read(self, missing: Sequence[int] = ()) -> tuple[list[np.ndarray], Geometry]:
        """The channels as float32 (z, y, x) volumes in the converted cases' geometry; a bad slice is one line."""
        seen = inspect_case(SliceCase(self.case_id, self.files, None), self.two_d)
        if seen.problems:
            raise _first_error(seen.problems, "case")
        images, geometry = read_slice_images(self.files, self.two_d, self.spacing_zyx, self.intercept)
        if len(images) != self.num_channels:
            raise fail(self.files[0], f"has {len(images)} channel(s), the model reads {self.num_channels}",
                       "give images like those it was trained on (grey or RGB)")
        return _zero_missing(images, missing), geometry

    def output_files(self, out_dir: Path) -> list[Path]:
        """Where the mask slices go: ``OUT/CASE.png`` for a 2D image, else ``OUT/PATIENT/<slice name>``."""
        folder = out_dir if self.two_d else out_dir / self.case_id
        return [folder / f.name for f in self.files]

    def done(self, out_dir: Path) -> bool:
        return all(p.is_file() for p in self.output_files(out_dir))

    def write(self, seg: np.ndarray, out_dir: Path) -> None:
        """One mask file per input slice, same name and size, in the masks' grey values (labels as they are
        when the dataset did not come from masks)."""
        grey = (grey_from_labels(seg, self.mask_values) if self.mask_values
                else seg.astype(np.uint8 if seg.max(initial=0) <= 255 else np.uint16))
        for z, path in enumerate(self.output_files(out_dir)):
            write_slice(path, grey[z])


def write_slice(path: Path, pixels: np.ndarray) -> None:
    """A 2D grey image as PNG/TIFF (by ``path``'s extension), written atomically."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(pixels)), str(tmp))


def _holds_slices(folder: Path) -> bool:
    """Whether ``folder`` holds PNG/TIFF images, directly or in its sub-folders."""
    for p in folder.iterdir():
        if is_slice_file(p) or (p.is_dir() and not is_os_litter(p.name)
                                and any(is_slice_file(q) for q in p.iterdir())):
            return True
    return False


def slice_input_cases(folder: Path, info: DatasetInfo) -> list[InputCase]:
    """The cases of a folder of patient folders or of 2D images, read with the dataset's recorded reading."""
    problems = ProblemList()
    cases, two_d = find_image_slices(folder, problems)
    problems.raise_if_any(f"cannot read the images in {folder}")
    if info.is_2d and not two_d:
        raise fail(folder, "holds patient folders of slices, but the model was trained on 2D images",
                   "give a folder of single images (CASE.png)")
    spacing = tuple(float(s) for s in info.extra.get("autoseg_slice_spacing") or (1.0, 1.0, 1.0))
    intercept = float(info.extra.get("autoseg_intercept") or 0.0)
    values = info.extra.get("autoseg_mask_values")
    mask_values = tuple(int(v) for v in values) if isinstance(values, list) and len(values) > 1 else None
    return [InputCase(c.case_id, c.images, form=SliceInput(c.case_id, c.images, two_d, spacing, intercept,
                                                            mask_values, info.num_channels))
            for c in cases]


# ---- DICOM series ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DicomInput:
    """The series of one case (one per channel), read as ``autoseg-convert dicom`` reads them."""

    folders: tuple[Path, ...]
    num_channels: int
    writes_output = False   # NIfTI in the series' geometry, as for any other input

    @keeps_locale
    def read(self, missing: Sequence[int] = ()) -> tuple[list[np.ndarray], Geometry]:
        from autoseg.dicom import read_series, scan_series

        if len(self.folders) != self.num_channels:
            raise fail(self.folders[0], f"one series for this case, but the model reads {self.num_channels} channels",
                       'give a mapping file {"CASE": {"CHANNEL": "series folder", ...}} with -i')
        problems = ProblemList()
        series = [scan_series(f, problems) for f in self.folders]
        for s in series[1:]:
            if s is not None and series[0] is not None and (differs := series[0].geometry.mismatch(s.geometry)):
                problems.add(s.folder, f"{differs} of {series[0].folder}", "the channels of a case must share one grid")
        if problems.items:
            raise _first_error(problems.items, "case")
        volumes = [read_series(s) for s in series if s is not None]
        return _zero_missing([v for v, _ in volumes], missing), volumes[0][1]


def is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not is_os_litter(p.name))


def _series_files(folder: Path) -> tuple[Path, ...]:
    return tuple(p for p in _visible(folder) if p.is_file())


def dicom_input_cases(src: Path, info: DatasetInfo) -> list[InputCase] | None:
    """Cases of a mapping file, of one series folder, or of a folder of series folders; None if ``src`` is none."""
    from autoseg.dicom import read_mapping

    def case(case_id: str, folders: tuple[Path, ...]) -> InputCase:
        files = tuple(f for folder in folders if folder.is_dir() for f in _series_files(folder)) or folders
        return InputCase(case_id, files, form=DicomInput(folders, info.num_channels))

    if src.is_file():
        if src.suffix.lower() != ".json":
            return None
        mapping, names = read_mapping(src)
        if len(names) != info.num_channels:
            raise fail(src, f"lists {len(names)} channel(s) per case, the model reads {info.num_channels} "
                       f"({', '.join(info.channel_names.values())})", "list one series folder per channel")
        return [case(cid, folders) for cid, folders in mapping.items()]
    entries = _visible(src)
    if any(p.is_file() and is_dicom_file(p) for p in entries):   # the folder is one series
        return [case(src.name, (src,))]
    folders = [p for p in entries if p.is_dir() and any(is_dicom_file(f) for f in _series_files(p)[:3])]
    return [case(p.name, (p,)) for p in folders] or None


def form_input_cases(src: str | Path, info: DatasetInfo) -> list[InputCase] | None:
    """The cases of ``src`` when it holds PNG/TIFF slices or DICOM series, else None (the other layouts)."""
    src = Path(src)
    if src.is_dir() and _holds_slices(src):
        return slice_input_cases(src, info)
    if src.exists():
        return dicom_input_cases(src, info)
    return None


# ---- evaluating PNG masks -------------------------------------------------------------------------------------

def _mask_cases(folder: Path) -> dict[str, list[Path]]:
    """Masks by case: each sub-folder's slices (natural order), or each 2D image; other files are ignored
    (a prediction folder also holds summary.json, probabilities, ...)."""
    cases: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if p.name.startswith(".") or is_os_litter(p.name):
            continue
        if p.is_dir():
            slices = sorted((q for q in p.iterdir() if is_slice_file(q) and not q.name.startswith(".")),
                            key=lambda q: natural_key(q.name))
            if slices:
                cases[p.name] = slices
        elif is_slice_file(p):
            cases[p.stem] = [p]
    return cases


def slice_masks_as_nifti(folder: Path, info: DatasetInfo, out_dir: Path) -> Path:
    """Write each case's masks in ``folder`` as a label map ``out_dir/CASE.nii.gz`` (grey values -> labels
    by ``autoseg_mask_values``, the dataset's spacing); returns ``out_dir``."""
    values = info.extra.get("autoseg_mask_values")
    spacing = [float(s) for s in info.extra.get("autoseg_slice_spacing") or (1.0, 1.0, 1.0)]
    for case_id, files in _mask_cases(folder).items():
        grey = np.stack([read_mask(p) for p in files])
        try:
            label = labels_from_grey(grey, values) if isinstance(values, list) and len(values) > 1 else grey
        except AutosegError as e:
            raise fail(files[0].parent if len(files) > 1 else files[0], str(e),
                       "compare masks made with the dataset's grey values") from None
        z, y, x = label.shape
        geometry = Geometry((x, y, z), tuple(reversed(spacing)), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        write_image(out_dir / f"{case_id}.nii.gz", label.astype(np.uint8 if label.max(initial=0) <= 255 else
                                                                np.int16), geometry)
    return out_dir


def holds_slice_masks(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and bool(_mask_cases(folder))


@contextlib.contextmanager
def nifti_for_evaluation(pred: str | Path, ref: str | Path, info: DatasetInfo) -> Iterator[tuple[Path, Path]]:
    """(pred, ref) as folders of label NIfTI: PNG/TIFF mask folders are converted into a temporary folder
    for the evaluation's duration; NIfTI folders pass through unchanged."""
    pred, ref = Path(pred), Path(ref)
    if not holds_slice_masks(ref):
        yield pred, ref
        return
    with tempfile.TemporaryDirectory(prefix="autoseg-eval-") as tmp:
        yield (slice_masks_as_nifti(pred, info, Path(tmp) / "pred"),
               slice_masks_as_nifti(ref, info, Path(tmp) / "ref"))
