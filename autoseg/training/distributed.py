"""DistributedDataParallel plumbing: the same command under ``torchrun --nproc_per_node N``.

Ranks come from the environment (RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU, nccl on CUDA. The
global batch (the plan's batch size) is split across ranks; rank 0 writes every file.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from autoseg.errors import fail


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> DistInfo:
    """Ranks set by torchrun (or a spawning test); a single process when WORLD_SIZE is unset or 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))))


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group with nccl on CUDA, gloo otherwise, and leave it again on exit.

    A group that was already joined (by the caller) is used and left alone. Leaving it here, while the
    interpreter is fully alive, matters: gloo's worker threads release the last tensors of a finished
    collective a moment after it returns, and if that happens during interpreter shutdown the process
    aborts ("terminate called without an active exception") after a successful run. Destroying the group
    (and collecting the DDP wrapper's reference cycles, which keep it alive) joins those threads first.
    """
    owned = info.enabled and not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size)
    try:
        yield
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
            gc.collect()


def rank_share(batch_size: int, info: DistInfo) -> tuple[int, ...]:
    """This rank's sample indices of the global batch (contiguous, as equal as possible)."""
    if batch_size < info.world_size:
        raise fail(None, f"batch size {batch_size} is smaller than the number of processes ({info.world_size})",
                   "use fewer GPUs (--nproc_per_node) or a plan with a larger batch")
    return tuple(int(i) for i in np.array_split(np.arange(batch_size), info.world_size)[info.rank])


def reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
