"""Batches for training and validation, made in worker processes with bounded prefetch.

Every sample is a pure function of ``(seed, stream, epoch, iteration, sample index)``: the case, the
patch position and the augmentation are drawn from a generator seeded with that key. So

* the loader has no state to save: resuming at epoch ``e`` regenerates exactly the same batches;
* results do not depend on the number of workers (batches are reordered by sequence number);
* under DistributedDataParallel rank ``r`` makes its share of the *global* batch's sample indices,
  so N ranks see exactly the halves (thirds, ...) of the single-process batch.

With ``defer_augmentation`` (``autoseg-train --augment-on device``) a worker only cuts the enlarged
initial patch and ships it with its label map and the sample's augmentation seed;
``autoseg.data.device_augmentation`` then applies the same draws batched on the training device.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from autoseg.cascade import one_hot, perturb_prior
from autoseg.data.augmentation import AugmentationParams, CropFn, no_augmentation, training_transforms
from autoseg.data.sampling import crop_padded, is_forced_foreground, patch_location
from autoseg.dataset import DatasetInfo
from autoseg.parallel import children_ignore_ctrl_c


class BatchKey(NamedTuple):
    """Identifies one batch: which maker (``train``/``val``), epoch and iteration."""

    stream: str
    epoch: int
    iteration: int


@dataclass
class Batch:
    """``data`` (b, C, *patch) float32; ``target`` (b, R, *patch) region masks or (b, 1, *patch) class indices, uint8.

    A deferred batch (``seeds`` set) holds the initial patches instead: data (b, C, *initial) and the label
    maps (b, 1, *initial) int8, -1 outside the case (and the brain), not yet augmented."""

    data: np.ndarray
    target: np.ndarray
    seeds: np.ndarray | None = None  # augmentation seed per sample of a deferred batch


_STREAM_IDS = {"train": 0, "val": 1}
_FOREGROUND_TAG = 7   # seeds the per-sample foreground draw apart from the sample's other draws
_PRIOR_TAG = 11       # seeds the perturbation of a cascade's prior apart from the augmentation's draws


@dataclass
class BatchMaker:
    """Makes the batches of one stream from a list of cases. Picklable: sent to worker processes.

    ``load_case(case_id)`` returns an object with ``data`` (C, z, y, x), ``seg`` (z, y, x) and
    ``fg_locations``; loaded cases (memory-mapped) are cached per process.
    """

    load_case: Callable[[str], Any]
    case_ids: list[str]
    info: DatasetInfo
    initial_patch_size: tuple[int, ...]
    aug: AugmentationParams
    batch_size: int                 # the global batch size (all ranks together)
    sample_indices: tuple[int, ...]  # this rank's share of 0..batch_size-1
    oversample: float
    augment: bool
    seed: int
    foreground_mode: str = "batch"  # autoseg.data.sampling.is_forced_foreground
    defer_augmentation: bool = False  # ship initial patches, label maps and seeds (augmented on the device)
    prior_labels: tuple[int, ...] = ()  # cascade: the case's ``prior`` label map joins as these one-hot channels

    def __post_init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self._pipeline = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_pipeline")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def _case(self, case_id: str) -> Any:
        if case_id not in self._cache:
            self._cache[case_id] = self.load_case(case_id)
        return self._cache[case_id]

    def _cut(self, key: BatchKey, index: int) -> tuple[CropFn, int]:
        """Where sample ``index`` of the global batch ``key`` lies: a crop function over its initial patch
        (offset and size relative to it) and the sample's augmentation seed."""
        rng = np.random.default_rng([self.seed, _STREAM_IDS[key.stream], key.epoch, key.iteration, index])
        case = self._case(self.case_ids[int(rng.integers(len(self.case_ids)))])
        forced = self.forced_foreground(key, index)
        z, lower = patch_location(case.seg.shape, case.fg_locations, self.initial_patch_size, forced, rng)
        source_data, source_seg = (case.data, case.seg) if z is None else (case.data[:, z], case.seg[z])
        # a cascade's prior label map travels as a second label channel: cut, rotated (nearest) and mirrored with
        # the label, never intensity-augmented
        source_prior = None if not self.prior_labels else case.prior if z is None else case.prior[z]
        masked = bool(self.aug.masked_channels)

        def crop(offset: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """The part of the initial patch the augmentation reads, straight from the (memory-mapped) case."""
            data = crop_padded(source_data, lower + offset, size, 0.0).astype(np.float32, copy=False)
            seg = crop_padded(source_seg[None], lower + offset, size, -1)
            if source_prior is not None:
                seg = np.concatenate([seg, crop_padded(source_prior[None], lower + offset, size, -1)])
            seg = seg.astype(np.int8, copy=False)
            if masked:  # outside the nonzero (brain) mask -> -1, zeroed again after augmentation
                seg[(seg == 0) & (data == 0).all(0, keepdims=True)] = -1
            return data, seg

        return crop, int(rng.integers(2**31))

    def sample(self, key: BatchKey, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` of the global batch ``key``: data (C, *patch), target (R or 1, *patch)."""
        crop, seed = self._cut(key, index)
        if self._pipeline is None:
            self._pipeline = training_transforms(self.aug) if self.augment else no_augmentation(self.aug)
        data, seg = self._pipeline(crop, self.initial_patch_size, seed)
        target = self.info.targets_from_label(seg[0])
        if self.prior_labels:   # cascade: the prior's one-hot after the image channels, perturbed for training
            prior = one_hot(seg[1], self.prior_labels)
            if self.augment:
                prior = perturb_prior(prior, np.random.default_rng([seed, _PRIOR_TAG]))
            data = np.concatenate([data, prior])
        return data, (target if self.info.region_based else target[None])

    def initial_sample(self, key: BatchKey, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Sample ``index`` not augmented: its initial patch (C, *initial), label map (1, *initial) int8 with
        -1 outside, and its augmentation seed (what ``Augmenter`` would draw from)."""
        crop, seed = self._cut(key, index)
        data, seg = crop(np.zeros(len(self.initial_patch_size), dtype=int), np.asarray(self.initial_patch_size))
        return data, seg, seed

    def forced_foreground(self, key: BatchKey, index: int) -> bool:
        """Whether sample ``index`` of batch ``key`` is centred on foreground. Mode "sample" draws from a generator
        of its own (the key plus a tag), so the case, patch and augmentation draws are those of mode "batch"."""
        draw = None
        if self.foreground_mode == "sample":
            draw = float(np.random.default_rng([self.seed, _STREAM_IDS[key.stream], key.epoch, key.iteration, index,
                                                _FOREGROUND_TAG]).random())
        return is_forced_foreground(index, self.batch_size, self.oversample, self.foreground_mode, draw)

    def batch(self, key: BatchKey, alloc: Callable[[tuple[int, ...], Any], np.ndarray] = np.empty) -> Batch:
        """The batch ``key``; ``alloc(shape, dtype)`` makes its two arrays (workers: shared memory)."""
        data = target = None
        deferred = self.defer_augmentation and self.augment
        seeds = np.zeros(len(self.sample_indices), dtype=np.int64)
        for i, j in enumerate(self.sample_indices):
            if deferred:
                d, t, seeds[i] = self.initial_sample(key, j)
            else:
                d, t = self.sample(key, j)
            if data is None:
                n = len(self.sample_indices)
                data, target = alloc((n, *d.shape), d.dtype), alloc((n, *t.shape), t.dtype)
            data[i], target[i] = d, t
        return Batch(data, target, seeds if deferred else None)


def _shared_batch(maker: BatchMaker, key: BatchKey) -> tuple[Any, Any, np.ndarray | None]:
    """The batch as two torch tensors in shared memory (the queue then passes handles, not 80 MB of pickle)
    and its augmentation seeds if deferred."""
    import torch
    tensors = []

    def alloc(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        tensors.append(torch.from_numpy(np.empty(0, dtype)).new_empty(shape).share_memory_())
        return tensors[-1].numpy()

    seeds = maker.batch(key, alloc).seeds
    return tensors[0], tensors[1], seeds


def _worker(makers: dict[str, BatchMaker], tasks: mp.Queue, results: mp.Queue) -> None:
    import torch

    torch.set_num_threads(1)  # one thread per worker: N workers on N cores do not oversubscribe
    while (task := tasks.get()) is not None:
        seq, key = task
        try:
            results.put((seq, _shared_batch(makers[key.stream], key), None))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises
            results.put((seq, None, traceback.format_exc()))


class BatchStream:
    """Yields batches for a sequence of keys, in order, from ``workers`` processes (0 = inline).

    At most ``prefetch`` batches are in flight, so memory stays bounded. Use as a context manager.
    """

    def __init__(self, makers: dict[str, BatchMaker], workers: int, prefetch: int | None = None) -> None:
        self.makers = makers
        self.workers = max(0, workers)
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self._procs: list[mp.Process] = []
        if self.workers:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self._tasks, self._results = ctx.Queue(), ctx.Queue()
            self._procs = [ctx.Process(target=_worker, args=(makers, self._tasks, self._results), daemon=True)
                           for _ in range(self.workers)]
            with children_ignore_ctrl_c():  # Ctrl-C is the parent's to handle: no traceback per worker
                for p in self._procs:
                    p.start()
        self._seq = 0

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batches(self, keys: Iterable[BatchKey]) -> Iterator[Batch]:
        if not self.workers:
            for key in keys:
                yield self.makers[key.stream].batch(key)
            return
        keys = iter(keys)
        pending: deque[int] = deque()
        done: dict[int, Batch] = {}

        def submit() -> bool:
            key = next(keys, None)
            if key is None:
                return False
            self._tasks.put((self._seq, key))
            pending.append(self._seq)
            self._seq += 1
            return True

        while len(pending) < self.prefetch and submit():
            pass
        while pending:
            want = pending.popleft()
            while want not in done:
                seq, tensors, error = self._get()
                if error:
                    raise RuntimeError(f"data loading worker failed:\n{error}")
                done[seq] = Batch(tensors[0].numpy(), tensors[1].numpy(), tensors[2])
            submit()
            yield done.pop(want)

    def _get(self) -> tuple[int, Any, str | None]:
        while True:
            try:
                return self._results.get(timeout=5)
            except queue.Empty:
                dead = [p for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"a data loading worker died (exit code {dead[0].exitcode}); "
                                       "likely out of memory: use fewer --workers") from None

    def close(self) -> None:
        for _ in self._procs:
            self._tasks.put(None)
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self._procs = []
