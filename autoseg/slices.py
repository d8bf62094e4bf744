"""PNG/TIFF slices -> a raw dataset: one volume per patient folder, or one single-slice volume per 2D image.

Accepted layouts (``images`` and ``masks`` are the default folder names)::

    SRC/images/patient_001/001.png 002.png ...   SRC/masks/patient_001/001.png ...   slices of 3D volumes
    SRC/images/CASE.png ...                      SRC/masks/CASE.png ...              2D images

Slices are stacked in the natural order of their file names (``2.png`` before ``10.png``); a mask slice belongs
to the image slice with the same name (extension aside). A patient (or 2D image) without a mask is unlabelled
and goes to ``imagesTs``. Images keep their pixel values and type (8 or 16 bit, or float TIFF); slices of a
volume must be grey (RGB with equal channels is read as grey), 2D images may be RGB (three channels).

Masks: grey value 0 is background and the other grey values found become labels 1..k in increasing grey
order (0/255 masks become 0/1). ``dataset.json`` lists the grey value of each label in
``autoseg_mask_values`` (index = label), so that a prediction can be written back in the masks' own values
(:func:`grey_from_labels`), and ``autoseg_2d`` says whether the cases are 2D images.

PNG and TIFF carry no reliable slice spacing, so the spacing is given (default 1 mm); the origin is 0 and the
axes are the identity. An ``intercept`` is added to the pixel values (-1024 turns 16-bit PNGs of HU + 1024 back
into HU). ``dataset.json`` records both (``autoseg_slice_spacing``, ``autoseg_intercept``), so that
``autoseg-predict`` reads PNG/TIFF input exactly as the training cases were read. Every input problem is listed
at once before anything is written, each file is written atomically, and a rerun writes only what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg.dataset import is_os_litter
from autoseg.errors import AutosegError, ProblemList, fail
from autoseg.io import Geometry, write_json_atomic
from autoseg.parallel import thread_map
from autoseg.paths import DatasetPaths
from autoseg.raw_writer import (ENDING, CaseVolumes, check_case_ids, check_same_channels,
                                count_training, target_dataset, write_case)

SLICE_SUFFIXES = (".png", ".tif", ".tiff")
MAX_MASK_VALUES = 32      # more grey values than this is a smoothed or JPEG-compressed mask, not a label map
RGB_NAMES = {"0": "R", "1": "G", "2": "B"}
_FIX_MASK = "add the image or remove the mask"
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def natural_key(name: str) -> tuple[tuple[tuple[int, Any], ...], str]:
    """Sort key that orders the numbers inside file names by value: ``2.png`` before ``10.png``.

    Each run of digits or of other characters is tagged (0, number) or (1, text), so that two keys always
    compare (``patient`` against ``patient1``); the name itself breaks ties (``01`` and ``1``).
    """
    runs = re.split(r"(\d+)", name.lower())   # text, digits, text, ...
    return tuple((0, int(p)) if i % 2 else (1, p) for i, p in enumerate(runs) if p), name


def is_slice_file(path: Path) -> bool:
    return path.suffix.lower() in SLICE_SUFFIXES and path.is_file() and not is_os_litter(path.name)


@dataclass(frozen=True)
class SliceCase:
    """One case: its image slice files in stacking order and, if labelled, the mask slice of each.

    While pairing problems are open, ``masks`` holds only the masks that have their image (they are checked but
    never written).
    """

    case_id: str
    images: tuple[Path, ...]
    masks: tuple[Path, ...] | None


@dataclass
class _Entries:
    """What a folder holds: sub-folders, PNG/TIFF files, and anything else (OS litter and hidden files left out)."""

    folders: list[Path] = field(default_factory=list)
    slices: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)


def _entries(folder: Path) -> _Entries:
    found = _Entries()
    for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if p.name.startswith(".") or is_os_litter(p.name):
            continue
        (found.folders if p.is_dir() else found.slices if is_slice_file(p) else found.others).append(p)
    return found


def _slice_files(folder: Path, problems: ProblemList) -> list[Path]:
    """A patient folder's slices in natural order; sub-folders, other files and repeated names are problems."""
    found = _entries(folder)
    for p in found.folders:
        problems.add(p, "sub-folder inside a patient folder", "put the patient's slices directly in its folder")
    for p in found.others:
        problems.add(p, "not a PNG or TIFF slice", "convert it to PNG/TIFF or move it out of the folder")
    if not found.slices and not found.folders:
        problems.add(folder, "no PNG or TIFF slices in this folder", "add the patient's slices or remove the folder")
    _check_unique_stems(found.slices, problems)
    return found.slices


