"""Reactor lag as a compact log-bucket histogram: cumulative counts for Prometheus and a ring of
per-interval histograms for percentiles over a time window (bounded memory)."""

from __future__ import annotations

import math
from collections import deque

import attrs

#: Upper bounds of the lag buckets, seconds (a 1-2-5 series, 50 us .. 30 s). A sample ``x`` goes
#: into the first bucket whose bound is ``>= x`` (Prometheus ``le`` semantics); one more bucket
#: (+Inf) follows the last bound.
LAG_BOUNDS_S: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)


class LagCounters:
    """The hot-path side: per-bucket counts and the sum since creation, plus the largest
    delayed-call lateness of the current interval.

    Written by the reactor thread only (the hooks do ``counts[bisect_left(bounds, x)] += 1``
    directly on the lists, which never change identity).
    """

    __slots__ = ("bounds_s", "counts", "late_max_s", "sum_s")

    def __init__(self, bounds_s: tuple[float, ...] = LAG_BOUNDS_S) -> None:
        self.bounds_s: list[float] = list(bounds_s)
        #: per-bucket sample counts since creation; ``len(bounds_s) + 1`` entries (last is +Inf)
        self.counts: list[int] = [0] * (len(bounds_s) + 1)
        #: sum of all samples since creation, seconds
        self.sum_s = 0.0
        #: the largest delayed-call lateness since the last interval close, seconds
        self.late_max_s = 0.0


@attrs.define
class _Slot:
    start: float
    counts: list[int]
    max_s: float


@attrs.define
class LagWindow:
    """Per-interval histograms kept in a ring that covers ``window_s`` seconds of the clock.

    Intervals closer together than ``window_s / slots`` are merged into one slot, so memory is
    at most ``slots + 2`` small lists whatever the collect rate. Totals over the window are kept
    incrementally, so a percentile costs O(buckets). Reactor thread only.
    """

    nbuckets: int
    window_s: float
    slots: int = 256
    _ring: deque[_Slot] = attrs.field(init=False)
    _totals: list[int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._ring = deque(maxlen=self.slots + 2)
        self._totals = [0] * self.nbuckets

    @property
    def slot_s(self) -> float:
        return self.window_s / self.slots

    def add_interval(self, now: float, counts: list[int], max_s: float) -> None:
        """Add a closed interval (per-bucket counts, largest sample) ending at ``now`` (clock s)."""
        ring = self._ring
        if ring and ring[-1].start > now - self.slot_s:
            slot = ring[-1]
            slot.counts = [a + b for a, b in zip(slot.counts, counts, strict=True)]
            slot.max_s = max(slot.max_s, max_s)
        else:
            if len(ring) == ring.maxlen:
                self._evict(ring[0])
            ring.append(_Slot(now, list(counts), max_s))
        self._totals = [a + b for a, b in zip(self._totals, counts, strict=True)]
        self.expire(now)

    def expire(self, now: float) -> None:
        """Drop slots that ended before ``now - window_s``."""
        ring = self._ring
        horizon = now - self.window_s
        while ring and ring[0].start < horizon:
            self._evict(ring.popleft())

    def _evict(self, slot: _Slot) -> None:
        self._totals = [a - b for a, b in zip(self._totals, slot.counts, strict=True)]

    def view(self, now: float | None = None, pending: _Pending | None = None) -> LagView:
        """The window's samples, changing nothing: without the slots that ended before
        ``now - window_s`` when ``now`` is given (what ``expire(now)`` would drop), plus the
        ``pending`` interval (per-bucket counts and largest sample) when given (an interval
        not closed yet). O(buckets), plus the slots that expired."""
        totals = self._totals
        live = self._ring
        if now is not None:
            horizon = now - self.window_s
            expired = [slot for slot in self._ring if slot.start < horizon]
            if expired:
                totals = list(totals)
                for slot in expired:
                    totals = [a - b for a, b in zip(totals, slot.counts, strict=True)]
                live = deque(slot for slot in self._ring if slot.start >= horizon)
        count = sum(totals)
        top = max((slot.max_s for slot in live), default=None) if count else None
        if pending is not None and any(pending[0]):
            totals = [a + b for a, b in zip(totals, pending[0], strict=True)]
            count = sum(totals)
            top = pending[1] if top is None else max(top, pending[1])
        return LagView(list(totals), count, top)

    @property
    def count(self) -> int:
        """Samples in the window."""
        return sum(self._totals)

    def max_s(self) -> float | None:
        """The largest sample in the window, seconds (None without samples)."""
        return self.view().max_s

    def percentile_s(self, q: float, bounds_s: list[float]) -> float | None:
        """The ``q`` quantile (0..1) over the window, seconds (see :meth:`LagView.percentile_s`)."""
        return self.view().percentile_s(q, bounds_s)


#: an interval not closed yet: (per-bucket counts, largest sample in seconds)
_Pending = tuple[list[int], float]


@attrs.frozen
class LagView:
    """Samples of a window as read at one moment: per-bucket ``totals``, their ``count`` and
    the largest sample ``max_s`` (seconds, None without samples)."""

    totals: list[int]
    count: int
    max_s: float | None

    def percentile_s(self, q: float, bounds_s: list[float]) -> float | None:
        """The ``q`` quantile (0..1), seconds, interpolated linearly inside its bucket and
        never above the maximum. None without samples."""
        total = self.count
        top = self.max_s
        if not total or top is None:
            return None
        rank = q * total
        seen = 0
        for index, n in enumerate(self.totals):
            if n and seen + n >= rank:
                low = bounds_s[index - 1] if index > 0 else 0.0
                high = bounds_s[index] if index < len(bounds_s) else top
                value = low + (high - low) * max(0.0, rank - seen) / n
                return min(value, top)
            seen += n
        return top


def cumulative_le(counts: list[int]) -> list[int]:
    """Per-bucket counts -> Prometheus ``le`` counts (each bucket includes all below it)."""
    out: list[int] = []
    running = 0
    for n in counts:
        running += n
        out.append(running)
    return out


def finite_ms(value_s: float | None) -> float | None:
    """Seconds -> milliseconds rounded to 0.001 ms; None and non-finite values become None."""
    if value_s is None or not math.isfinite(value_s):
        return None
    return round(value_s * 1000.0, 3)
