"""Run one function over many cases in a few threads or worker processes; split cases across jobs;
the cores and memory this process may use.

Threads where the per-case work (gzip, SimpleITK/nibabel reads, numpy reductions) releases the GIL: no
spawn start-up, no copies of the inputs. Processes (:func:`process_map`) where it does not (resampling).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, TypeVar

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


class WorkerDied(Exception):
    """A worker process ended while it held a task: killed (SIGKILL, the out-of-memory killer) or crashed."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            try:
                how = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"killed by signal {-exitcode}"
            if exitcode == -signal.SIGKILL:
                how += " (often the out-of-memory killer)"
        else:
            how = f"ended with exit code {exitcode}"
        super().__init__(f"worker process {how}")


class RemoteError(Exception):
    """The traceback of an exception raised in a worker process (attached as the ``__cause__`` of it)."""


@dataclass
class _Worker:
    process: Any   # multiprocessing.Process of the spawn context
    conn: Connection
    task: int | None = None   # index of the item it holds
    done: int = 0


def _worker_main(conn: Connection, fn: Callable[[Any], Any], tasks: int | None) -> None:
    """Loop of a worker process: take an item, send back ``(True, result)`` or ``(False, (exception, traceback))``."""
    done = 0
    while tasks is None or done < tasks:
        try:
            item = conn.recv()
        except EOFError:   # the parent is gone
            return
        if item is None:
            return
        try:
            reply: tuple[bool, Any] = (True, fn(item))
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent, which decides
            reply = (False, (e, "".join(traceback.format_exception(e))))
        try:
            conn.send(reply)
        except Exception as e:  # noqa: BLE001 - a result or exception that cannot be pickled
            conn.send((False, (RuntimeError(f"{type(e).__name__}: {e}"), "")))
        done += 1


def process_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                tasks_per_worker: int | None = None) -> Iterator[tuple[T, R | WorkerDied]]:
    """``(item, fn(item))`` in completion order, computed in ``workers`` spawn processes (one item each at a time).

    Written to be stopped at any moment, which ``multiprocessing.Pool`` is not: its workers share one task
    queue whose lock a worker holds while it waits for a task, so a worker killed while waiting (SIGTERM to a
    SLURM job's process group) left the lock taken and ``Pool.terminate()`` waited for it forever. Here each
    worker has a pipe of its own and the parent also watches every worker's exit: nothing is shared, so no
    worker's death can block another process. A worker that dies holding an item (killed outright, as by the
    out-of-memory killer) yields that item with a :class:`WorkerDied` instead of a result and is replaced; the
    other items go on. An exception ``fn`` raises in a worker is raised here. Closing the generator (an
    error, Ctrl-C, SIGTERM) kills every worker before it returns. Workers never see Ctrl-C (see
    :func:`children_ignore_ctrl_c`) and keep SIGTERM's default action, so a SIGTERM sent to them ends them.
    ``tasks_per_worker`` replaces a worker after that many items (bounded memory over long runs).
    """
    from autoseg.errors import interrupts_deferred   # (autoseg.errors imports nothing of this module)

    items = list(items)
    workers = min(max(1, workers), len(items))
    ctx = multiprocessing.get_context("spawn")
    pending = list(range(len(items)))[::-1]   # popped from the end: items in order
    running: list[_Worker] = []

    def start() -> None:
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_worker_main, args=(theirs, fn, tasks_per_worker), daemon=True)
        with interrupts_deferred(), children_ignore_ctrl_c():   # never a started worker this loop does not know
            process.start()
            running.append(_Worker(process, ours))
        theirs.close()
        give(running[-1])

    def give(w: _Worker) -> None:
        w.task = pending.pop()
        try:
            w.conn.send(items[w.task])
        except OSError:   # it has died meanwhile: the item goes back, its exit is handled below
            pending.append(w.task)
            w.task = None

    def retire(w: _Worker) -> None:
        running.remove(w)
        w.conn.close()
        w.process.join()

    try:
        for _ in range(workers):
            start()
        while running:
            ready = set(wait([w.conn for w in running] + [w.process.sentinel for w in running]))
            for w in [w for w in running if w.conn in ready or w.process.sentinel in ready]:
                try:
                    ok, value = w.conn.recv() if w.conn.poll() else (None, None)
                except (EOFError, OSError):
                    ok, value = None, None
                task, w.task = w.task, None
                if ok is None:   # it has exited: after its last item, or while it held one (killed)
                    retire(w)
                    if pending and len(running) < workers:
                        start()
                    if task is not None:
                        yield items[task], WorkerDied(w.process.exitcode)
                elif not ok:
                    error, remote = value
                    raise error from RemoteError(remote)
                else:
                    w.done += 1
                    if pending and (tasks_per_worker is None or w.done < tasks_per_worker):
                        give(w)
                    elif not pending:
                        with contextlib.suppress(OSError):   # (if it has died meanwhile, its exit says so)
                            w.conn.send(None)
                    yield items[task], value   # type: ignore[index]
    finally:
        for w in running:
            if w.process.is_alive():
                w.process.kill()
        for w in list(running):
            retire(w)


def shard(items: Iterable[T], i: int, n: int, key: Callable[[T], object] | None = None) -> list[T]:
    """Job ``i`` of ``n`` (``--shard i/n``): every n-th item of the sorted items, starting at i.

    Deterministic, so the jobs of an array partition the cases without talking to each other.
    """
    return sorted(items, key=key)[i::n]  # type: ignore[type-var, arg-type]