def _check_unique_stems(files: list[Path], problems: ProblemList) -> None:
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            problems.add(p, f"same name as {seen[p.stem].name} apart from the extension",
                         "keep one of the two files: they would be the same slice")
        seen.setdefault(p.stem, p)


def _unmatched(files: list[Path], partners: list[Path], what: str, partner_dir: Path, fix: str,
               problems: ProblemList) -> None:
    """One line per folder for its files without a partner of the same name (any extension) in ``partner_dir``.

    The first such file is named and the others counted: names that differ throughout (``IMG_001`` beside
    ``MASK_001``) would otherwise give a line per slice.
    """
    stems = {p.stem for p in partners}
    lonely = [p for p in files if p.stem not in stems]
    if lonely:
        more = f", and {len(lonely) - 1} more in this folder" if len(lonely) > 1 else ""
        problems.add(lonely[0], f"{what} (no {lonely[0].stem}.png or .tif in {partner_dir}){more}", fix)


def find_slice_cases(src: Path, images: str, masks: str | None, problems: ProblemList) -> tuple[list[SliceCase], bool]:
    """The cases under ``src/images`` (and their masks under ``src/masks``), and whether they are 2D images.

    ``masks`` None means the default ``masks`` folder, used when present; a folder named explicitly must exist.
    """
    image_root = src / images
    if not image_root.is_dir():
        raise fail(image_root, "image folder not found", f"put the slices in {image_root}/PATIENT/001.png ... (or 2D "
                   f"images in {image_root}/CASE.png), or name the folder with --images")
    mask_root = src / (masks or "masks")
    if masks is not None and not mask_root.is_dir():
        raise fail(mask_root, "mask folder not found", "give the folder of the masks with --masks, or leave it out")
    found = _entries(image_root)
    mask_found = _entries(mask_root) if mask_root.is_dir() else _Entries()
    for p in found.others + mask_found.others:
        problems.add(p, "not a PNG or TIFF image", "convert it to PNG/TIFF or move it out of the folder")
    if found.folders and found.slices:
        problems.add(image_root, f"holds both patient folders ({found.folders[0].name}) and single images "
                     f"({found.slices[0].name})", "put 2D images and folders of slices into separate datasets")
    if not found.folders and not found.slices:
        raise fail(image_root, "holds no patient folders and no PNG/TIFF images",
                   "put one folder of slices per patient there (PATIENT/001.png ...), or 2D images (CASE.png)")
    two_d = not found.folders
    if two_d:
        return _find_2d(image_root, found.slices, mask_root, mask_found, problems), True
    for p in mask_found.slices:
        problems.add(p, "a single mask beside patient mask folders", "move it into its patient's mask folder")
    image_names = {p.name for p in found.folders}
    for p in mask_found.folders:
        if p.name not in image_names:
            problems.add(p, f"mask folder without its image folder {image_root / p.name}",
                         "add the patient's image slices there, or remove the mask folder")
    cases = []
    for folder in found.folders:
        slices = _slice_files(folder, problems)
        mask_dir = mask_root / folder.name
        if not mask_dir.is_dir():
            cases.append(SliceCase(folder.name, tuple(slices), None))
            continue
        mask_slices = _slice_files(mask_dir, problems)
        if mask_slices:   # (an empty mask folder is one problem, not one per image slice)
            _unmatched(mask_slices, slices, "mask slice without its image slice", folder, _FIX_MASK, problems)
            _unmatched(slices, mask_slices, "image slice without its mask slice", mask_dir, "add the mask slice "
                       "(all 0 where nothing is marked) or remove the image slice", problems)
        by_stem = {m.stem: m for m in mask_slices}
        cases.append(SliceCase(folder.name, tuple(slices), tuple(by_stem[p.stem] for p in slices if p.stem in by_stem)))
    check_case_ids({c.case_id: image_root / c.case_id for c in cases}, problems)
    return cases, False


