"""Shared pieces: interleaved A/B timing, medians, and the result table."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import attrs


@attrs.frozen
class Result:
    """One benchmark line: what was measured, the figure, the budget and whether it holds."""

    name: str
    value: float
    unit: str
    budget: str
    ok: bool
    detail: str = ""


def interleaved_ratio(
    bare: Callable[[], float],
    instrumented: Callable[[], float],
    pairs: int,
) -> tuple[float, float, float]:
    """Run ``bare`` and ``instrumented`` in alternating order ``pairs`` times (each returns a
    time, or a rate); returns (median bare, median instrumented, median of pair ratios)."""
    a: list[float] = []
    b: list[float] = []
    ratios: list[float] = []
    for i in range(pairs):
        if i % 2 == 0:
            x = bare()
            y = instrumented()
        else:
            y = instrumented()
            x = bare()
        a.append(x)
        b.append(y)
        ratios.append(y / x if x else float("inf"))
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` took, with the collector held off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def print_table(results: list[Result]) -> None:
    width = max(len(r.name) for r in results)
    print(f"{'benchmark':<{width}}  {'value':>10}  {'unit':<12} {'budget':<14} ok")
    for r in results:
        print(
            f"{r.name:<{width}}  {r.value:>10.3f}  {r.unit:<12} {r.budget:<14} "
            f"{'yes' if r.ok else 'NO'}  {r.detail}"
        )
