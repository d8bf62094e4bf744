"""Training augmentation: nnU-Net's transforms and probabilities, on one sample, in torch.

Spatial (rotation p 0.2, scaling 0.7-1.4 p 0.2, no elastic deformation) from the enlarged initial
patch down to the final patch, then Gaussian noise (p 0.1), blur (p 0.2), multiplicative brightness
(p 0.15), contrast (p 0.15), simulated low resolution (p 0.25), inverted gamma (p 0.1), gamma
(p 0.3), mirroring along the plan's axes (p 0.5 each), zeroing outside the brain mask, and -1 -> 0
in the segmentation. With ``modality_dropout`` p > 0 (not nnU-Net's; off by default), a sample
loses, with probability p, a random non-empty proper subset of its channels (zeroed after
normalisation, i.e. set to the channel's mean), so the network learns to predict from the rest. Parameters and sampling rules are batchgenerators v1's (the rotation matrices
are its own); the arithmetic runs in torch, as nnU-Net v2's batchgeneratorsv2 does:

* a sample drawn without rotation and scaling (about 64 %) is a pure centre crop, no interpolation;
* a rotated/scaled sample is resampled with ``grid_sample`` (trilinear data, nearest segmentation,
  as nnU-Net v2) from only the part of the initial patch that the rotated grid covers: the caller
  passes a crop function, so the loader reads just that region from the memory-mapped case;
* low resolution is ``F.interpolate`` (nearest down, trilinear up, as nnU-Net v2), Gaussian blur a
  separable filter of shifted views (truncated at 4 sigma like SciPy's ``gaussian_filter``).

batchgenerators v1 interpolated with order-3 splines through ``scipy.ndimage`` and resized with
scikit-image, about 5x slower per batch on a CPU. Every random draw comes from one NumPy generator
seeded per sample, and the arithmetic runs on one thread (reductions do not depend on the thread
count), so a sample is a pure function of its seed whatever the number of workers. The draws
(:func:`draw_spatial`, :func:`draw_intensity`) are separate from their application, so that
``autoseg.data.device_augmentation`` applies the very same draws batched on the training device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.augmentations.utils import (
    create_matrix_rotation_2d,
    create_matrix_rotation_x_3d,
    create_matrix_rotation_y_3d,
    create_matrix_rotation_z_3d,
)

from autoseg.data.sampling import crop_padded

SCALE_RANGE = (0.7, 1.4)
SCALE_FOR_INITIAL_PATCH = 0.85  # nnU-Net sizes the initial crop for scaling down to 0.85, not 0.7

# crop(lower, size) -> data (C, *size) float32 padded with 0, seg (1, *size) int8 padded with -1; lower
# is relative to the initial patch and may leave it (then the region is padding, as outside the patch)
CropFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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
    modality_dropout: float = 0.0          # probability that a training sample loses some (never all) channels


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread here (worker processes already are): results independent of the thread count."""
    n = torch.get_num_threads()
    if n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n != 1:
            torch.set_num_threads(n)