def find_image_slices(image_root: Path, problems: ProblemList) -> tuple[list[SliceCase], bool]:
    """The cases of a folder of patient folders of slices, or of 2D images, without masks (what autoseg-predict
    reads), and whether they are 2D images; problems with the folder's contents go to ``problems``."""
    found = _entries(image_root)
    for p in found.others:
        problems.add(p, "not a PNG or TIFF image", "convert it to PNG/TIFF or move it out of the folder")
    if found.folders and found.slices:
        problems.add(image_root, f"holds both patient folders ({found.folders[0].name}) and single images "
                     f"({found.slices[0].name})", "predict 2D images and folders of slices separately")
        return [], False
    if not found.folders:
        _check_unique_stems(found.slices, problems)
        cases = [SliceCase(p.stem, (p,), None) for p in found.slices]
        check_case_ids({c.case_id: c.images[0] for c in cases}, problems)
        return cases, True
    cases = [SliceCase(f.name, tuple(_slice_files(f, problems)), None) for f in found.folders]
    check_case_ids({c.case_id: image_root / c.case_id for c in cases}, problems)
    return cases, False


def _find_2d(image_root: Path, files: list[Path], mask_root: Path, mask_found: _Entries,
             problems: ProblemList) -> list[SliceCase]:
    """2D cases: each image is a case named after the file; an image without a mask is unlabelled."""
    for p in mask_found.folders:
        problems.add(p, "a mask folder, but the images are single 2D files", "put the masks as files beside it "
                     f"({mask_root}/CASE.png), or the images in folders of slices ({image_root}/PATIENT/001.png)")
    _check_unique_stems(files, problems)
    _check_unique_stems(mask_found.slices, problems)
    _unmatched(mask_found.slices, files, "mask without its image", image_root, _FIX_MASK, problems)
    by_stem = {m.stem: m for m in mask_found.slices}
    cases = [SliceCase(p.stem, (p,), (by_stem[p.stem],) if p.stem in by_stem else None) for p in files]
    check_case_ids({c.case_id: c.images[0] for c in cases}, problems)
    return cases


# ---- reading slices ------------------------------------------------------------------------------------------

def _read_header(path: Path) -> tuple[tuple[int, ...], int, str]:
    """Size (x, y[, pages]), components per pixel and the type of one component, from the file's header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise _unreadable(path, e) from None
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID()).removeprefix("vector of ")
    return tuple(reader.GetSize()), reader.GetNumberOfComponents(), pixel


def _read_pixels(path: Path, allow_rgb: bool) -> np.ndarray:
    """A slice as a (y, x) array, or (y, x, 3) for an RGB image where ``allow_rgb``.

    RGB with three equal channels is grey (a grey image saved as RGB); an alpha channel must be opaque.
    """
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise _unreadable(path, e) from None
    if array.ndim == 3 and array.shape[-1] == 4:
        alpha = array[..., 3]
        if (alpha != alpha.max()).any():
            raise fail(path, "has transparent pixels (an alpha channel)", "save it without transparency")
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 3:
        if (array == array[..., :1]).all():
            return array[..., 0]
        if not allow_rgb:
            raise fail(path, "is a colour image; slices and masks must be grey", "save them as grey PNG or TIFF")
        return array
    if array.ndim != 2:
        raise fail(path, f"is not a 2D grey or RGB image (array of shape {array.shape})",
                   "save one 2D slice per file, grey or RGB")
    return array


def _unreadable(path: Path, e: RuntimeError) -> AutosegError:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = lines[-1].split(": ", 1)[-1][:120] if lines else "unknown error"
    return fail(path, f"cannot read this image ({detail})", "re-export it as a grey (or RGB) PNG or TIFF")


def read_mask(path: Path) -> np.ndarray:
    """A grey mask slice as a (y, x) array (RGB with equal channels counts as grey)."""
    return _read_pixels(path, allow_rgb=False)


def labels_from_grey(grey: np.ndarray, mask_values: Sequence[int]) -> np.ndarray:
    """Mask grey values -> labels 0..k: the index of each value in the sorted ``mask_values``."""
    values = np.asarray(mask_values, dtype=np.int64)
    index = np.searchsorted(values, grey.astype(np.int64))
    if (index >= len(values)).any() or (values[np.minimum(index, len(values) - 1)] != grey).any():
        raise AutosegError(f"mask values {sorted(set(np.unique(grey).tolist()) - set(mask_values))} are not in "
                           f"the dataset's mask values {list(mask_values)}")
    return index.astype(np.uint8)


def grey_from_labels(label: np.ndarray, mask_values: Sequence[int]) -> np.ndarray:
    """Labels 0..k -> the masks' own grey values (``autoseg_mask_values`` of ``dataset.json``)."""
    values = np.asarray(mask_values)
    return values.astype(np.uint8 if values.max() <= 255 else np.uint16)[label]


