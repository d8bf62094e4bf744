"""Run one function over many cases in a few threads, with a progress bar; split cases across jobs.

Threads, not processes: the per-case work here (gzip, SimpleITK/nibabel reads, numpy reductions)
releases the GIL, so threads give the parallelism without spawn start-up or copies of the inputs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


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


def ignore_interrupts() -> None:
    """For worker processes: leave Ctrl-C to the parent, which stops them and prints the one-line message.

    A terminal sends SIGINT to the whole process group; without this every worker would print its own
    KeyboardInterrupt traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shard(items: Iterable[T], i: int, n: int, key: Callable[[T], object] | None = None) -> list[T]:
    """Job ``i`` of ``n`` (``--shard i/n``): every n-th item of the sorted items, starting at i.

    Deterministic, so the jobs of an array partition the cases without talking to each other.
    """
    return sorted(items, key=key)[i::n]  # type: ignore[type-var, arg-type]