def _draw_factor(rng: np.random.Generator, lo: float, hi: float) -> float:
    """batchgenerators' rule for ranges around 1: below 1 or above 1 with probability 1/2 each."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1))
    return float(rng.uniform(max(lo, 1), hi))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of one channel (*spatial), truncated at 4 sigma, mirrored borders.

    A weighted sum of shifted views per axis: ten times faster on a CPU than a single-channel conv3d."""
    radius = int(4 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    dim = x.ndim
    for axis in range(dim):
        n = x.shape[axis]
        if n <= radius:
            continue
        pad = [0, 0] * dim
        pad[2 * (dim - 1 - axis)] = pad[2 * (dim - 1 - axis) + 1] = radius
        padded = F.pad(x[None, None], pad, mode="reflect")[0, 0]
        out = padded.narrow(axis, 0, n) * float(kernel[0])
        for i in range(1, len(kernel)):
            out.add_(padded.narrow(axis, i, n), alpha=float(kernel[i]))
        x = out
    return x


def _simulate_low_resolution(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """One channel down to ``zoom`` (nearest) and back up (trilinear / bilinear), as nnU-Net v2."""
    size = tuple(x.shape)
    small = tuple(max(1, int(round(s * zoom))) for s in size)
    y = F.interpolate(x[None, None], size=small, mode="nearest")
    return F.interpolate(y, size=size, mode="trilinear" if x.ndim == 3 else "bilinear", align_corners=False)[0, 0]


def _gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """batchgenerators' gamma with retained mean and standard deviation on one channel."""
    if invert:
        x = -x
    mn, sd = x.mean(), x.std(unbiased=False)
    minm = x.min()
    rnge = x.max() - minm
    x = ((x - minm) / (rnge + 1e-7)).pow_(gamma).mul_(rnge + 1e-7).add_(minm)
    x = x - x.mean()
    x = x.div_(x.std(unbiased=False) + 1e-8).mul_(sd).add_(mn)
    return -x if invert else x


def draw_spatial(patch_size: Sequence[int], rng: np.random.Generator) -> np.ndarray | None:
    """Rotation (p 0.2, every axis) and isotropic scaling (p 0.2) as one matrix, or None for a plain crop.
    A patch point p (row vector, centred) samples the initial patch at p @ matrix + centre."""
    dim = len(patch_size)
    angle = rotation_range(patch_size)
    matrix, modified = np.identity(dim), False
    if rng.random() < 0.2:
        if dim == 3:
            ax, ay, az = rng.uniform(-angle, angle, 3)
            matrix = create_matrix_rotation_z_3d(az, create_matrix_rotation_y_3d(ay, create_matrix_rotation_x_3d(ax, matrix)))
        else:
            matrix = create_matrix_rotation_2d(rng.uniform(-angle, angle))
        modified = True
    if rng.random() < 0.2:
        matrix = matrix * _draw_factor(rng, *SCALE_RANGE)
        modified = True
    return matrix if modified else None


@dataclass(frozen=True)
class IntensityDraws:
    """The random choices of one sample after the spatial transform, in the order they are applied."""

    noise: tuple[float, int] | None                    # standard deviation, seed of the torch noise generator
    blur: tuple[tuple[int, float], ...]                # (channel, sigma)
    brightness: tuple[float, ...] | None               # factor per channel
    contrast: tuple[float, ...] | None                 # factor per channel
    low_res: tuple[tuple[int, float], ...]             # (channel, zoom)
    gamma: tuple[tuple[bool, tuple[float, ...]], ...]  # (inverted, gamma per channel): inverted first
    flips: tuple[int, ...]                             # spatial axes mirrored
    dropped: tuple[int, ...]                           # channels zeroed by modality dropout


def draw_intensity(rng: np.random.Generator, n_channels: int, params: AugmentationParams) -> IntensityDraws:
    """Draw noise (p 0.1), blur (p 0.2, each channel p 0.5), brightness (p 0.15), contrast (p 0.15), low
    resolution (p 0.25, each channel p 0.5), inverted gamma (p 0.1), gamma (p 0.3), mirroring (p 0.5 per
    axis) and modality dropout, in batchgenerators' order and with its ranges."""
    channels = range(n_channels)
    noise = (float(rng.uniform(0, 0.1)), int(rng.integers(2**62))) if rng.random() < 0.1 else None
    blur = tuple((c, float(rng.uniform(0.5, 1.0))) for c in channels if rng.random() < 0.5) \
        if rng.random() < 0.2 else ()
    brightness = tuple(float(rng.uniform(0.75, 1.25)) for _ in channels) if rng.random() < 0.15 else None
    contrast = tuple(_draw_factor(rng, 0.75, 1.25) for _ in channels) if rng.random() < 0.15 else None
    low_res = tuple((c, float(rng.uniform(0.5, 1))) for c in channels if rng.random() < 0.5) \
        if rng.random() < 0.25 else ()
    gamma = tuple((invert, tuple(_draw_factor(rng, 0.7, 1.5) for _ in channels))
                  for invert, p in ((True, 0.1), (False, 0.3)) if rng.random() < p)
    flips = tuple(a for a in params.mirror_axes if rng.random() < 0.5)
    # modality dropout draws only when on: the default stream is unchanged
    dropped = tuple(dropped_channels(rng, n_channels, params.modality_dropout)) if params.modality_dropout > 0 else ()
    return IntensityDraws(noise, blur, brightness, contrast, low_res, gamma, flips, dropped)


class Augmenter:
    """The per-sample pipeline: ``Augmenter(params, train=True)(crop, initial_shape, seed)``."""

    def __init__(self, params: AugmentationParams, train: bool = True) -> None:
        self.params = params
        self.train = train
        self._mesh: torch.Tensor | None = None

    def __call__(self, crop: CropFn, initial: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """data (C, *patch) float32, seg (1, *patch) int8 (>= 0)."""
        rng = np.random.default_rng(seed)
        patch, initial = np.asarray(self.params.patch_size), np.asarray(initial)
        with one_thread():
            matrix = draw_spatial(self.params.patch_size, rng) if self.train else None
            if matrix is None:
                data, seg = crop((initial - patch) // 2, patch)  # batchgenerators' centre crop
                d, s = torch.from_numpy(data), torch.from_numpy(seg)
            else:
                d, s = self._resample(crop, initial, matrix)
            flips: list[int] = []
            if self.train:
                draws = draw_intensity(rng, d.shape[0], self.params)
                d = self._intensity(d, draws)
                flips = [a + 1 for a in draws.flips]
                for c in draws.dropped:
                    d[c].zero_()
            outside = s[0] < 0
            for c in self.params.masked_channels:
                d[c].masked_fill_(outside, 0)
            s = s.clamp_(min=0)
            # mirroring last, as views: the caller's copy into the batch does the work
            return np.flip(d.numpy(), flips), np.flip(s.numpy(), flips)

    # ---- spatial ----------------------------------------------------------------------------
    def _resample(self, crop: CropFn, initial: np.ndarray, matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        patch = np.asarray(self.params.patch_size)
        dim = len(patch)
        half = (patch - 1) / 2
        corners = np.array(np.meshgrid(*[[-h, h] for h in half], indexing="ij")).reshape(dim, -1).T
        centre = initial / 2 - 0.5
        src = corners @ matrix + centre
        lower = np.maximum(np.floor(src.min(0)).astype(int), 0)
        upper = np.minimum(np.floor(src.max(0)).astype(int) + 2, initial)
        lower = np.minimum(lower, upper - 1)
        size = np.maximum(upper - lower, 1)
        data, seg = crop(lower, size)
        if self._mesh is None:
            axes = [torch.arange(p, dtype=torch.float32) - (p - 1) / 2 for p in patch]
            self._mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim)
        # grid_sample wants (x, y, z) = reversed axes, normalised to [-1, 1] (align_corners=True)
        scale = 2 / np.maximum(size - 1, 1)
        a = torch.from_numpy((matrix * scale[None, :])[:, ::-1].copy()).float()
        b = torch.from_numpy(((centre - lower) * scale - 1)[::-1].copy()).float()
        grid = torch.addmm(b, self._mesh, a).view(1, *patch, dim)
        d = F.grid_sample(torch.from_numpy(data)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        s = torch.from_numpy(seg).float().add_(1)  # -1 (outside) -> 0 = the padding value
        s = F.grid_sample(s[None], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
        return d, s.sub_(1).to(torch.int8)

    # ---- intensity --------------------------------------------------------------------------
    @staticmethod
    def _intensity(d: torch.Tensor, draws: IntensityDraws) -> torch.Tensor:
        if draws.noise is not None:  # Gaussian noise, one standard deviation for all channels
            std, seed = draws.noise
            g = torch.Generator().manual_seed(seed)
            d.add_(torch.randn(d.shape, generator=g).mul_(std))
        for c, sigma in draws.blur:  # Gaussian blur, each channel its own sigma
            d[c] = _gaussian_blur(d[c], sigma)
        for c, factor in enumerate(draws.brightness or ()):  # multiplicative brightness per channel
            d[c].mul_(factor)
        for c, factor in enumerate(draws.contrast or ()):  # contrast per channel, range preserved
            x = d[c]
            mn, lo, hi = x.mean(), x.min(), x.max()
            x.sub_(mn).mul_(factor).add_(mn).clamp_(lo, hi)
        for c, zoom in draws.low_res:  # simulated low resolution
            d[c] = _simulate_low_resolution(d[c], zoom)
        for invert, gammas in draws.gamma:
            for c, gamma in enumerate(gammas):
                d[c] = _gamma(d[c], gamma, invert)
        return d


def dropped_channels(rng: np.random.Generator, n_channels: int, p: float) -> list[int]:
    """With probability ``p``, a uniformly sized random subset of 1..n-1 channels to zero; else none."""
    if n_channels < 2 or rng.random() >= p:
        return []
    k = int(rng.integers(1, n_channels))
    return sorted(int(c) for c in rng.choice(n_channels, size=k, replace=False))


def training_transforms(params: AugmentationParams) -> Augmenter:
    """nnU-Net's training pipeline for one configuration (see the module docstring)."""
    return Augmenter(params, train=True)


def no_augmentation(params: AugmentationParams) -> Augmenter:
    """Validation pipeline: centre crop to the patch, mask, -1 -> 0."""
    return Augmenter(params, train=False)


def array_crop(data: np.ndarray, seg: np.ndarray) -> CropFn:
    """A crop function over an initial patch held in memory: data (C, *initial), seg (1, *initial)."""
    def crop(lower: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (crop_padded(data, lower, size, 0.0).astype(np.float32, copy=False),
                crop_padded(seg, lower, size, -1).astype(np.int8, copy=False))
    return crop


def augment(pipeline: Augmenter, data: np.ndarray, seg: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``pipeline`` to one sample (C, *initial) / (1, *initial) reproducibly for ``seed``."""
    return pipeline(array_crop(data, seg), data.shape[1:], seed)