# ---- checking the cases before writing ----------------------------------------------------------------------

@dataclass
class _Inspection:
    """What the check of one case found: its problems, pixel type, channels, and the grey values of its masks."""

    problems: list[str]
    pixel: str | None = None
    channels: int = 1
    mask_values: set[int] = field(default_factory=set)


def inspect_case(case: SliceCase, two_d: bool) -> _Inspection:
    """Read every slice's header (and the pixels of colour images and of masks): sizes, types, mask values."""
    problems = ProblemList()
    result = _Inspection(problems.items)
    first: tuple[Path, tuple[int, ...], str] | None = None
    for path in case.images:
        try:
            size, components, pixel = _read_header(path)
            if components > 1:
                result.channels = 3 if _read_pixels(path, allow_rgb=two_d).ndim == 3 else 1
        except AutosegError as e:
            problems.items.append(str(e))
            continue
        if len(size) != 2:
            problems.add(path, f"holds {size[2]} pages or slices", "save one 2D slice per file")
        elif first is None:
            first = (path, size, pixel)
            result.pixel = pixel
        elif size != first[1]:
            problems.add(path, f"slice is {size[0]}x{size[1]} pixels but {first[0].name} is "
                         f"{first[1][0]}x{first[1][1]}",
                         f"export every slice of {case.case_id} at one size")
        elif pixel != first[2]:
            problems.add(path, f"slice is {pixel} but {first[0].name} is {first[2]}",
                         f"export every slice of {case.case_id} with one bit depth")
    for path in case.masks or ():
        try:
            mask = _read_pixels(path, allow_rgb=False)
        except AutosegError as e:
            problems.items.append(str(e))
            continue
        if first is not None and mask.shape != first[1][::-1]:
            problems.add(path, f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but its image is "
                         f"{first[1][0]}x{first[1][1]}", "export the mask at the size of its image")
        values = np.unique(mask)
        if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
            problems.add(path, "mask holds non-integer values", "save masks as 8- or 16-bit integer grey images")
            continue
        result.mask_values.update(int(v) for v in values)
    return result


def _mask_values(found: set[int], existing: Sequence[int] | None, where: Path, problems: ProblemList) -> list[int]:
    """Grey values of labels 0..k: those found (0 first), or the dataset's when adding cases to it."""
    if existing is not None:
        extra = sorted(found - set(existing))
        if extra:
            problems.add(where, f"the masks hold grey value(s) {extra} that the dataset does not have (it maps "
                         f"{list(existing)} to labels 0..{len(existing) - 1})", "convert them into another dataset "
                         "(another -d)")
        return list(existing)
    values = sorted(found | {0})
    if len(values) == 1:
        problems.add(where, "every mask is empty (all 0)", "mark the structures with a non-zero grey value (e.g. 255)")
    elif len(values) - 1 > MAX_MASK_VALUES:
        shown = ", ".join(str(v) for v in values[1:6])
        problems.add(where, f"the masks hold {len(values) - 1} non-zero grey values ({shown}, ...), too many for "
                     f"labels (at most {MAX_MASK_VALUES})", "save masks with one grey value per label, without "
                     "smoothing or anti-aliasing (PNG or TIFF, never JPEG)")
    return values


