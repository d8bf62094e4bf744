"""Data-loader throughput: batches per second of the training pipeline (sampling + batchgenerators
augmentation in worker processes), at a plan's patch and batch size.

    python benchmarks/dataloader.py                        # default BraTS plan (128^3, bs 2) and a small one
    python benchmarks/dataloader.py --patch 64 64 64 --batch 2 --workers 0 2 4
    python benchmarks/dataloader.py --config-dir autoseg_data/preprocessed/Dataset001_BraTS/3d_fullres

Without ``--config-dir`` it writes synthetic BraTS-sized cases (4 x 138 x 169 x 138 float32, memory-mapped
.npy like the preprocessed format) to a temporary folder. Numbers depend on the CPU cores free.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg import brats
from autoseg.data.augmentation import AugmentationParams, initial_patch_size
from autoseg.data.loader import BatchKey, BatchMaker, BatchStream
from autoseg.dataset import DatasetInfo
from autoseg.synthetic import make_case

BRATS_INFO = DatasetInfo(channel_names={"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"},
                         labels=brats.labels_for("brats2023"), file_ending=".nii.gz", num_training=0,
                         regions_class_order=brats.regions_class_order_for("brats2023"))


@dataclass(frozen=True)
class NpyCase:
    data: np.ndarray
    seg: np.ndarray
    fg_locations: dict[str, np.ndarray]


def load_npy_case(folder: Path, case_id: str) -> NpyCase:
    seg = np.load(folder / f"{case_id}_seg.npy", mmap_mode="r")
    fg = {name: np.argwhere(np.isin(seg, r))[:10_000] for name, r in zip(BRATS_INFO.foreground_names, BRATS_INFO.regions)}
    return NpyCase(np.load(folder / f"{case_id}_data.npy", mmap_mode="r"), seg, fg)


def write_synthetic_cases(folder: Path, n: int, shape: tuple[int, int, int]) -> list[str]:
    ids = []
    for i in range(n):
        case = make_case(shape=shape, seed=i, convention="brats2023")
        data = np.stack(case.images).astype(np.float32)
        brain = data[0] > 0
        for c in range(len(data)):  # z-score inside the brain, like preprocessing
            v = data[c][brain]
            data[c][brain] = (v - v.mean()) / max(v.std(), 1e-8)
        np.save(folder / f"case{i}_data.npy", data)
        np.save(folder / f"case{i}_seg.npy", case.label.astype(np.int8))
        ids.append(f"case{i}")
    return ids


def measure(load, case_ids: list[str], info: DatasetInfo, patch: tuple[int, ...], batch: int, workers: int,
            n_batches: int, warmup: int) -> float:
    aug = AugmentationParams(patch, tuple(range(len(patch))), tuple(range(info.num_channels)))
    maker = BatchMaker(load, case_ids, info, initial_patch_size(patch), aug, batch, tuple(range(batch)), 0.33, True, 0)
    keys = [BatchKey("train", 0, i) for i in range(warmup + n_batches)]
    with BatchStream({"train": maker}, workers) as stream:
        it = stream.batches(keys)
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in it:
            pass
        return n_batches / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-dir", type=Path, help="preprocessed configuration folder (default: synthetic cases)")
    p.add_argument("--patch", type=int, nargs="+", action="append", help="patch size (repeatable)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch size per --patch (default 2)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker counts to measure")
    p.add_argument("--batches", type=int, default=10, help="timed batches per setting")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (fill the prefetch queue)")
    p.add_argument("--cases", type=int, default=3, help="synthetic cases to write")
    p.add_argument("--work", type=Path, help="keep the synthetic cases here and reuse them (default: a temporary folder)")
    args = p.parse_args()
    patches = [tuple(x) for x in (args.patch or [[128, 128, 128], [64, 64, 64]])]
    batches = args.batch or [2] * len(patches)
    with tempfile.TemporaryDirectory() as tmp:
        if args.config_dir:
            from autoseg.preprocessing import list_preprocessed_cases, load_case
            load = functools.partial(load_case, args.config_dir)
            case_ids = list_preprocessed_cases(args.config_dir)
            info = DatasetInfo.load(args.config_dir.parent.parent.parent / "raw" / args.config_dir.parent.name / "dataset.json")
        else:
            folder = args.work or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            case_ids = [f"case{i}" for i in range(args.cases)]
            if not all((folder / f"{c}_seg.npy").is_file() for c in case_ids):
                case_ids = write_synthetic_cases(folder, args.cases, (138, 169, 138))
            load, info = functools.partial(load_npy_case, folder), BRATS_INFO
        print(f"{len(case_ids)} cases; patch, batch, workers -> batches/s")
        for patch, batch in zip(patches, batches):
            for w in args.workers:
                rate = measure(load, case_ids, info, patch, batch, w, args.batches, args.warmup)
                print(f"patch {'x'.join(map(str, patch))} (initial {'x'.join(map(str, initial_patch_size(patch)))}), "
                      f"batch {batch}, workers {w}: {rate:.2f} batches/s ({1 / rate:.2f} s/batch)", flush=True)


if __name__ == "__main__":
    main()
