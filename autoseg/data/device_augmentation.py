"""Training augmentation batched on the training device (``autoseg-train --augment-on device``).

On a GPU the per-sample CPU pipeline (``autoseg.data.augmentation``) can starve the network: the
3d ``grid_sample`` of a rotated 128^3 sample alone costs a worker core about 0.15 s. With
``--augment-on device`` the loader's workers only cut the enlarged initial patch (room for rotation
and scaling, 206^3 for a 128^3 patch), its label map (-1 outside the case and the brain) and the
sample's augmentation seed; :class:`DeviceAugmenter` then draws from that seed exactly what the CPU
path draws (:func:`~autoseg.data.augmentation.draw_spatial`,
:func:`~autoseg.data.augmentation.draw_intensity`) and applies it to the whole batch with torch ops
on the tensors' device:

* spatial: one ``affine_grid`` + ``grid_sample`` over the rotated/scaled samples (trilinear data,
  nearest labels, as on the CPU), a plain centre crop for the others (no interpolation);
* noise from a generator seeded per sample; blur as a sum of shifted views with a kernel per
  channel; brightness, contrast and gamma with per-sample, per-channel factors and statistics;
  simulated low resolution with ``F.interpolate`` per drawn channel; mirroring, modality dropout,
  zeroing outside the brain and the label -> target lookup batched.

So the transforms, their probabilities and ranges are the CPU path's by construction, and on CPU
tensors a sample equals the CPU path's sample of the same seed up to float rounding
(tests/test_device_augmentation.py). Batches stay a pure function of their key: resuming and the
number of workers change nothing.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.data.augmentation import (
    AugmentationParams,
    IntensityDraws,
    _gamma,
    _gaussian_blur,
    _simulate_low_resolution,
    draw_intensity,
    draw_spatial,
)
from autoseg.data.loader import Batch, BatchKey, BatchMaker, BatchStream
from autoseg.dataset import DatasetInfo
from autoseg.errors import fail

AUGMENT_ON = ("cpu", "device")


class DeviceAugmenter:
    """``DeviceAugmenter(params, info)(data, seg, seeds)``: a batch of initial patches -> augmented patches and targets.

    ``data`` (B, C, *initial) float32 and ``seg`` (B, 1, *initial) int8 (-1 outside) on any device;
    returns data (B, C, *patch) float32 and targets (B, R, *patch) region masks or (B, 1, *patch) class
    indices, uint8, on the same device.
    """

    def __init__(self, params: AugmentationParams, info: DatasetInfo) -> None:
        self.params = params
        n_values = max(info.label_values) + 1
        lut = info.targets_from_label(np.arange(n_values))  # (R, values) region masks or (values,) class indices
        self._lut = torch.from_numpy(np.ascontiguousarray(lut.T if info.region_based else lut[:, None]))

    @torch.no_grad()
    def __call__(self, data: torch.Tensor, seg: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        spatial, intensity = [], []
        for seed in seeds:  # the CPU path's draws, in its order, from the same generator
            rng = np.random.default_rng(int(seed))
            spatial.append(draw_spatial(self.params.patch_size, rng))
            intensity.append(draw_intensity(rng, data.shape[1], self.params))
        d, s = self.spatial(data, seg, spatial)
        d = intensity_transforms(d, intensity)
        for b, draws in enumerate(intensity):
            for c in draws.dropped:
                d[b, c] = 0
        outside = s[:, 0] < 0
        for c in self.params.masked_channels:
            d[:, c].masked_fill_(outside, 0)
        s = s.clamp_(min=0)
        for axis in {a for draws in intensity for a in draws.flips}:
            idx = [b for b, draws in enumerate(intensity) if axis in draws.flips]
            d[idx] = d[idx].flip(axis + 2)
            s[idx] = s[idx].flip(axis + 2)
        return d, self.targets(s)

    def targets(self, seg: torch.Tensor) -> torch.Tensor:
        """Label maps (B, 1, *patch), >= 0 -> what ``DatasetInfo.targets_from_label`` gives, batched."""
        lut = self._lut.to(seg.device)
        index = seg[:, 0].long().clamp_(max=lut.shape[0] - 1)
        return lut[index].movedim(-1, 1).contiguous()

    def spatial(self, data: torch.Tensor, seg: torch.Tensor,
                matrices: Sequence[np.ndarray | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate/scale the samples that drew a matrix (one ``grid_sample`` for all of them); centre-crop the rest."""
        patch = tuple(self.params.patch_size)
        initial = tuple(data.shape[2:])
        window = tuple(slice((i - p) // 2, (i - p) // 2 + p) for i, p in zip(initial, patch))  # batchgenerators' crop
        d = data[(slice(None), slice(None), *window)].contiguous()
        s = seg[(slice(None), slice(None), *window)].contiguous()
        moved = [b for b, m in enumerate(matrices) if m is not None]
        if moved:
            theta = torch.stack([_theta(matrices[b], patch, initial) for b in moved]).to(data.device)
            grid = F.affine_grid(theta, [len(moved), data.shape[1], *patch], align_corners=True)
            d[moved] = F.grid_sample(data[moved], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            labels = seg[moved].float().add_(1)  # -1 (outside) -> 0 = the padding value
            labels = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=True)
            s[moved] = labels.sub_(1).to(torch.int8)
        return d, s


def _theta(matrix: np.ndarray, patch: Sequence[int], initial: Sequence[int]) -> torch.Tensor:
    """``affine_grid``'s matrix for the CPU path's mapping src = p @ matrix + centre (p centred patch voxel,
    centre of the initial patch): in normalised coordinates v_j = sum_i u_i (P_i-1)/(I_j-1) M_ij, no offset,
    with the axes reversed to (x, y, z)."""
    p = np.maximum(np.asarray(patch, dtype=float) - 1, 0)
    i = np.maximum(np.asarray(initial, dtype=float) - 1, 1)
    a = (matrix.T * p[None, :]) / i[:, None]
    dim = len(patch)
    theta = np.zeros((dim, dim + 1))
    theta[:, :dim] = a[::-1, ::-1]
    return torch.from_numpy(theta).float()


def intensity_transforms(d: torch.Tensor, draws: Sequence[IntensityDraws]) -> torch.Tensor:
    """Noise, blur, brightness, contrast, low resolution, inverted gamma and gamma on a batch (B, C, *patch),
    each sample with its own draws, in the CPU path's order."""
    spatial_dims = tuple(range(2, d.ndim))
    for b, dr in enumerate(draws):
        if dr.noise is not None:  # one standard deviation for all channels, the CPU path's generator
            std, seed = dr.noise
            g = torch.Generator(device=d.device).manual_seed(seed)
            d[b] += torch.randn(d.shape[1:], generator=g, device=d.device, dtype=d.dtype).mul_(std)
    blurred = [(b, c, sigma) for b, dr in enumerate(draws) for c, sigma in dr.blur]
    if blurred:
        bs, cs = [b for b, _, _ in blurred], [c for _, c, _ in blurred]
        d[bs, cs] = gaussian_blur_rows(d[bs, cs], [sigma for _, _, sigma in blurred])
    _per_channel(d, draws, "brightness", lambda x, f: x * f)
    _per_channel(d, draws, "contrast", lambda x, f: _contrast(x, f, spatial_dims))
    for b, dr in enumerate(draws):
        for c, zoom in dr.low_res:
            d[b, c] = _simulate_low_resolution(d[b, c], zoom)
    for invert in (True, False):
        idx = [b for b, dr in enumerate(draws) if any(inv == invert for inv, _ in dr.gamma)]
        if idx:
            gammas = torch.tensor([next(g for inv, g in draws[b].gamma if inv == invert) for b in idx],
                                  dtype=d.dtype, device=d.device)
            d[idx] = _gamma_batched(d[idx], gammas, invert)
    return d


def _per_channel(d: torch.Tensor, draws: Sequence[IntensityDraws], name: str, fn) -> None:
    """Apply ``fn(x, factors)`` to the samples that drew ``name`` (a factor per channel), batched."""
    idx = [b for b, dr in enumerate(draws) if getattr(dr, name) is not None]
    if idx:
        f = torch.tensor([getattr(draws[b], name) for b in idx], dtype=d.dtype, device=d.device)
        d[idx] = fn(d[idx], f.view(*f.shape, *([1] * (d.ndim - 2))))


def _contrast(x: torch.Tensor, factor: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Contrast around each channel's mean, clipped to its former range (batchgenerators' preserve_range)."""
    mn = x.mean(dims, keepdim=True)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return torch.maximum(torch.minimum((x - mn) * factor + mn, hi), lo)


def _gamma_batched(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """``augmentation._gamma`` on (n, C, *patch) with a gamma per sample and channel."""
    dims = tuple(range(2, x.ndim))
    gamma = gamma.view(*gamma.shape, *([1] * len(dims)))
    if invert:
        x = -x
    mn, sd = x.mean(dims, keepdim=True), x.std(dims, unbiased=False, keepdim=True)
    minm = x.amin(dims, keepdim=True)
    rnge = x.amax(dims, keepdim=True) - minm
    x = ((x - minm) / (rnge + 1e-7)).pow_(gamma).mul_(rnge + 1e-7).add_(minm)
    x = x - x.mean(dims, keepdim=True)
    x = x.div_(x.std(dims, unbiased=False, keepdim=True) + 1e-8).mul_(sd).add_(mn)
    return -x if invert else x


def gaussian_blur_rows(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """``augmentation._gaussian_blur`` on n channels at once (n, *spatial), each with its own sigma: one
    reflect-padded sum of shifted views per axis, the shorter kernels padded with zero weights."""
    radii = [int(4 * s + 0.5) for s in sigmas]
    big = max(radii)
    if min(x.shape[1:]) <= big:  # an axis too short to reflect: the per-channel rule skips it channel by channel
        return torch.stack([_gaussian_blur(row, s) for row, s in zip(x, sigmas)])
    weights = np.zeros((len(sigmas), 2 * big + 1))
    for row, (sigma, radius) in enumerate(zip(sigmas, radii)):
        t = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 * (t / sigma) ** 2)
        weights[row, big - radius: big + radius + 1] = kernel / kernel.sum()
    w = torch.from_numpy(weights).to(x.device, x.dtype)
    dim = x.ndim - 1
    for axis in range(dim):
        n = x.shape[axis + 1]
        pad = [0, 0] * dim
        pad[2 * (dim - 1 - axis)] = pad[2 * (dim - 1 - axis) + 1] = big
        padded = F.pad(x[None], pad, mode="reflect")[0]
        shape = (-1,) + (1,) * dim
        out = padded.narrow(axis + 1, 0, n) * w[:, 0].view(shape)
        for i in range(1, w.shape[1]):
            out.addcmul_(padded.narrow(axis + 1, i, n), w[:, i].view(shape))
        x = out
    return x


class DeviceAugmentedStream:
    """A :class:`BatchStream` whose training batches are cut by the workers and augmented on ``device``.

    ``batches(keys)`` yields :class:`Batch` objects holding torch tensors on ``device`` for the deferred
    (training) stream and the workers' arrays for the others. On CUDA a thread copies (from pinned memory)
    and augments the next batch on a stream of its own while the current one trains, so the GPU does not
    wait for the transfer; elsewhere it happens when the batch is asked for. Use as a context manager.
    """

    def __init__(self, makers: dict[str, BatchMaker], workers: int, device: torch.device,
                 prefetch: int | None = None) -> None:
        self.makers = makers
        self.device = torch.device(device)
        deferred = {name: replace(m, defer_augmentation=True) if m.augment else m for name, m in makers.items()}
        self._augmenters = {name: DeviceAugmenter(m.aug, m.info) for name, m in makers.items() if m.augment}
        self._stream = BatchStream(deferred, workers, prefetch)

    def __enter__(self) -> DeviceAugmentedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batches(self, keys: Iterable[BatchKey]) -> Iterator[Batch]:
        keys = list(keys)
        if self.device.type == "cuda":
            yield from self._prefetched(keys)
            return
        for key, batch in zip(keys, self._stream.batches(keys)):
            yield self._augmented(key, batch)

    def _augmented(self, key: BatchKey, batch: Batch, pin: bool = False) -> Batch:
        if batch.seeds is None:
            return batch
        data, seg = (torch.as_tensor(x) for x in (batch.data, batch.target))
        if pin:
            data, seg = data.pin_memory(), seg.pin_memory()
        data, seg = data.to(self.device, non_blocking=pin), seg.to(self.device, non_blocking=pin)
        return Batch(*self._augmenters[key.stream](data, seg, batch.seeds))

    def _prefetched(self, keys: list[BatchKey]) -> Iterator[Batch]:
        """One batch ahead: a thread fetches, moves and augments on a side stream; the training stream waits
        for that batch's event only. A thread per call, ended (after its current batch) when the caller stops."""
        side = torch.cuda.Stream(self.device)
        ready: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def offer(item: tuple) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                with torch.cuda.stream(side):
                    for key, batch in zip(keys, self._stream.batches(keys)):
                        batch = self._augmented(key, batch, pin=True)
                        event = torch.cuda.Event()
                        event.record(side)
                        if not offer((batch, event, None)):
                            return
                offer((None, None, None))
            except BaseException as e:  # noqa: BLE001 - raised again in the training thread
                offer((None, None, e))

        thread = threading.Thread(target=work, name="device-augmentation", daemon=True)
        thread.start()
        main = torch.cuda.current_stream(self.device)
        try:
            while True:
                batch, event, error = ready.get()
                if error is not None:
                    raise error
                if batch is None:
                    return
                main.wait_event(event)
                for t in (batch.data, batch.target):
                    if isinstance(t, torch.Tensor) and t.is_cuda:
                        t.record_stream(main)  # made on the side stream, used and freed on this one
                yield batch
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        self._stream.close()


def training_stream(makers: dict[str, BatchMaker], workers: int, augment_on: str,
                    device: torch.device) -> contextlib.AbstractContextManager:
    """The batch stream of a training run: augmentation in the workers (``cpu``) or on ``device``."""
    if augment_on not in AUGMENT_ON:
        raise fail(None, f"--augment-on {augment_on!r} is not known", f"use one of {', '.join(AUGMENT_ON)}")
    if augment_on == "device":
        return DeviceAugmentedStream(makers, workers, device)
    return BatchStream(makers, workers)