def labels_for(mask_values: Sequence[int]) -> dict[str, int]:
    """``dataset.json`` labels: one foreground label for binary masks, else one per grey value (``value_85``...)."""
    if len(mask_values) == 2:
        return {"background": 0, "foreground": 1}
    return {"background": 0, **{f"value_{v}": i for i, v in enumerate(mask_values[1:], 1)}}


def _check_consistent(cases: list[SliceCase], found: list[_Inspection], problems: ProblemList) -> int:
    """One pixel type and one channel count across all cases (a dataset mixes neither); returns the channels."""
    ref: tuple[SliceCase, _Inspection] | None = None
    for case, seen in zip(cases, found):
        if seen.pixel is None:
            continue
        if ref is None:
            ref = (case, seen)
        elif seen.pixel != ref[1].pixel:
            problems.add(case.images[0], f"is {seen.pixel} but {ref[0].images[0]} is {ref[1].pixel}",
                         "export every case with one bit depth (a dataset cannot mix windowed 8-bit and 16-bit "
                         "images)")
        elif seen.channels != ref[1].channels:
            problems.add(case.images[0], f"has {seen.channels} channel(s) but {ref[0].images[0]} has "
                         f"{ref[1].channels}", "save all images as RGB, or all as grey")
    return ref[1].channels if ref else 1


# ---- writing ------------------------------------------------------------------------------------------------

def with_intercept(array: np.ndarray, intercept: float) -> np.ndarray:
    """``array + intercept``: int16 when integer values fit, else float32; unchanged for intercept 0."""
    if intercept == 0:
        return array
    if array.dtype.kind in "iu" and float(intercept).is_integer():
        shifted = array.astype(np.int32) + int(intercept)
        if shifted.size == 0 or (shifted.min() >= -32768 and shifted.max() <= 32767):
            return shifted.astype(np.int16)
    return (array.astype(np.float32) + np.float32(intercept)).astype(np.float32)


def read_slice_images(images: Sequence[Path], two_d: bool, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                      intercept: float = 0.0) -> tuple[list[np.ndarray], Geometry]:
    """A case's image slices as (z, y, x) channel volumes (a 2D RGB image: three one-slice channels) and their
    geometry: ``spacing_zyx``, origin 0, identity axes. Used for conversion and for PNG/TIFF input to predict."""
    pixels = [_read_pixels(p, allow_rgb=two_d) for p in images]
    if pixels[0].ndim == 3:   # a 2D RGB image: three channels of one slice
        channels = [np.ascontiguousarray(pixels[0][None, ..., c]) for c in range(3)]
    else:
        channels = [np.stack(pixels)]
    z, y, x = channels[0].shape
    geometry = Geometry((x, y, z), tuple(float(s) for s in reversed(spacing_zyx)), (0.0, 0.0, 0.0), _IDENTITY)
    return [with_intercept(c, intercept) for c in channels], geometry


def _load_case(case: SliceCase, two_d: bool, mask_values: Sequence[int], spacing_zyx: Sequence[float],
               intercept: float) -> CaseVolumes:
    """Stack a case's slices into (z, y, x) volumes: the image channels, and the mask mapped to labels."""
    channels, geometry = read_slice_images(case.images, two_d, spacing_zyx, intercept)
    label = None
    if case.masks is not None:
        label = labels_from_grey(np.stack([_read_pixels(p, allow_rgb=False) for p in case.masks]), mask_values)
    return CaseVolumes(channels, label, geometry)


def _write(case: SliceCase, raw: Path, num_channels: int, two_d: bool, mask_values: Sequence[int],
           spacing_zyx: Sequence[float], intercept: float) -> int:
    return write_case(raw, case.case_id, num_channels, case.masks is not None,
                      partial(_load_case, case, two_d, mask_values, spacing_zyx, intercept))


