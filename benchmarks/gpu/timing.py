"""Timing shared by the GPU benchmarks."""

from __future__ import annotations

import time


def fastest_seconds(call, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``call()`` (the call must block until done)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best
