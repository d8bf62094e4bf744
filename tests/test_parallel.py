"""thread_map: results in input order; the first error stops the work that has not started."""

from __future__ import annotations

import threading

import pytest

from autoseg.parallel import thread_map


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
