"""Shared by the per-tool stage runners. Imports nothing from either tool, so both venvs can use it.

A runner does one measurement per process and prints one line ``BENCH_RESULT {json}``; ``run.py``
reads it and adds the process's peak RSS. Times here cover the work only (not interpreter start-up
or imports); every runner times the same span for both tools.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PlanShape:
    """A plan both tools train in the end-to-end stages: the configuration it is stored as, patch, batch,
    features per stage (kernels 3, strides 1 then 2) and the target spacing (None: the planner's)."""

    configuration: str
    patch: tuple[int, ...]
    batch: int
    features: tuple[int, ...]
    spacing: float | None = None

    @property
    def strides(self) -> tuple[tuple[int, ...], ...]:
        return ((1,) * len(self.patch),) + ((2,) * len(self.patch),) * (len(self.features) - 1)


PLANS = {
    "default": PlanShape("3d_fullres", PATCH, BATCH, FEATURES),
    # the coarse-spacing BraTS plan that fits CPU training (benchmarks/real_data.py): 3 mm, 4 stages
    "coarse": PlanShape("3d_coarse", (48, 64, 48), 2, (32, 64, 128, 256), spacing=3.0),
    # dry runs: seconds on a CPU
    "tiny": PlanShape("3d_fullres", (16, 16, 16), 2, (8, 16, 32)),
}


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "2"))


def cpu_features() -> dict:
    """The CPU model and what it computes natively (first processor of /proc/cpuinfo): AVX2, AVX-512F, and
    bf16 (AVX512-BF16 or AMX-BF16), which decides autoseg's ``--precision auto`` on a CPU."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


def describe_cpu_features(f: dict) -> str:
    yes = {True: "yes", False: "no"}
    return f"AVX2 {yes[f['avx2']]}, AVX-512 {yes[f['avx512']]}, native bf16 (AVX512-BF16/AMX) {yes[f['bf16']]}"


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def _children(pid: int) -> list[int] | None:
    """Direct children from /proc/PID/task/*/children, None where the kernel does not provide it."""
    try:
        return [int(c) for task in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except FileNotFoundError:
        return [] if not Path(f"/proc/{pid}").exists() else None
    except OSError:
        return None


def process_tree(root: int) -> dict[int, list[str]]:
    """``root`` and its living descendants: pid -> the fields of /proc/PID/stat after the command name.
    Walks the children lists (cheap whatever else runs); scans all of /proc where they are missing."""
    tree, frontier, walked = {root}, [root], True
    while frontier and walked:
        kids = _children(frontier.pop())
        if kids is None:
            walked = False
        else:
            frontier.extend(k for k in kids if k not in tree)
            tree.update(kids)
    if not walked:
        parents = {int(d): f[1] for d in os.listdir("/proc") if d.isdigit() and (f := _stat_fields(int(d)))}
        tree, frontier = {root}, [root]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parents.items() if int(pp) == p and c not in tree]
            tree.update(kids)
            frontier.extend(kids)
    return {p: f for p in tree if (f := _stat_fields(p)) is not None}


def tree_rss_bytes(root: int) -> int:
    """Summed RSS of a process tree (an upper bound: shared pages count once per process)."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(f[21]) * page for f in process_tree(root).values() if len(f) > 21)


def tree_cpu_seconds(root: int | None = None) -> float:
    """User + system CPU seconds of a process and its living descendants (loader workers included)."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(f[11]) + int(f[12])) / tick for f in process_tree(root or os.getpid()).values() if len(f) > 12)


class CpuTrace:
    """Samples this process tree's CPU seconds every ``interval`` s in a thread, and the first time each
    ``marks`` predicate holds; ``cpu_seconds(t0, t1)`` interpolates between the samples. A sample reads
    /proc (milliseconds), so the thread takes about 1 % of a core and of the interpreter at 0.5 s."""

    def __init__(self, interval: float = 0.5, marks: dict[str, Callable[[], bool]] | None = None) -> None:
        self.interval, self.marks = interval, dict(marks or {})
        self.samples: list[tuple[float, float]] = []
        self.marked: dict[str, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        now = time.perf_counter()
        self.samples.append((now, tree_cpu_seconds()))
        for name, holds in self.marks.items():
            if name not in self.marked and holds():
                self.marked[name] = now

    def _run(self) -> None:
        while True:
            self._sample()
            if self._done.wait(self.interval):
                return

    def __enter__(self) -> CpuTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._sample()  # a mark reached after the last sample (a run shorter than the interval) is set here

    def cpu_seconds(self, t0: float, t1: float) -> float:
        import numpy as np

        times, cpu = zip(*self.samples)
        return float(np.interp(t1, times, cpu) - np.interp(t0, times, cpu))


def gpu_peak_gb(device: str) -> float | None:
    """torch.cuda.max_memory_allocated of this process in GB, None off CUDA."""
    import torch

    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


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
    p.add_argument("--iters", type=int, default=1,
                   help="train_step: timed steps after one warm-up step; train_loop: iterations per epoch (of 2, the "
                        "second timed)")
    p.add_argument("--case", default=None, help="inference: case id (default: the first training case)")
    p.add_argument("--precision", default="auto", help="train_step: autoseg's --precision (nnU-Net: fp32 on CPU)")
    p.add_argument("--plan", choices=sorted(PLANS), default="default",
                   help="train_loop, inference: the plan (default BraTS, coarse 3 mm, tiny for dry runs)")
    p.add_argument("--device", default="cpu", help="train_loop, inference: cpu or cuda")
    p.add_argument("--augment-on", default="cpu", choices=["cpu", "device"],
                   help="train_loop: where autoseg augments (nnU-Net: always its CPU workers)")
    p.add_argument("--workers", type=int, default=None, help="train_loop: loader processes (default: OMP_NUM_THREADS)")
    return p


def main(doc: str, tool: str, *, fingerprint_plan, preprocess, dataloader, train_step, inference, train_loop=None,
         setup=None) -> None:
    """Parse the command line, run one stage with a tool's functions, print its result line. ``setup(work)``
    runs first. A missing module or stage (not built yet) is reported as ``missing`` instead of a number."""
    if train_loop is None:
        def train_loop(a, shape, precision):
            raise ImportError(f"{tool}'s runner has no train_loop stage")

    stages = {
        "fingerprint_plan": lambda a: fingerprint_plan(a.work),
        "preprocess": lambda a: preprocess(a.work),
        "dataloader": lambda a: dataloader(a.work, a.batches, a.warmup),
        "train_step": lambda a: train_step(a.iters, a.precision),
        "train_step_fp32": lambda a: train_step(a.iters, "fp32"),
        "inference": lambda a: inference(a.work, a.case, tta=False, **_plan_and_device(a)),
        "inference_tta": lambda a: inference(a.work, a.case, tta=True, **_plan_and_device(a)),
        # end-to-end: two epochs of --iters iterations of the tool's own training loop, the second timed
        "train_loop": lambda a: train_loop(a, PLANS[a.plan], a.precision),
        "train_loop_fp32": lambda a: train_loop(a, PLANS[a.plan], "fp32"),
        "train_loop_coarse": lambda a: train_loop(a, PLANS[a.plan], a.precision),   # run.py passes --plan coarse
        "train_loop_coarse_fp32": lambda a: train_loop(a, PLANS[a.plan], "fp32"),
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


def _plan_and_device(a: argparse.Namespace) -> dict:
    """--plan and --device for a stage that takes them, only where they differ from the default plan on the CPU."""
    out = {} if a.plan == "default" else {"shape": PLANS[a.plan]}
    return out if a.device == "cpu" else {**out, "device": a.device}


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