def _check_same_reading(existing: dict[str, Any] | None, spacing_zyx: Sequence[float], intercept: float, where: Path,
                        problems: ProblemList) -> None:
    """Cases added to a dataset must be read with its spacing and intercept (the plan and predict assume one)."""
    if existing is None:
        return
    old_spacing, old_intercept = existing.get("autoseg_slice_spacing"), existing.get("autoseg_intercept", 0)
    if old_spacing is not None and [float(s) for s in old_spacing] != [float(s) for s in spacing_zyx]:
        problems.add(where, f"the dataset was converted with --spacing {' '.join(f'{s:g}' for s in old_spacing)}, "
                     f"not {' '.join(f'{s:g}' for s in spacing_zyx)}", "give the same --spacing, or another -d")
    if float(old_intercept) != float(intercept):
        problems.add(where, f"the dataset was converted with --intercept {old_intercept:g}, not {intercept:g}",
                     "give the same --intercept, or another -d")


def convert_slices(src: Path, root: Path, dataset_id: int, name: str, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0),
                   images: str = "images", masks: str | None = None, channel_name: str = "image",
                   workers: int = 2, intercept: float = 0.0) -> DatasetPaths:
    """Convert PNG/TIFF slice folders (or 2D images) under ``src`` into ``root/raw/DatasetNNN_name``.

    Every input problem is reported at once, before anything is written; see the module docstring for the
    layouts and the mask value mapping. ``channel_name`` names the grey channel in ``dataset.json`` (``CT``
    selects CT normalisation); RGB images get channels R, G, B. ``intercept`` is added to the pixel values
    (-1024: 16-bit PNGs of HU + 1024 become HU).
    """
    src, root = Path(src), Path(root)
    if not src.is_dir():
        raise fail(src, "folder not found", f"give the folder that holds {images}/ (and masks/)")
    paths, existing = target_dataset(root, dataset_id, name)
    problems = ProblemList()
    cases, two_d = find_slice_cases(src, images, masks, problems)
    found = thread_map(partial(inspect_case, two_d=two_d), cases, workers, "check")
    for seen in found:
        problems.items.extend(seen.problems)
    num_channels = _check_consistent(cases, found, problems)
    channel_names = dict(RGB_NAMES) if num_channels == 3 else {"0": channel_name}
    check_same_channels(existing, channel_names, paths.dataset_json, problems)
    _check_same_reading(existing, spacing_zyx, intercept, paths.dataset_json, problems)
    if existing is not None and bool(existing.get("autoseg_2d")) != two_d:
        problems.add(paths.dataset_json, f"the dataset holds {'2D' if existing.get('autoseg_2d') else '3D'} cases, "
                     f"the new ones are {'2D' if two_d else '3D'}", "convert them into another dataset (another -d)")
    old_values = existing.get("autoseg_mask_values") if existing is not None else None
    old_values = old_values if isinstance(old_values, list) and len(old_values) > 1 else None   # [0]: no masks yet
    labelled = any(c.masks is not None for c in cases)
    mask_values = list(old_values or [0])
    if labelled:
        union = set().union(*(seen.mask_values for seen in found))
        mask_values = _mask_values(union, old_values, src / (masks or "masks"), problems)
    problems.raise_if_any(f"cannot convert {src}")
    thread_map(partial(_write, raw=paths.raw, num_channels=num_channels, two_d=two_d, mask_values=mask_values,
                       spacing_zyx=spacing_zyx, intercept=intercept), cases, workers, "convert")
    write_json_atomic(paths.dataset_json, {
        "name": name,
        "description": f"{'2D images' if two_d else 'PNG/TIFF slices'} converted by autoseg from {src.name}",
        "channel_names": channel_names,
        "labels": labels_for(mask_values) if len(mask_values) > 1 else {"background": 0},
        "numTraining": count_training(paths.raw),
        "file_ending": ENDING,
        "autoseg_mask_values": mask_values,
        "autoseg_2d": two_d,
        "autoseg_slice_spacing": [float(s) for s in spacing_zyx],
        "autoseg_intercept": float(intercept),
    })
    return paths
