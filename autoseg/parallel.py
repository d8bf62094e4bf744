"""Run one function over many cases in a few threads, with a progress bar; split cases across jobs;
the cores and memory this process may use.

Threads, not processes: the per-case work here (gzip, SimpleITK/nibabel reads, numpy reductions)
releases the GIL, so threads give the parallelism without spawn start-up or copies of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import resource_tracker
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def memory_limit() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or a cgroup v2 limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        total = 2 ** 62   # unknown: nothing is refused on this ground
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int, desc: str, unit: str = "case") -> list[R]:
    """``[fn(x) for x in items]`` in ``workers`` threads, in order, with a tqdm bar on stderr.

    The first error (or Ctrl-C) cancels the items not started yet instead of working through them.
    """
    items = list(items)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(fn, item) for item in items]
        return [f.result() for f in tqdm(futures, desc=desc, unit=unit)]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def children_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes (and pool threads that start more later) inside this block: they never see Ctrl-C.

    A terminal sends SIGINT to the whole process group, workers included; the parent alone should answer
    with its one-line message and stop them. An ignore handler installed by the worker comes too late for a
    spawn worker still importing modules (it printed a KeyboardInterrupt traceback), so SIGINT is *blocked*
    in this thread instead: the mask is inherited through fork, exec and thread creation, and Python keeps
    it. The parent's own mask is restored on exit; a Ctrl-C that arrived meanwhile is delivered then.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # The first spawn starts multiprocessing's resource tracker, which unblocks SIGINT in this thread
    # when it is done; start it now so that it cannot undo the block below.
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def shard(items: Iterable[T], i: int, n: int, key: Callable[[T], object] | None = None) -> list[T]:
    """Job ``i`` of ``n`` (``--shard i/n``): every n-th item of the sorted items, starting at i.

    Deterministic, so the jobs of an array partition the cases without talking to each other.
    """
    return sorted(items, key=key)[i::n]  # type: ignore[type-var, arg-type]
