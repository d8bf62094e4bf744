"""One case in memory: raw channels -> network input, and network output -> the original image grid.

Order (as nnU-Net): reorient to the canonical axes, crop to the nonzero box, normalise per channel,
resample to the plan's spacing. Each step is recorded in :class:`CaseProperties` and undone in
reverse by :func:`restore_probabilities` / :func:`restore_label`.
"""

from __future__ import annotations

import numpy as np

from autoseg.dataset import DatasetInfo
from autoseg.errors import fail
from autoseg.io import Geometry
from autoseg.orientation import reorientation_for
from autoseg.parallel import memory_limit
from autoseg.planning.planner import fmt
from autoseg.plans import ConfigurationPlan
from autoseg.preprocessing.cropping import crop, filled_nonzero_mask, nonzero_bbox, uncrop
from autoseg.preprocessing.normalization import normalize_channel
from autoseg.preprocessing.properties import CaseProperties
from autoseg.preprocessing.resampling import (PROBABILITY_ORDER, resample_image, resample_label, resize,
                                              separate_axis, target_shape)


def configured_spacing(config: ConfigurationPlan, spacing_canonical: tuple[float, ...]) -> tuple[float, float, float]:
    """Target spacing (z, y, x). A 2d plan may give only (y, x): the slice axis then keeps its spacing."""
    sp = [float(s) for s in config.spacing]
    if len(sp) == 2:
        sp = [float(spacing_canonical[0]), *sp]
    if len(sp) != 3 or min(sp) <= 0:
        raise fail(None, f"configuration {config.name!r} has an invalid spacing {config.spacing}", "rerun autoseg-plan")
    return tuple(sp)  # type: ignore[return-value]


