"""Shared by the per-tool stage runners. Imports nothing from either tool, so both venvs can use it.

A runner does one measurement per process and prints one line ``BENCH_RESULT {json}``; ``run.py``
reads it and adds the process's peak RSS. Times here cover the work only (not interpreter start-up
or imports); every runner times the same span for both tools.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

RESULT_TAG = "BENCH_RESULT "
DATASET_ID = 900
DATASET_NAME = "Dataset900_BraTSBench"
CHANNELS = 4
REGIONS = 3
# The default BraTS topology (nnU-Net's measured plan for full-size BraTS, facts file section 4):
PATCH = (128, 128, 128)
BATCH = 2
FEATURES = (32, 64, 128, 256, 320, 320)
STRIDES = ((1, 1, 1),) + ((2, 2, 2),) * 5


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def emit(**result) -> None:
    """The one line run.py parses."""
    print(RESULT_TAG + json.dumps(result), flush=True)


@contextmanager
def timed(out: dict, key: str = "seconds"):
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("stage")
    p.add_argument("--work", type=Path, required=True, help="benchmarks/work")
    p.add_argument("--batches", type=int, default=12, help="dataloader: batches timed after warm-up")
    p.add_argument("--warmup", type=int, default=8, help="dataloader: batches drawn before timing (drains caches)")
    p.add_argument("--iters", type=int, default=1, help="train_step: timed steps after one warm-up step")
    p.add_argument("--case", default=None, help="inference: case id (default: the first training case)")
    p.add_argument("--precision", default="auto", help="train_step: autoseg's --precision (nnU-Net: fp32 on CPU)")
    return p


def main(doc: str, tool: str, *, fingerprint_plan, preprocess, dataloader, train_step, inference,
         setup=None) -> None:
    """Parse the command line, run one stage with a tool's functions, print its result line. ``setup(work)``
    runs first. A missing module (a stage not built yet) is reported as ``missing`` instead of a number."""
    stages = {
        "fingerprint_plan": lambda a: fingerprint_plan(a.work),
        "preprocess": lambda a: preprocess(a.work),
        "dataloader": lambda a: dataloader(a.work, a.batches, a.warmup),
        "train_step": lambda a: train_step(a.iters, a.precision),
        "train_step_fp32": lambda a: train_step(a.iters, "fp32"),
        "inference": lambda a: inference(a.work, a.case, tta=False),
        "inference_tta": lambda a: inference(a.work, a.case, tta=True),
    }
    args = parser(doc).parse_args()
    if args.stage not in stages:
        raise SystemExit(f"unknown stage {args.stage}; one of {', '.join(stages)}")
    if setup is not None:
        setup(args.work)
    try:
        result = stages[args.stage](args)
    except ImportError as e:
        result = {"missing": f"{tool}: {e}"}
    emit(**result)


def raw_dir(work: Path) -> Path:
    return work / "autoseg" / "raw" / DATASET_NAME


def case_ids(work: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (raw_dir(work) / "labelsTr").glob("*.nii.gz"))


def case_files(work: Path, case: str) -> list[str]:
    return [str(raw_dir(work) / "imagesTr" / f"{case}_{c:04d}.nii.gz") for c in range(CHANNELS)]


def synthetic_batch(seed: int = 0):
    """The same random training batch for both tools: data (B, C, *PATCH) and region targets per
    deep-supervision scale (full resolution first, halving per stage like both networks' outputs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    data = torch.randn((BATCH, CHANNELS, *PATCH), generator=g)
    targets = []
    for s in range(len(FEATURES) - 1):
        shape = [p // 2 ** s for p in PATCH]
        targets.append((torch.rand((BATCH, REGIONS, *shape), generator=g) > 0.9).float())
    return data, targets
