"""A recording served as the dashboard: a read-only, monitor-like source behind the same app.

:class:`ReplaySource` has what :class:`dashboard.web.app.DashboardApp` reads of a Monitor
(``latest()``, ``samples()``, ``history_seconds``, the answer limits, ``errors``), taken from
the file, plus ``replay``: the answers of :mod:`dashboard.recorder.replay_web` that the app's
snapshot, history, series and metrics routes hand over to when it is set. It never takes a
sample and is never "running" (so the event stream answers 503: the replayed page does not
open it).

The file is read on each request (its span too), so a file another process is still
recording into (WAL) shows its newest samples. Reactor thread only.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable, Iterator
from typing import Any

from dashboard.answer_limits import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_SERIES_ANSWERS,
    DEFAULT_MAX_SNAPSHOT_ANSWERS,
    BulkAnswers,
)
from dashboard.monitor import Sample
from dashboard.probes.base import ProbeErrors
from dashboard.recorder.store import RecordingError, RecordingStore, StoredSample

#: samples read for one history answer at most (a longer range is paged: ``next_from``)
MAX_HISTORY_SAMPLES = 900
#: samples in one series answer at most (a longer range is thinned evenly)
MAX_SERIES_POINTS = 1200


def as_sample(stored: StoredSample) -> Sample:
    """A stored sample as the app's ``Sample``: keyed by its row (seqs restart when a
    program is restarted into the same file), its dict decoded on demand."""
    sample = Sample(seq=stored.id, time=stored.time, data={}, encoded=stored.encoded)
    sample.release()
    return sample


class ReplaySource:
    """One recording file, read as the dashboard reads a Monitor."""

    def __init__(self, store: RecordingStore, reactor: Any) -> None:
        self.store = store
        self.reactor = reactor
        self.errors = ProbeErrors()
        self.history_answers = BulkAnswers(max_in_flight=DEFAULT_MAX_IN_FLIGHT)
        self.series_answers = BulkAnswers(max_in_flight=DEFAULT_MAX_SERIES_ANSWERS)
        self.snapshot_answers = BulkAnswers(max_in_flight=DEFAULT_MAX_SNAPSHOT_ANSWERS)
        self.running = False
        self.interval = self._interval()
        span = self.span()
        self.history = max(1, round((span[1] - span[0]) / self.interval) + 1)

    @property
    def replay(self) -> ReplaySource:
        """Set on a replay source only: the app's routes answer from the file."""
        return self

    def span(self) -> tuple[float, float]:
        """(first, last) sample time now; RecordingError when the file holds none."""
        span = self.store.span()
        if span is None:
            raise RecordingError(f"{self.store.path} holds no sample yet")
        return span

    def _interval(self) -> float:
        """The interval the samples were taken at: the median gap of the first ones (1 s
        when there are too few to tell), from their own ``interval_s`` when it is there."""
        refs = self.store.times(float("-inf"), float("inf"), 64)
        for sample in self.store.read(refs[-1:]):
            try:
                value = json.loads(sample.encoded).get("interval_s")
            except ValueError:
                value = None
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(refs) if b[1] > a[1]]
        return float(statistics.median(gaps)) if gaps else 1.0

    @property
    def history_seconds(self) -> int:
        start, end = self.span()
        return max(1, round(end - start + self.interval))

    def page_config(self) -> dict[str, Any]:
        """What the replayed page learns of the recording (``config.replay``)."""
        start, end = self.span()
        return {
            "from": start,
            "to": end,
            "samples": self.store.count(),
            "path": self.store.path.name,
            "corrupt_total": self.store.corrupt_total,
        }

    # what the app reads of a Monitor ------------------------------------------------------

    def at(self, moment: float) -> Sample:
        stored = self.store.at(moment)
        if stored is None:
            raise RecordingError(f"{self.store.path} holds no readable sample")
        return as_sample(stored)

    def latest(self) -> Sample:
        """The newest sample of the file (the page opens on it)."""
        return self.at(float("inf"))

    def between(
        self, start: float, end: float, limit: int, *, after_id: int | None = None
    ) -> tuple[list[StoredSample], bool]:
        """The samples in [start, end], oldest first, at most ``limit``; and whether more
        were left out. With ``after_id``, those at ``start`` up to that row are left out
        (the next page after the last sample read: time order, then row)."""
        if after_id is None:
            refs = self.store.times(start, end, limit + 1)
        else:
            refs = self.store.times_after(start, after_id, end, limit + 1)
        more = len(refs) > limit
        return list(self.store.read(refs[:limit])), more

    def thinned(self, start: float, end: float, points: int) -> Iterator[Sample]:
        """At most ``points`` samples of [start, end], picked evenly (every n-th row), the
        last one always; the range is never listed whole (a day at 0.1 s is 864,000 rows)."""
        total = self.store.count_between(start, end)
        if total > points:
            nth = -(-total // (points - 1))  # ceiling: at most points - 1, then the last
            picked = self.store.every_nth(start, end, nth, points - 1)
            last = self.store.at(end)
            if last is not None and start <= last.time and (not picked or last.id != picked[-1][0]):
                picked.append((last.id, last.time, last.seq))
        else:
            picked = self.store.times(start, end, points)
        for stored in self.store.read(picked):
            yield as_sample(stored)

    def samples(
        self, since_seq: int | None = None, seconds: float | None = None
    ) -> Iterator[Sample]:
        """The last ``seconds`` of the recording (at most a history answer's worth)."""
        start, end = self.span()
        if seconds is not None:
            start = max(start, end - seconds)
        stored, _ = self.between(start, end, MAX_HISTORY_SAMPLES)
        for sample in stored:
            if since_seq is None or sample.id > since_seq:
                yield as_sample(sample)

    def subscribe(self, subscriber: Callable[[Sample], None]) -> Callable[[], None]:
        """A recording takes no new sample: nothing is ever called."""
        return lambda: None

    def stop(self) -> None:
        for answers in (self.history_answers, self.series_answers, self.snapshot_answers):
            answers.close()
        self.store.close()
