"""Patch sampling: where each patch of a batch is cut from a preprocessed case.

nnU-Net's rule (mode "batch"): in a batch of ``bs``, sample ``j`` is forced to contain foreground iff
``j >= round(bs * (1 - oversample))`` (bs 2, 0.33 -> one random and one foreground patch; at batch 2
any share from 0.25 to 0.75 gives one of two). Mode "sample" forces each sample independently with
probability ``oversample``, so the expected share is the share asked for at any batch size. A forced
patch is centred on a stored foreground voxel of a region drawn at random among those present in
the case, so small regions such as enhancing tumour are seen as often as large ones. Patches are cut
at the enlarged *initial* size (room for rotation and scaling) and padded where they leave the
volume: data with 0, segmentation with -1 (= outside, set to background after augmentation).
A 2d configuration cuts a slice along axis 0, then a 2d patch in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


FOREGROUND_MODES = ("batch", "sample")


def is_forced_foreground(index: int, batch_size: int, oversample: float, mode: str = "batch",
                         draw: float | None = None) -> bool:
    """Whether sample ``index`` of a (global) batch must be centred on foreground: by its place in the batch
    (mode "batch"), or when ``draw``, uniform in [0, 1) and the sample's own, is below ``oversample`` ("sample")."""
    if mode == "batch":
        return not index < round(batch_size * (1 - oversample))
    if mode == "sample":
        if draw is None:
            raise ValueError("mode 'sample' needs the sample's uniform draw")
        return draw < oversample
    raise ValueError(f"unknown foreground mode {mode!r}; use one of {', '.join(FOREGROUND_MODES)}")


def pick_foreground_voxel(fg_locations: Mapping[str, np.ndarray], rng: np.random.Generator) -> np.ndarray | None:
    """A stored voxel (z, y, x) of a randomly chosen region present in the case, or None if there is none."""
    present = [name for name in sorted(fg_locations) if len(fg_locations[name]) > 0]
    if not present:
        return None
    locs = np.asarray(fg_locations[present[int(rng.integers(len(present)))]])
    return locs[int(rng.integers(len(locs)))]


def patch_lower_corner(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                       centre: Sequence[int] | None = None) -> np.ndarray:
    """Lower corner of a patch: centred on ``centre`` if given, else uniform.

    Where the patch is larger than the volume the corner is negative (the patch covers the whole
    axis, at a random offset); corners may lie outside the volume, the crop pads.
    """
    shape, patch = np.asarray(shape), np.asarray(patch)
    if centre is not None:
        return np.asarray(centre) - patch // 2
    lo = np.minimum(0, shape - patch)
    hi = np.maximum(0, shape - patch)
    return np.array([int(rng.integers(a, b + 1)) for a, b in zip(lo, hi)])


def crop_padded(array: np.ndarray, lower: Sequence[int], patch: Sequence[int], pad_value: float) -> np.ndarray:
    """Crop ``array[..., lower:lower+patch]`` over the trailing axes, padding with ``pad_value`` outside."""
    spatial = array.shape[-len(patch):]
    lower = np.asarray(lower)
    upper = lower + np.asarray(patch)
    src = tuple(slice(max(0, lo), min(s, up)) for lo, up, s in zip(lower, upper, spatial))
    lead = (slice(None),) * (array.ndim - len(patch))
    if all(s.start == lo and s.stop == up for s, lo, up in zip(src, lower, upper)):  # inside: one copy
        return np.array(array[lead + src])
    out = np.empty((*array.shape[:-len(patch)], *patch), dtype=array.dtype)
    if not all(s.stop > s.start for s in src):
        out.fill(pad_value)
        return out
    dst = tuple(slice(s.start - lo, s.stop - lo) for s, lo in zip(src, lower))
    out[lead + dst] = array[lead + src]
    for axis, d in enumerate(dst):  # pad only the margins, not the whole patch first
        before = (slice(None),) * axis + (slice(None, d.start),)
        after = (slice(None),) * axis + (slice(d.stop, None),)
        out[lead + before] = pad_value
        out[lead + after] = pad_value
    return out


def patch_location(shape: Sequence[int], fg_locations: Mapping[str, np.ndarray], patch: Sequence[int], forced: bool,
                   rng: np.random.Generator) -> tuple[int | None, np.ndarray]:
    """Where to cut a patch from a case of spatial ``shape``: (slice along axis 0 or None, lower corner).

    A 2-axis ``patch`` samples a slice along axis 0 first (the foreground voxel's slice when forced).
    """
    voxel = pick_foreground_voxel(fg_locations, rng) if forced else None
    z = None
    if len(patch) == 2:
        z = int(voxel[0]) if voxel is not None else int(rng.integers(shape[0]))
        shape = shape[1:]
        voxel = voxel[1:] if voxel is not None else None
    return z, patch_lower_corner(shape, patch, rng, voxel)


def sample_patch(data: np.ndarray, seg: np.ndarray, fg_locations: Mapping[str, np.ndarray], patch: Sequence[int],
                 forced: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut one patch: data (C, *patch) float32 and seg (1, *patch) int8 from a case (C, z, y, x) / (z, y, x).

    A 2-axis ``patch`` samples a slice along axis 0 first (the foreground voxel's slice when forced).
    """
    z, lower = patch_location(seg.shape, fg_locations, patch, forced, rng)
    if z is not None:
        data, seg = data[:, z], seg[z]
    out_data = crop_padded(data, lower, patch, 0.0).astype(np.float32, copy=False)
    out_seg = crop_padded(seg[None], lower, patch, -1).astype(np.int8, copy=False)
    return out_data, out_seg