def preprocess_case(images: list[np.ndarray], geometry: Geometry, config: ConfigurationPlan, info: DatasetInfo,
                    label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Raw (z, y, x) channels (and label) -> data float32 (C, z, y, x), seg int8 (z, y, x) or None, properties.

    ``seg`` keeps the original label values; region targets are derived later by the data loader.
    """
    if len(images) != info.num_channels or len(config.normalization) != len(images):
        raise fail(None, f"got {len(images)} channels, dataset.json declares {info.num_channels} and the plan "
                   f"normalises {len(config.normalization)}", "rerun autoseg-plan for this dataset")
    for i, im in enumerate(images):
        if tuple(im.shape) != geometry.shape_zyx:
            raise fail(None, f"channel {i} has shape {im.shape}, expected {geometry.shape_zyx}", "check the case's files")
    if label is not None and tuple(label.shape) != geometry.shape_zyx:
        raise fail(None, f"label has shape {label.shape}, images {geometry.shape_zyx}", "check the case's label file")

    reo = reorientation_for(geometry)
    canonical = [reo.to_canonical(im) for im in images]          # views, no copies
    spacing = reo.spacing_zyx(geometry)
    label_c = reo.to_canonical(label) if label is not None else None
    # the label joins the box so that no annotation is ever cropped away (it lies inside for BraTS)
    bbox = nonzero_bbox(canonical if label_c is None else [*canonical, label_c])
    box = tuple(slice(lo, hi) for lo, hi in bbox)
    data = np.empty((len(canonical), *(hi - lo for lo, hi in bbox)), dtype=np.float32)
    for c, channel in enumerate(canonical):
        data[c] = channel[box]
    del canonical

    mask = filled_nonzero_mask(data)
    stats = tuple(normalize_channel(data[c], norm, mask) for c, norm in enumerate(config.normalization))
    del mask

    new_spacing = configured_spacing(config, spacing)
    shape_crop = tuple(data.shape[1:])
    new_shape = target_shape(shape_crop, spacing, new_spacing)
    check_fits_in_memory(new_shape, len(data), spacing, new_spacing)
    axis = separate_axis(spacing, new_spacing)
    if new_shape != shape_crop:
        data = resample_image(data, new_shape, axis)

    seg = None
    if label is not None:
        seg = _to_int8(crop(label_c, bbox))
        seg = resample_label(seg, new_shape, axis)

    props = CaseProperties(geometry=geometry, perm=reo.perm, flips=reo.flips, shape_canonical=reo.shape_zyx(geometry),
                           spacing_canonical=spacing, bbox=bbox, shape_after_crop=shape_crop,  # type: ignore[arg-type]
                           target_spacing=new_spacing, shape_after_resampling=new_shape,  # type: ignore[arg-type]
                           separate_axis=axis, intensity_stats=stats)
    return data, seg, props


def check_fits_in_memory(shape: tuple[int, ...], channels: int, spacing: tuple[float, ...],
                         new_spacing: tuple[float, ...]) -> None:
    """Refuse, before allocating, a case that resampling would make larger than this machine's memory.

    Such a case has a spacing far from the plan's (a header in cm, not mm; ``autoseg-plan`` warns about
    it): at 100 mm resampled to 1 mm it grows a million-fold. Without this check the allocation fails (or
    the kernel kills the process) with nothing that says which case or why. The estimate, the resampled
    channels plus one channel's work array, is a lower bound of what resampling holds at once.
    """
    need = float(np.prod(shape)) * (channels + 1) * 4
    limit = memory_limit()
    if need > limit:
        raise fail(None, f"resampling from spacing {fmt(spacing)} mm to the planned {fmt(new_spacing)} mm makes it "
                   f"{fmt(shape)} voxels, {need / 2 ** 30:,.0f} GiB or more, beyond this machine's "
                   f"{limit / 2 ** 30:.0f} GiB", "check the spacing in its header (mm), or remove the case")


def _to_int8(label: np.ndarray) -> np.ndarray:
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise fail(None, "label holds non-integer values", "labels must be integer maps (0, 1, 2, ...)")
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if lo < -128 or hi > 127:
        raise fail(None, f"label values {lo}..{hi} do not fit int8", "relabel to values 0..127")
    return label.astype(np.int8)


def restore_probabilities(probs: np.ndarray, props: CaseProperties, background_index: int | None = None) -> np.ndarray:
    """(C, *preprocessed shape) -> (C, *original zyx shape), same dtype (float16 or float32).

    Channel by channel: resample linearly back to the crop, paste into the uncropped canvas
    (0 outside; 1 for ``background_index``, the softmax background channel), undo the reorientation.
    """
    if tuple(probs.shape[1:]) != props.shape_after_resampling:
        raise fail(None, f"probabilities of shape {probs.shape[1:]} do not match the preprocessed shape "
                   f"{props.shape_after_resampling}", "pass the network output for this case")
    reo = props.reorientation
    out = np.empty((probs.shape[0], *props.geometry.shape_zyx), dtype=probs.dtype)
    canvas = np.empty(props.shape_canonical, dtype=probs.dtype)
    for c in range(probs.shape[0]):
        cropped = probs[c]
        if props.resampled:
            cropped = resize(cropped, props.shape_after_crop, PROBABILITY_ORDER, props.separate_axis)
        uncrop(cropped, props.bbox, props.shape_canonical, fill=1 if c == background_index else 0, out=canvas)
        out[c] = reo.from_canonical(canvas)
    return out


def restore_label(seg: np.ndarray, props: CaseProperties) -> np.ndarray:
    """(preprocessed shape) label map -> original zyx grid; uint8 when the values fit, else int16.

    Resampling back uses per-label linear weights (no invented values); 0 outside the crop.
    """
    if tuple(seg.shape) != props.shape_after_resampling:
        raise fail(None, f"label of shape {seg.shape} does not match the preprocessed shape "
                   f"{props.shape_after_resampling}", "pass the segmentation of this case")
    dtype = np.uint8 if seg.size == 0 or (seg.min() >= 0 and seg.max() <= 255) else np.int16
    cropped = np.asarray(seg).astype(dtype)
    if props.resampled:
        cropped = resample_label(cropped, props.shape_after_crop, props.separate_axis)
    canvas = uncrop(cropped, props.bbox, props.shape_canonical, fill=0)
    return np.ascontiguousarray(props.reorientation.from_canonical(canvas))
