"""Training augmentation with batchgenerators (v1 API), nnU-Net's transforms and probabilities.

Spatial (rotation p 0.2, scaling 0.7-1.4 p 0.2, no elastic deformation) from the enlarged initial
patch down to the final patch, then Gaussian noise (p 0.1), blur (p 0.2), multiplicative brightness
(p 0.15), contrast (p 0.15), simulated low resolution (p 0.25), inverted gamma (p 0.1), gamma
(p 0.3), mirroring along the plan's axes (p 0.5 each), zeroing outside the brain mask, and -1 -> 0
in the segmentation. Transforms draw from NumPy's and Python's global generators, so :func:`augment`
seeds them per sample and restores them afterwards.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

SCALE_RANGE = (0.7, 1.4)
SCALE_FOR_INITIAL_PATCH = 0.85  # nnU-Net sizes the initial crop for scaling down to 0.85, not 0.7


def rotation_range(patch_size: Sequence[int]) -> float:
    """Maximum rotation in radians: 30 deg in 3d; 2d 180 deg for near-square patches, else 15 deg."""
    if len(patch_size) == 3:
        return np.deg2rad(30)
    return np.deg2rad(180) if max(patch_size) / min(patch_size) <= 1.5 else np.deg2rad(15)


def _rotated_extent(dims: np.ndarray, angle: float, axes: tuple[int, int]) -> np.ndarray:
    out = dims.copy()
    a, b = axes
    c, s = abs(np.cos(angle)), abs(np.sin(angle))
    out[a] = dims[a] * c + dims[b] * s
    out[b] = dims[a] * s + dims[b] * c
    return out


def initial_patch_size(patch_size: Sequence[int], max_angle: float | None = None,
                       min_scale: float = SCALE_FOR_INITIAL_PATCH) -> tuple[int, ...]:
    """The crop that still fills ``patch_size`` after rotating by up to ``max_angle`` about any axis
    and scaling down to ``min_scale`` (nnU-Net's ``get_patch_size``)."""
    dims = np.asarray(patch_size, dtype=float)
    angle = min(rotation_range(patch_size) if max_angle is None else max_angle, np.pi / 2)
    planes = [(0, 1)] if len(dims) == 2 else [(1, 2), (0, 2), (0, 1)]
    extent = dims.copy()
    for plane in planes:
        extent = np.maximum(extent, _rotated_extent(dims, angle, plane))
    return tuple(int(np.ceil(e / min_scale)) for e in extent)


@dataclass(frozen=True)
class AugmentationParams:
    """What the transforms need from the plan."""

    patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]
    masked_channels: tuple[int, ...] = ()  # channels normalised inside the brain mask: zero outside after aug


class MaskOutside(AbstractTransform):
    """Set ``channels`` to 0 where the segmentation is -1 (outside the nonzero mask or padding)."""

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = list(channels)

    def __call__(self, **d):
        if self.channels:
            outside = d["seg"][:, 0] < 0
            for c in self.channels:
                d["data"][:, c][outside] = 0
        return d


class OutsideToBackground(AbstractTransform):
    """Segmentation value -1 (outside) -> 0."""

    def __call__(self, **d):
        d["seg"][d["seg"] < 0] = 0
        return d


def training_transforms(params: AugmentationParams) -> Compose:
    """nnU-Net's training pipeline for one configuration (see the module docstring)."""
    patch = params.patch_size
    angle = rotation_range(patch)
    rot = (-angle, angle)
    spatial = SpatialTransform(
        patch, patch_center_dist_from_border=None, do_elastic_deform=False,
        do_rotation=True, angle_x=rot, angle_y=rot if len(patch) == 3 else (0, 0), angle_z=rot if len(patch) == 3 else (0, 0),
        p_rot_per_axis=1, do_scale=True, scale=SCALE_RANGE, border_mode_data="constant", border_cval_data=0,
        order_data=3, border_mode_seg="constant", border_cval_seg=-1, order_seg=0, random_crop=False,
        p_el_per_sample=0, p_scale_per_sample=0.2, p_rot_per_sample=0.2, independent_scale_for_each_axis=False)
    transforms: list[AbstractTransform] = [
        spatial,
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(contrast_range=(0.75, 1.25), preserve_range=True, p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if params.mirror_axes:
        transforms.append(MirrorTransform(tuple(params.mirror_axes)))
    transforms += [MaskOutside(params.masked_channels), OutsideToBackground()]
    return Compose(transforms)


def no_augmentation(params: AugmentationParams) -> Compose:
    """Validation pipeline: centre crop to the patch, mask, -1 -> 0."""
    from batchgenerators.transforms.crop_and_pad_transforms import CenterCropTransform
    return Compose([CenterCropTransform(params.patch_size), MaskOutside(params.masked_channels), OutsideToBackground()])


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Seed NumPy's and Python's global generators (batchgenerators draws from both; Gaussian noise
    uses ``random``) and restore them afterwards."""
    saved_np, saved_py = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved_np)
        random.setstate(saved_py)


def augment(pipeline: Compose, data: np.ndarray, seg: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``pipeline`` to one sample (C, *initial) / (1, *initial) reproducibly for ``seed``."""
    with seeded_globals(seed):
        out = pipeline(data=data[None].copy(), seg=seg[None].copy())
    return out["data"][0].astype(np.float32, copy=False), out["seg"][0].astype(np.int8, copy=False)
