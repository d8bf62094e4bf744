"""thread_map: results in input order; the first error stops the work that has not started. Worker processes
started under children_ignore_ctrl_c never see Ctrl-C, from their first instruction on."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time

import pytest

from autoseg.parallel import children_ignore_ctrl_c, thread_map


def test_results_keep_input_order() -> None:
    assert thread_map(lambda x: x * x, range(20), workers=3, desc="test") == [x * x for x in range(20)]


def test_first_error_cancels_pending_items() -> None:
    calls: list[int] = []
    slow = threading.Event()

    def fn(x: int) -> int:
        calls.append(x)
        if x == 0:
            raise ValueError("bad case")
        slow.wait(0.05)  # never set: each later item takes a moment, so most are still queued
        return x

    with pytest.raises(ValueError, match="bad case"):
        thread_map(fn, range(50), workers=1, desc="test")
    assert len(calls) < 50


def _sigint_blocked(pid: int) -> bool:
    """SIGINT (signal 2) is in the process's blocked mask, read from /proc."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigBlk:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    raise AssertionError("no SigBlk line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_workers_started_in_the_block_never_see_ctrl_c(method: str) -> None:
    # A spawn worker is checked at once, while it is still importing: that is when an ignore handler
    # installed by the worker itself came too late and Ctrl-C printed a traceback.
    ctx = multiprocessing.get_context(method)
    with children_ignore_ctrl_c():
        proc = ctx.Process(target=time.sleep, args=(2,))
        proc.start()
    try:
        assert _sigint_blocked(proc.pid)
        assert not _sigint_blocked(os.getpid())  # the parent still answers Ctrl-C
        os.kill(proc.pid, signal.SIGINT)
        proc.join(0.5)
        assert proc.is_alive()
    finally:
        proc.terminate()
        proc.join()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_that_arrives_inside_the_block_reaches_the_parent_after_it() -> None:
    # Python's own Ctrl-C handler, also where the suite itself was started with SIGINT ignored (a background
    # job of a non-interactive shell: `pytest &` failed this test)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with children_ignore_ctrl_c():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # blocked: nothing happens here
            time.sleep(1)  # delivered on leaving the block
    finally:
        signal.signal(signal.SIGINT, previous)
